"""Prefect flows: the whole pipeline, and one flow per stage for running a stage alone.

Each stage's record is also written to ``<work_dir>/records/<stage>.json`` so the next stage can
be re-run alone: a stage flow given no record reads the previous stage's from there, as ``sslpipe
evaluate`` does, so every flow also runs from a Prefect deployment with no parameters.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

from prefect import Task, flow, runtime
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from sslcore.config import PipelineConfig, check_force
from sslcore.preflight import preflight
from tasks.caching import outputs_exist, stage_options
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.pretrain import pretrain
from tasks.promote import champion_metrics
from tasks.records import EvaluateRecord, IngestRecord, PretrainRecord, RegisterRecord, load_record
from tasks.register import register
from tasks.runtime import mlflow_ui_command, quiet_telemetry, records_dir

STAGE_TASKS: dict[str, Task[..., Any]] = {
    "ingest": ingest,
    "pretrain": pretrain,
    "evaluate": evaluate,
    "register": register,
}


class RunSummary(BaseModel):
    """What a finished pipeline run produced and where to look."""

    model_config = ConfigDict(frozen=True)

    flow_run_id: str
    flow_run_url: str | None
    stage_seconds: dict[str, float]
    samples: dict[str, int]
    rejected: int = 0
    duplicates: int = 0
    metrics: dict[str, float]
    headline: str
    baseline: str | None
    images_per_s: float
    steps: int = 0
    registered: RegisterRecord
    mlflow_ui: str
    champion: str | None = Field(None, description="The champion's version when the run ended, if any.")
    champion_headline: float | None = None


def _local_ray(config: PipelineConfig) -> bool:
    return not (config.ray.address or os.environ.get("RAY_ADDRESS"))


ForceStage = Literal["ingest", "pretrain", "evaluate"]
FORCE_ARGUMENT = {"ingest": "verify", "pretrain": "fresh"}  # what a forced run does beyond skipping the cache


def _run_stage(stage: str, config: PipelineConfig, force: Sequence[str], *args: Any) -> Any:
    """Run one stage task with this run's options: a cached result when its inputs are unchanged
    (unless forced), and the stage again if a cached result points at outputs that are gone."""
    fn = STAGE_TASKS[stage]
    forced = stage in force
    extra = {FORCE_ARGUMENT[stage]: True} if forced and stage in FORCE_ARGUMENT else {}
    result = fn.with_options(**stage_options(config, stage, force))(config, *args, **extra)
    if not forced and not outputs_exist(result, config):
        print(f"the cached {stage} result points at outputs that no longer exist: running {stage} again")
        result = fn.with_options(**stage_options(config, stage, [stage]))(config, *args)
    return result


@flow(name="sslpipe", log_prints=True)
def pipeline(
    config: PipelineConfig = PipelineConfig(),  # noqa: B008 - frozen default
    force: list[ForceStage] | None = None,
) -> RunSummary:
    """Ingest -> pretrain -> evaluate -> register, on the embedded default unless configured.

    A stage whose inputs are unchanged since an earlier run returns that run's result from the
    cache; ``force`` runs the named stages again (``pretrain``: a new training run).
    """
    quiet_telemetry()
    force = list(check_force(force or []))
    preflight(config, local_ray=_local_ray(config))
    out = records_dir(config)
    ingested = _run_stage("ingest", config, force)
    ingested.save(out / "ingest.json")
    trained = _with_ingest(_run_stage("pretrain", config, force, ingested), ingested)
    trained.save(out / "pretrain.json")
    evaluated = _run_stage("evaluate", config, force, trained)
    evaluated.save(out / "evaluate.json")
    registered = _run_stage("register", config, force, evaluated)
    registered.save(out / "register.json")
    summary = RunSummary(
        flow_run_id=str(runtime.flow_run.id),
        flow_run_url=_ui_url(),
        stage_seconds={
            "ingest": ingested.duration_s,
            "pretrain": trained.duration_s,
            "evaluate": evaluated.duration_s,
            "register": registered.duration_s,
        },
        samples=ingested.samples,
        rejected=ingested.rejected,
        duplicates=ingested.duplicates,
        metrics=evaluated.metrics,
        headline=evaluated.headline,
        baseline=evaluated.baseline,
        images_per_s=trained.images_per_s,
        steps=trained.steps,
        registered=registered,
        mlflow_ui=mlflow_ui_command(config),
        **_champion(config, evaluated.headline),
    )
    create_markdown_artifact(key="run-summary", markdown=summary_markdown(summary), description="sslpipe run")
    return summary


def _with_ingest(trained: PretrainRecord, ingested: IngestRecord) -> PretrainRecord:
    """A cached training run of these same shards carries the ingest record of its own run: hand on
    this run's, whose evaluation sets (``eval.datasets``) may have changed since."""
    if trained.ingest != ingested and trained.ingest.fingerprint == ingested.fingerprint:
        return trained.model_copy(update={"ingest": ingested})
    return trained


def _ui_url() -> str | None:
    """The run's page in the Prefect UI; none for the ephemeral server (it has no UI)."""
    url = runtime.flow_run.ui_url
    return url if url and url.startswith("http") else None


def _champion(config: PipelineConfig, headline: str) -> dict[str, Any]:
    """The champion to read this run against (the promotion flow decides; this only informs)."""
    try:
        found = champion_metrics(config)
    except Exception as exc:  # the summary must not fail a run whose stages all succeeded
        print(f"could not read the champion for the summary: {exc}")
        return {}
    if found is None:
        return {}
    version, metrics = found
    return {"champion": version, "champion_headline": metrics.get(headline)}


def results_table(metrics: dict[str, float]) -> str:
    """Markdown: one row per dataset and protocol, one column per encoder (ssl next to its baselines)."""
    cells: dict[tuple[str, str], dict[str, float]] = {}
    encoders: list[str] = []
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) != 3:
            continue
        dataset, encoder, protocol = parts
        cells.setdefault((dataset, protocol), {})[encoder] = value
        if encoder not in encoders:
            encoders.append(encoder)
    encoders.sort(key=lambda e: (e != "ssl", e))
    head = "| dataset | metric | " + " | ".join(encoders) + " |\n|---|---|" + "---|" * len(encoders) + "\n"
    rows = "".join(
        f"| {d} | {p} | " + " | ".join(_cell(row[e], p) if e in row else "" for e in encoders) + " |\n"
        for (d, p), row in sorted(cells.items())
    )
    return head + rows


def _cell(value: float, metric: str) -> str:
    """Accuracies to 4 decimals; p-values (``*_p``) to 2 significant digits, so 3e-07 is not 0.0000."""
    return f"{value:.2g}" if metric.endswith("_p") else f"{value:.4f}"


def summary_markdown(s: RunSummary) -> str:
    rows = "".join(f"| {k} | {v:.1f} s |\n" for k, v in s.stage_seconds.items())
    m = s.metrics
    base = f" vs random init {m[s.baseline]:.4f}" if s.baseline else ""
    if s.champion is None:
        decision = (
            "There is no champion yet: run the promotion (`sslpipe promote`, deployment `sslpipe-promote/promote`)."
        )
    else:
        theirs = f"{s.champion_headline:.4f}" if s.champion_headline is not None else "not logged"
        decision = (
            f"Champion: version {s.champion}, `{s.headline}` {theirs}. The promotion flow "
            f"(`sslpipe promote`) decides whether this candidate replaces it."
        )
    link = f"[Prefect flow run]({s.flow_run_url}) · " if s.flow_run_url else ""
    r = s.registered
    if r.tracking_uri.startswith(("http://", "https://")):  # a tracking server has a UI to link to
        ui = r.tracking_uri.rstrip("/")
        link += (
            f"[MLflow run]({ui}/#/experiments/{r.experiment_id}/runs/{r.run_id}) · "
            f"[model version]({ui}/#/models/{r.model_name}/versions/{r.version}) · "
        )
    return (
        "## sslpipe run\n\n"
        f"**Data**: {sum(s.samples.values())} images ({', '.join(f'{k} {v}' for k, v in s.samples.items())}), "
        f"{s.rejected} rejected, {s.duplicates} duplicates dropped.\n\n"
        f"**Training**: {s.steps} steps at {s.images_per_s:.0f} images/s.\n\n"
        "| stage | time |\n|---|---|\n" + rows + "\n"
        f"`{s.headline}` **{m[s.headline]:.4f}**{base}.\n\n" + results_table(m) + "\n"
        f"**Registered** `{s.registered.model_uri}` = version {s.registered.version}, "
        f"MLflow run `{s.registered.run_id}`{' (already registered by an earlier run)' if s.registered.reused else ''}."
        f"\n\n**Promotion**: {decision}\n\n{link}MLflow: `{s.mlflow_ui}`\n"
    )


@flow(name="sslpipe-ingest", log_prints=True)
def ingest_flow(config: PipelineConfig = PipelineConfig(), force: bool = False) -> IngestRecord:  # noqa: B008
    """Validate the source and write (or reuse) the shards and their manifest."""
    quiet_telemetry()
    preflight(config, local_ray=False)
    record = _run_stage("ingest", config, ["ingest"] if force else [])
    record.save(records_dir(config) / "ingest.json")
    return record


@flow(name="sslpipe-pretrain", log_prints=True)
def pretrain_flow(
    config: PipelineConfig = PipelineConfig(),  # noqa: B008
    ingested: IngestRecord | None = None,
    force: bool = False,
) -> PretrainRecord:
    """Pretrain on the ingested shards; without a record, on ``<work_dir>/records/ingest.json``."""
    quiet_telemetry()
    preflight(config, local_ray=_local_ray(config), check_data=False)
    if ingested is None:
        ingested = load_record(IngestRecord, records_dir(config) / "ingest.json")
    record = _with_ingest(_run_stage("pretrain", config, ["pretrain"] if force else [], ingested), ingested)
    record.save(records_dir(config) / "pretrain.json")
    return record


@flow(name="sslpipe-evaluate", log_prints=True)
def evaluate_flow(
    config: PipelineConfig = PipelineConfig(),  # noqa: B008
    trained: PretrainRecord | None = None,
    force: bool = False,
) -> EvaluateRecord:
    """Evaluate a pretrained backbone; without a record, the one in ``<work_dir>/records/pretrain.json``."""
    quiet_telemetry()
    if trained is None:
        trained = load_record(PretrainRecord, records_dir(config) / "pretrain.json")
    record = _run_stage("evaluate", config, ["evaluate"] if force else [], trained)
    record.save(records_dir(config) / "evaluate.json")
    return record


@flow(name="sslpipe-register", log_prints=True)
def register_flow(
    config: PipelineConfig = PipelineConfig(),  # noqa: B008
    evaluated: EvaluateRecord | None = None,
) -> RegisterRecord:
    """Register the evaluated encoder; without a record, the one in ``<work_dir>/records/evaluate.json``."""
    quiet_telemetry()
    if evaluated is None:
        evaluated = load_record(EvaluateRecord, records_dir(config) / "evaluate.json")
    record = _run_stage("register", config, [], evaluated)
    record.save(records_dir(config) / "register.json")
    return record
