"""Smoke tests of ``benchmarks/data_loading.py``: it runs on digits at minimal sizes and prints its table.

The numbers themselves are not checked (they depend on the machine), only that every variant
produced a row of positive measurements.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "data_loading.py"
TINY = ["--digits", "--batch-size", "32", "--repeats", "1", "--image-size", "16"]
NUMBER = r"(\d+(?:\.\d+)?)"
# variant, img/s, steady, first s, start s, procs, PSS MB, vs best, then the img/s of each run
ROW = re.compile(
    rf"^(\S+(?: [KW]=\d+)?)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s"
)


def run_benchmark(*args: str, timeout: float) -> dict[str, list[float]]:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {m[1]: [float(x) for x in m.groups()[1:]] for line in out.stdout.splitlines() if (m := ROW.match(line))}
    assert "medians of 1 runs" in out.stdout, out.stdout
    return rows


def check_row(rows: dict[str, list[float]], name: str) -> None:
    assert name in rows, f"no row for {name}: {sorted(rows)}"
    rate, steady, first, _start, procs, pss, ratio = rows[name]
    assert rate > 0 and steady > 0 and first > 0 and ratio > 0, rows[name]
    assert procs >= 1 and pss > 0, rows[name]


@pytest.mark.slow
def test_trainstream_variants_print_positive_rows() -> None:
    """No Ray: 10-15 s on a busy 2-core machine, mostly imports (torch, timm, scikit-learn) and the ingest."""
    rows = run_benchmark("--images", "160", "--loader-workers", "0", "1", "--no-ray", timeout=120)
    assert sorted(rows) == ["trainstream K=0", "trainstream K=1"]
    for name in rows:
        check_row(rows, name)
    assert rows["trainstream K=1"][4] >= 2  # the loader worker is a process of its own


# The Ray variants (Ray Data in the driver, Ray Train fed by Ray Data or by TrainStream) start a local
# Ray three times, 2-3 minutes on a 2-core machine: too long for CI's budget. They run whenever the
# benchmark itself does; the TrainStream rows above keep the script from rotting.
