"""Each predictor beats the global-mean baseline on a held-out RouterBench fold; state round trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from router_models.router.features import TaskClassifier, embed_prompts, make_features
from router_models.router.predictors import PREDICTORS, get_predictor
from router_models.router.predictors.bayes import BayesTaskPrior
from router_models.router.train import panel, task_labels

LEARNED = ["task_mean", "knn", "logistic", "mf", "bayes", "stack"]


@pytest.fixture(scope="module")
def split(shared_data):
    """120 prompts per task (360 x 11 models), static embeddings (fast); 3/4 train, 1/4 held out."""
    rb = shared_data / "routerbench"
    prompts = pd.read_csv(rb / "prompts_train.csv", dtype={"prompt_id": str})
    outcomes = pd.read_csv(rb / "outcomes_train.csv", dtype={"prompt_id": str})
    prompts = prompts.groupby("task").sample(n=120, random_state=0).reset_index(drop=True)
    aligned, models, y, _ = panel(prompts, outcomes)
    texts = aligned["prompt"].tolist()
    emb = embed_prompts(texts, "static")
    labels = task_labels(aligned)
    test = np.random.default_rng(0).permutation(len(texts)) % 4 == 0
    tr, te = np.where(~test)[0], np.where(test)[0]
    clf = TaskClassifier.fit(emb[tr], [labels[i] for i in tr])
    x_tr, _ = make_features([texts[i] for i in tr], emb[tr], clf)
    x_te, _ = make_features([texts[i] for i in te], emb[te], clf)
    tasks_tr = np.array([clf.classes.index(labels[i]) for i in tr])
    return x_tr, y[tr], tasks_tr, x_te, y[te], models


def brier(mean: np.ndarray, y: np.ndarray) -> float:
    mask = ~np.isnan(y)
    return float(((mean - np.nan_to_num(y)) ** 2)[mask].mean())


def test_registry_names_every_predictor():
    assert {"global_mean", *LEARNED} <= set(PREDICTORS)
    with pytest.raises(ValueError, match="unknown predictor"):
        get_predictor("nope")


def test_an_unsure_prior_counts_for_less_against_the_neighbours(split):
    """The prior's strength was `kappa` pseudo-prompts whatever its sd: a rate from a handful of rows held
    the neighbours' evidence back as much as one measured on thousands."""
    x_tr, y_tr, tasks_tr, x_te, _, models = split

    def fitted(sd: float) -> BayesTaskPrior:
        table = pd.DataFrame([{"task": t, "model": m, "quality_mean": 0.5, "quality_sd": sd}
                              for t in x_tr.task_names for m in models])  # fmt: skip
        return BayesTaskPrior(prior_table=table, update_prior=False).fit(x_tr, y_tr, models, tasks_tr)

    sure, unsure = fitted(0.001).predict(x_te).mean, fitted(0.25).predict(x_te).mean
    neighbours = BayesTaskPrior(kappa=0.5).fit(x_tr, y_tr, models, tasks_tr).predict(x_te).mean
    # the unsure prior leaves the predictions nearer what the neighbours alone say, never farther
    assert np.abs(unsure - neighbours).mean() < np.abs(sure - neighbours).mean() - 0.02
    assert np.abs(sure - 0.5).mean() < np.abs(unsure - 0.5).mean()


def test_folds_keep_a_question_asked_twice_together(shared_data):
    """Folds were drawn per row: RouterBench asks 7 questions twice (one copy with twice the few-shot
    context), and one copy was trained on while the other was tested."""
    from router_models.router.crossval import fold_ids, question_groups

    prompts = pd.read_csv(shared_data / "routerbench" / "prompts_train.csv", dtype=str)
    twice = prompts[prompts["source_id"].duplicated(keep=False)]
    assert twice["source_id"].nunique() == 7 and twice["prompt"].nunique() == 14  # no text alike
    for seed in range(3):
        fold = pd.Series(fold_ids(len(prompts), 5, seed, groups=question_groups(prompts)))
        assert (fold[twice.index].groupby(twice["source_id"]).nunique() == 1).all()
    # without a source id, the text groups: with no question repeated, the folds are the ungrouped ones
    texts = pd.DataFrame({"prompt": [f"q{i}" for i in range(100)]})
    assert (fold_ids(100, 5) == fold_ids(100, 5, groups=question_groups(texts))).all()


def test_a_held_out_prompts_copy_outside_the_held_out_set_is_not_trained_on():
    """With `held_out`, a prompt's twin outside the held-out prompts was trained on in every fold."""
    from router_models.router.crossval import cross_val_predictions
    from router_models.router.features import embed_prompts

    prompts = pd.DataFrame({"prompt_id": ["a", "b", "c", "d", "e", "f"], "task": "qa",
                            "prompt": ["What is 2+2?", "What is 2+2?", "Name a river.", "Name a colour.",
                                       "Name a city.", "Name a tree."]})  # fmt: skip
    # the twin b says m1 answers; a, its held-out copy, says m0: trained on b, a kNN would copy it
    rows = [("a", "m0", 1.0), ("a", "m1", 0.0), ("b", "m0", 0.0), ("b", "m1", 1.0)]
    rows += [(p, m, 0.5) for p in "cdef" for m in ("m0", "m1")]
    outcomes = pd.DataFrame(rows, columns=["prompt_id", "model", "score"]).assign(cost_usd=0.001)
    emb = embed_prompts(prompts["prompt"].tolist(), "static")
    pred = cross_val_predictions("knn", prompts, outcomes, emb, folds=2, held_out={"a", "c"},
                                 params={"k": 1})  # fmt: skip
    a = pred[pred["prompt_id"] == "a"].set_index("model")["predicted_score"]
    assert a["m1"] <= a["m0"] + 0.25, a  # not b's outcome copied


@pytest.mark.parametrize("name", LEARNED)
def test_predictor_beats_global_mean_on_held_out_fold(split, name):
    x_tr, y_tr, tasks_tr, x_te, y_te, models = split
    base = get_predictor("global_mean").fit(x_tr, y_tr, models, tasks_tr).predict(x_te)
    pred = get_predictor(name).fit(x_tr, y_tr, models, tasks_tr).predict(x_te)
    assert pred.mean.shape == pred.sd.shape == (len(x_te), len(models))
    assert np.all((pred.mean >= 0) & (pred.mean <= 1)) and np.all(pred.sd >= 0)
    assert brier(pred.mean, y_te) < brier(base.mean, y_te) - 0.003


@pytest.mark.parametrize("name", ["global_mean", *LEARNED])
def test_state_round_trip_predicts_the_same(split, name):
    x_tr, y_tr, tasks_tr, x_te, _, models = split
    fitted = get_predictor(name).fit(x_tr, y_tr, models, tasks_tr)
    params, arrays = fitted.get_state()
    again = PREDICTORS[name].from_state(params, arrays)
    np.testing.assert_allclose(again.predict(x_te).mean, fitted.predict(x_te).mean, rtol=1e-5, atol=1e-6)


def test_bayes_prior_table_pulls_predictions_toward_it(split):
    x_tr, y_tr, tasks_tr, x_te, _, models = split
    rows = [
        {"task": t, "model": m, "quality_mean": 0.02 if m == models[0] else 0.5, "quality_sd": 0.01}
        for t in x_tr.task_names
        for m in models
    ]
    table = pd.DataFrame(rows)
    with_prior = BayesTaskPrior(prior_table=table).fit(x_tr, y_tr, models, tasks_tr)
    without = BayesTaskPrior().fit(x_tr, y_tr, models, tasks_tr)
    assert with_prior.used_prior_table_ and not without.used_prior_table_
    assert (
        with_prior.task_mean_[:, 0] < without.task_mean_[:, 0] - 0.1
    ).all()  # a confident prior moves the rate
    assert with_prior.predict(x_te).mean[:, 0].mean() < without.predict(x_te).mean[:, 0].mean() - 0.03
    with pytest.raises(ValueError, match="lacks columns"):
        BayesTaskPrior(prior_table=table.drop(columns="quality_sd")).fit(x_tr, y_tr, models, tasks_tr)


def test_a_posterior_prior_is_taken_as_it_is_and_reaches_the_stacks_bayes_member(split):
    """The utility model's registry rows already saw the outcomes: `update_prior=False` must not count them
    again, and the stacked predictor hands the table to its `bayes` member."""
    x_tr, y_tr, tasks_tr, x_te, _, models = split
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        [{"task": t, "model": m, "quality_mean": rng.uniform(0.1, 0.9), "quality_sd": 0.05}
         for t in x_tr.task_names for m in models]
    )  # fmt: skip
    expected = table.pivot(index="task", columns="model", values="quality_mean").loc[x_tr.task_names, models]
    as_is = BayesTaskPrior(prior_table=table, update_prior=False).fit(x_tr, y_tr, models, tasks_tr)
    np.testing.assert_allclose(as_is.task_mean_, expected.to_numpy())
    updated = BayesTaskPrior(prior_table=table).fit(x_tr, y_tr, models, tasks_tr)
    assert np.abs(updated.task_mean_ - expected.to_numpy()).max() > 0.1  # the outcomes moved it
    member = {"bayes": {"prior_table": table, "update_prior": False}}
    stack = get_predictor("stack", member_options=member).fit(x_tr, y_tr, models, tasks_tr)
    [bayes] = [p for p in stack.fitted_ if isinstance(p, BayesTaskPrior)]
    np.testing.assert_allclose(bayes.task_mean_, expected.to_numpy())
    plain = get_predictor("stack").fit(x_tr, y_tr, models, tasks_tr)
    assert not np.allclose(stack.predict(x_te).mean, plain.predict(x_te).mean)


@pytest.mark.parametrize("name", LEARNED)
def test_one_prompt_at_a_time_predicts_what_the_batch_does(split, name):
    """route() predicts one prompt, evaluation thousands: some predictors take a different path for each."""
    x_tr, y_tr, tasks_tr, x_te, _, models = split
    fitted = get_predictor(name).fit(x_tr, y_tr, models, tasks_tr)
    batch = fitted.predict(x_te)
    for i in range(0, len(x_te), 7):
        one = fitted.predict(x_te.take(np.array([i])))
        np.testing.assert_allclose(one.mean[0], batch.mean[i], rtol=1e-5, atol=1e-7)  # float32 kNN
        np.testing.assert_allclose(one.sd[0], batch.sd[i], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["logistic", "mf", "stack"])
def test_graded_scores_are_learned_as_expected_scores_not_rounded(name):
    """A graded task (extraction, RAG answers: scores in (0, 1)) where model A scores 0.45 and B 0.55: the
    logistic and MF predictors learned P(score >= 0.5) and said 0.005 and 0.995, and the stack averaged
    that with the Bayesian predictor's expected score."""
    from router_models.router.predictors.base import Features, get_predictor

    rng = np.random.default_rng(0)
    n = 200
    emb = rng.normal(size=(n, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    x = Features(emb, np.ones((n, 1)), np.full(n, 5.5), ["extraction"])
    y = np.column_stack([np.full(n, 0.45), rng.uniform(0.35, 0.75, n)])  # B: 0.55 on average, varying
    kw = {"n_seeds": 1, "epochs": 40} if name == "mf" else {}
    p = get_predictor(name, **kw).fit(x, y, ["A", "B"], np.zeros(n, int)).predict(x.take(np.arange(20)))
    assert np.allclose(p.mean.mean(0), [0.45, 0.55], atol=0.04), p.mean.mean(0)


def test_the_budget_policys_out_of_fold_predictions_hold_out_questions_and_the_task_classifier(monkeypatch):
    """The budget policy is calibrated on out-of-fold predictions whose folds were drawn per row: a
    question asked twice had one copy trained on while the other was predicted; and the held-out rows'
    task probabilities came from the classifier fitted on every row, them included. `train_router` now
    takes them from `cross_val_predictions`, 3 folds, as here."""
    from types import SimpleNamespace

    from router_models.router import crossval
    from router_models.router.features import embed_prompts

    texts = [f"Question {i // 2} about rivers" for i in range(40)]  # 20 questions, each asked twice
    labels = [f"row{i}" for i in range(40)]  # a task label per row, so the tasks a fold sees name its rows
    prompts = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(40)], "prompt": texts, "task": labels})
    outcomes = pd.DataFrame(
        [
            {"prompt_id": f"p{i}", "model": m, "score": 0.0, "cost_usd": 0.001}
            for i in range(40)
            for m in ("m0", "m1")
        ]
    )
    trained_on: list[set] = []
    predicted_with: list[set] = []

    class Recorder:
        def fit(self, x, y, models, tasks):
            trained_on.append({int(x.task_names[t][3:]) for t in tasks})
            return self

        def predict(self, x):
            predicted_with.append(set(x.task_names))
            return SimpleNamespace(mean=np.zeros((len(x), 2)), sd=np.zeros((len(x), 2)))

    monkeypatch.setattr(crossval, "get_predictor", lambda name, **kw: Recorder())
    pred = crossval.cross_val_predictions("any", prompts, outcomes, embed_prompts(texts, "static"), folds=3)
    assert len(trained_on) == 3 and len(pred) == 80
    # the held-out rows' task probabilities come from a classifier fitted on the training rows only
    for rows, names in zip(trained_on, predicted_with, strict=True):
        assert names == {f"row{i}" for i in rows}
    assert all((2 * q in rows) == (2 * q + 1 in rows) for rows in trained_on for q in range(20))


def test_the_embedding_cache_is_written_through_a_temporary_name_of_its_own(tmp_path):
    """Every writer of one cache entry used one temporary name (`<entry>.tmp.npy`): two trainings at once
    crashed in the rename (FileNotFoundError, 13 of 15 trials in a review). A folder left at that name
    now stands in no writer's way."""
    from router_models.router.features import embed_prompts

    texts = ["Which gas do plants absorb?", "Write a function that sorts a list."]
    first = embed_prompts(texts, "static", tmp_path)
    (entry,) = tmp_path.iterdir()
    entry.unlink()
    entry.with_suffix(".tmp.npy").mkdir()
    assert np.array_equal(embed_prompts(texts, "static", tmp_path), first) and entry.exists()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([entry.name, entry.with_suffix(".tmp.npy").name])  # no temporary file left behind
