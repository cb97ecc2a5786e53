"""Bad input fails fast with one line naming the problem and the fix, and writes nothing to MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_sslpipe


def _assert_clean_failure(result, work: Path, *needles: str, one_line: bool = True) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines, "no error message"
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, lines
    message = errors[0]
    for needle in needles:
        assert needle in message, (needle, message)
    if one_line:
        assert len(lines) == 1, lines
    assert not (work / "mlflow.db").exists(), "bad input must not reach MLflow"
    assert not (work / "mlartifacts").exists()


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["train.bach_size=64"], ["unknown key 'train.bach_size'", "did you mean 'train.batch_size'"]),
        (["train.epochs=many"], ["train.epochs", "valid integer", "'many'"]),
        (["train.batch_size=-4"], ["train.batch_size", "greater than 0"]),
        (["ray.num_workers=0"], ["ray.num_workers", "greater than 0"]),
        (["ingest.source.kind=bucket"], ["ingest.source", "'digits', 'folder'"]),
        (["model.backbone=resnet181"], ["unknown timm model 'resnet181'", "did you mean"]),
    ],
)
def test_config_errors_fail_before_any_work(tmp_path: Path, overrides: list[str], needles: list[str]) -> None:
    work = tmp_path / "work"
    args = ["run", "--set", f"work_dir={work}"]
    for item in overrides:
        args += ["--set", item]
    result = run_sslpipe(*args, cwd=tmp_path, timeout=120)
    _assert_clean_failure(result, work, *needles)
    assert not work.exists(), "nothing may be written for a config error"


def test_unknown_key_in_yaml_file(tmp_path: Path) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text(f"work_dir: {tmp_path / 'work'}\ntrain:\n  epochs: 2\n  learning_rate: 0.1\n")
    result = run_sslpipe("run", "--config", str(config), cwd=tmp_path, timeout=120)
    _assert_clean_failure(result, tmp_path / "work", "unknown key 'train.learning_rate'")


def test_yaml_code_execution_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    config = tmp_path / "cfg.yaml"
    config.write_text(f'work_dir: !!python/object/apply:os.system ["touch {marker}"]\n')
    result = run_sslpipe("run", "--config", str(config), cwd=tmp_path, timeout=120)
    _assert_clean_failure(result, tmp_path / "work", "not valid YAML")
    assert not marker.exists()


def test_missing_source_folder(tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = run_sslpipe(
        "run", "--set", f"work_dir={work}", "--set", "ingest.source.kind=folder",
        "--set", f"ingest.source.path={tmp_path / 'nope'}", cwd=tmp_path, timeout=120,
    )  # fmt: skip
    _assert_clean_failure(result, work, "does not exist", "ingest.source.path")
    assert not work.exists()


def test_empty_source_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    work = tmp_path / "work"
    result = run_sslpipe(
        "run", "--set", f"work_dir={work}", "--set", "ingest.source.kind=folder",
        "--set", f"ingest.source.path={tmp_path / 'empty'}", cwd=tmp_path, timeout=120,
    )  # fmt: skip
    _assert_clean_failure(result, work, "holds no files with an image extension")
    assert not work.exists()


def test_more_workers_than_cpus(tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = run_sslpipe(
        "run", "--set", f"work_dir={work}", "--set", "ray.num_workers=64", "--set", "train.batch_size=256",
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    _assert_clean_failure(result, work, "ray.num_workers=64", "lower ray.num_workers")
    assert not work.exists()


@pytest.mark.slow
def test_zero_images_after_ingestion(tmp_path: Path) -> None:
    """Every file is broken: ingestion reports them, the run stops before Ray, nothing reaches MLflow."""
    src = tmp_path / "broken"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"")
    (src / "b.png").write_bytes(b"this is not a png")
    (src / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)
    work = tmp_path / "work"
    result = run_sslpipe(
        "run", "--set", f"work_dir={work}", "--set", "ingest.source.kind=folder",
        "--set", f"ingest.source.path={src}", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    _assert_clean_failure(result, work, "0 usable images", "rejects.jsonl", one_line=False)
    assert not (work / "ray_results").exists(), "pretraining must not start"
    rejects = list(work.glob("shards/*/rejects.jsonl"))
    assert len(rejects) == 1 and len(rejects[0].read_text().splitlines()) == 3


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = run_sslpipe("--help", cwd=tmp_path, timeout=60)
    assert result.returncode == 0
    for command in ("run", "ingest", "pretrain", "evaluate", "register", "embed", "config"):
        assert command in result.stdout
