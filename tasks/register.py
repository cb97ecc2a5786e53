"""Register stage: log the run (config, metrics, lineage, plots) and register the encoder in MLflow."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec
from prefect import runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from safetensors.torch import save_file

import sslcore
from sslcore.config import PipelineConfig
from sslcore.inference import EncoderSpec
from sslcore.plots import training_curves
from sslcore.train import backbone_state_dict
from tasks.errors import retry_unless_user_error
from tasks.records import EvaluateRecord, RegisterRecord
from tasks.runtime import artifact_root, tracking_uri

MODEL_CODE = Path(__file__).with_name("encoder_model.py")
SERVING_PACKAGES = ("torch", "torchvision", "timm", "safetensors", "numpy", "pillow", "pydantic", "pyyaml")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"train.lr": "0.002", ...}`` for MLflow params."""
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


def _pins() -> list[str]:
    pins = []
    for name in SERVING_PACKAGES:
        try:
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def _experiment_id(config: PipelineConfig) -> str:
    exp = mlflow.get_experiment_by_name(config.mlflow.experiment)
    if exp is not None:
        return str(exp.experiment_id)
    return str(mlflow.create_experiment(config.mlflow.experiment, artifact_location=artifact_root(config)))


@task(
    name="register",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
    tags=["sslpipe", "register", "mlflow"],
)
def register(config: PipelineConfig, evaluation: EvaluateRecord) -> RegisterRecord:
    """Log everything about the run, register the encoder and point ``config.mlflow.alias`` at it."""
    start = time.perf_counter()
    pretrain, ingest = evaluation.pretrain, evaluation.pretrain.ingest
    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    experiment_id = _experiment_id(config)
    flow_run_id = str(runtime.flow_run.id or "")
    spec = EncoderSpec(
        model=config.model,
        mean=config.augment.mean,
        std=config.augment.std,
        embedding_dim=0,
    )
    weights = backbone_state_dict(Path(pretrain.checkpoint_path))
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "backbone.safetensors"))
        from sslcore.inference import Encoder

        encoder = Encoder.load_from_state(spec, weights)
        spec = encoder.spec
        (tmp / "encoder.json").write_text(spec.model_dump_json(indent=2))
        (tmp / "config.json").write_text(config.model_dump_json(indent=2))
        training_curves(pretrain.history, tmp / "training_curves.png")
        example = np.zeros((2, config.model.image_size, config.model.image_size, 3), dtype=np.uint8)
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, -1))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, spec.embedding_dim))]),
        )
        tags = {
            "sslpipe.manifest_fingerprint": ingest.fingerprint,
            "sslpipe.data_uri": ingest.shard_folder,
            "sslpipe.prefect_flow_run_id": flow_run_id,
            "sslpipe.ray_run_name": pretrain.run_name,
            "sslpipe.checkpoint_uri": pretrain.checkpoint_path,
            "sslpipe.code_version": code_version(),
        }
        with mlflow.start_run(experiment_id=experiment_id, run_name=pretrain.run_name, tags=tags) as run:
            mlflow.log_params(flatten(config.model_dump(mode="json")))
            for entry in pretrain.history:
                step = int(entry["epoch"])
                mlflow.log_metrics({f"train_{k}": v for k, v in entry.items() if k != "epoch"}, step=step)
            mlflow.log_metrics(evaluation.metrics)
            mlflow.log_metrics(
                {"train_images_per_s": pretrain.images_per_s, "pretrain_duration_s": pretrain.duration_s}
            )
            mlflow.log_artifact(ingest.manifest_path, artifact_path="data")
            mlflow.log_artifact(str(tmp / "config.json"))
            mlflow.log_artifact(str(tmp / "training_curves.png"), artifact_path="plots")
            for path in evaluation.artifacts:
                mlflow.log_artifact(path, artifact_path="plots" if path.endswith(".png") else "evaluation")
            info = mlflow.pyfunc.log_model(
                name="encoder",
                python_model=str(MODEL_CODE),
                artifacts={"spec": str(tmp / "encoder.json"), "weights": str(tmp / "backbone.safetensors")},
                code_paths=[str(Path(sslcore.__file__).parent)],
                signature=signature,
                input_example=example,
                pip_requirements=_pins(),
            )
            run_id = run.info.run_id
    client = MlflowClient(uri)
    version = mlflow.register_model(info.model_uri, config.mlflow.model_name, tags=tags)
    client.set_registered_model_alias(config.mlflow.model_name, config.mlflow.alias, version.version)
    headline = evaluation.metrics[evaluation.headline]
    base = f" vs random init {evaluation.metrics[evaluation.baseline]:.4f}" if evaluation.baseline else ""
    client.update_model_version(
        config.mlflow.model_name,
        version.version,
        description=(
            f"{config.method.name} on {config.model.backbone} ({config.model.image_size}px), data "
            f"{ingest.fingerprint[:12]}: {evaluation.headline} = {headline:.4f}{base}."
        ),
    )
    record = RegisterRecord(
        tracking_uri=uri,
        experiment_id=experiment_id,
        run_id=run_id,
        model_name=config.mlflow.model_name,
        version=str(version.version),
        alias=config.mlflow.alias,
        model_uri=f"models:/{config.mlflow.model_name}@{config.mlflow.alias}",
        duration_s=time.perf_counter() - start,
    )
    create_markdown_artifact(
        key="registered-model",
        markdown=(
            f"### Registered\n`{record.model_uri}` = version {record.version} "
            f"(MLflow run `{run_id}`, experiment {experiment_id})\n"
        ),
    )
    return record
