"""Configuration of the self-supervised methods: one frozen model per method, selected by ``name``.

Each class's defaults follow its reference implementation unless the docstring says otherwise.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt


class StrictModel(BaseModel):
    """Base for every config section: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SimCLRConfig(StrictModel):
    """SimCLR, Chen et al. 2020, https://arxiv.org/abs/2002.05709."""

    name: Literal["simclr"] = "simclr"
    temperature: PositiveFloat = 0.2
    projection_hidden_dim: PositiveInt = 512
    projection_dim: PositiveInt = 128
    gather_distributed: bool = Field(
        True, description="Use negatives from every DDP rank (global batch) instead of the local one."
    )


MethodConfig = SimCLRConfig
