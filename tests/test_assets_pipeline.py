"""Assets called through Dagster's `materialize` on real embedded engines (ladder step 3)."""

import dagster as dg

from assets import defs
from assets.rag import corpus_chunks, dense_index, keyword_index, knowledge_graph
from assets.resources import GatewayResource, SettingsResource
from assets.router import MICRO_CHECK
from assets.utility import leaderboard_priors


def _resources(**overrides: str) -> dict:
    settings = SettingsResource(overrides=overrides)
    return {"settings": settings, "gateway": GatewayResource(settings=settings)}


def test_every_asset_group_is_defined_with_its_checks():
    graph = defs.resolve_asset_graph()
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert {"models", "corpus", "indexes", "bench", "utility", "router"} <= groups
    names = {s.name for s in defs.schedules}
    assert {"nightly_bench_schedule", "nightly_refit_schedule", "weekly_reindex_schedule"} <= names
    assert graph.get(dg.AssetKey("benchmark_results")).partitions_def is not None
    checks = {k.name for k in graph.asset_check_keys}
    assert {"r_hat", "ess_bulk", "divergences", "calibration", "beats_best_single_model"} <= checks
    assert MICRO_CHECK in checks
    assert {"error_rate_below_0_5pct", "partition_not_empty", "scores_in_unit_interval"} <= checks


def test_leaderboard_priors_asset_gives_every_local_model_a_row(tmp_path, shared_data):
    res = dg.materialize([leaderboard_priors], resources=_resources(run_dir=str(tmp_path)))
    assert res.success
    md = res.asset_materializations_for_node("leaderboard_priors")[0].metadata
    assert "smollm2-135m" in md["table"].value and "gemma3-270m" in md["table"].value
    assert 0 < md["with_figure"].value < md["models"].value


def test_rag_assets_build_every_index_and_rematerialize_without_work(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Tantivy\n\nTantivy is a full-text search engine library written in Rust.")
    (docs / "b.md").write_text("# Qdrant\n\nQdrant stores dense vectors. Contact ops@example.com for access.")
    (docs / "c.txt").write_text("Kuzu and Ladybug are embedded graph databases that speak Cypher.")
    (docs / "junk.bin").write_bytes(bytes(range(256)) * 8)
    res = _resources(run_dir=str(tmp_path / "run"), corpus_dir=str(docs))
    assets = [corpus_chunks, keyword_index, dense_index, knowledge_graph]
    first = dg.materialize(assets, resources=res)
    assert first.success
    md = first.asset_materializations_for_node("corpus_chunks")[0].metadata
    assert md["docs_total"].value == 3 and md["chunks_total"].value >= 3
    assert "junk.bin" in md["skipped"].value
    for name in ("keyword_index", "dense_index", "knowledge_graph"):
        assert first.asset_materializations_for_node(name)[0].metadata["total"].value >= 3
    second = dg.materialize(assets, resources=res)
    md2 = second.asset_materializations_for_node("corpus_chunks")[0].metadata
    assert md2["files_processed"].value == 0 and md2["chunks_written"].value == 0
    assert second.asset_materializations_for_node("dense_index")[0].metadata["added"].value == 0


def test_retrieval_evaluation_scores_a_scifact_sample_and_its_floor_check_can_fail(tmp_path, shared_data):
    from assets.rag import retrieval_evaluation

    def run(floor: str, **more: str):
        res = _resources(run_dir=str(tmp_path), retrieval_eval_queries="6", retrieval_eval_distractors="20",
                         retrieval_ndcg_floor=floor, **more)  # fmt: skip
        return dg.materialize([retrieval_evaluation], resources=res, raise_on_error=False)

    def reused(result) -> bool:
        return result.asset_materializations_for_node("retrieval_evaluation")[0].metadata["reused"].value

    first = run("0.2")
    assert first.success
    md = first.asset_materializations_for_node("retrieval_evaluation")[0].metadata
    assert 0 < md["bm25 ndcg@10"].value <= 1 and 0 < md["hybrid ndcg@10"].value <= 1
    (check,) = first.get_asset_check_evaluations()
    assert check.passed and check.metadata["floor"].value == 0.2
    sample = tmp_path / "retrieval_evaluation" / "sample"
    qrels = (sample / "qrels.tsv").read_text().splitlines()[1:]
    corpus = (sample / "corpus.jsonl").read_text()
    assert len({line.split("\t")[0] for line in qrels}) == 6
    assert all(f'"_id": "{line.split(chr(9))[1]}"' in corpus for line in qrels)  # every relevant doc kept
    again = run("1.01")  # same sample, indexes and code, an impossible floor: the figures are reused
    assert again.asset_materializations_for_node("retrieval_evaluation")[0].metadata["reused"].value is True
    (failing,) = again.get_asset_check_evaluations()
    assert not failing.passed
    assert (tmp_path / "retrieval_evaluation" / "retrieval.png").stat().st_size > 0
    assert reused(run("0.2", lambda_cost="5", otel_sample_ratio="0.5"))  # settings retrieval does not read
    # labels edited in place (every relevant document wrong): new figures, not the old ones
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in ("corpus.jsonl", "queries_train.jsonl", "qrels_train.tsv"):
        (labels / name).symlink_to(shared_data / "scifact" / name)
    assert run("0.2", retrieval_eval_dir=str(labels)).get_asset_check_evaluations()[0].passed
    (labels / "qrels_train.tsv").unlink()
    rows = (shared_data / "scifact" / "qrels_train.tsv").read_text().splitlines()
    (labels / "qrels_train.tsv").write_text(
        "\n".join([rows[0], *(f"{r.split()[0]}\tnot-a-doc\t1" for r in rows[1:])])
    )
    wrong = run("0.2", retrieval_eval_dir=str(labels))
    assert not reused(wrong) and not wrong.get_asset_check_evaluations()[0].passed
