"""``benchmarks/fashion_mnist.py``: its config for every method, and a smoke run on generated IDX
files (the real ones are a Debian package CI does not install): ingest, a few seconds of
pretraining on a real local Ray, evaluation, and the printed table with every protocol next to its
baselines.

The accuracies are not checked (random images, seconds of training); the quality numbers are the
benchmark's own output, quoted in docs/evaluation.md.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from conftest import REPO, random_fashion_idx
from sslcore.config import ConfigError
from sslcore.methods import METHODS


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fashion_mnist_benchmark", REPO / "benchmarks" / "fashion_mnist.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_gets_a_valid_config_or_a_clear_error_before_any_work(method: str, tmp_path: Path) -> None:
    bench = _benchmark()
    args = bench.parse_args(["--method", method, "--budget-min", "3", "--set", "train.batch_size=128"])
    if METHODS.get(method).requires_vit:  # the recipe's backbone is a ResNet
        with pytest.raises(ConfigError, match="needs a Vision Transformer"):
            bench.build_config(args, tmp_path)
        assert not any(tmp_path.iterdir())
        return
    cfg = bench.build_config(args, tmp_path)
    assert cfg.method.name == method
    assert (cfg.model.backbone, cfg.augment.crop_scale) == ("resnet10t", (0.2, 1.0))
    assert cfg.train.time_budget_s == 180 and cfg.train.batch_size == 128  # --set comes last
    if method == "simclr":
        assert cfg.method.temperature == 0.05
    if method == "byol":
        assert (cfg.method.projection_hidden_dim, cfg.method.predictor_hidden_dim) == (1024, 1024)


def test_an_unknown_method_is_refused_by_the_command_line() -> None:
    with pytest.raises(SystemExit):
        _benchmark().parse_args(["--method", "simclrr"])


@pytest.mark.slow
def test_benchmark_prints_every_protocol_next_to_its_baselines(tmp_path: Path) -> None:
    data = random_fashion_idx(tmp_path / "idx", train=320, test=80)
    work = tmp_path / "work"
    overrides = [
        "train.batch_size=64",
        "train.knn_monitor_samples=64",
        "eval.linear_c=[1.0]",
        "eval.fewshot_shots=[1]",
        "eval.fewshot_seeds=1",
        "model.stem_pool=false",  # the variant docs/evaluation.md compares with the stock stem
        "model.image_size=16",  # a quarter of the pixels: seconds off the evaluation
        "ray.num_workers=1",  # the two-worker layout is what tests/pretrain trains
    ]
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "fashion_mnist.py"), "--budget-min", "0.05"]
        + ["--path", str(data), "--work", str(work)]
        + [arg for o in overrides for arg in ("--set", o)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ingest: {'test': 80, 'train': 320}" in out.stdout
    number = r"(\d+\.\d{4}|-)"
    rows = dict(
        (label.strip(), cells)
        for label, *cells in re.findall(rf"^(\S.*?)\s+{number}\s+{number}\s+{number}$", out.stdout, re.MULTILINE)
    )
    assert list(rows) == ["kNN k=20", "kNN k=200", "linear probe", "1-shot probe", "RankMe"]
    for label, cells in rows.items():
        expected = 2 if label == "RankMe" else 3  # raw pixels have no RankMe
        assert sum(c != "-" for c in cells) == expected, (label, cells)
    assert re.search(
        r"^sslpipe kNN \d\.\d{4} (beats|does not beat) the raw-pixel kNN \d\.\d{4} \([-+]\d\.\d{4}; McNemar p=",
        out.stdout,
        re.MULTILINE,
    )

    results = json.loads((work / "results.json").read_text())
    assert results["config"]["model"]["stem_pool"] is False
    assert results["steps"] >= 1 and results["history"]
    knn = float(rows["kNN k=20"][0])
    assert results["metrics"]["fashion_mnist/ssl/knn_k20_top1"] == pytest.approx(knn, abs=1e-4)
