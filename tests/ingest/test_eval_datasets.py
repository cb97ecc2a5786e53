"""The ingest stage also ingests every eval.datasets source, beside the pretraining shards."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus import jpeg_folder

from sslcore.config import ConfigError, load_config
from sslcore.data.ingest import ingest
from sslcore.data.manifest import read_manifest
from sslcore.evaluation.protocols import EvaluationError
from tasks.caching import outputs_exist
from tasks.evaluate import dataset_folders
from tasks.ingest import eval_folders, eval_shard_root, ingest_eval_datasets
from tasks.records import IngestRecord


def _record(folder: str, evals: dict[str, str]) -> IngestRecord:
    return IngestRecord(shard_folder=folder, manifest_path=f"{folder}/manifest.json", fingerprint="f" * 64,
                        samples={}, num_classes=0, rejected=0, reused=False, eval_datasets=evals,
                        duration_s=0.0)  # fmt: skip


def test_eval_sources_are_ingested_with_their_labels_and_paths_pass_through(tmp_path: Path) -> None:
    labelled = jpeg_folder(tmp_path / "labelled", 30, classes=3)
    existing = ingest(load_config(None, []).ingest, tmp_path / "existing")  # shards given by path
    cfg = load_config(None, [
        f"work_dir={tmp_path / 'work'}", "ingest.workers=1", "ingest.test_fraction=0.3",
        f"eval.datasets=[{{name: sample, source: {{kind: folder, path: {labelled}, labels: subfolder}}}}, "
        f"{{name: old, path: {existing.folder}}}]",
    ])  # fmt: skip
    results = ingest_eval_datasets(cfg)
    assert list(results) == ["sample"]  # path entries are not ingested again
    sample = results["sample"]
    assert Path(sample.folder).parent == Path(cfg.shard_dir + "-eval") / "sample"
    manifest = read_manifest(sample.folder)
    assert manifest.label_names == ("class0", "class1", "class2")
    assert manifest.total_samples == 30 and set(manifest.splits) == {"train", "test"}  # the same hash split
    assert manifest.config["test_fraction"] == 0.3  # the pretraining data's ingest settings
    folders = eval_folders(cfg, results)
    assert folders == {"sample": sample.folder, "old": existing.folder}
    again = ingest_eval_datasets(cfg)
    assert again["sample"].reused and again["sample"].folder == sample.folder

    own = ingest(cfg.ingest, cfg.shard_dir).folder
    record = _record(own, folders)
    assert dataset_folders(cfg, record) == [("digits", own), ("sample", sample.folder), ("old", existing.folder)]
    assert outputs_exist(record, cfg)
    (Path(sample.folder) / "manifest.json").unlink()  # a cached record whose eval shards are gone
    assert not outputs_exist(record, cfg)
    with pytest.raises(EvaluationError, match="holds no shards for it: run the ingest stage again"):
        dataset_folders(cfg, _record(own, {}))


def test_eval_shard_roots_sit_beside_the_shards_locally_and_on_s3(tmp_path: Path) -> None:
    assert eval_shard_root(load_config(None, ["ingest.output=s3://bucket/shards/"]), "x") == "s3://bucket/shards-eval/x"
    local = load_config(None, [f"work_dir={tmp_path}"])
    assert eval_shard_root(local, "x") == str(tmp_path.resolve() / "shards-eval" / "x")


def test_a_name_clash_fails_before_ingesting(tmp_path: Path) -> None:
    cfg = load_config(None, ["eval.datasets=[{name: digits, source: {kind: digits}}]", f"work_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="also the name of the ingested data"):
        ingest_eval_datasets(cfg)
    assert not (tmp_path / "shards-eval").exists()


@pytest.mark.slow  # moto's S3 server
def test_eval_sources_ingest_to_s3_beside_s3_shards(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    labelled = jpeg_folder(tmp_path / "labelled", 12, classes=2)
    cfg = load_config(None, [
        f"ingest.output=s3://{s3_bucket}/shards", f"storage.endpoint_url={s3_endpoint}", "ingest.workers=1",
        f"eval.datasets=[{{name: sample, source: {{kind: folder, path: {labelled}, labels: subfolder}}}}]",
    ])  # fmt: skip
    folder = ingest_eval_datasets(cfg)["sample"].folder
    assert folder.startswith(f"s3://{s3_bucket}/shards-eval/sample/")
    assert read_manifest(folder, cfg.storage).label_names == ("class0", "class1")
