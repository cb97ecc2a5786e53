"""sslcore.data.ingest: digits and folder sources into shards plus a manifest, deterministically."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sslcore_data_testing import (
    DIGITS_SHARD_SAMPLES,
    digits_config,
    encode,
    ingest_digits_once,
    noise_image,
    write_bytes,
)

from sslcore.config import FolderSource, IngestConfig
from sslcore.data.ingest import (
    DUPLICATES_NAME,
    JOURNAL_DIR,
    REJECTS_NAME,
    IngestError,
    IngestResult,
    ingest,
    ingest_fingerprint,
    split_of,
)
from sslcore.data.manifest import MANIFEST_NAME, read_manifest
from sslcore.data.sources import SourceError, open_source
from sslcore.data.stream import iter_tar_samples, shard_urls


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> IngestResult:
    return ingest_digits_once(tmp_path_factory)


def _folder_cfg(path: Path, max_reject_fraction: float = 0.5, **kwargs: object) -> IngestConfig:
    source = FolderSource(path=str(path), **kwargs)  # type: ignore[arg-type]
    return IngestConfig(source=source, max_reject_fraction=max_reject_fraction)


def _snapshot(folder: str | Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- digits


def test_digits_counts_and_labels(digits: IngestResult) -> None:
    m = digits.manifest
    assert not digits.reused
    assert m.inputs == 1797
    assert m.total_samples + m.duplicates + sum(m.rejects.values()) == 1797
    assert m.duplicates == 0  # the digits hold no byte-identical images
    assert m.total_samples == 1797
    assert set(m.splits) == {"train", "test"}
    assert m.label_names == tuple(str(i) for i in range(10))
    assert m.image_mode == "L"
    assert m.rejects == {}
    assert 0.15 < m.splits["test"].samples / 1797 < 0.25  # test_fraction 0.2, by content hash
    expected = Counter(str(t) for t in load_digits().target)
    got = Counter(m.splits["train"].class_counts) + Counter(m.splits["test"].class_counts)
    assert got == expected


def test_manifest_matches_the_shards(digits: IngestResult) -> None:
    m = digits.manifest
    folder = Path(digits.folder)
    on_disk = sorted(p.name for p in folder.iterdir())
    listed = sorted(s.name for split in m.splits.values() for s in split.shards)
    # nothing else: no temp files, no resume journal left behind
    assert on_disk == sorted([*listed, MANIFEST_NAME, REJECTS_NAME, DUPLICATES_NAME])
    for name, split in m.splits.items():
        assert split.samples == sum(s.samples for s in split.shards)
        assert sum(split.class_counts.values()) == split.samples
        assert [s.name for s in split.shards] == [f"{name}-{i:06d}.tar" for i in range(len(split.shards))]
        for shard in split.shards:
            path = folder / shard.name
            assert shard.sha256 == _sha256(path)
            assert shard.bytes == path.stat().st_size
            assert 0 < shard.samples <= DIGITS_SHARD_SAMPLES
            assert sum(1 for _ in iter_tar_samples([str(path)])) == shard.samples
    assert len(m.splits["train"].shards) > 2  # several shards, as the stream tests need
    assert (folder / REJECTS_NAME).read_text() == ""
    assert (folder / DUPLICATES_NAME).read_text() == ""


def test_samples_carry_label_and_metadata(digits: IngestResult) -> None:
    sample = next(iter_tar_samples(shard_urls(digits.manifest, digits.folder, "train")))
    meta = json.loads(sample["json"])
    assert meta["source_key"].startswith("digits/")
    assert (meta["width"], meta["height"], meta["mode"]) == (8, 8, "L")
    assert str(int(sample["cls"])) == meta["label"]
    assert split_of(meta["sha256"], 0.2) == "train"


def test_split_of_is_a_threshold_on_the_hash() -> None:
    assert split_of("00000000" + "0" * 56, 0.2) == "test"
    assert split_of("33333332" + "0" * 56, 0.2) == "test"  # 0x33333332 / 2^32 < 0.2
    assert split_of("33333334" + "0" * 56, 0.2) == "train"
    assert split_of("ffffffff" + "0" * 56, 0.2) == "train"
    assert split_of("00000000" + "0" * 56, 0.0) == "train"
    assert split_of("40000000" + "0" * 56, 0.2, val_fraction=0.1) == "val"  # 0.25 in [0.2, 0.3)
    assert split_of("50000000" + "0" * 56, 0.2, val_fraction=0.1) == "train"


def test_ingest_is_byte_deterministic(digits: IngestResult, tmp_path: Path) -> None:
    again = ingest(digits_config(), str(tmp_path))
    assert Path(again.folder).name == Path(digits.folder).name  # the fingerprint, not the root, names it
    assert again.folder != digits.folder
    assert again.manifest == digits.manifest
    assert _snapshot(again.folder) == _snapshot(digits.folder)


def test_reingest_reuses_without_rewriting(digits: IngestResult) -> None:
    folder = Path(digits.folder)
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.iterdir()}
    calls: list[tuple[int, int, int | None]] = []
    again = ingest(digits_config(), str(folder.parent), progress=lambda *a: calls.append(a))
    assert again.reused
    assert again.folder == digits.folder
    assert again.manifest == digits.manifest
    assert calls == []
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.iterdir()} == before


# --------------------------------------------------------------------------- folders


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> Path:
    """Two good images, three bad ones and a file that is not an image at all."""
    root = tmp_path / "images"
    write_bytes(root / "a.png", encode(noise_image(16, 16, seed=1), "PNG"))
    write_bytes(root / "b.jpg", np.random.default_rng(0).bytes(500))
    raw = encode(noise_image(32, 32, seed=2), "PNG")
    write_bytes(root / "c.png", raw[: len(raw) // 2])
    write_bytes(root / "d.png", encode(noise_image(4, 4, seed=3), "PNG"))
    write_bytes(root / "e.empty.gif", b"")
    write_bytes(root / "notes.txt", b"not an image")
    write_bytes(root / "sub" / "f.JPG", encode(noise_image(20, 12, seed=4), "JPEG"))
    return root


def test_folder_with_corrupt_images_records_rejects(mixed_folder: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int, int | None]] = []
    cfg = _folder_cfg(mixed_folder, max_reject_fraction=1.0)
    result = ingest(cfg, str(tmp_path / "shards"), progress=lambda *a: calls.append(a))
    m = result.manifest
    assert m.total_samples == 2
    assert m.label_names is None
    assert m.image_mode == "RGB"
    assert m.rejects == {"empty_file": 1, "not_an_image": 1, "too_small": 1, "truncated_or_corrupt": 1}
    lines = [json.loads(line) for line in (Path(result.folder) / REJECTS_NAME).read_text().splitlines()]
    assert all(r["kind"] == "reject" and r["detail"] for r in lines if r["reason"] != "empty_file")
    assert [r["key"] for r in lines] == sorted(r["key"] for r in lines)
    assert {(r["source_key"], r["reason"]) for r in lines} == {
        ("b.jpg", "not_an_image"),
        ("c.png", "truncated_or_corrupt"),
        ("d.png", "too_small"),
        ("e.empty.gif", "empty_file"),
    }
    assert calls[-1] == (6, 4, 6)  # every image-named file, notes.txt excluded
    keys = set()
    for split in m.splits:
        for sample in iter_tar_samples(shard_urls(m, result.folder, split)):
            assert "cls" not in sample
            keys.add(json.loads(sample["json"])["source_key"])
    assert keys == {"a.png", "sub/f.JPG"}


def test_folder_of_only_corrupt_images_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    write_bytes(root / "x.jpg", b"\xff\xd8 not really")
    write_bytes(root / "y.png", b"")
    with pytest.raises(IngestError, match="0 usable images") as info:
        ingest(_folder_cfg(root), str(tmp_path / "shards"))
    assert REJECTS_NAME in str(info.value)
    assert not list((tmp_path / "shards").rglob(MANIFEST_NAME))


@pytest.mark.parametrize("kind", ["missing", "empty", "no-images"])
def test_unusable_folder_is_a_source_error(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "src"
    if kind != "missing":
        root.mkdir()
    if kind == "no-images":
        write_bytes(root / "readme.md", b"hello")
    with pytest.raises(SourceError, match=r"ingest\.source\.path"):
        ingest(_folder_cfg(root), str(tmp_path / "shards"))
    assert not (tmp_path / "shards").exists()


def test_imagefolder_labels(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    for i in range(3):
        write_bytes(root / "cat" / f"{i}.png", encode(noise_image(12, 12, seed=10 + i), "PNG"))
    for i in range(2):
        write_bytes(root / "dog" / f"{i}.png", encode(noise_image(12, 12, seed=20 + i), "PNG"))
    write_bytes(root / "stray.png", encode(noise_image(12, 12, seed=30), "PNG"))
    write_bytes(root / "emptydir" / "notes.txt", b"")  # not a class: holds no images
    result = ingest(_folder_cfg(root, labels="subfolder"), str(tmp_path / "shards"))
    m = result.manifest
    assert m.label_names == ("cat", "dog")
    counts = Counter(m.splits["train"].class_counts) + Counter(m.splits["test"].class_counts)
    assert counts == {"cat": 3, "dog": 2}
    assert m.total_samples == 6
    seen = {}
    for split in m.splits:
        for sample in iter_tar_samples(shard_urls(m, result.folder, split)):
            meta = json.loads(sample["json"])
            seen[meta["source_key"]] = int(sample["cls"]) if "cls" in sample else None
    assert seen == {"cat/0.png": 0, "cat/1.png": 0, "cat/2.png": 0, "dog/0.png": 1, "dog/1.png": 1, "stray.png": None}


def test_config_and_content_changes_give_a_new_folder(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write_bytes(root / "a.png", encode(noise_image(16, 16), "PNG"))
    shards = str(tmp_path / "shards")
    first = ingest(_folder_cfg(root), shards)
    other_cfg = ingest(_folder_cfg(root).model_copy(update={"min_side": 9}), shards)
    write_bytes(root / "b.png", encode(noise_image(16, 16, seed=5), "PNG"))
    more_data = ingest(_folder_cfg(root), shards)
    assert len({first.folder, other_cfg.folder, more_data.folder}) == 3
    assert not other_cfg.reused and not more_data.reused
    assert more_data.manifest.total_samples == 2


def test_leftovers_of_an_interrupted_run_are_replaced(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write_bytes(root / "a.png", encode(noise_image(16, 16), "PNG"))
    cfg = _folder_cfg(root)
    fingerprint = ingest_fingerprint(open_source(cfg.source).fingerprint(), cfg)
    stale = tmp_path / "shards" / fingerprint[:16]
    write_bytes(stale / "train-000000.tar", b"half a shard")
    write_bytes(stale / ".train-000001.tar.tmp", b"junk")
    result = ingest(cfg, str(tmp_path / "shards"))
    assert Path(result.folder) == stale and not result.reused
    assert not (stale / ".train-000001.tar.tmp").exists()
    assert read_manifest(stale) == result.manifest
    for split in result.manifest.splits.values():
        for shard in split.shards:
            assert _sha256(stale / shard.name) == shard.sha256
    assert not (stale / JOURNAL_DIR).exists()


def test_manifest_is_written_atomically(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write_bytes(root / "a.png", encode(noise_image(16, 16), "PNG"))
    result = ingest(_folder_cfg(root), str(tmp_path / "shards"))
    folder = Path(result.folder)
    assert (folder / MANIFEST_NAME).is_file()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert read_manifest(result.folder) == result.manifest


def test_exact_duplicates_are_kept_once(tmp_path: Path) -> None:
    root = tmp_path / "src"
    raw = encode(noise_image(16, 16, seed=7), "PNG")
    for name in ("a.png", "b.png", "c/d.png"):
        write_bytes(root / name, raw)
    write_bytes(root / "e.png", encode(noise_image(16, 16, seed=8), "PNG"))
    result = ingest(_folder_cfg(root), str(tmp_path / "shards"))
    m = result.manifest
    assert (m.inputs, m.total_samples, m.duplicates) == (4, 2, 2)
    lines = [json.loads(line) for line in (Path(result.folder) / DUPLICATES_NAME).read_text().splitlines()]
    assert [r["source_key"] for r in lines] == ["b.png", "c/d.png"]  # the first occurrence is kept
    assert {r["sha256"] for r in lines} == {hashlib.sha256(raw).hexdigest()}
    no_dedup = ingest(_folder_cfg(root).model_copy(update={"dedup": False}), str(tmp_path / "shards"))
    assert (no_dedup.manifest.total_samples, no_dedup.manifest.duplicates) == (4, 0)
