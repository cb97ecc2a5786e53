"""``retry_unless_user_error`` as Prefect's engine calls it: real tasks in a real flow on Prefect's test
server, their attempts counted.

A user error (bad config, bad data) or a collapsed run must fail on its first attempt; anything else
gets the task's configured retries."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from sslcore.config import ConfigError
from sslcore.data.images import RejectedImage
from sslcore.data.ingest import IngestError
from sslcore.data.manifest import ManifestError
from sslcore.data.sources import SourceError
from sslcore.evaluation.protocols import EvaluationError
from sslcore.gates import PromotionError
from sslcore.health import TrainingCollapsed
from sslcore.preflight import PreflightError
from sslcore.storage import StorageError
from tasks.errors import retry_unless_user_error
from tasks.faults import InjectedFault
from tasks.ray_train import StorageNotSharedError, TrainingRunFailed
from tasks.runtime import RegistryUnavailable

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]  # starts Prefect's test server

RETRIES = 2

NEVER_RETRIED = (
    ConfigError,
    SourceError,
    IngestError,
    ManifestError,
    PreflightError,
    StorageNotSharedError,  # a PreflightError the pretrain stage raises
    EvaluationError,
    RejectedImage,
    PromotionError,
    TrainingCollapsed,  # not the user's input, but the same recipe would collapse again
)
TRANSIENT = (StorageError, RegistryUnavailable, TrainingRunFailed, InjectedFault, ConnectionError, OSError)

Outcome = Callable[[], str]


def _raise(exc: Exception) -> Outcome:
    def outcome() -> str:
        raise exc

    return outcome


def _run(stages: dict[str, list[Outcome]]) -> dict[str, tuple[int, str]]:
    """One flow run with a task per entry of ``stages``, each with ``RETRIES`` retries and no delay:
    attempt ``i`` of a task returns ``outcomes[i]()`` (the last outcome for every later attempt).
    Returns, per entry, the attempts the task ran and its result, or the name of the error it failed with."""
    attempts = dict.fromkeys(stages, 0)

    def make(name: str, outcomes: list[Outcome]):
        @task(
            name=name,
            retries=RETRIES,
            retry_delay_seconds=0,
            retry_condition_fn=retry_unless_user_error,
            cache_policy=NO_CACHE,
        )
        def stage() -> str:
            attempts[name] += 1
            return outcomes[min(attempts[name], len(outcomes)) - 1]()

        return stage

    @flow
    def pipeline() -> dict[str, str]:
        ends = {}
        for name, outcomes in stages.items():
            result = make(name, outcomes)(return_state=True).result(raise_on_failure=False)
            ends[name] = type(result).__name__ if isinstance(result, BaseException) else result
        return ends

    ends = pipeline()
    return {name: (attempts[name], ends[name]) for name in stages}


def test_a_user_error_fails_on_its_first_attempt() -> None:
    got = _run({cls.__name__: [_raise(cls("bad input"))] for cls in NEVER_RETRIED})
    assert got == {cls.__name__: (1, cls.__name__) for cls in NEVER_RETRIED}


def test_a_transient_error_gets_every_configured_retry() -> None:
    got = _run({cls.__name__: [_raise(cls("try again"))] for cls in TRANSIENT})
    assert got == {cls.__name__: (1 + RETRIES, cls.__name__) for cls in TRANSIENT}


def test_each_attempt_is_judged_by_its_own_error() -> None:
    slow_down = _raise(StorageError("S3 503 SlowDown"))
    got = _run(
        {
            "recovers": [slow_down, lambda: "shards"],
            "then_bad_config": [slow_down, _raise(ConfigError("unknown key 'train.bach_size'"))],
        }
    )
    assert got == {"recovers": (2, "shards"), "then_bad_config": (2, "ConfigError")}
