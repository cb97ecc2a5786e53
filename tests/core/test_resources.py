"""sslcore.resources: what a training process takes of the CPUs it is given."""

from __future__ import annotations

import pytest

from sslcore.resources import available_cpus, training_threads


def test_available_cpus_is_positive() -> None:
    assert available_cpus() >= 1


@pytest.mark.parametrize(
    ("cpus", "loaders", "accelerator", "threads"),
    [
        (1, 1, False, 1),  # CPU training: every CPU, the loaders run niced beside it
        (8, 6, False, 8),
        (16, 14, True, 2),  # GPU training: what the loader processes leave
        (4, 4, True, 1),  # never below one
        (4, 0, True, 4),
    ],
)
def test_training_threads(cpus: int, loaders: int, accelerator: bool, threads: int) -> None:
    assert training_threads(cpus, loaders, accelerator=accelerator) == threads
