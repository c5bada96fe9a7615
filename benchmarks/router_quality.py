"""Router quality by k-fold cross-validation inside the RouterBench train files, baselines side by side.

    .venv/bin/python benchmarks/router_quality.py [--folds 5] [--seeds 1] [--predictors a,b]
        [--embedder static|minilm]

Prints, for each predictor, gap recovered, the cost at which it first reaches the best single model's
quality (as a fraction of that model's cost) and AIQ, pooled over the out-of-fold predictions (with the
spread over folds); then FrugalGPT agreement cascades replayed on `responses_train.csv` (thresholds and
chains calibrated on the training folds, every called model paid); then `route()` decision latency
in-process, embedding included. Embeddings are cached under runs/cache/ (ignored by git).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipelines.bench.outcomes import load_routerbench  # noqa: E402
from pipelines.settings import Settings  # noqa: E402
from router_models.router.cascade import ProbeRouter, calibrate, normalise_answer, simulate  # noqa: E402
from router_models.router.crossval import (  # noqa: E402
    TRUE_TASK,
    cross_val_predictions,
    fold_ids,
    fold_summaries,
    question_groups,
)
from router_models.router.features import ROUTER_EMBEDDER, TaskClassifier, embed_prompts  # noqa: E402
from router_models.router.metrics import LAMBDAS, hull_area, single_models, summary  # noqa: E402

BASELINES = ["global_mean", TRUE_TASK, "task_mean", "knn", "logistic", "mf", "bayes", "stack"]
TARGET_GAP, TARGET_COST_RATIO = 0.30, 0.60
PROBES_2 = ("mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat")
PROBES_3 = (*PROBES_2, "gpt-3.5-turbo-1106")


def predictor_table(prompts, outcomes, emb, names, folds, seeds: int = 1) -> pd.DataFrame:
    """Per predictor, the pooled out-of-fold figures, averaged over `seeds` draws of the folds (one draw's
    gap moved by up to 0.016 from another's; the cost ratio is the median draw's), with the spread over
    draws and over seed 0's folds."""
    rows = []
    for name in names:
        t0 = time.perf_counter()
        draws = []
        for seed in range(seeds):
            pred = cross_val_predictions(name, prompts, outcomes, emb, folds=folds, seed=seed)
            s = fold_summaries(pred, outcomes)
            draws.append((s[s.fold != "all"], s[s.fold == "all"].iloc[0]))
        pooled = pd.DataFrame([p for _, p in draws])
        gaps, ratios = pooled["gap_recovered"].astype(float), pooled["cost_ratio_to_match_best"].astype(float)
        rows.append(
            {
                "predictor": name,
                "gap_recovered": gaps.mean(),
                **({"gap_seed_min": gaps.min(), "gap_seed_max": gaps.max()} if seeds > 1 else {}),
                "gap_fold_sd": draws[0][0]["gap_recovered"].std(),
                # the median draw's (one that never reaches the best model's quality counts as infinite)
                "cost_ratio_to_match_best": ratios.fillna(np.inf).median(),
                **({"draws_reaching_best": int(ratios.notna().sum())} if seeds > 1 else {}),
                "aiq": pooled["aiq"].astype(float).mean(),
                "max_quality": pooled["router_max_quality"].astype(float).mean(),
                "seconds": time.perf_counter() - t0,
            }
        )
        print(
            f"  {name:18s} gap {rows[-1]['gap_recovered']:.3f}  cost ratio "
            f"{rows[-1]['cost_ratio_to_match_best']:.3f}  ({rows[-1]['seconds']:.0f} s)",
            flush=True,
        )
    return pd.DataFrame(rows)


def _matrix(df: pd.DataFrame, col: str, ids: list[str], models: list[str]) -> pd.DataFrame:
    return df.pivot(index="prompt_id", columns="model", values=col).reindex(index=ids, columns=models)


def replay_data(data_dir: Path, prompts: pd.DataFrame, outcomes: pd.DataFrame):
    """Answers (normalised), scores and costs as prompts x models arrays, for replaying cascades offline."""
    resp = pd.read_csv(data_dir / "responses_train.csv", dtype={"prompt_id": str, "model": str})
    ids = prompts["prompt_id"].astype(str).tolist()
    models = sorted(outcomes["model"].unique())
    answers = _matrix(resp, "response", ids, models).map(normalise_answer).to_numpy()
    scores = _matrix(outcomes, "score", ids, models).fillna(0.0).to_numpy()
    costs = _matrix(outcomes, "cost_usd", ids, models).to_numpy()
    return models, answers, scores, costs


def cascade_table(replay, prompts, folds: int, fractions=(0.2, 0.3, 0.4, 0.5, 0.6)) -> pd.DataFrame:
    """Agreement cascades: chain and thresholds calibrated on the training folds for each budget."""
    models, answers, scores, costs = replay
    best = int(scores.mean(0).argmax())
    best_cost = float(np.nanmean(costs[:, best]))
    fold = fold_ids(len(scores), folds, groups=question_groups(prompts))
    rows = []
    for frac in fractions:
        q_all, c_all, chains, missed = np.zeros(len(scores)), np.zeros(len(scores)), [], 0
        for f in range(folds):
            tr, te = fold != f, fold == f
            found = calibrate(models, answers[tr], scores[tr], costs[tr], frac * np.nanmean(costs[tr, best]))
            if found is None:  # its prompts would count as free and wrong: the budget has no figure
                missed += 1
                continue
            q_all[te], c_all[te] = simulate(found[0], models, answers[te], scores[te], costs[te])
            chains.append(
                " -> ".join(m.split("/")[-1] for m in found[0].chain) + f" @{found[0].thresholds[1:]}"
            )
        rows.append(
            {
                "budget_fraction": frac,
                "quality": np.nan if missed else q_all.mean(),
                "cost_ratio": np.nan if missed else c_all.mean() / best_cost,
                "chain (most common)": f"no chain within budget in {missed} of {folds} folds"
                if missed
                else max(set(chains), key=chains.count),
            }
        )
    return pd.DataFrame(rows)


def probe_router_table(replay, prompts, emb, outcomes, folds: int, probe_sets) -> pd.DataFrame:
    """Answer-aware routing (ProbeRouter) swept over willingness to pay; tasks come from the classifier."""
    models, answers, scores, costs = replay
    ref = summary(outcomes[["prompt_id", "model"]].assign(predicted_score=0.0), outcomes)
    singles = single_models(outcomes)
    lo, hi = min(c for c, _ in singles.values()), max(c for c, _ in singles.values())
    labels = prompts["task"].astype(str).to_numpy()
    fold = fold_ids(len(scores), folds, groups=question_groups(prompts))
    rows = []
    for probes in probe_sets:
        q, c = np.zeros((len(LAMBDAS), len(scores))), np.zeros((len(LAMBDAS), len(scores)))
        for f in range(folds):
            tr, te = np.where(fold != f)[0], np.where(fold == f)[0]
            clf = TaskClassifier.fit(emb[tr], labels[tr].tolist())
            t_tr = np.array([clf.classes.index(t) for t in labels[tr]])
            t_te = clf.predict_proba(emb[te]).argmax(1)  # no task label at routing time
            pr = ProbeRouter(models, list(probes), len(clf.classes)).fit(
                t_tr, answers[tr], scores[tr], costs[tr]
            )
            for i, lam in enumerate(LAMBDAS):
                q[i, te], c[i, te] = pr.simulate(lam, t_te, answers[te], scores[te], costs[te])
        pts = list(zip(c.mean(1), q.mean(1), strict=True))
        aiq = hull_area(pts, lo, hi)
        reach = [pc for pc, pq in pts if pq >= ref["best_single_quality"] - 1e-9]
        rows.append(
            {
                "probes": " + ".join(p.split("/")[-1] for p in probes),
                "gap_recovered": (aiq - ref["aiq_single_models_hull"])
                / (ref["aiq_oracle"] - ref["aiq_single_models_hull"]),
                "cost_ratio_to_match_best": min(reach) / ref["best_single_cost"] if reach else float("nan"),
                "aiq": aiq,
                "max_quality": max(pq for _, pq in pts),
            }
        )
    return pd.DataFrame(rows)


def ceiling_table(outcomes, fractions=(0.05, 0.1, 0.2, 0.3, 0.5)) -> pd.DataFrame:
    """What a gap recovered needs here: the gap of a router whose curve is the single models' hull plus one
    point, the best single model's quality at a fraction of its cost (quality beyond it needs per-prompt
    picks that beat the best model where it fails)."""
    ref = summary(outcomes[["prompt_id", "model"]].assign(predicted_score=0.0), outcomes)
    singles = single_models(outcomes)
    lo, hi = min(c for c, _ in singles.values()), max(c for c, _ in singles.values())
    base, top = ref["aiq_single_models_hull"], ref["aiq_oracle"]
    rows = []
    for frac in fractions:
        point = (frac * ref["best_single_cost"], ref["best_single_quality"])
        aiq = hull_area([*singles.values(), point], lo, hi)
        rows.append({"best_quality_at_cost_ratio": frac, "gap_recovered": (aiq - base) / (top - base)})
    return pd.DataFrame(rows)


def difficulty_table(prompts, outcomes, emb, folds: int, seed: int = 0) -> pd.DataFrame:
    """What a router would need to know of each prompt: told its task and its difficulty (how many models
    answer it right, in three classes or as the count), choosing by each model's mean score there, in
    sample; then the classes predicted from the prompt's embedding and length out of fold (still told the
    task), with the AUC of the easiest and hardest class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    scores = outcomes.pivot(index="prompt_id", columns="model", values="score").fillna(0.0)
    scores = scores.reindex(prompts["prompt_id"])
    count = (scores.to_numpy() >= 0.5).sum(axis=1)
    cls = np.digitize(count, [len(scores.columns) // 3 + 1, 2 * len(scores.columns) // 3 + 1])
    task = prompts["task"].to_numpy()
    cost = outcomes.merge(prompts[["prompt_id", "task"]], on="prompt_id")
    cost = cost.groupby(["task", "model"])["cost_usd"].mean().rename("predicted_cost_usd").reset_index()

    def router(table: np.ndarray) -> dict:
        pred = pd.DataFrame(table, index=scores.index, columns=scores.columns).stack()
        pred = (
            pred.rename("predicted_score").reset_index().merge(prompts[["prompt_id", "task"]], on="prompt_id")
        )
        s = summary(pred.merge(cost, on=["task", "model"]), outcomes)
        return {
            "gap_recovered": s["gap_recovered"],
            "cost_ratio_to_match_best": s["cost_ratio_to_match_best"],
        }

    def in_sample(key: np.ndarray) -> np.ndarray:
        frame = scores.assign(_t=task, _k=key)
        return frame.groupby(["_t", "_k"]).transform("mean").to_numpy()

    rows = [
        {"router": "told task and difficulty class (in sample)", **router(in_sample(cls))},
        {"router": "told task and count of models right (in sample)", **router(in_sample(count))},
    ]
    x = np.hstack(
        [emb, pd.get_dummies(task).to_numpy(float), np.log1p(prompts["prompt"].str.len().to_numpy())[:, None]]
    )
    fold = fold_ids(len(prompts), folds, seed, question_groups(prompts))
    proba, table = np.zeros((len(prompts), 3)), np.zeros(scores.shape)
    for k in range(folds):
        train, test = fold != k, fold == k
        clf = LogisticRegression(max_iter=2000).fit(x[train], cls[train])
        proba[np.ix_(test, clf.classes_)] = clf.predict_proba(x[test])  # a class a fold lacks stays at 0
        for t in np.unique(task):
            base = scores.to_numpy()[train & (task == t)]
            by_cls = [scores.to_numpy()[train & (task == t) & (cls == c)] for c in range(3)]
            q = np.stack([b.mean(0) if len(b) else base.mean(0) for b in by_cls])
            table[test & (task == t)] = proba[test & (task == t)] @ q
    easy, hard = roc_auc_score(cls == 2, proba[:, 2]), roc_auc_score(cls == 0, proba[:, 0])
    auc = f"AUC easiest {easy:.2f}, hardest {hard:.2f}"
    rows.append({"router": f"told task, class predicted out of fold ({auc})", **router(table)})
    return pd.DataFrame(rows)


def latency(prompts, outcomes, embedder: str, n: int = 200) -> dict[str, float]:
    from router_models.router.signals import Constraints
    from router_models.router.train import train_router

    router = train_router(
        prompts,
        outcomes,
        predictor="stack",
        embedder=embedder,
        cache_dir=Settings().run_dir / "cache" / "embeddings",
    )
    sample = prompts["prompt"].sample(n=min(n + 5, len(prompts)), random_state=1).tolist()
    for p in sample[n:]:  # warm-up prompts apart from the timed ones, whose embeddings it would remember
        router.route(p)
    sample = sample[:n]
    times = []
    for p in sample:
        t0 = time.perf_counter()
        router.route(p, Constraints(max_cost_usd=0.004, latency_slo_s=5.0))
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p99_ms": float(np.percentile(times, 99)),
        "n": len(times),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=1, help="draws of the folds to average the predictors over")
    ap.add_argument("--predictors", default=",".join(BASELINES))
    ap.add_argument("--embedder", default=ROUTER_EMBEDDER)
    ap.add_argument("--skip-cascade", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()

    settings = Settings()
    data_dir = settings.shared_data_dir / "routerbench"
    prompts, outcomes = load_routerbench(data_dir, "train")
    t0 = time.perf_counter()
    emb = embed_prompts(prompts["prompt"].tolist(), args.embedder, settings.run_dir / "cache" / "embeddings")
    print(
        f"{len(prompts)} prompts, {outcomes['model'].nunique()} models; embeddings ({args.embedder}) "
        f"in {time.perf_counter() - t0:.1f} s (cached under runs/cache/)"
    )
    print(f"\n{args.folds}-fold cross-validation, grouped by question, {args.seeds} draw(s) of the folds:")
    table = predictor_table(prompts, outcomes, emb, args.predictors.split(","), args.folds, args.seeds)
    pd.set_option("display.width", 160)
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(
        f"\ntargets: gap recovered >= {TARGET_GAP}, best single model's quality at <= {TARGET_COST_RATIO}x "
        f"its cost, without the task label ({TRUE_TASK} is told the label: a baseline only)"
    )
    print(
        "\nCeiling: the gap recovered by a router that reaches the best single model's quality at a "
        "fraction of its cost and goes no higher:"
    )
    print(ceiling_table(outcomes).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(
        "\nDifficulty: what a router told each prompt's difficulty would recover, and what the prompt tells:"
    )
    print(
        difficulty_table(prompts, outcomes, emb, args.folds).to_string(
            index=False, float_format=lambda v: f"{v:.3f}"
        )
    )
    if not args.skip_cascade:
        replay = replay_data(data_dir, prompts, outcomes)
        print(
            "\nFrugalGPT agreement cascades (replayed on responses_train.csv, every call paid; the best "
            "single model alone: cost ratio 1.0), chain calibrated on the training folds per budget:"
        )
        cascades = cascade_table(replay, prompts, args.folds)
        print(cascades.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(
            "\nAnswer-aware routing (ProbeRouter: pay the probes, then accept their plurality answer or "
            "escalate, per predicted task x agreement), swept over willingness to pay; same folds, metrics:"
        )
        probe_sets = [PROBES_2, PROBES_3, ("mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat")]
        probe = probe_router_table(replay, prompts, emb, outcomes, args.folds, probe_sets)
        print(probe.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if not args.skip_latency:
        lat = latency(prompts, outcomes, args.embedder)
        print(
            f"\nroute() latency in-process, embedding included ({lat['n']} prompts): "
            f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms"
        )


if __name__ == "__main__":
    main()
