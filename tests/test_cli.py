"""The ``sslpipe`` command line: bad input fails fast with one line naming the problem and the fix, and
writes nothing to MLflow; every registered command is listed, documented and answers ``--help``."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer

from conftest import REPO, run_sslpipe


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


def _registered_commands() -> dict[str, Any]:
    """The commands of the ``sslpipe`` console script, read from the Typer app of the module that
    ``[project.scripts]`` in pyproject.toml points it at."""
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["sslpipe"]
    module = importlib.import_module(target.partition(":")[0])
    (app,) = [value for value in vars(module).values() if isinstance(value, typer.Typer)]
    return dict(typer.main.get_command(app).commands)  # name -> the (click) command that runs


COMMANDS = _registered_commands()


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = run_sslpipe("--help", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    panel = result.stdout.split("─ Commands ─", 1)[1]
    listed = re.findall(r"^│ (\S+) ", panel, flags=re.MULTILINE)  # a row's first column; wrapped lines start blank
    assert listed == [name for name, command in COMMANDS.items() if not command.hidden]


def _opts(command: Any) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")}


def _shows(opt: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text) is not None  # "-f", not the f of "--force"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_shows_its_own_help(tmp_path: Path, name: str) -> None:
    """``sslpipe <command> --help`` answers with that command's usage, description, options and arguments,
    and no option that only another command has."""
    command = COMMANDS[name]
    result = run_sslpipe(name, "--help", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"Usage: sslpipe {name} [OPTIONS]" in out
    flat = " ".join(out.replace("│", " ").split())  # undo rich's panels and line wrapping
    assert " ".join(command.help.split("\n\n")[0].split()) in flat
    own = _opts(command)
    assert own and all(_shows(opt, out) for opt in own), (own, out)
    others = set().union(*(_opts(cmd) for other, cmd in COMMANDS.items() if other != name)) - own
    assert not [opt for opt in others if _shows(opt, out)], out
    for arg in (p for p in command.params if p.param_type_name == "argument"):
        assert re.search(rf"\b{arg.name}\b", out), (arg.name, out)


def _documented_commands() -> set[str]:
    """Sub-commands that README.md and docs/*.md show as ``sslpipe <command>`` in shell code: bash blocks
    and inline code spans (``sslpipe pretrain | evaluate | register`` names three)."""
    found: set[str] = set()
    for doc in (REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))):
        text = doc.read_text()
        code = re.findall(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
        prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
        code += re.findall(r"`([^`\n]+)`", prose)
        for snippet in code:
            for first, rest in re.findall(r"(?<![\w:@.-])sslpipe ([a-z]+)((?: \| [a-z]+)*)", snippet):
                found |= {first, *re.findall(r"[a-z]+", rest)}
    return found


def test_every_command_is_documented_and_every_documented_command_exists() -> None:
    documented = _documented_commands()
    assert not set(COMMANDS) - documented, "commands missing from README.md and docs/"
    assert not documented - set(COMMANDS), "documented commands the CLI does not have"
