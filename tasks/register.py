"""Register stage: log the run (config, metrics, lineage, plots, model card) and register the encoder.

Idempotent: the run carries an idempotency key derived from the training run, its checkpoint and
its evaluation. A retry or re-run finds the run and its model version and reuses them, so a
training run never yields a second MLflow run or a second model version. A run left incomplete by
a crash (no ``sslpipe.logged`` tag) is deleted and logged again from scratch.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec
from prefect import runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

import sslcore
from sslcore.config import PipelineConfig
from sslcore.inference import SPEC_FILE, WEIGHTS_FILE, Encoder, EncoderSpec
from sslcore.plots import training_curves
from sslcore.storage import filesystem
from sslcore.train import backbone_state_dict
from tasks import tracking
from tasks.errors import retry_unless_user_error
from tasks.faults import inject
from tasks.model_card import model_card
from tasks.records import EvaluateRecord, RegisterRecord
from tasks.runtime import registry_errors, tracking_uri
from tasks.tracking import LIVE_TAG, find_live_run, metric_steps

MODEL_CODE = Path(__file__).with_name("encoder_model.py")
SERVING_PACKAGES = ("torch", "torchvision", "timm", "safetensors", "numpy", "pillow", "pydantic", "pyyaml")
KEY_TAG = "sslpipe.idempotency_key"
LOGGED_TAG = "sslpipe.logged"
MODEL_URI_TAG = "sslpipe.model_uri"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"train.lr": "0.002", ...}`` for MLflow params (secrets arrive masked)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return out


def code_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        if sha.returncode == 0 and sha.stdout.strip():
            return sha.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return f"sslpipe=={metadata.version('sslpipe')}"


def idempotency_key(evaluation: EvaluateRecord) -> str:
    """Same training run, checkpoint and evaluation -> same key -> same MLflow run and version."""
    pretrain = evaluation.pretrain
    blob = json.dumps(
        {"run": pretrain.run_name, "checkpoint": pretrain.checkpoint_path, "metrics": evaluation.metrics},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def eval_fingerprint(evaluation: EvaluateRecord) -> str:
    """Identifies the evaluation data, so promotion can tell whether two versions were scored alike."""
    return hashlib.sha256(json.dumps(evaluation.data_fingerprints, sort_keys=True).encode()).hexdigest()[:32]


def _pins() -> list[str]:
    pins = []
    for name in SERVING_PACKAGES:
        try:
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def _find_run(client: MlflowClient, experiment_id: str, key: str) -> Run | None:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'", max_results=10)
    complete = [r for r in runs if r.data.tags.get(LOGGED_TAG) == "true"]
    for stale in (r for r in runs if r.data.tags.get(LOGGED_TAG) != "true" and r.data.tags.get(LIVE_TAG) != "true"):
        client.delete_run(stale.info.run_id)  # a crashed attempt: its logging is redone below
    # (a live run, with the training curves, is logged into again instead)
    return complete[0] if complete else None


def _find_version(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return sorted(versions, key=lambda v: int(v.version))[0] if versions else None


def _lineage(config: PipelineConfig, evaluation: EvaluateRecord, key: str) -> dict[str, str]:
    pretrain, ingest = evaluation.pretrain, evaluation.pretrain.ingest
    url = runtime.flow_run.ui_url
    return {
        KEY_TAG: key,
        "sslpipe.manifest_fingerprint": ingest.fingerprint,
        "sslpipe.data_uri": ingest.shard_folder,
        "sslpipe.eval_fingerprint": eval_fingerprint(evaluation),
        "sslpipe.eval_datasets": ",".join(evaluation.datasets),
        "sslpipe.eval_data": json.dumps([[n, evaluation.data_uris.get(n, "")] for n in evaluation.datasets]),
        "sslpipe.headline_metric": evaluation.headline,
        "sslpipe.method": config.method.name,
        "sslpipe.backbone": config.model.backbone,
        "sslpipe.prefect_flow_run_id": str(runtime.flow_run.id or ""),
        "sslpipe.prefect_flow_run_url": url if url and url.startswith("http") else "",
        "sslpipe.ray_run_name": pretrain.run_name,
        "sslpipe.checkpoint_uri": pretrain.checkpoint_path,
        "sslpipe.code_version": code_version(),
    }


def _new_params(client: MlflowClient, run_id: str | None, params: dict[str, str]) -> dict[str, str]:
    """The params the run lacks; MLflow params are write-once, and a run the pretrain stage opened
    already holds the training ones (a value that changed since is kept as first logged)."""
    if run_id is None:
        return params
    have = client.get_run(run_id).data.params
    changed = sorted(k for k, v in params.items() if k in have and have[k] != v[:6000])
    if changed:
        print(f"MLflow run {run_id} keeps its first value of param(s) {', '.join(changed[:10])}")
    return {k: v for k, v in params.items() if k not in have}


def _log_run(
    config: PipelineConfig,
    evaluation: EvaluateRecord,
    experiment_id: str,
    tags: dict[str, str],
    run_id: str | None = None,
) -> str:
    """Log everything into a new run, or into ``run_id`` (the run the pretrain stage opened)."""
    pretrain, ingest = evaluation.pretrain, evaluation.pretrain.ingest
    client = MlflowClient(mlflow.get_tracking_uri())
    weights = backbone_state_dict(pretrain.checkpoint_path, config.storage)
    spec = EncoderSpec(model=config.model, mean=config.augment.mean, std=config.augment.std, embedding_dim=0)
    encoder = Encoder.load_from_state(spec, weights)
    spec = encoder.spec
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        encoder.save(tmp / "timm")  # + timm's config.json where timm alone builds the backbone
        (tmp / "config.json").write_text(config.model_dump_json(indent=2))
        (tmp / "model_card.md").write_text(model_card(config, evaluation))
        fs, manifest_path = filesystem(ingest.manifest_path, config.storage)
        (tmp / "manifest.json").write_bytes(fs.cat_file(manifest_path))
        training_curves(pretrain.history, tmp / "training_curves.png")
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, -1))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, spec.embedding_dim))]),
        )
        example = np.zeros((2, config.model.image_size, config.model.image_size, 3), dtype=np.uint8)
        params = _new_params(client, run_id, flatten(config.model_dump(mode="json")))
        logged_live = metric_steps(client, run_id, "train_epoch") if run_id is not None else set()
        start = {"run_id": run_id} if run_id else {"experiment_id": experiment_id, "run_name": pretrain.run_name}
        with mlflow.start_run(**start) as run:
            mlflow.set_tags(tags)
            items = list(params.items())
            for i in range(0, len(items), 100):
                mlflow.log_params(dict(items[i : i + 100]))
            for entry in pretrain.history:  # one entry per epoch (the last may be partial), at its optimizer step
                step = int(entry["step"])
                if step in logged_live:
                    continue  # logged while it trained
                mlflow.log_metrics({f"train_{k}": v for k, v in entry.items() if k != "step"}, step=step)
            mlflow.log_metrics(evaluation.metrics)
            mlflow.log_metrics(
                {"train_images_per_s": pretrain.images_per_s, "pretrain_duration_s": pretrain.duration_s}
            )
            mlflow.log_artifact(str(tmp / "manifest.json"), artifact_path="data")
            mlflow.log_artifact(str(tmp / "config.json"))
            mlflow.log_artifact(str(tmp / "model_card.md"))
            mlflow.log_artifact(str(tmp / "training_curves.png"), artifact_path="plots")
            for path in evaluation.artifacts:
                mlflow.log_artifact(path, artifact_path="plots" if path.endswith(".png") else "evaluation")
            # the weights beside the pyfunc, loadable with timm alone (docs/registry.md), e.g. to fine-tune
            mlflow.log_artifacts(str(tmp / "timm"), artifact_path="timm")
            info = mlflow.pyfunc.log_model(
                name="encoder",
                python_model=str(MODEL_CODE),
                artifacts={"spec": str(tmp / "timm" / SPEC_FILE), "weights": str(tmp / "timm" / WEIGHTS_FILE)},
                code_paths=[str(Path(sslcore.__file__).parent)],
                signature=signature,
                input_example=example,
                pip_requirements=_pins(),
            )
            mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
            mlflow.set_tag(LOGGED_TAG, "true")  # last: marks the run complete
            return str(run.info.run_id)


@task(
    name="register",
    retries=3,
    retry_delay_seconds=[5, 15, 45],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
    tags=["sslpipe", "register", "mlflow"],
)
def register(config: PipelineConfig, evaluation: EvaluateRecord) -> RegisterRecord:
    """Log the run, register the encoder and point ``config.mlflow.alias`` at it (once per training run)."""
    inject("register")
    uri = tracking_uri(config)
    with registry_errors(uri):
        return _register(config, evaluation, uri)


def _register(config: PipelineConfig, evaluation: EvaluateRecord, uri: str) -> RegisterRecord:
    start = time.perf_counter()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = tracking.experiment_id(client, config)
    key = idempotency_key(evaluation)
    tags = _lineage(config, evaluation, key)
    name = config.mlflow.model_name

    existing = _find_run(client, experiment_id, key)
    if existing is not None:
        run_id = existing.info.run_id
    else:  # the run the pretrain stage opened, unless an earlier evaluation of this training run completed it
        live = find_live_run(client, experiment_id, evaluation.pretrain.run_name)
        open_live = live is not None and live.data.tags.get(LOGGED_TAG) != "true"
        run_id = _log_run(config, evaluation, experiment_id, tags, live.info.run_id if open_live else None)
    inject("register", "logged")  # chaos tests: the run is complete, the version not yet registered
    version = _find_version(client, name, run_id)
    reused = existing is not None and version is not None
    if version is None:
        model_uri = client.get_run(run_id).data.tags[MODEL_URI_TAG]
        version = mlflow.register_model(model_uri, name, tags=tags)
    client.set_registered_model_alias(name, config.mlflow.alias, version.version)
    client.update_model_version(name, version.version, description=model_card(config, evaluation))

    record = RegisterRecord(
        reused=reused,
        tracking_uri=uri,
        experiment_id=experiment_id,
        run_id=run_id,
        model_name=name,
        version=str(version.version),
        alias=config.mlflow.alias,
        model_uri=f"models:/{name}@{config.mlflow.alias}",
        duration_s=time.perf_counter() - start,
    )
    create_markdown_artifact(
        key="registered-model",
        markdown=(
            f"### Registered\n`{record.model_uri}` = version {record.version}"
            f"{' (reused: this training run was already registered)' if reused else ''}; "
            f"MLflow run `{run_id}` in experiment {experiment_id}\n"
        ),
    )
    return record
