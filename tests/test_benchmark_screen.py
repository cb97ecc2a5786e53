"""``benchmarks/screen.py`` on the embedded digits (the only dataset CI has): a fixed plan with progressive
resolution trains, scores the validation split carved from *train*, and appends its JSON line. The accuracy
is not checked (a fraction of an epoch); the screening numbers are quoted in docs/evaluation.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_screening_on_digits_with_progressive_resolution_reports_one_scored_row(tmp_path: Path) -> None:
    out_file = tmp_path / "screen.jsonl"
    args = [
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--progressive",
        "16",
        "0.5",
        "--pixels",
        "--linear",
        "--name",
        "smoke",
    ]
    args += ["--set", "model.backbone=resnet10t", "--set", "model.small_image_stem=false"]
    args += ["--set", "model.image_size=32", "--set", "train.batch_size=128", "--out", str(out_file)]
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "screen.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"^raw pixels: val kNN k=20 0\.\d{4}, linear 0\.\d{4}$", out.stdout, re.MULTILINE)
    (line,) = out_file.read_text().splitlines()
    result = json.loads(line)
    assert result["name"] == "smoke" and result["progressive"] == [16.0, 0.5]
    (row,) = result["results"]
    ((train, val),) = re.findall(r"; (\d+) train, (\d+) val images", out.stdout)
    assert int(val) == 300 and int(train) > 1000  # the val images come out of digits' train split
    assert row["epochs"] == 2.0 and row["steps"] == 2 * (int(train) // 128)
    assert 0.0 <= row["val_knn20"] <= 1.0 and 0.0 <= row["val_linear"] <= 1.0
