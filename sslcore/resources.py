"""What this machine offers."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def training_threads(cpus: int, loader_workers: int, *, accelerator: bool) -> int:
    """Intra-op threads for a training process given ``cpus`` CPUs and ``loader_workers`` DataLoader
    processes on the same CPUs.

    On a CPU the model's kernels are the work: every CPU (the loader processes run at a lower
    priority, ``train.loader_nice``). With an accelerator the training process only launches kernels
    and copies batches, and a wide OpenMP pool takes cores from the loader processes that feed it
    (its threads spin between parallel regions, such as the copy of each batch into pinned memory):
    the CPUs the loaders leave, at least one.
    """
    if not accelerator:
        return max(1, cpus)
    return max(1, cpus - loader_workers)
