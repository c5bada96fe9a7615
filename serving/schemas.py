"""Request and response bodies: the OpenAI chat-completions subset the service honours, route and RAG."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router_models.router.signals import Constraints
from serving.openapi import openapi30

# Validation errors quote no input: BentoML logs a typed method's ValidationError, and a prompt may hold PII.
# Numbers are finite: JSON's 1e999 parses as inf, which no JSON response can carry (it was a 500).
_CONFIG = ConfigDict(json_schema_extra=openapi30, hide_input_in_errors=True, allow_inf_nan=False)


class ApiModel(BaseModel):
    """Bodies of the service: their JSON schemas are written in OpenAPI 3.0's dialect (BentoML's document)."""

    model_config = _CONFIG


class ApiConstraints(Constraints):
    __doc__ = Constraints.__doc__
    # a misspelt key ("privacy_mode": "local_only") was ignored: the prompt could go to a remote model
    model_config = ConfigDict(**_CONFIG, extra="forbid")


class Message(ApiModel):
    """OpenAI's `developer` role is read as `system`; content may be a list of text parts, joined."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1, max_length=200_000)

    @model_validator(mode="before")
    @classmethod
    def _openai_forms(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("role") == "developer":
            data["role"] = "system"
        parts = data.get("content")
        if isinstance(parts, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in parts):
                raise ValueError("only text content parts are supported")
            if not all(isinstance(p.get("text"), str) for p in parts):  # str() sent null as "None"
                raise ValueError("a text content part needs a `text` string")
            data["content"] = "\n".join(p["text"] for p in parts)
        return data

    @field_validator("content")
    @classmethod
    def _not_blank(cls, content: str) -> str:  # routed, then refused by the gateway naming a model it chose
        if not content.strip():
            raise ValueError("a message's content holds only white space")
        return content


class ChatRequest(ApiModel):
    """OpenAI fields the service does not use (top_p, seed, user, ...) are accepted and ignored; those that
    would change the answer or ask for what it cannot give (n > 1, tools or the legacy functions, a JSON
    response format, logprobs, presence or frequency penalties, a logit bias) are refused."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200, description="router, router:<policy> or a catalog name")
    messages: list[Message] = Field(min_length=1, max_length=200)
    # strict: OpenAI refuses `"max_tokens": true` (read as 1 token here), `"10"` and `"stream": "yes"`
    max_tokens: int | None = Field(default=None, ge=1, le=8192, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192, strict=True)
    temperature: float | None = Field(default=0.0, ge=0.0, le=2.0, strict=True, description="null means 0")
    stream: bool | None = Field(default=False, strict=True, description="null means false")
    stop: str | list[str] | None = Field(default=None, description="up to 4 stop strings")
    n: int | None = Field(default=None, ge=1, le=1, strict=True, description="one choice only")
    constraints: ApiConstraints = Field(default_factory=ApiConstraints, description="routing constraints")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("tools") and data.get("tool_choice") != "none":
                raise ValueError("tools are not supported: no model of the panel is called with functions")
            if data.get("functions") and data.get("function_call") != "none":
                raise ValueError("functions are not supported: no model of the panel is called with them")
            if data.get("logprobs") or data.get("top_logprobs"):
                raise ValueError("logprobs are not supported: the gateway does not return them")
            fmt = data.get("response_format")
            kind = fmt.get("type") if isinstance(fmt, dict) else fmt
            if kind not in (None, "text"):  # a string ("json") passed unchecked, and was ignored
                raise ValueError(f"response_format {str(kind)[:40]!r} is not supported, only 'text'")
            for name in ("presence_penalty", "frequency_penalty", "logit_bias"):
                if data.get(name):  # they would change the answer, and no call passes them on
                    raise ValueError(f"{name} is not supported: the gateway does not pass it on")
        return data

    @model_validator(mode="after")
    def _stops(self) -> ChatRequest:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > 4 or not all(stops):
            raise ValueError("`stop` takes at most 4 non-empty strings")
        return self

    def routing_constraints(self) -> ApiConstraints:
        """The constraints, reserving the tokens this request may generate in a model's context window (or
        the caller's `expected_output_tokens`, where more: the gateway refuses a prompt that leaves less
        than `max_tokens` free, so routing reserves no less)."""
        return _reserving(self.constraints, self.token_budget())

    def token_budget(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 256

    def sampling(self) -> tuple[float, dict[str, Any]]:
        """The temperature and the extra call options (the caller's stop strings) for the gateway."""
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return self.temperature or 0.0, {"stop": stops} if stops else {}

    def message_dicts(self) -> list[dict[str, Any]]:
        return [m.model_dump() for m in self.messages]


def _reserving(constraints: ApiConstraints, max_tokens: int) -> ApiConstraints:
    reserve = max_tokens
    if "expected_output_tokens" in constraints.model_fields_set:
        reserve = max(reserve, constraints.expected_output_tokens)
    return constraints.model_copy(update={"expected_output_tokens": reserve})


class RouteRequest(ApiModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(default=None, min_length=1, max_length=200_000)
    messages: list[Message] | None = Field(default=None, min_length=1, max_length=200)
    model: str = Field(
        default="router", min_length=1, max_length=200, description="router or router:<policy>"
    )
    constraints: ApiConstraints = Field(default_factory=ApiConstraints)

    @model_validator(mode="after")
    def _one_input(self) -> RouteRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if self.prompt is not None and not self.prompt.strip():  # /v1/rag refused " ", /v1/route routed it
            raise ValueError("`prompt` holds only white space")
        if not (self.model == "router" or self.model.startswith("router:")):
            raise ValueError("`model` must be 'router' or 'router:<policy>' for a routing decision")
        return self


class RagRequest(ApiModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=4000)
    model: str = Field(
        default="router",
        min_length=1,
        max_length=200,
        description="router, router:<policy> or a catalog model",
    )
    k: int = Field(default=4, ge=1, le=20)
    mode: Literal["bm25", "dense", "hybrid", "hybrid_rrf", "hybrid_convex"] = "hybrid"
    max_tokens: int = Field(default=256, ge=1, le=2048)
    constraints: ApiConstraints = Field(default_factory=ApiConstraints)

    @field_validator("question")
    @classmethod
    def _not_blank(cls, question: str) -> str:  # " " was answered from 4 arbitrary sources
        if not question.strip():
            raise ValueError("`question` holds only white space")
        return question

    def routing_constraints(self) -> ApiConstraints:
        return _reserving(self.constraints, self.max_tokens)


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
