"""Smoke test of ``benchmarks/loader_handover.py``: both collations are timed and printed.

The numbers are not compared (they depend on the machine), only that each variant measured a
positive time in every repeat.
"""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_loader_handover_prints_a_time_per_variant() -> None:
    args = ["--batch-size", "8", "--batches", "3", "--fill-s", "0.5", "--repeats", "2"]
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "loader_handover.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = re.findall(r"^  (.+?)\s+(\d+\.\d+)\s+\[(.+)\]$", out.stdout, re.MULTILINE)
    assert [name for name, _, _ in rows] == ["default collation (views + count tensor)", "collate_views (views + int)"]
    for _, median, runs in rows:
        values = [float(v) for v in runs.split(", ")]
        assert len(values) == 2 and min(values) > 0 and float(median) > 0
