"""``sslpipe``: run the pipeline or one stage, and embed images with a registered encoder.

Heavy imports (Prefect, Ray, MLflow, torch) happen inside the commands, so ``--help`` and config
errors answer at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from flows.deployments import NIGHTLY_CRON

app = typer.Typer(
    help="Turn a folder or bucket of unlabeled images into a registered, evaluated vision backbone.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (sections as in `sslpipe config`).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one key, e.g. --set train.epochs=5 (repeatable)."),
]
FromOpt = Annotated[
    Path | None,
    typer.Option("--from", help="The previous stage's record (JSON); default <work_dir>/records/<stage>.json."),
]


def _fail(message: str, code: int = 2) -> NoReturn:
    """One red line and exit ``code``: 2 for what the user must fix, 1 for a failure that outlasted retries."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def _user_errors() -> tuple[type[BaseException], ...]:
    from tasks.errors import USER_ERRORS

    return (*USER_ERRORS, FileNotFoundError)


def _load(config: Path | None, overrides: list[str] | None) -> Any:
    from sslcore.config import ConfigError, load_config

    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        _fail(str(exc))


def _prepare(config: Path | None, overrides: list[str] | None, *, check_data: bool, ray: bool) -> Any:
    """Parse config and run the pre-flight checks: everything that can fail fast, fails here."""
    from tasks.runtime import quiet_telemetry

    quiet_telemetry()
    cfg = _load(config, overrides)
    from sslcore.preflight import preflight

    try:
        import os

        preflight(
            cfg,
            local_ray=ray and not (cfg.ray.address or os.environ.get("RAY_ADDRESS")),
            check_data=check_data,
        )
    except _user_errors() as exc:
        _fail(str(exc))
    return cfg


def _outlasting_errors() -> tuple[type[BaseException], ...]:
    """Transient failures that outlasted the stage's retries; their messages already say what to do."""
    from sslcore.storage import StorageError
    from tasks.ray_train import TrainingRunFailed
    from tasks.runtime import RegistryUnavailable

    return (StorageError, TrainingRunFailed, RegistryUnavailable)


def _run_flow(fn: Any, *args: Any) -> Any:
    from sslcore.health import TrainingCollapsed

    try:
        return fn(*args)
    except _user_errors() as exc:
        _fail(str(exc))
    except TrainingCollapsed as exc:
        _fail(str(exc), code=1)
    except _outlasting_errors() as exc:
        _fail(f"{exc} (after the stage's retries)", code=1)


ForceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--force",
        "-f",
        help="Run this stage again even if its inputs are unchanged (ingest: verify every shard; "
        "pretrain: a new training run; evaluate). Repeatable.",
    ),
]
ForceFlag = Annotated[bool, typer.Option("--force", "-f", help="Run the stage even if its result is cached.")]


@app.command()
def run(config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = None) -> None:
    """Run the whole pipeline: ingest, pretrain, evaluate, register (unchanged stages come from the cache)."""
    from sslcore.config import ConfigError, check_force

    try:
        stages = list(check_force(force or []))
    except ConfigError as exc:
        _fail(str(exc))
    cfg = _prepare(config, set_, check_data=True, ray=True)
    from flows.pipeline import pipeline

    summary = _run_flow(pipeline, cfg, stages)
    _print_summary(summary)


@app.command()
def ingest(config: ConfigOpt = None, set_: SetOpt = None, force: ForceFlag = False) -> None:
    """Validate the source and write webdataset shards plus a manifest."""
    cfg = _prepare(config, set_, check_data=True, ray=False)
    from flows.pipeline import ingest_flow

    record = _run_flow(ingest_flow, cfg, force)
    typer.echo(f"shards: {record.shard_folder}  samples: {record.samples}  rejected: {record.rejected}")


@app.command()
def pretrain(config: ConfigOpt = None, set_: SetOpt = None, from_: FromOpt = None, force: ForceFlag = False) -> None:
    """Pretrain on ingested shards with Ray Train (resumes the same run if it exists)."""
    cfg = _prepare(config, set_, check_data=False, ray=True)
    from flows.pipeline import pretrain_flow
    from tasks.records import IngestRecord, load_record
    from tasks.runtime import records_dir

    record = _run_flow(load_record, IngestRecord, from_ or records_dir(cfg) / "ingest.json")
    out = _run_flow(pretrain_flow, cfg, record, force)
    typer.echo(f"checkpoint: {out.checkpoint_path}  epochs: {out.epochs}  final loss: {out.final_loss:.4f}")


@app.command()
def evaluate(config: ConfigOpt = None, set_: SetOpt = None, from_: FromOpt = None, force: ForceFlag = False) -> None:
    """Evaluate a pretrained backbone (kNN) next to its random-init baseline."""
    cfg = _prepare(config, set_, check_data=False, ray=False)
    from flows.pipeline import evaluate_flow
    from tasks.records import PretrainRecord, load_record
    from tasks.runtime import records_dir

    record = _run_flow(load_record, PretrainRecord, from_ or records_dir(cfg) / "pretrain.json")
    out = _run_flow(evaluate_flow, cfg, record, force)
    for key, value in out.metrics.items():
        typer.echo(f"{key:>24}  {value:.4f}")


@app.command()
def register(config: ConfigOpt = None, set_: SetOpt = None, from_: FromOpt = None) -> None:
    """Log the run to MLflow and register the encoder under the configured alias."""
    cfg = _prepare(config, set_, check_data=False, ray=False)
    from flows.pipeline import register_flow
    from tasks.records import EvaluateRecord, load_record
    from tasks.runtime import records_dir

    record = _run_flow(load_record, EvaluateRecord, from_ or records_dir(cfg) / "evaluate.json")
    out = _run_flow(register_flow, cfg, record)
    typer.echo(f"registered {out.model_uri} (version {out.version}, run {out.run_id})")


@app.command()
def promote(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    rollback: Annotated[bool, typer.Option("--rollback", help="Restore the previous champion.")] = False,
) -> None:
    """Promote the candidate to champion if it passes every gate (or --rollback)."""
    cfg = _prepare(config, set_, check_data=False, ray=False)
    from flows.promote import promote_flow

    record = _run_flow(promote_flow, cfg, rollback)
    typer.echo(f"{record.decision}: {record.reason}")
    typer.echo(f"champion: {record.champion_before} -> {record.champion_after}")


CronOpt = Annotated[
    str,
    typer.Option("--cron", help="Schedule of the pipeline deployment (cron, UTC), or 'none' for no schedule."),
]


@app.command()
def serve(config: ConfigOpt = None, set_: SetOpt = None, cron: CronOpt = NIGHTLY_CRON) -> None:
    """Serve the pipeline (nightly), promotion and each stage as Prefect deployments until Ctrl-C.

    The resolved config becomes every deployment's default parameters, editable per run in the UI.
    """
    from flows.deployments import baked_parameters, deployment_specs, runner_deployments

    cfg = _load(config, set_)
    try:
        baked_parameters(cfg)  # refuse credentials before anything is stored
    except ValueError as exc:
        _fail(str(exc))
    from prefect import serve as prefect_serve
    from prefect.schedules import validate_cron_string
    from prefect.settings import get_current_settings

    from tasks.runtime import quiet_telemetry

    quiet_telemetry()
    schedule = None if cron.strip().lower() in ("", "none") else cron.strip()
    if schedule is not None:
        try:
            validate_cron_string(schedule)
        except ValueError as exc:
            _fail(f"--cron: {exc} (five fields, e.g. '{NIGHTLY_CRON}', or 'none')")
    if not get_current_settings().api.url:
        _fail(
            "PREFECT_API_URL is not set, and Prefect's temporary server runs no schedules and has no UI: start "
            "`prefect server start` and run `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api` "
            "(or use the team setup in docs/operations.md)"
        )
    prefect_serve(*runner_deployments(deployment_specs(schedule), cfg))


@app.command()
def embed(
    paths: Annotated[list[Path], typer.Argument(help="Image files to embed.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="MLflow model URI, e.g. models:/sslpipe-encoder@candidate.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the (N, D) float32 array.")] = Path(
        "embeddings.npy"
    ),
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Embed image files with a registered encoder and write a .npy (rows in argument order)."""
    cfg = _load(config, set_)
    import mlflow
    import numpy as np

    from sslpipe.images import read_images
    from tasks.runtime import quiet_telemetry, tracking_uri

    quiet_telemetry()
    try:
        images = read_images(paths)
    except ValueError as exc:
        _fail(str(exc))
    mlflow.set_tracking_uri(tracking_uri(cfg))
    try:
        pyfunc = mlflow.pyfunc.load_model(model)
    except Exception as exc:  # MlflowException and friends: unknown model, alias or server
        _fail(f"cannot load model '{model}' from {tracking_uri(cfg)}: {str(exc).splitlines()[0]}")
    rows: list[Any] = [None] * len(images)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(img.shape, []).append(i)
    for idxs in by_shape.values():
        out = pyfunc.predict(np.stack([images[i] for i in idxs]))
        for i, row in zip(idxs, np.asarray(out), strict=True):
            rows[i] = row
    result = np.stack(rows).astype(np.float32)
    np.save(output, result)
    typer.echo(f"wrote {output} {result.shape}")


@app.command("config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the fully resolved configuration as YAML (defaults + file + overrides)."""
    import yaml

    cfg = _load(config, set_)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def _print_summary(summary: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="sslpipe run", show_header=True)
    table.add_column("stage")
    table.add_column("time", justify="right")
    for stage, seconds in summary.stage_seconds.items():
        table.add_row(stage, f"{seconds:.1f} s")
    table.add_row("total", f"{sum(summary.stage_seconds.values()):.1f} s", style="bold")
    console.print(table)
    m = summary.metrics
    dataset = summary.headline.split("/", 1)[0]
    rows = Table(title=f"transfer on {dataset} ({int(m.get(f'{dataset}/test_samples', 0))} test images)")
    for column in ("protocol", "pretrained", "random init", "raw pixels"):
        rows.add_column(column, justify="left" if column == "protocol" else "right")
    protocols = sorted(
        k.split("/", 2)[2] for k in m if k.startswith(f"{dataset}/ssl/") and k.endswith(("top1", "_mean"))
    )
    for protocol in protocols:
        cells = [m.get(f"{dataset}/{enc}/{protocol}") for enc in ("ssl", "random_init", "pixels")]
        rows.add_row(
            protocol,
            *("-" if v is None else f"{v:.4f}" for v in cells),
            style="bold" if f"{dataset}/ssl/{protocol}" == summary.headline else None,
        )
    console.print(rows)
    base = f" vs random init [bold]{m[summary.baseline]:.4f}[/]" if summary.baseline else ""
    console.print(f"{summary.headline}: [bold green]{m[summary.headline]:.4f}[/]{base}")
    reg = summary.registered
    console.print(f"training throughput: {summary.images_per_s:.0f} images/s")
    console.print(f"model: [bold]{reg.model_uri}[/] -> version {reg.version}")
    console.print(f"MLflow run: {reg.run_id} (experiment {reg.experiment_id}) at {reg.tracking_uri}")
    console.print(
        f"Prefect flow run: {summary.flow_run_id}" + (f" {summary.flow_run_url}" if summary.flow_run_url else "")
    )
    console.print(f"open the MLflow UI: [cyan]{summary.mlflow_ui}[/]")


def main() -> None:
    from sslcore.preflight import preflight_scope

    try:
        with preflight_scope():  # the command's pre-flight checks count for the flow it starts
            app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
