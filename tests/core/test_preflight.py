"""sslcore.preflight: cheap checks that fail before Ray starts, with the fix in the message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslcore import preflight as preflight_module
from sslcore.config import PipelineConfig, load_config
from sslcore.data.sources import SourceError
from sslcore.preflight import PreflightError, check_local_resources, preflight, preflight_scope


@pytest.fixture()
def cpus(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Pretend the machine has ``cpus[0]`` CPUs and no GPU."""
    have = [64]
    monkeypatch.setattr(preflight_module, "available_cpus", lambda: have[0])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    return have


def _cfg(*overrides: str) -> PipelineConfig:
    return load_config(None, ["train.batch_size=64", *overrides])


def test_more_workers_than_cpus(cpus: list[int]) -> None:
    cpus[0] = 3
    with pytest.raises(PreflightError) as info:
        check_local_resources(_cfg("ray.num_workers=2", "ray.cpus_per_worker=2"))
    message = str(info.value)
    assert "needs 4 CPUs but this machine has 3" in message
    assert "lower ray.num_workers" in message and "ray.address" in message


def test_workers_that_fit(cpus: list[int]) -> None:
    cpus[0] = 4
    check_local_resources(_cfg("ray.num_workers=2", "ray.cpus_per_worker=2"))


def test_use_gpu_without_gpus(cpus: list[int]) -> None:
    with pytest.raises(PreflightError, match=r"ray\.use_gpu=true needs 2 GPUs but this machine has 0") as info:
        check_local_resources(_cfg("ray.num_workers=2", "ray.use_gpu=true"))
    assert "set ray.use_gpu=false" in str(info.value)


def test_remote_ray_skips_the_local_checks(cpus: list[int]) -> None:
    cpus[0] = 1
    preflight(_cfg("ray.num_workers=8", "ray.use_gpu=true"), local_ray=False, check_data=False)
    with pytest.raises(PreflightError):
        preflight(_cfg("ray.num_workers=8"), local_ray=True, check_data=False)


def test_data_check_reports_a_missing_source(cpus: list[int], tmp_path: Path) -> None:
    cfg = _cfg("ingest.source.kind=folder", f"ingest.source.path={tmp_path / 'missing'}")
    with pytest.raises(SourceError, match="does not exist"):
        preflight(cfg, local_ray=True)


# --------------------------------------------------------------------------- the evaluation plan


def _pngs(root: Path, n: int = 12, classes: int = 0) -> Path:
    """Small real PNGs: flat, or in ``classes`` sub-folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % classes}" if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _unlabeled(tmp_path: Path, *overrides: str) -> PipelineConfig:
    photos = _pngs(tmp_path / "photos")
    return _cfg(f"ingest.source={{kind: folder, path: {photos}}}", *overrides)


def test_preflight_prints_the_evaluation_plan(cpus: list[int], tmp_path: Path, capsys) -> None:
    labelled = _pngs(tmp_path / "labelled", classes=2)
    cfg = _unlabeled(tmp_path, f"eval.datasets=[{{name: sample, source: {{kind: folder, path: {labelled}, "
                               "labels: subfolder}}]")  # fmt: skip
    preflight(cfg, local_ray=False)
    out = capsys.readouterr().out
    assert "evaluation: photos (no labels): health, retrieval" in out
    assert "evaluation: sample (labelled): knn, linear, fewshot, health, retrieval" in out
    assert "no labelled evaluation" not in out
    preflight(cfg, local_ray=False, check_data=False)
    assert capsys.readouterr().out == ""  # the plan is printed where the data is checked


def test_unlabeled_data_passes_with_the_default_gates_and_says_so(cpus: list[int], tmp_path: Path, capsys) -> None:
    preflight(_unlabeled(tmp_path), local_ray=False)
    out = capsys.readouterr().out
    assert "evaluation: photos (no labels): health, retrieval" in out
    assert "no labelled evaluation" in out and "photos/ssl/retrieval_top1" in out and "add eval.datasets" in out


def test_a_labelled_primary_on_unlabeled_data_fails_before_training(cpus: list[int], tmp_path: Path) -> None:
    with pytest.raises(PreflightError) as info:
        preflight(_unlabeled(tmp_path, "promotion.primary=photos/ssl/linear_top1"), local_ray=False)
    message = str(info.value)
    assert "promotion.primary=photos/ssl/linear_top1 needs labels but no evaluation dataset has any" in message
    assert "photos/ssl/retrieval_top1" in message and "add a labelled eval.datasets entry" in message
    with pytest.raises(PreflightError, match=r"promotion.guards metric \{dataset\}/ssl/knn_k20_top1 needs labels"):
        preflight(_unlabeled(tmp_path, "promotion.guards=[{metric: '{dataset}/ssl/knn_k20_top1'}]"),
                  local_ray=False, check_data=False)  # fmt: skip
    preflight(_unlabeled(tmp_path, "promotion.primary=photos/ssl/retrieval_top1",
                         "promotion.guards=[{metric: '{dataset}/ssl/health_rankme'}]"), local_ray=False)  # fmt: skip


def test_labelled_eval_datasets_by_path_and_shards_are_read_for_labels(cpus: list[int], tmp_path: Path) -> None:
    from sslcore.data.ingest import ingest
    from sslcore.preflight import evaluation_plan

    labelled = ingest(load_config(None, []).ingest, tmp_path / "digits-shards")  # real digits, with cls
    unlabeled_cfg = _unlabeled(tmp_path)
    unlabeled = ingest(unlabeled_cfg.ingest, tmp_path / "photo-shards")
    cfg = _cfg(f"ingest.source={{kind: webdataset, path: {unlabeled.folder}}}",
               f"eval.datasets=[{{name: d, path: {labelled.folder}}}, "
               f"{{name: w, source: {{kind: webdataset, path: {labelled.folder}}}}}]")  # fmt: skip
    plan = evaluation_plan(cfg)
    assert [(d.name, d.labelled) for d in plan] == [(unlabeled.folder.rsplit("/", 1)[-1], False), ("d", True),
                                                    ("w", True)]  # fmt: skip
    assert plan[0].protocols == ("health", "retrieval") and "knn" in plan[1].protocols
    assert [d.labelled for d in evaluation_plan(cfg, read_data=False)] == [None, None, None]
    # with a labelled path entry a linear primary is fine
    preflight(cfg.model_copy(update={"promotion": cfg.promotion.model_copy(update={"primary": "d/ssl/linear_top1"})}),
              local_ray=False)  # fmt: skip


def test_an_eval_source_that_does_not_exist_fails_preflight(cpus: list[int], tmp_path: Path) -> None:
    cfg = _cfg(f"eval.datasets=[{{name: x, source: {{kind: folder, path: {tmp_path / 'nope'}, labels: subfolder}}}}]")
    with pytest.raises(SourceError, match="does not exist"):
        preflight(cfg, local_ray=False)


def test_an_eval_dataset_named_like_the_ingested_data_fails_preflight(cpus: list[int], tmp_path: Path) -> None:
    from sslcore.config import ConfigError

    with pytest.raises(ConfigError, match="'digits' is also the name of the ingested data"):
        preflight(_cfg(f"eval.datasets=[{{name: digits, path: {tmp_path}}}]"), local_ray=False, check_data=False)


def test_a_scope_runs_each_passing_check_once(cpus: list[int], capsys) -> None:
    """What ``sslpipe`` does: the command checks, then the flow's own preflight skips the repeat."""
    cfg = _cfg()
    with preflight_scope():
        preflight(cfg, local_ray=True)
        preflight(cfg, local_ray=True)
        once = capsys.readouterr().out
        preflight(cfg, local_ray=True, check_data=False)  # other checks: run
        preflight(cfg, local_ray=False)  # so are these
    preflight(cfg, local_ray=True)  # outside the scope: every call checks
    after = capsys.readouterr().out
    assert once and once.count(once.splitlines()[0]) == 1
    assert after.count(once.splitlines()[0]) == 2


def test_a_scope_still_checks_a_changed_config_and_forgets_failures(cpus: list[int], tmp_path: Path) -> None:
    missing = _cfg("ingest.source.kind=folder", f"ingest.source.path={tmp_path / 'nope'}")
    with preflight_scope():
        preflight(_cfg(), local_ray=True)
        for _ in range(2):  # a failed check is not remembered as passed
            with pytest.raises(SourceError):
                preflight(missing, local_ray=True)
        cpus[0] = 1
        with pytest.raises(PreflightError, match="CPUs"):
            preflight(_cfg("ray.num_workers=4"), local_ray=True)
