"""Where services live, resolved from config and the usual environment variables.

Nothing here runs at import time; the CLI and flows call these functions at their entry points.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from sslcore.config import PipelineConfig

QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}


def quiet_telemetry() -> None:
    """Turn off phone-home of Prefect, Ray and MLflow unless the user set these explicitly."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def tracking_uri(cfg: PipelineConfig) -> str:
    """``mlflow.tracking_uri`` from config, else ``$MLFLOW_TRACKING_URI``, else SQLite in the work dir."""
    if cfg.mlflow.tracking_uri:
        return cfg.mlflow.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{cfg.work_path / 'mlflow.db'}"


def artifact_root(cfg: PipelineConfig) -> str | None:
    """Artifacts beside the SQLite database for the embedded default; the server decides otherwise."""
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        return (cfg.work_path / "mlartifacts").as_uri()
    return None


def mlflow_ui_command(cfg: PipelineConfig) -> str:
    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def records_dir(cfg: PipelineConfig) -> Path:
    return cfg.work_path / "records"


def ray_storage_path(cfg: PipelineConfig) -> str:
    """``ray.storage_path`` (local or s3://), else ``<work_dir>/ray_results``."""
    return cfg.ray.storage_path or str(cfg.work_path / "ray_results")


class RegistryUnavailable(ConnectionError):
    """The MLflow tracking server cannot be reached (transient: worth a retry)."""


CONNECTION_HINTS = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection", "timed out")


@contextlib.contextmanager
def registry_errors(uri: str) -> Iterator[None]:
    """Turn MLflow's long connection tracebacks into one clear, retryable error."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as exc:
        text = str(exc)
        if any(hint in text for hint in CONNECTION_HINTS):
            raise RegistryUnavailable(
                f"the MLflow tracking server at {uri} is unreachable: start it, or point MLFLOW_TRACKING_URI "
                f"(or mlflow.tracking_uri) at a running server"
            ) from None
        raise
