"""Placement groups that Ray Train leaves behind, found and removed by the driver.

Ray Train 2.60 (Train V2) can leak the placement group of a worker group whose start failed. When a
worker dies during the group's after-start callbacks (backend set-up, dataset set-up), the group
already counts as started, so Ray skips its partial clean-up. The placement group is scoped to the
job, not to the controller actor that made it, so it outlives the controller too. It goes on holding
the CPUs (or GPUs) of every worker, and the next worker group of the same job waits for resources
that never come: Ray Train times out after 60 s, retries, and times out again, without end.

Reproduced here with ``SIGKILL`` of a worker a few seconds into its group's start (about one try in
three hits the window). Two remedies, both driver-side and limited to this job's placement groups:

* :class:`LeakWatch` runs while a training run runs. Ray Train keeps one worker group at a time and
  removes the old group's placement group before it asks for a new one, so a placement group of this
  job still holding its resources while a newer one waits is one left behind. After ``grace_s`` the
  watch removes it (which also ends the worker actors still in it), and the new group starts.
* :func:`release` removes every placement group of this job still holding resources once a run has
  failed, so that the stage's next attempt, in the same process, finds its resources free.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ray

HOLDING = "CREATED"
WAITING = "PENDING"


def this_jobs_groups() -> list[Any]:
    """This job's placement groups that hold or wait for resources (Ray's state API)."""
    from ray.util.state import list_placement_groups

    groups = list_placement_groups(
        address=ray.get_runtime_context().gcs_address,
        filters=[("creator_job_id", "=", ray.get_runtime_context().get_job_id()), ("state", "!=", "REMOVED")],
        raise_on_missing_output=False,
    )
    return [g for g in groups if g.state in (HOLDING, WAITING)]


def remove(group_ids: list[str]) -> None:
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    for group_id in group_ids:
        remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(group_id)))


def release() -> list[str]:
    """Remove every placement group of this job that still holds or waits for resources.

    Call it only when none of this job's training runs is going (after a run has failed)."""
    ids = [g.placement_group_id for g in this_jobs_groups()]
    remove(ids)
    return ids


class LeakWatch:
    """While a training run goes, remove a placement group of this job left holding resources
    while a newer one waits (see the module's docstring), once that has lasted ``grace_s``."""

    def __init__(self, grace_s: float = 15.0, interval_s: float = 5.0) -> None:
        self.grace_s = grace_s
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sslpipe-leak-watch", daemon=True)

    def __enter__(self) -> LeakWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)

    def _run(self) -> None:
        suspects: dict[str, float] = {}  # holding group -> when first seen holding beside a waiting one
        while not self._stop.wait(self.interval_s):
            try:
                groups = this_jobs_groups()
            except Exception:  # the state API is down for a moment: look again next time
                continue
            holding = {g.placement_group_id for g in groups if g.state == HOLDING}
            waiting = any(g.state == WAITING for g in groups)
            now = time.monotonic()
            suspects = {g: suspects.get(g, now) for g in holding} if waiting else {}
            stale = [g for g, since in suspects.items() if now - since >= self.grace_s]
            if stale:
                try:
                    remove(stale)
                except Exception:
                    continue
                print(
                    f"removed placement group {', '.join(g[:12] for g in stale)}, left holding resources by a "
                    "worker group whose start failed (a Ray Train leak), so that the next worker group can start",
                    flush=True,
                )
