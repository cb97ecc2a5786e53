"""``benchmarks/zoo.py`` end to end on generated IDX files (CI has no Debian Fashion-MNIST): a ResNet method
and a ViT method each trained by a real Ray Train stage run, scored by every protocol, the table with a row
per run and per baseline, ``zoo.json`` and the bar chart. The accuracies are not checked (random images,
seconds of training); the measured table is in docs/methods.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, random_fashion_idx

ZOO = str(REPO / "benchmarks" / "zoo.py")


def test_every_method_has_a_family_and_the_vit_only_ones_train_on_the_vit() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import zoo

    from sslcore.methods import METHODS

    for name in METHODS.names():
        families = zoo.families_for(name)
        assert families and set(families) <= set(zoo.FAMILIES)
        assert (families == ["vit"]) is METHODS.get(name).requires_vit
    assert zoo.families_for("dino") == ["resnet", "vit"]


def test_an_unknown_method_or_a_config_typo_fails_before_any_work(tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import zoo

    from sslcore.config import ConfigError

    with pytest.raises(SystemExit) as info:
        zoo.parse_args(["--methods", "simclr", "simclrr", "--work", str(tmp_path)])
    assert info.value.code == 2 and "unknown method(s) simclrr" in capsys.readouterr().err
    args = zoo.parse_args(["--methods", "simclr", "--set", "train.batch_sise=8", "--work", str(tmp_path)])
    with pytest.raises(ConfigError, match="batch_sise"):
        zoo.plan(args, tmp_path)
    assert not any(tmp_path.iterdir())


def test_the_plan_evaluates_each_familys_random_init_once_and_raw_pixels_once(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import zoo

    args = zoo.parse_args(["--methods", "simclr", "mae", "dino", "--work", str(tmp_path), "--path", str(tmp_path)])
    runs = zoo.plan(args, tmp_path)
    assert [(m, f) for m, f, _ in runs] == [("simclr", "resnet"), ("mae", "vit"), ("dino", "resnet"), ("dino", "vit")]
    assert [cfg.eval.baselines for _, _, cfg in runs] == [("random_init", "pixels"), ("random_init",), (), ()]
    assert [cfg.model.backbone for _, _, cfg in runs] == ["resnet10t", "vit_tiny_patch16_224"] * 2
    assert all(cfg.train.time_budget_s == 20 * 60 for _, _, cfg in runs)
    only = zoo.parse_args(["--families", "resnet", "--path", "x"]).runs
    assert ("simclr", "resnet") in only and all(f == "resnet" for _, f in only) and ("mae", "vit") not in only


@pytest.mark.slow
def test_the_zoo_trains_a_vit_method_writes_table_json_and_plot_and_reuses_it_when_rerun(tmp_path: Path) -> None:
    """One run (the ViT family, the one the pipeline tests train least); the ResNet path is the one
    ``test_benchmark_fashion_mnist.py`` trains."""
    data = random_fashion_idx(tmp_path / "idx", train=256, test=64)
    work = tmp_path / "work"
    overrides = ["train.batch_size=64", "train.knn_monitor_samples=0", "model.image_size=16", "ray.num_workers=1"]
    overrides += ["eval.fewshot_seeds=1", "eval.linear_max_iter=20"]
    args = [
        "--budget-min",
        "0.03",
        "--methods",
        "mae",
        "--path",
        str(data),
        "--work",
        str(work),
        *[arg for o in overrides for arg in ("--set", o)],
    ]
    out = subprocess.run([sys.executable, ZOO, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    acc = r"\s+(?:\d\.\d{4}|-)"
    row = rf"^(mae)\s+(\S+)\s+\d+\s+(\d+)\s+\d+\.\d\d\s+-?\d+\.\d+{acc * 4}\s+\d+\.\d+$"
    ((_, backbone, steps),) = re.findall(row, out.stdout, re.M)
    assert backbone == "vit_tiny_patch16_224" and int(steps) >= 1
    baselines = re.findall(r"^(random init \((?:resnet|vit)\)|raw pixels)\s", out.stdout, re.M)
    assert baselines == ["random init (vit)", "raw pixels"]

    result = json.loads((work / "zoo.json").read_text())
    (row,) = result["rows"]
    assert (row["method"], row["family"]) == ("mae", "vit")
    assert all(0.0 <= row[k] <= 1.0 for k in ("knn_k20_top1", "knn_k200_top1", "linear_top1", "fewshot_10shot_mean"))
    assert row["health_rankme"] >= 1.0
    assert set(result["baselines"]) == {"random init (vit)", "raw pixels"}
    assert result["baselines"]["raw pixels"]["knn_k20_top1"] is not None
    assert (work / "zoo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same command again (as after a crash): the finished run is reused, not trained or evaluated again
    again = subprocess.run([sys.executable, ZOO, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "mae on vit: finished earlier, reused from zoo-runs.jsonl" in again.stdout
    assert "Started a local Ray instance" not in again.stdout + again.stderr
    assert json.loads((work / "zoo.json").read_text())["rows"] == result["rows"]
