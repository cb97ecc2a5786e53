"""The other sources: S3 prefixes, Fashion-MNIST IDX files, and existing webdataset shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from corpus import jpeg, jpeg_folder
from ingest_helpers import tree_digest

from conftest import write_idx
from sslcore.config import StorageConfig, load_config
from sslcore.data.ingest import ingest
from sslcore.data.manifest import read_manifest
from sslcore.data.sources import SourceError
from sslcore.data.stream import iter_tar_samples, shard_urls
from sslcore.storage import filesystem


def _folder(path: str, *extra: str):
    return load_config(None, ["ingest.source.kind=folder", f"ingest.source.path={path}", "ingest.workers=1", *extra])


@pytest.mark.slow  # starts a service (Prefect's test server or moto's S3)
def test_s3_prefix_to_s3_output_matches_local(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    src = jpeg_folder(tmp_path / "src", 40, classes=2)
    storage = StorageConfig(endpoint_url=s3_endpoint)
    fs, _ = filesystem(f"s3://{s3_bucket}", storage)
    fs.put(str(src), f"{s3_bucket}/raw/images", recursive=True)

    cfg = _folder(f"s3://{s3_bucket}/raw/images", "ingest.source.labels=subfolder").ingest
    remote = ingest(cfg, f"s3://{s3_bucket}/shards", storage=storage)
    local = ingest(_folder(str(src), "ingest.source.labels=subfolder").ingest, tmp_path / "local")

    assert remote.folder.startswith(f"s3://{s3_bucket}/shards/")
    assert read_manifest(remote.folder, storage).splits == local.manifest.splits
    shards = {k: v for k, v in tree_digest(remote.folder, storage).items() if k.endswith(".tar")}
    assert shards == {k: v for k, v in tree_digest(local.folder).items() if k.endswith(".tar")}
    samples = list(iter_tar_samples(shard_urls(remote.manifest, remote.folder, "train"), storage))
    assert len(samples) == remote.manifest.split("train").samples
    assert ingest(cfg, f"s3://{s3_bucket}/shards", storage=storage).reused


@pytest.mark.slow  # starts a service (Prefect's test server or moto's S3)
def test_s3_credentials_never_reach_outputs(tmp_path: Path, s3_endpoint: str, s3_bucket: str, monkeypatch) -> None:
    """Sentinel secrets given in config: used to talk to S3, absent from every output and message."""
    from conftest import run_sslpipe

    sentinel_key, sentinel_secret = "AKIASENTINEL0000KEY", "sentinel/secret+value/0123456789"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    src = jpeg_folder(tmp_path / "src", 12, classes=2)
    fs, _ = filesystem(
        f"s3://{s3_bucket}",
        StorageConfig(endpoint_url=s3_endpoint, access_key_id="testing", secret_access_key="testing"),
    )
    fs.put(str(src), f"{s3_bucket}/in", recursive=True)
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"work_dir: {tmp_path / 'work'}\n"
        f"storage:\n  endpoint_url: {s3_endpoint}\n"
        f"  access_key_id: {sentinel_key}\n  secret_access_key: {sentinel_secret}\n"
        f"ingest:\n  source:\n    kind: folder\n    path: s3://{s3_bucket}/in\n  output: s3://{s3_bucket}/out\n"
    )
    result = run_sslpipe("ingest", "--config", str(config), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    outputs = [result.stdout, result.stderr]
    fs.invalidate_cache()
    outputs += [
        fs.cat_file(p).decode("utf-8", "replace") for p in fs.find(f"{s3_bucket}/out") if not p.endswith(".tar")
    ]
    outputs += [p.read_text() for p in (tmp_path / "work").rglob("*.json")]
    assert outputs and all(sentinel_secret not in text and sentinel_key not in text for text in outputs)
    shown = run_sslpipe("config", "--config", str(config), cwd=tmp_path, timeout=60)
    assert sentinel_secret not in shown.stdout and "**********" in shown.stdout
    bad = run_sslpipe("config", "--config", str(config), "--set", "storage.secret_access_key=[1, 2]", cwd=tmp_path)
    assert bad.returncode == 2 and sentinel_secret not in bad.stderr and "[1, 2]" not in bad.stderr


def test_fashion_mnist_idx_files_keep_their_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    cfg = load_config(None, ["ingest.source.kind=fashion_mnist", f"ingest.source.path={tmp_path}"]).ingest
    m = ingest(cfg, tmp_path / "out").manifest
    assert {k: v.samples for k, v in m.splits.items()} == {"train": 30, "test": 10}
    assert m.label_names[0] == "T-shirt/top" and m.split("test").class_counts["Ankle boot"] == 1
    assert m.image_mode == "L"
    limited = load_config(
        None, ["ingest.source.kind=fashion_mnist", f"ingest.source.path={tmp_path}", "ingest.source.limit=5"]
    )
    assert ingest(limited.ingest, tmp_path / "out2").manifest.total_samples == 10


def test_fashion_mnist_missing_files_name_the_fix(tmp_path: Path) -> None:
    cfg = load_config(None, ["ingest.source.kind=fashion_mnist", f"ingest.source.path={tmp_path}"]).ingest
    with pytest.raises(SourceError, match="dataset-fashion-mnist"):
        ingest(cfg, tmp_path / "out")


def _member(tar: tarfile.TarFile, name: str, data: bytes = b"", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def test_webdataset_source_refuses_hostile_members_and_extracts_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "input-000.tar", "w") as tar:
        _member(tar, "good1.jpg", jpeg(rng))
        _member(tar, "good1.cls", b"1")
        _member(tar, "/etc/evil.jpg", jpeg(rng))
        _member(tar, "../../escape.jpg", jpeg(rng))
        _member(tar, "link.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _member(tar, "hard.jpg", type=tarfile.LNKTYPE, linkname="good1.jpg")
        _member(tar, "dev.jpg", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        _member(tar, "huge.jpg", b"\0" * 5000)
        _member(tar, "good2.png", jpeg(rng))
        _member(tar, "good2.cls", b"0")
        _member(tar, "nolabel.txt", b"just text")
    cfg = load_config(
        None, ["ingest.source.kind=webdataset", f"ingest.source.path={shards}", "ingest.source.max_member_bytes=4000",
               "ingest.max_reject_fraction=1.0", "ingest.test_fraction=0"],
    ).ingest  # fmt: skip
    result = ingest(cfg, tmp_path / "out")
    rejects = [json.loads(line) for line in (Path(result.folder) / "rejects.jsonl").read_text().splitlines()]
    reasons = {r["source_key"].split("/", 1)[1]: (r["reason"], r["detail"]) for r in rejects}
    assert reasons["/etc/evil.jpg"] == ("unsafe_tar_member", "absolute path")
    assert reasons["../../escape.jpg"] == ("unsafe_tar_member", "path traversal ('..')")
    assert reasons["link.jpg"] == ("unsafe_tar_member", "link")
    assert reasons["hard.jpg"] == ("unsafe_tar_member", "link")
    assert reasons["dev.jpg"] == ("unsafe_tar_member", "device or fifo")
    assert reasons["huge.jpg"][0] == "unsafe_tar_member" and "max_member_bytes" in reasons["huge.jpg"][1]
    assert reasons["nolabel"][0] == "no_image_member"
    assert result.manifest.split("train").samples == 2
    assert not (tmp_path / "escape.jpg").exists() and not Path("/etc/evil.jpg").exists()


def test_reshard_our_own_shards_keeps_labels(tmp_path: Path) -> None:
    digits = ingest(load_config(None, []).ingest, tmp_path / "digits")
    cfg = load_config(
        None, ["ingest.source.kind=webdataset", f"ingest.source.path={digits.folder}", "ingest.shard_max_samples=1000"]
    ).ingest
    again = ingest(cfg, tmp_path / "resharded").manifest
    assert again.label_names == digits.manifest.label_names
    assert again.total_samples == digits.manifest.total_samples == 1797
    # splits are by content hash, so every image lands where it was
    assert {k: v.samples for k, v in again.splits.items()} == {k: v.samples for k, v in digits.manifest.splits.items()}
    assert len(again.split("train").shards) == 2
