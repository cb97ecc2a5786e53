"""Fault injection for chaos and end-to-end tests of the flows, off unless ``SSLPIPE_FAULTS`` is set.

``SSLPIPE_FAULTS`` names a JSON file read at the start of every stage attempt, e.g.
``{"evaluate": "first_attempt"}``: the stage raises :class:`InjectedFault` (a transient failure,
so Prefect retries it) on its first attempt only; ``"always"`` fails every attempt. The file is
re-read each time, so a test can change the faults between flow runs of a long-lived worker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FAULTS_ENV = "SSLPIPE_FAULTS"
MODES = ("first_attempt", "always")


class InjectedFault(RuntimeError):
    """A failure injected on purpose (see ``SSLPIPE_FAULTS``)."""


def inject(stage: str) -> None:
    """Raise :class:`InjectedFault` if the fault file asks for one in ``stage`` at this attempt."""
    path = os.environ.get(FAULTS_ENV)
    if not path:
        return
    try:
        plan = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return
    mode = plan.get(stage)
    if mode is None:
        return
    if mode not in MODES:
        raise ValueError(f"{FAULTS_ENV} ({path}): {stage}={mode!r}, expected one of {MODES}")
    from prefect import runtime

    attempt = int(runtime.task_run.run_count or 1)
    if mode == "always" or attempt <= 1:
        raise InjectedFault(f"injected fault in {stage}, attempt {attempt} ({FAULTS_ENV}={path})")
