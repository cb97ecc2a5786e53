"""Every bad or odd image is handled: rejected with its reason, or kept in the right form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from corpus import bad_and_odd, jpeg_folder, write_tree

from sslcore.config import IngestConfig, load_config
from sslcore.data.ingest import IngestError, ingest
from sslcore.data.manifest import read_manifest
from sslcore.data.stream import iter_tar_samples, shard_urls


def _cfg(path: Path, *overrides: str) -> IngestConfig:
    base = ["ingest.source.kind=folder", f"ingest.source.path={path}", "ingest.workers=1"]
    return load_config(None, base + list(overrides)).ingest


def test_corpus_of_bad_and_odd_images(tmp_path: Path) -> None:
    corpus = bad_and_odd()
    write_tree(tmp_path / "src", {name: data for name, (data, _, _) in corpus.items()})
    result = ingest(
        _cfg(tmp_path / "src", "ingest.max_pixels=10000000", "ingest.max_reject_fraction=0.9"), tmp_path / "out"
    )
    m = result.manifest
    folder = Path(result.folder)

    rejects = [json.loads(line) for line in (folder / "rejects.jsonl").read_text().splitlines()]
    got = {r["source_key"]: r["reason"] for r in rejects}
    expected = {name: reason for name, (_, reason, _) in corpus.items() if reason not in (None, "duplicate")}
    assert got == expected
    assert all(r["detail"] or r["reason"] == "empty_file" for r in rejects)

    duplicates = [json.loads(line) for line in (folder / "duplicates.jsonl").read_text().splitlines()]
    assert [d["source_key"] for d in duplicates] == ["ok/z-copy-of-plain.jpg"]
    assert m.duplicates == 1
    assert m.rejects == {reason: list(expected.values()).count(reason) for reason in set(expected.values())}
    assert m.inputs == len(corpus)

    kept = {}
    for split in m.splits:
        for sample in iter_tar_samples(shard_urls(m, folder, split)):
            meta = json.loads(sample["json"])
            kept[meta["source_key"]] = meta
    expected_kept = {name: mode for name, (_, reason, mode) in corpus.items() if reason is None}
    assert {k: v["mode"] for k, v in kept.items()} == expected_kept
    rotated = kept["odd/exif-rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (24, 40)
    assert (rotated["original_width"], rotated["original_height"]) == (40, 24)
    assert m.total_samples == len(expected_kept)


def test_originals_kept_byte_for_byte_unless_a_change_is_needed(tmp_path: Path) -> None:
    corpus = bad_and_odd()
    names = ["ok/plain.jpg", "ok/plain.png", "odd/cmyk.jpg"]
    write_tree(tmp_path / "src", {n: corpus[n][0] for n in names})
    result = ingest(_cfg(tmp_path / "src", "ingest.test_fraction=0"), tmp_path / "out")
    stored = {}
    for sample in iter_tar_samples(shard_urls(result.manifest, result.folder, "train")):
        meta = json.loads(sample["json"])
        ext = next(e for e in ("jpg", "png") if e in sample)
        stored[meta["source_key"]] = (ext, bytes(sample[ext]))
    assert stored["ok/plain.jpg"] == ("jpg", corpus["ok/plain.jpg"][0])
    assert stored["ok/plain.png"] == ("png", corpus["ok/plain.png"][0])
    assert stored["odd/cmyk.jpg"][0] == "png" and stored["odd/cmyk.jpg"][1] != corpus["odd/cmyk.jpg"][0]


def test_resize_and_mode(tmp_path: Path) -> None:
    jpeg_folder(tmp_path / "src", 4, size=(120, 60))
    cfg = _cfg(tmp_path / "src", "ingest.max_short_side=30", "ingest.mode=L", "ingest.test_fraction=0")
    result = ingest(cfg, tmp_path / "out")
    for sample in iter_tar_samples(shard_urls(result.manifest, result.folder, "train")):
        meta = json.loads(sample["json"])
        assert (meta["width"], meta["height"], meta["mode"]) == (60, 30, "L")
        assert (meta["original_width"], meta["original_height"]) == (120, 60)
    assert result.manifest.image_mode == "L"


def test_reject_threshold_fails_after_writing_the_report(tmp_path: Path) -> None:
    corpus = bad_and_odd()
    bad = {n: d for n, (d, r, _) in corpus.items() if r not in (None, "duplicate")}
    write_tree(tmp_path / "src", {**bad, "ok/plain.jpg": corpus["ok/plain.jpg"][0]})
    with pytest.raises(IngestError, match=r"rejected \(\d+% > ingest.max_reject_fraction=0.5\)") as info:
        ingest(_cfg(tmp_path / "src"), tmp_path / "out")
    assert "rejects.jsonl" in str(info.value)
    (folder,) = (tmp_path / "out").iterdir()
    assert len((folder / "rejects.jsonl").read_text().splitlines()) == len(bad)
    assert not (folder / "manifest.json").exists(), "a failed ingestion must not look complete"


def test_labels_from_csv_and_jsonl(tmp_path: Path) -> None:
    jpeg_folder(tmp_path / "src", 6, classes=1)
    files = sorted(p.relative_to(tmp_path / "src").as_posix() for p in (tmp_path / "src").rglob("*.jpg"))
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\n" + "".join(f"{f},{'cat' if i % 2 else 'dog'}\n" for i, f in enumerate(files)))
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"path": f, "label": "cat" if i % 2 else "dog"}) + "\n" for i, f in enumerate(files))
    )
    results = []
    for labels_file in (csv_path, jsonl):
        cfg = _cfg(tmp_path / "src", "ingest.source.labels=file", f"ingest.source.labels_file={labels_file}")
        results.append(ingest(cfg, tmp_path / f"out-{labels_file.suffix}").manifest)
    for m in results:
        assert m.label_names == ("cat", "dog")
        counts = {}
        for split in m.splits.values():
            for name, n in split.class_counts.items():
                counts[name] = counts.get(name, 0) + n
        assert counts == {"cat": 3, "dog": 3}
    assert results[0].splits == results[1].splits


def test_parallel_workers_give_identical_bytes(tmp_path: Path) -> None:
    from ingest_helpers import tree_digest

    jpeg_folder(tmp_path / "src", 150, classes=3)
    serial = ingest(_cfg(tmp_path / "src", "ingest.chunk_size=16", "ingest.shard_max_samples=20"), tmp_path / "serial")
    parallel = ingest(
        _cfg(tmp_path / "src", "ingest.chunk_size=16", "ingest.shard_max_samples=20", "ingest.workers=2"),
        tmp_path / "parallel",
    )
    assert serial.manifest.fingerprint == parallel.manifest.fingerprint
    assert tree_digest(serial.folder) == tree_digest(parallel.folder)
    assert len(serial.manifest.split("train").shards) > 3
    again = ingest(_cfg(tmp_path / "src", "ingest.chunk_size=16", "ingest.shard_max_samples=20"), tmp_path / "serial")
    assert again.reused
    assert read_manifest(serial.folder) == serial.manifest


def test_shards_read_back_with_webdataset_and_tarfile(tmp_path: Path) -> None:
    import tarfile

    import webdataset as wds

    jpeg_folder(tmp_path / "src", 30, classes=3)
    cfg = _cfg(
        tmp_path / "src", "ingest.source.labels=subfolder", "ingest.shard_max_samples=8", "ingest.test_fraction=0"
    )
    result = ingest(cfg, tmp_path / "out")
    urls = shard_urls(result.manifest, result.folder, "train")
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"))
    assert len(samples) == 30
    assert {s["cls"] for s in samples} == {0, 1, 2}
    assert all(s["jpg"].size == (48, 40) and s["json"]["sha256"] for s in samples)
    for url in urls:
        with tarfile.open(url) as tar:
            members = tar.getmembers()
            assert all(m.isreg() and m.mtime == 0 and m.mode == 0o444 for m in members)
            assert [m.name.split(".")[1] for m in members[:3]] == ["cls", "jpg", "json"]
