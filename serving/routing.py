"""Turn a request's `model` field into the catalog model to call, with the router's decision when it chose.

The router may have been trained on a panel the gateway cannot call (RouterBench's GPT-4, say): only panel
models that are in the catalog and available are eligible. When none of the panel is callable, the request
goes to a local catalog model and the decision says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pipelines.llm.catalog import Catalog, ModelEntry
from router_models.router.decision import Decision, explain
from router_models.router.policies import Budget, MaxUtility
from router_models.router.router import Router
from router_models.router.rules import ModelInfo
from router_models.router.signals import Constraints, detect_pii, estimate_tokens

UNAVAILABLE = "not_callable"
WINDOW = "context_window"  # the rule's name: the router's estimate passed, the model's own count did not
PANEL_FALLBACK = "panel_fallback"


class RoutingError(ValueError):
    """The request names an unknown model or policy, or no model can take it (a 4xx, not a 5xx)."""

    def __init__(self, message: str, status: int = 400, decision: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.decision = decision


@dataclass
class Choice:
    model: str
    chosen_by: str  # "request" (a catalog name), "router" or PANEL_FALLBACK
    decision: dict[str, Any] | None


def prompt_of(messages: list[dict[str, Any]]) -> str:
    """Every turn's text, blank-line separated: the router embeds the last turn, PII is sought in all."""
    return "\n\n".join(str(m.get("content") or "") for m in messages)


def has_system(messages: list[dict[str, Any]]) -> bool:
    """Whether `messages` open with a system message (a chat template adds a default one where the first is
    not: SmolLM2's, even where a later one is)."""
    return bool(messages) and messages[0].get("role") == "system"


class ModelResolver:
    def __init__(
        self,
        router: Router | None,
        catalog: Catalog,
        count_tokens: Callable[[str, str, int, bool], int | None] | None = None,
    ) -> None:
        """`count_tokens(model, prompt, turns, system)`: what the gateway's window check counts for the
        prompt (`Gateway.prompt_tokens`: by the model's own tokenizer, else gpt-3.5's); None where unknown.
        The router's tokenizer-free estimate gives a Chinese character one token, SmolLM2's tokenizer about
        two: the router chose it for prompts it then refused."""
        self.router = router
        self.catalog = catalog
        self.count_tokens = count_tokens
        # budget policies, calibrated once per fraction (a bisection over the reference predictions)
        self._budgets: dict[float, Budget] = {}
        if router is not None:  # the catalog is the authority on privacy and context windows
            for name in router.models:
                if name in catalog.names():
                    e = catalog.get(name)
                    old = router.metadata.get(name, ModelInfo(name))
                    router.metadata[name] = ModelInfo(name, e.privacy, e.context_window, old.p95_latency_s)

    def callable_models(self) -> dict[str, str | None]:
        """Catalog name -> None if callable now, else why not."""
        return {e.name: e.unavailable_reason() for e in self.catalog.models}

    def policy(self, name: str | None) -> MaxUtility | Budget | None:
        if self.router is None or not name:
            return None
        base = self.router.policy
        if name == base.name:
            return base
        if name == "max_utility":
            return MaxUtility()
        if name == "budget":
            return self._budget(0.5)
        if name.startswith("budget-"):
            try:
                fraction = float(name.removeprefix("budget-"))
            except ValueError:
                fraction = -1.0
            if 0 < fraction <= 1:
                return self._budget(fraction)
        raise RoutingError(
            f"unknown routing policy {name!r}; use router, router:max_utility, router:budget "
            "or router:budget-<fraction in (0, 1]>"
        )

    def _budget(self, fraction: float) -> Budget:
        assert self.router is not None
        policy = self._budgets.get(fraction)
        if policy is None:
            if len(self._budgets) >= 64:  # fractions come from requests: keep the table small
                self._budgets.clear()
            policy = self._budgets[fraction] = self.router.budget_policy(fraction)
        return policy

    def resolve(
        self,
        model: str,
        prompt: str,
        constraints: Constraints,
        p95: dict[str, float] | None = None,
        turns: int = 1,
        sent: str | None = None,
        system: bool = False,
    ) -> Choice:
        """`turns`: how many messages `prompt` joins (prompt_of), and `system`, whether they open with a
        system message (`has_system`: else a chat template adds a default one), for the window check's count.
        `sent`: the text the model will be sent where it is more than the prompt routed on (a RAG question's
        sources)."""
        if model == "router" or model.startswith("router:"):
            policy_name = model.partition(":")[2] or None
            return self.route(prompt, constraints, policy_name, p95, turns, sent, system)
        if model not in self.catalog.names():
            raise RoutingError(
                f"unknown model {model!r}; use 'router', 'router:<policy>' or one of: "
                + ", ".join(self.catalog.names()),
                status=404,
            )
        reason = self.catalog.get(model).unavailable_reason()
        if reason:
            raise RoutingError(f"model {model!r} is unavailable: {reason}", status=400)
        why = self.breaks_limits(model, prompt if sent is None else sent, constraints, p95 or {})
        if why:
            raise RoutingError(f"{why}; name another model or use 'router'", status=422)
        return Choice(model, "request", None)

    def breaks_limits(
        self, model: str, sent: str, constraints: Constraints, p95: dict[str, float]
    ) -> str | None:
        """Why a catalog model the caller named must not take `sent`, as the router's rules would rule: a
        model that is not local for a local_only request or for text that holds personal data (the rules run
        first, whoever chose), a recent p95 over the latency SLO, a predicted cost over the cap."""
        e = self.catalog.get(model)
        if e.privacy != "local":
            if constraints.privacy == "local_only":
                return f"{model} is not a local model (privacy: {e.privacy}) and the request is local_only"
            if pii := detect_pii(sent):
                found = ", ".join(pii)
                return f"the request holds personal data ({found}) and {model} is not local ({e.privacy})"
        return _over_limits(e, estimate_tokens(sent), constraints, p95)

    def route(
        self,
        prompt: str,
        constraints: Constraints,
        policy_name: str | None = None,
        p95: dict[str, float] | None = None,
        turns: int = 1,
        sent: str | None = None,
        system: bool = False,
    ) -> Choice:
        if self.router is None:
            # this service's configuration, not an outage: a 404 (OpenAI's model_not_found), no retry
            raise RoutingError(
                "no router is loaded in this service (SM_ROUTER_DIR); name a catalog model", 404
            )
        policy = self.policy(policy_name)
        # PII and price: in all it sends; windows: checked below, by each model's own count where there is one
        decision = self.router.route(prompt, constraints, policy, p95, sent, sized_by_caller=True)
        status = self.callable_models()
        panel_callable = [m for m in self.router.models if status.get(m, "x") is None]
        dropped = []  # candidates the router allowed and this service cannot use
        for c in decision.candidates:
            if c.allowed and status.get(c.model, "x") is not None:
                c.allowed, c.excluded_by = False, UNAVAILABLE
                c.reason = status.get(c.model) or f"{c.model} is not in the gateway's catalog"
                dropped.append(c)
        size = _Size(prompt, turns, system=system)
        if sent is not None:
            size = _Size(sent, turns, "the question with its sources", system)
        for c in decision.candidates:  # best first; a count costs up to ms: only until one fits
            if not c.allowed:
                continue
            why = self._overflow(c.model, size, constraints)
            if why is None:
                break
            c.allowed, c.excluded_by, c.reason = False, WINDOW, why
            dropped.append(c)
        rank = decision.candidates.index
        dropped.sort(key=rank)  # the router's choice first, when it is among them
        usable = [c for c in decision.candidates if c.allowed]  # candidates are sorted by utility
        if usable:
            best = usable[0]
            if decision.model != best.model:  # the router's choice was dropped here: say why, each one above
                above = [c for c in dropped if rank(c) < rank(best)]
                if decision.binding is None:  # "no rule bound the choice" no longer holds: say it anew
                    described = (policy or self.router.policy).describe()
                    text = explain(best, above[0], above[0], described, len(usable))
                    said = [f"{c.model} ({c.excluded_by}: {c.reason})" for c in above[1:]]
                    decision.explanation = text + (f" Also out: {'; '.join(said)}." if said else "")
                    decision.binding = above[0].excluded_by
                else:  # the router's own binding stays; what this service dropped follows
                    said = [f"{c.model} is out ({c.excluded_by}: {c.reason})" for c in above]
                    decision.explanation += f" But {'; '.join(said)}; it calls {best.model}."
            decision.model = best.model
            return Choice(decision.model, "router", _as_dict(decision))
        if panel_callable:  # callable panel models exist but rules or constraints exclude all of them
            if decision.model is not None:  # the router's choice was dropped here, every other too: say so
                decision.model, decision.binding = None, decision.binding or dropped[0].excluded_by
                decision.explanation = explain(None, None, None, "", 0, decision.candidates)
            raise RoutingError(decision.explanation, status=422, decision=_as_dict(decision))
        return self._local_fallback(decision, size, constraints, p95 or {})

    def exposes(self, model: str, sent: str) -> bool:
        """Whether `sent` holds personal data (the router's check) and `model` is not a local one: a RAG
        question routed alone can be sent with sources that hold what the question did not."""
        privacy = self.catalog.get(model).privacy if model in self.catalog.names() else None
        return privacy != "local" and bool(detect_pii(sent))

    def overflow(
        self, model: str, sent: str, turns: int, constraints: Constraints, system: bool = False
    ) -> str | None:
        """Why `model` cannot take `sent` (`turns` messages joined, `system` whether they open with a system
        message), or None where it can or cannot tell."""
        return self._overflow(model, _Size(sent, turns, system=system), constraints)

    def _overflow(self, model: str, size: _Size, constraints: Constraints) -> str | None:
        """Why `model` cannot take the prompt, counted as the gateway's window check counts it (by the
        model's own tokenizer, else gpt-3.5's), or None where it can or no count is at hand."""
        if self.count_tokens is None or model not in self.catalog.names():
            return None
        window = self.catalog.get(model).context_window
        if size.bound + constraints.expected_output_tokens <= window:
            return None  # it fits, whatever the count: no tokenizing (1-2 ms for 3,000 characters)
        n = self.count_tokens(model, size.prompt, size.turns, size.system)
        if n is None:
            return None
        needed = n + constraints.expected_output_tokens
        if needed <= window:
            return None
        said = f"{model}'s context window ({window} tokens) is smaller than the {needed} tokens needed"
        return said + (f" for {size.what}" if size.what else "")

    def _local_fallback(
        self, decision: Decision, size: _Size, constraints: Constraints, p95: dict[str, float]
    ) -> Choice:
        """A local model, where the router's panel has none the gateway can call: one whose window fits, and,
        as the router's rules would have it, whose recent p95 keeps the latency SLO and whose catalog price
        keeps the cost cap (the fallback had called a model either limit rules out)."""
        assert self.router is not None
        needed = int(decision.signals["tokens_needed"])  # the router computed the request's signals
        local = [e for e in self.catalog.available() if e.privacy == "local" and e.is_local_server]
        why: dict[str, str | None] = {}
        for e in local:  # the request's limits, the router's estimate, then the model's own count
            if over := _over_limits(e, needed - constraints.expected_output_tokens, constraints, p95):
                why[e.name] = over
            elif e.context_window < needed:
                why[e.name] = f"{e.name}'s window ({e.context_window} tokens) is under the {needed} needed"
            else:
                why[e.name] = self._overflow(e.name, size, constraints)
        fits = [e for e in local if why[e.name] is None]
        if not fits:
            said = "; ".join(w for w in why.values() if w) or "none is available"
            decision.model, decision.binding = None, decision.binding or UNAVAILABLE
            decision.explanation = (
                f"The router's panel has no model the gateway can call, and no local model can take this "
                f"request: {said}."
            )
            raise RoutingError(decision.explanation, status=422, decision=_as_dict(decision))
        pick = fits[0].name
        decision.explanation = (
            f"The router's panel ({', '.join(self.router.models)}) has no model the gateway can call "
            f"(its choice was {decision.model or 'none'}); falling back to the local model {pick}. "
            f"Router said: {decision.explanation}"
        )
        decision.model = pick
        decision.binding = PANEL_FALLBACK
        return Choice(pick, PANEL_FALLBACK, _as_dict(decision))


def _over_limits(
    e: ModelEntry, input_tokens: int, constraints: Constraints, p95: dict[str, float]
) -> str | None:
    """Why catalog model `e` breaks the request's latency SLO (its recent p95) or cost cap (its catalog
    price for `input_tokens` in and the tokens reserved out), or None."""
    slo, cap = constraints.latency_slo_s, constraints.max_cost_usd
    if slo is not None and p95.get(e.name, 0.0) > slo:
        return f"{e.name}'s recent p95 latency ({p95[e.name]:.2f} s) breaks the {slo:g} s SLO"
    if cap is not None and (cost := e.cost_usd(input_tokens, constraints.expected_output_tokens)) > cap:
        return f"{e.name}'s predicted cost (${cost:.3g}) is over max_cost_usd (${cap:g})"
    return None


class _Size:
    """A request's prompt for the window check: its text, its turns, and a bound on the gateway's count,
    worked out once, when first asked. The bound: a token for each digit and each byte of a non-ASCII
    character, one for every two other ASCII characters (prose and code hold 3-5 a token; a long run of
    symbols, one each, could pass it: the gateway's own check still refuses that), and 64 a turn for the chat
    markers and a template's default system prompt (SmolLM2's and Gemma's add 30-45 tokens to one message)."""

    def __init__(self, prompt: str, turns: int = 1, what: str = "", system: bool = False) -> None:
        self.prompt, self.turns, self.system = prompt, max(turns, 1), system
        self.what = what  # what the text is, for a reason, where it is more than the prompt

    @cached_property
    def bound(self) -> int:
        ascii_bytes = len(self.prompt.encode("ascii", "ignore"))
        digits = sum(ch.isdigit() for ch in self.prompt if ch.isascii())
        text = (ascii_bytes - digits + 1) // 2 + digits + len(self.prompt.encode()) - ascii_bytes
        return text + 64 * self.turns


def _as_dict(decision: Decision) -> dict[str, Any]:
    return decision.to_dict()
