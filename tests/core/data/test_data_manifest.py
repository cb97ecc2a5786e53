"""sslcore.data.manifest: atomic, deterministic writes; strict reads that name what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sslcore.data.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    ShardInfo,
    SplitInfo,
    read_manifest,
    write_manifest,
)


def _manifest() -> Manifest:
    shard = ShardInfo(name="train-000000.tar", samples=3, bytes=1024, sha256="a" * 64)
    return Manifest(
        fingerprint="f" * 64,
        source_fingerprint="s" * 64,
        source={"kind": "digits"},
        config={"shard_max_samples": 256},
        image_mode="L",
        label_names=("0", "1"),
        inputs=5,
        rejects={"too_small": 1},
        duplicates=1,
        splits={
            "train": SplitInfo(samples=3, shards=(shard,), class_counts={"0": 2, "1": 1}),
            "test": SplitInfo(samples=0, shards=()),
        },
    )


def _write_raw(folder: Path, data: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_roundtrip_and_properties(tmp_path: Path) -> None:
    m = _manifest()
    path = write_manifest(m, str(tmp_path))
    assert Path(path) == tmp_path / MANIFEST_NAME
    assert read_manifest(tmp_path) == m
    assert read_manifest(path) == m  # the file itself works too
    assert (m.total_samples, m.num_classes, m.inputs, m.duplicates) == (3, 2, 5, 1)
    assert m.split("train").samples == 3


def test_write_is_deterministic_and_leaves_no_temp_file(tmp_path: Path) -> None:
    write_manifest(_manifest(), str(tmp_path / "a"))
    write_manifest(_manifest(), str(tmp_path / "b"))
    assert (tmp_path / "a" / MANIFEST_NAME).read_bytes() == (tmp_path / "b" / MANIFEST_NAME).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [MANIFEST_NAME]


def test_write_replaces_an_existing_manifest(tmp_path: Path) -> None:
    _write_raw(tmp_path, "{ stale")
    write_manifest(_manifest(), str(tmp_path))
    assert read_manifest(tmp_path) == _manifest()
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME]


def test_unknown_split_names_the_ones_present() -> None:
    with pytest.raises(ManifestError, match=r"no 'val' split .*train, test"):
        _manifest().split("val")


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no manifest at .*run the ingest stage first"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("text", ["{ not json", "", '{"fingerprint": '])
def test_bad_json(tmp_path: Path, text: str) -> None:
    _write_raw(tmp_path, text)
    with pytest.raises(ManifestError, match="is not valid JSON"):
        read_manifest(tmp_path)


def test_non_utf8_bytes(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ManifestError, match="is not valid JSON"):
        read_manifest(tmp_path)


def _valid_dict() -> dict[str, Any]:
    return _manifest().model_dump(mode="json")


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d.pop("splits"), "'splits'"),
        (lambda d: d.pop("fingerprint"), "'fingerprint'"),
        (lambda d: d["splits"]["train"]["shards"][0].pop("sha256"), "'splits.train.shards.0.sha256'"),
        (lambda d: d["splits"]["train"]["shards"][0].update(sha256="abc"), "'splits.train.shards.0.sha256'"),
        (lambda d: d["splits"]["train"].update(samples=-1), "'splits.train.samples'"),
        (lambda d: d.update(surprise=1), "'surprise'"),
        (lambda d: d.update(duplicates=-1), "'duplicates'"),
    ],
)
def test_malformed_manifest_names_the_field(tmp_path: Path, mutate: Any, where: str) -> None:
    data = _valid_dict()
    mutate(data)
    _write_raw(tmp_path, data)
    with pytest.raises(ManifestError, match=f"is malformed at {where}"):
        read_manifest(tmp_path)


def test_other_format_version(tmp_path: Path) -> None:
    data = _valid_dict()
    data["format_version"] = 2
    _write_raw(tmp_path, data)
    with pytest.raises(ManifestError, match="format_version 2"):
        read_manifest(tmp_path)


@pytest.mark.parametrize(
    "name", ["../train-000000.tar", "/etc/passwd", "sub/train.tar", ".hidden.tar", "..", "a\\b.tar"]
)
def test_shard_names_must_stay_in_the_folder(tmp_path: Path, name: str) -> None:
    data = _valid_dict()
    data["splits"]["train"]["shards"][0]["name"] = name
    _write_raw(tmp_path, data)
    with pytest.raises(ManifestError, match="outside its folder"):
        read_manifest(tmp_path)
