"""Fault injection for chaos and end-to-end tests of the flows, off unless ``SSLPIPE_FAULTS`` is set.

``SSLPIPE_FAULTS`` names a JSON file read at every injection point, e.g.
``{"evaluate": "first_attempt", "register:logged": "pause_first_attempt"}``. A key is a stage (its
start) or ``stage:point`` (a point inside it: ``register:logged`` comes after the MLflow run is
complete and before the model version exists). The modes:

* ``first_attempt``: raise :class:`InjectedFault` (a transient failure, so Prefect retries it) on
  the task's first attempt only; ``always``: on every attempt.
* ``pause_first_attempt``: on the first attempt, create ``<fault file>.<key>.paused`` and wait until
  something (a test) removes it, at most :data:`PAUSE_LIMIT_S`: the moment to stop a server or kill a
  process while the stage is at that point.

The file is re-read each time, so a test can change the faults between flow runs of a long-lived
worker.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

FAULTS_ENV = "SSLPIPE_FAULTS"
MODES = ("first_attempt", "always", "pause_first_attempt")
PAUSE_LIMIT_S = 300.0


class InjectedFault(RuntimeError):
    """A failure injected on purpose (see ``SSLPIPE_FAULTS``)."""


def pause_marker(faults_file: str | Path, key: str) -> Path:
    """The file whose existence holds a ``pause_first_attempt`` point."""
    return Path(f"{faults_file}.{key.replace(':', '-')}.paused")


def inject(stage: str, point: str | None = None) -> None:
    """Apply the fault the file asks for at ``stage`` (or ``stage:point``) in this attempt, if any."""
    path = os.environ.get(FAULTS_ENV)
    if not path:
        return
    try:
        plan = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return
    key = stage if point is None else f"{stage}:{point}"
    mode = plan.get(key)
    if mode is None:
        return
    if mode not in MODES:
        raise ValueError(f"{FAULTS_ENV} ({path}): {key}={mode!r}, expected one of {MODES}")
    from prefect import runtime

    attempt = int(runtime.task_run.run_count or 1)
    if mode == "pause_first_attempt":
        if attempt <= 1:
            marker = pause_marker(path, key)
            marker.touch()
            deadline = time.monotonic() + PAUSE_LIMIT_S
            while marker.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        return
    if mode == "always" or attempt <= 1:
        raise InjectedFault(f"injected fault in {key}, attempt {attempt} ({FAULTS_ENV}={path})")
