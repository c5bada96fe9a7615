"""The micro-bench: a stratified prompt set, daily-partitioned benchmark results with a nightly schedule,
and the RouterBench outcomes imported into the same outcome table."""

import dagster as dg

from assets.resources import SettingsResource
from pipelines.bench import nightly
from pipelines.bench.outcomes import routerbench_outcome_table, write_table
from pipelines.bench.prompts import build_prompt_set, counts_per_task, prompt_set_path
from pipelines.bench.scorers import needs_judge
from pipelines.memo import fingerprint

daily = dg.DailyPartitionsDefinition(start_date="2026-11-01", end_offset=1)


@dg.asset(group_name="bench", kinds={"parquet"})
def prompt_set(settings: SettingsResource) -> dg.MaterializeResult:
    """Stratified by task with a fixed seed: RouterBench ARC/Winogrande prompts (shared with the public
    panel), the demo code, extraction and RAG prompts, and, when a judge is set, the reference-free prompts:
    the service's prompt log and RAG questions derived from SciFact."""
    s = settings.get()
    df = build_prompt_set(s, per_task=s.bench_per_task)
    path = write_table(df, prompt_set_path(s))
    free = sum(needs_judge(r) for r in df.to_dict("records"))  # rows only the judge can score
    note = f"{free} sampled" if s.judge_model else "not sampled: set SM_JUDGE_MODEL to rate their answers"
    return dg.MaterializeResult(
        metadata={"path": str(path), "rows": len(df), **counts_per_task(df), "reference_free": note},
        data_version=dg.DataVersion(fingerprint(df)[:16]),  # the run's id (the default) changed every run
    )


@dg.asset(group_name="bench", kinds={"parquet"})
def routerbench_outcomes(settings: SettingsResource) -> dg.MaterializeResult:
    """The 11 public models' per-prompt outcomes and costs, in the outcome-table shape."""
    s = settings.get()
    df = routerbench_outcome_table(s.shared_data_dir / "routerbench")
    path = write_table(df, s.run_dir / "bench" / "routerbench_outcomes.parquet")
    acc = df.groupby("model")["score"].mean().round(4).to_dict()
    return dg.MaterializeResult(
        data_version=dg.DataVersion(fingerprint(df)[:16]),
        metadata={
            "path": str(path),
            "rows": len(df),
            "unscored_rows_left_out": df.attrs["unscored_rows"],
            **{f"accuracy/{k}": v for k, v in acc.items()},
        },
    )


@dg.asset(
    group_name="bench",
    # model_panel's blocking check gates the bench: with a local model down, every one of its cells would be
    # a failed call (no evidence, an error-rate check that fails); the partition runs once the panel answers
    deps=[prompt_set, "model_panel"],
    partitions_def=daily,
    kinds={"litellm"},
    check_specs=[
        dg.AssetCheckSpec("error_rate_below_0_5pct", asset="benchmark_results"),
        dg.AssetCheckSpec("partition_not_empty", asset="benchmark_results"),
        dg.AssetCheckSpec("scores_in_unit_interval", asset="benchmark_results"),
    ],
)
def benchmark_results(context: dg.AssetExecutionContext, settings: SettingsResource):
    """The prompt set x the available model panel through the gateway: answers, latency, tokens, cost and
    scores. Resumable: a re-run of a crashed partition runs only the missing cells. The stored answers of
    the other partitions the refit reads are scored again by today's scorers (no model called)."""
    from pipelines.bench.outcomes import read_table

    s = settings.get()
    prompts = read_table(prompt_set_path(s))
    df = nightly.run_benchmark_partition(s, prompts, context.partition_key)
    rescored = nightly.rescore_recent(s, prompts, context.partition_key)
    md = nightly.accuracy_metadata(df)
    md["rescored_earlier_partitions"] = dg.MetadataValue.json(rescored)  # scores changed, per partition
    md["accuracy_table"] = dg.MetadataValue.md(md["accuracy_table"])
    yield dg.MaterializeResult(metadata=md, data_version=dg.DataVersion(fingerprint(df)[:16]))
    for name, check in (
        ("error_rate_below_0_5pct", nightly.check_error_rate(df)),
        ("partition_not_empty", nightly.check_not_empty(df)),
        ("scores_in_unit_interval", nightly.check_scores_in_range(df)),
    ):
        yield dg.AssetCheckResult(check_name=name, passed=check.passed, description=check.description,
                                  metadata=check.metadata)  # fmt: skip


# the panel check first (unpartitioned, as the prompt set: one materialization serves each night's run)
bench_job = dg.define_asset_job(
    "nightly_bench",
    selection=dg.AssetSelection.assets("model_panel", prompt_set, benchmark_results),
    partitions_def=daily,
)
nightly_bench_schedule = dg.build_schedule_from_partitioned_job(bench_job, hour_of_day=2)
