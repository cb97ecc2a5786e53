"""sslcore.config: strict, frozen sections; one-line errors that name the full key and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from sslcore.config import (
    ConfigError,
    DigitsSource,
    FolderSource,
    PipelineConfig,
    load_config,
    parse_override,
)


def test_defaults_validate() -> None:
    cfg = load_config(None)
    assert cfg == PipelineConfig()
    assert isinstance(cfg.ingest.source, DigitsSource)
    assert cfg.method.name == "simclr"
    assert cfg.train.batch_size % cfg.ray.num_workers == 0


def test_sections_are_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.train.epochs = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        cfg.train = cfg.train  # type: ignore[misc]
    assert cfg.train.model_copy(update={"epochs": 3}).epochs == 3  # copies are the way to change
    assert cfg.train.epochs == 40


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.bach_size=3"], "unknown key 'train.bach_size' (did you mean 'train.batch_size'?)"),
        (["trian.epochs=1"], "unknown key 'trian' (did you mean 'train'?)"),
        (["method.temprature=0.1"], "did you mean 'method.temperature'?"),
        (
            ["ingest.source.kind=folder", "ingest.source.path=/data", "ingest.source.pathh=/x"],
            "unknown key 'ingest.source.pathh' (did you mean 'ingest.source.path'?)",
        ),
        (
            ["model.zzzzzz=1"],
            "unknown key 'model.zzzzzz' (valid keys: backbone, small_image_stem, stem_pool, image_size, patch_size, "
            "widths)",
        ),
    ],
)
def test_unknown_key_names_the_full_dotted_key(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["ingest.source.kind=digits", "ingest.source.path=/data"], "ingest.source.path"),
        (["method.name=dino", "method.projection_dim=16"], "method.projection_dim"),
    ],
)
def test_hint_never_suggests_the_rejected_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown key '{key}'") as info:
        load_config(None, overrides)
    assert f"did you mean '{key}'" not in str(info.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epochs=abc", "train.epochs: Input should be a valid integer"),
        ("train.epochs=0", "train.epochs: Input should be greater than 0"),
        ("train.lr=-1", "train.lr"),
        ("ray.use_gpu=maybe", "ray.use_gpu: Input should be a valid boolean"),
        ("train=3", "train: Input should be a valid dictionary"),
        ("augment.crop_scale=[0.9, 0.5]", "augment.crop_scale"),
        ("ingest.test_fraction=1.0", "ingest.test_fraction"),
        ("ingest.image_format=gif", "ingest.image_format"),
        ("train.optimizer=lamb", "train.optimizer"),
    ],
)
def test_wrong_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid config: ") as info:
        load_config(None, [override])
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("item", "key", "value"),
    [
        ("train.epochs=5", "train.epochs", 5),
        (" train.epochs = 5", "train.epochs", 5),
        ("train.lr=0.5", "train.lr", 0.5),
        ("train.amp=false", "train.amp", False),
        ("ray.use_gpu=true", "ray.use_gpu", True),
        ("augment.crop_scale=[0.5, 1.0]", "augment.crop_scale", [0.5, 1.0]),
        ("model.patch_size=null", "model.patch_size", None),
        ("mlflow.experiment=my exp", "mlflow.experiment", "my exp"),
        ("ray.address=", "ray.address", ""),
        ("mlflow.alias=a=b", "mlflow.alias", "a=b"),
    ],
)
def test_parse_override_reads_values_as_yaml(item: str, key: str, value: Any) -> None:
    assert parse_override(item) == (key, value)


def test_overrides_reach_the_typed_config() -> None:
    cfg = load_config(
        None,
        [
            "train.epochs=5",
            "train.amp=false",
            "augment.crop_scale=[0.5, 1.0]",
            "model.patch_size=4",
            "train.lr=1e-3",  # YAML 1.1 reads this as a string; pydantic parses it
        ],
    )
    assert cfg.train.epochs == 5
    assert cfg.train.amp is False
    assert cfg.augment.crop_scale == (0.5, 1.0)
    assert cfg.model.patch_size == 4
    assert cfg.train.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["noequals"], "expected KEY=VALUE"),
        (["=3"], "expected KEY=VALUE"),
        (["train.epochs=[1"], "value is not valid YAML"),
        (["train.epochs=3", "train.epochs.x=1"], "'epochs' is a value, not a section"),
    ],
)
def test_malformed_overrides(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_numeric_looking_value_for_a_string_key() -> None:
    cfg = load_config(None, ["mlflow.experiment=2024"])
    assert cfg.mlflow.experiment == "2024"


# --------------------------------------------------------------------------- YAML files


def test_yaml_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  epochs: 3\n  batch_size: 64\nmethod:\n  temperature: 0.3\n")
    cfg = load_config(path)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.method.temperature) == (3, 64, 0.3)
    assert load_config(path, ["train.epochs=7"]).train.epochs == 7  # --set wins over the file


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == PipelineConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- train\n- ray\n", "must hold a mapping of sections, got list"),
        ("just a string\n", "must hold a mapping of sections, got str"),
        ("train: [1,\n", "is not valid YAML"),
        ("train:\n  epochs: 3\n bad_indent: 1\n", "is not valid YAML"),
    ],
)
def test_bad_yaml_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "template",
    [
        '!!python/object/apply:os.system ["touch {marker}"]\n',
        'train:\n  epochs: !!python/object/apply:os.system ["touch {marker}"]\n',
    ],
)
def test_yaml_python_tags_are_not_executed(tmp_path: Path, template: str) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.yaml"
    path.write_text(template.format(marker=marker))
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(path)
    assert not marker.exists()


# --------------------------------------------------------------------------- cross-field checks


def test_batch_size_must_divide_by_workers() -> None:
    with pytest.raises(ConfigError, match=r"train.batch_size \(3\) must be divisible by ray.num_workers \(2\)"):
        load_config(None, ["train.batch_size=3"])
    assert load_config(None, ["train.batch_size=3", "ray.num_workers=3"]).train.batch_size == 3


def test_unknown_timm_backbone_suggests_names() -> None:
    with pytest.raises(ConfigError, match="unknown timm model 'resnet181'") as info:
        load_config(None, ["model.backbone=resnet181"])
    assert "model.backbone" in str(info.value)
    assert "resnet18" in str(info.value).split("did you mean", 1)[1]


def test_folder_source_requires_path() -> None:
    with pytest.raises(ConfigError, match=r"ingest\.source\.path: Field required"):
        load_config(None, ["ingest.source.kind=folder"])
    cfg = load_config(None, ["ingest.source.kind=folder", "ingest.source.path=/data"])
    assert isinstance(cfg.ingest.source, FolderSource)
    assert (cfg.ingest.source.path, cfg.ingest.source.labels) == ("/data", "none")


def test_unknown_source_kind_lists_the_kinds() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["ingest.source.kind=s3"])
    message = str(info.value)
    assert "ingest.source" in message
    assert "'s3'" in message
    assert "'digits', 'folder'" in message


def test_shard_dir_defaults_under_work_dir(tmp_path: Path) -> None:
    cfg = load_config(None, [f"work_dir={tmp_path}"])
    assert cfg.shard_dir == str(tmp_path.resolve() / "shards")
    cfg = load_config(None, [f"work_dir={tmp_path}", "ingest.output=s3://bucket/shards"])
    assert cfg.shard_dir == "s3://bucket/shards"


def test_importing_the_config_leaves_the_warnings_filters_alone() -> None:
    """Pydantic's 'Field name "register"' warning is silenced around the two classes only, not for
    every program that imports sslcore."""
    code = (
        "import warnings; before = list(warnings.filters)\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always'); import sslcore.config\n"
        "assert not seen, [str(w.message) for w in seen]\n"
        "assert list(warnings.filters) == before, 'the import changed the warnings filters'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
