"""route()'s fast path decides exactly as the plain path did (the speed figures are in benchmarks/serving.py).

The fast path: one torch thread for serving, the embeddings and PII findings of recent prompts remembered,
predictor constants computed once. None of it may change a decision: a router trained with the production
embedder (MiniLM) on a RouterBench slice routes held-out RouterBench prompts cold (torch's default threads,
nothing cached) and then warm (after `warm_up`, twice: computed, then from the caches), and every decision
must be the same, down to each candidate's predicted quality, sd, cost and utility.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from router_models.router import router as router_module
from router_models.router.artifact import load_router, save_router
from router_models.router.features import embed_prompts
from router_models.router.signals import PII_CACHE_MAX_CHARS, Constraints, detect_pii
from router_models.router.train import train_router


@pytest.fixture(scope="module")
def slices(shared_data):
    rb = shared_data / "routerbench"
    prompts = pd.read_csv(rb / "prompts_train.csv", dtype={"prompt_id": str})
    outcomes = pd.read_csv(rb / "outcomes_train.csv", dtype={"prompt_id": str})
    shuffled = prompts.sample(frac=1.0, random_state=11)
    train = shuffled.groupby("task").head(30)
    held_out = shuffled.drop(train.index).groupby("task").head(8)
    return train, outcomes[outcomes.prompt_id.isin(train.prompt_id)], held_out["prompt"].tolist()


@pytest.fixture(scope="module")
def artifact(slices, tmp_path_factory):
    train, outcomes, _ = slices
    return save_router(train_router(train, outcomes, embedder="minilm"), tmp_path_factory.mktemp("r") / "r")


@pytest.fixture
def torch_threads():
    import torch

    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def _requests(prompts: list[str], router) -> list[tuple[str, Constraints, object]]:
    budget = router.budget_policy(0.3)
    return [
        (p, Constraints(max_cost_usd=0.0005) if i % 3 == 0 else Constraints(), budget if i % 2 else None)
        for i, p in enumerate(prompts)
    ]


def _decisions(router, requests) -> list[dict]:
    out = []
    for prompt, constraints, policy in requests:
        d = router.route(prompt, constraints, policy).to_dict()
        assert d.pop("decision_ms") >= 0
        out.append(d)
    return out


def test_warm_cached_routing_decides_exactly_as_cold_routing(artifact, slices, torch_threads):
    prompts = slices[2] + ["Email jane.doe@example.com the answer: which gas do plants absorb?"]
    cold = load_router(artifact)
    requests = _requests(prompts, cold)
    assert torch_threads >= 1
    reference = _decisions(cold, requests)  # torch's own thread count, every cache empty

    warm = load_router(artifact)
    warm.warm_up()
    import torch

    assert torch.get_num_threads() == 1
    first = _decisions(warm, requests)
    again = _decisions(warm, requests)  # embeddings and PII findings now come from the caches
    assert first == reference
    assert again == reference
    assert len({d["model"] for d in reference}) >= 2, "a sample where the router never hesitates tests little"
    assert any(d["binding"] for d in reference)  # the cost cap and the PII rule bind on some requests
    assert reference[-1]["signals"]["pii"] is True


def test_cached_embedding_is_embed_prompts_value_and_read_only(artifact, slices):
    router = load_router(artifact)
    prompt = slices[2][0]
    emb = router.embed(prompt)
    assert np.array_equal(emb, embed_prompts([prompt], "minilm"))
    assert router.embed(prompt) is emb  # the second call is a cache hit
    assert router.embed("Preamble that the embedder never sees.\n\n" + prompt) is emb  # same last turn
    with pytest.raises(ValueError):
        emb[0, 0] = 1.0


def test_embedding_cache_is_bounded(artifact, monkeypatch):
    router = load_router(artifact)
    monkeypatch.setattr(router_module, "EMBED_CACHE_SIZE", 3)
    for i in range(5):
        router.embed(f"question number {i}")
    assert len(router._embeddings) == 3
    assert router.embed("question number 4") is router.embed("question number 4")


def test_pii_is_found_in_texts_too_long_to_cache():
    long = "lorem ipsum " * (PII_CACHE_MAX_CHARS // 10) + " write to jane.doe@example.com"
    assert len(long) > PII_CACHE_MAX_CHARS
    assert detect_pii(long) == ("EMAIL_ADDRESS",)
    assert detect_pii("call me at +1 212 555 0199") == detect_pii("call me at +1 212 555 0199")


def test_budget_policies_are_calibrated_once_per_fraction(artifact):
    from pipelines.llm.catalog import load_catalog
    from serving.routing import ModelResolver

    router = load_router(artifact)
    resolver = ModelResolver(router, load_catalog())
    first = resolver.policy("router:budget-0.3".partition(":")[2])
    assert resolver.policy("budget-0.3") is first
    assert first.lambda_cost == router.budget_policy(0.3).lambda_cost
    assert resolver.policy("budget") is not first and resolver.policy("budget").fraction == 0.5
