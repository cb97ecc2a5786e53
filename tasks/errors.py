"""Which failures are the user's (not worth a retry) and which may be transient."""

from __future__ import annotations

from typing import Any

from sslcore.config import ConfigError
from sslcore.data.images import RejectedImage
from sslcore.data.ingest import IngestError
from sslcore.data.manifest import ManifestError
from sslcore.data.sources import SourceError
from sslcore.evaluation.protocols import EvaluationError
from sslcore.gates import PromotionError
from sslcore.health import TrainingCollapsed
from sslcore.preflight import PreflightError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    SourceError,
    IngestError,
    ManifestError,
    PreflightError,
    EvaluationError,
    RejectedImage,
    PromotionError,
)


# Not the user's input, but a retry of the same recipe would end the same way.
NOT_RETRIED: tuple[type[BaseException], ...] = (*USER_ERRORS, TrainingCollapsed)


def is_user_error(exc: BaseException | None) -> bool:
    return isinstance(exc, USER_ERRORS)


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry transient failures, never bad config or bad data."""
    exc = getattr(state, "data", None)  # the engine wraps the raised exception as Failed(data=exc)
    if isinstance(exc, BaseException):
        return not isinstance(exc, NOT_RETRIED)
    try:
        state.result()
    except Exception as raised:
        return not isinstance(raised, NOT_RETRIED)
    return True
