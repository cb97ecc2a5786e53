"""The ``mlflow`` and ``promotion`` sections: where models are registered and when one is promoted."""

from __future__ import annotations

from pydantic import Field, NonNegativeFloat, PositiveFloat

from sslcore.config.base import StrictModel

__all__ = ["LABELLED_GUARDS", "LABEL_FREE_GUARDS", "Guard", "MlflowConfig", "PromotionConfig"]


class MlflowConfig(StrictModel):
    tracking_uri: str | None = Field(
        None, description="Default $MLFLOW_TRACKING_URI, else sqlite:///<work_dir>/mlflow.db."
    )
    experiment: str = "sslpipe"
    model_name: str = Field("sslpipe-encoder", min_length=1)
    alias: str = Field("candidate", min_length=1)


class Guard(StrictModel):
    """A metric the candidate must not regress on by more than ``tolerance``."""

    metric: str = Field(description="Metric name; '{dataset}' expands to every evaluated dataset.")
    tolerance: NonNegativeFloat = 0.01
    higher_is_better: bool = True


LABELLED_GUARDS = (
    Guard(metric="{dataset}/ssl/linear_top1", tolerance=0.02),
    Guard(metric="{dataset}/ssl/health_collapsed", tolerance=0.0, higher_is_better=False),
)
LABEL_FREE_GUARDS = (
    Guard(metric="{dataset}/ssl/health_collapsed", tolerance=0.0, higher_is_better=False),
    Guard(metric="{dataset}/ssl/health_std_ratio", tolerance=0.1),
)


class PromotionConfig(StrictModel):
    """Champion/challenger gates: when may the ``candidate`` become the ``champion``."""

    primary: str | None = Field(None, description="Metric that must improve; default the evaluation headline.")
    min_margin: float = Field(0.0, description="Candidate must beat the champion's primary by more than this.")
    baseline_margin: float = Field(
        0.0, description="First model ever: must beat the random-init primary by more than this."
    )
    guards: tuple[Guard, ...] | None = Field(
        None,
        description="Metrics that must not regress; default: with labelled evaluation, linear_top1 (tolerance "
        "0.02) and health_collapsed; label-free only, health_collapsed and health_std_ratio (tolerance 0.1).",
    )
    champion_alias: str = "champion"
    previous_alias: str = "previous-champion"
    lock_timeout_s: PositiveFloat = Field(900, description="A promotion lock older than this is stale.")

    def resolved_guards(self, labelled: bool) -> tuple[Guard, ...]:
        """The configured guards, or the defaults for what the evaluation could measure."""
        if self.guards is not None:
            return self.guards
        return LABELLED_GUARDS if labelled else LABEL_FREE_GUARDS
