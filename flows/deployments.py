"""The Prefect deployments sslpipe offers, declared once.

``sslpipe serve`` builds them in one process; ``infra/prefect.yaml`` declares the same list for a work
pool, and ``tests/test_operations_configs.py`` keeps the two equal. Flows and Prefect are imported
inside the functions, so the CLI can read the constants without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

    from sslcore.config import PipelineConfig

NIGHTLY_CRON = "0 2 * * *"
TIMEZONE = "UTC"
TAGS = ("sslpipe",)
STAGE_TAGS = (*TAGS, "stage")


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: its flow, its name, a cron schedule (in ``TIMEZONE``) or none, and what the UI shows."""

    flow: Flow[..., Any]
    name: str
    cron: str | None
    description: str
    tags: tuple[str, ...]
    # One flow run of a deployment at a time; a run started meanwhile (a schedule firing while the
    # last run still goes, a second click in the UI) waits in the queue instead of racing it.
    concurrency_limit: int = 1

    @property
    def entrypoint(self) -> str:
        """``path/to/file.py:function`` from the repository root, as ``infra/prefect.yaml`` writes it."""
        return f"{self.flow.fn.__module__.replace('.', '/')}.py:{self.flow.fn.__name__}"


def deployment_specs(cron: str | None = NIGHTLY_CRON) -> list[DeploymentSpec]:
    """The pipeline on ``cron`` (None: no schedule), and promotion and each stage on demand."""
    from flows.pipeline import evaluate_flow, ingest_flow, pipeline, pretrain_flow, register_flow
    from flows.promote import promote_flow

    return [
        DeploymentSpec(
            pipeline, "nightly", cron, "Ingest, pretrain, evaluate and register on the configured data.", TAGS
        ),
        DeploymentSpec(
            promote_flow,
            "promote",
            None,
            "Move the champion alias to the candidate if it passes every gate; rollback restores the previous one.",
            TAGS,
        ),
        DeploymentSpec(ingest_flow, "ingest", None, "Validate the source and write (or reuse) the shards.", STAGE_TAGS),
        DeploymentSpec(
            pretrain_flow,
            "pretrain",
            None,
            "Pretrain on the last ingest (records/ingest.json) with Ray Train, resuming from its latest checkpoint.",
            STAGE_TAGS,
        ),
        DeploymentSpec(
            evaluate_flow,
            "evaluate",
            None,
            "Evaluate the last pretrained backbone (records/pretrain.json) next to its baselines.",
            STAGE_TAGS,
        ),
        DeploymentSpec(
            register_flow,
            "register",
            None,
            "Register the last evaluated encoder (records/evaluate.json) in MLflow, once per training run.",
            STAGE_TAGS,
        ),
    ]


def baked_parameters(config: PipelineConfig) -> dict[str, Any]:
    """``config`` as the deployments' default parameters, stored in Prefect and shown in its UI.

    Raises:
        ValueError: if the config holds S3 credentials, which would be stored there too.
    """
    secrets = [f"storage.{key}" for key in ("access_key_id", "secret_access_key") if getattr(config.storage, key)]
    if secrets:
        raise ValueError(
            f"{' and '.join(secrets)} would be stored in the deployments' parameters: remove them from the config "
            "and give the worker AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in its environment or an AWS profile "
            "(AWS_PROFILE or storage.profile) instead"
        )
    return {"config": config.model_dump(mode="json")}


def runner_deployments(specs: list[DeploymentSpec], config: PipelineConfig) -> list[RunnerDeployment]:
    """The specs as deployments for ``prefect.serve``, each with ``config`` as its default parameter."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    parameters = baked_parameters(config)
    return [
        cast(  # called outside an event loop, to_deployment returns the deployment, not a coroutine
            "RunnerDeployment",
            spec.flow.to_deployment(
                name=spec.name,
                schedules=[Cron(spec.cron, timezone=TIMEZONE)] if spec.cron else [],
                parameters=parameters,
                description=spec.description,
                tags=list(spec.tags),
                concurrency_limit=ConcurrencyLimitConfig(
                    limit=spec.concurrency_limit, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
                ),
            ),
        )
        for spec in specs
    ]
