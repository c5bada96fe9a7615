"""Request and response bodies: the OpenAI chat-completions subset the service honours, route and RAG."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router_models.router.signals import Constraints
from serving.openapi import openapi30


class ApiModel(BaseModel):
    """Bodies of the service: their JSON schemas are written in OpenAPI 3.0's dialect (BentoML's document)."""

    model_config = ConfigDict(json_schema_extra=openapi30)


class ApiConstraints(Constraints):
    __doc__ = Constraints.__doc__
    model_config = ConfigDict(json_schema_extra=openapi30)


class Message(ApiModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1, max_length=200_000)


class ChatRequest(ApiModel):
    """OpenAI fields the service does not use (n, top_p, user, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200, description="router, router:<policy> or a catalog name")
    messages: list[Message] = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    stream: bool = False
    constraints: ApiConstraints = Field(default_factory=ApiConstraints, description="routing constraints")

    def token_budget(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 256

    def message_dicts(self) -> list[dict[str, Any]]:
        return [m.model_dump() for m in self.messages]


class RouteRequest(ApiModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(default=None, min_length=1, max_length=200_000)
    messages: list[Message] | None = Field(default=None, min_length=1, max_length=200)
    model: str = Field(default="router", description="router or router:<policy>")
    constraints: ApiConstraints = Field(default_factory=ApiConstraints)

    @model_validator(mode="after")
    def _one_input(self) -> RouteRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if not (self.model == "router" or self.model.startswith("router:")):
            raise ValueError("`model` must be 'router' or 'router:<policy>' for a routing decision")
        return self


class RagRequest(ApiModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=4000)
    model: str = Field(default="router", description="router, router:<policy> or a catalog name")
    k: int = Field(default=4, ge=1, le=20)
    mode: Literal["bm25", "dense", "hybrid", "hybrid_rrf", "hybrid_convex"] = "hybrid"
    max_tokens: int = Field(default=256, ge=1, le=2048)
    constraints: ApiConstraints = Field(default_factory=ApiConstraints)


class RouteDecision(ApiModel):
    model: str = Field(description="the catalog model the request would be sent to")
    chosen_by: str = Field(description="router, rule, panel_fallback, ...")
    routing: dict[str, Any] = Field(description="the decision: policy, per-model scores, constraints applied")


class RagAnswer(ApiModel):
    answer: str
    citations: list[str] = Field(description="chunk ids the answer cites")
    citations_by: Literal["model", "overlap", "none"] = Field(
        description="model: the model's own labels; overlap: attributed afterwards by shared words"
    )
    chunks: list[dict[str, Any]] = Field(description="retrieved chunks with scores and provenance")
    model: str | None = Field(description="the model that answered; null when nothing was retrieved")
    stratmaster: dict[str, Any] = Field(description="routing decision, fallback, cost, latency, usage")
