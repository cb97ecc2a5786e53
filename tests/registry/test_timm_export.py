"""The timm export: timm, safetensors and PIL alone load a run's ``timm/`` folder, with the documented
snippet, and get the pyfunc's embeddings; where timm cannot express the architecture, the export says so."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from registry_helpers import config as registry_config
from registry_helpers import training_run
from safetensors.torch import load_file

from sslcore.backbones import create_backbone
from sslcore.config import ModelConfig, PipelineConfig, load_config
from sslcore.inference import SPEC_FILE, TIMM_CONFIG_FILE, WEIGHTS_FILE, Encoder, spec_for
from tasks.model_card import SSLCORE_LOADER, TIMM_SNIPPET, model_card
from tasks.records import EvaluateRecord, IngestRecord, PretrainRecord
from tasks.register import register

REPO = Path(__file__).resolve().parents[2]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Run after the documented snippet: the embeddings, the same through timm's own ``local-dir:`` reader of
# the folder, and the project packages the snippet imported (none).
AFTER_SNIPPET = """
import sys
import numpy as np
np.save("emb.npy", emb.numpy())
local = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
with torch.no_grad():
    np.save("local.npy", local(torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])).numpy())
print("imported:", sorted({m.split(".")[0] for m in sys.modules} & {"sslcore", "tasks", "sslpipe", "mlflow"}))
"""


def _user_images(folder: Path, size: int) -> list[np.ndarray]:
    """The snippet's ``cat.png`` (RGB) and ``dog.png`` (grey) in ``folder``, at the encoder's input size;
    returns them as the pyfunc takes them, (1, H, W, C) uint8 each."""
    rng = np.random.default_rng(0)
    cat, dog = rng.integers(0, 256, (size, size, 3), np.uint8), rng.integers(0, 256, (size, size), np.uint8)
    Image.fromarray(cat).save(folder / "cat.png")
    Image.fromarray(dog).save(folder / "dog.png")
    return [cat[None], dog[None, ..., None]]


def _run_snippet(user_dir: Path, *, fresh_python: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The documented snippet as written, in ``user_dir`` (which holds ``timm/``), then timm's own
    ``local-dir:`` reader of the folder: both embeddings. ``fresh_python``: in a new interpreter, which must
    import none of the project's packages (it costs seconds importing torch and timm); else in this one (sslcore
    registers nothing with timm, and the snippet imports only timm and co.:
    ``test_card_and_docs_show_the_tested_snippet``)."""
    code = TIMM_SNIPPET + AFTER_SNIPPET
    if fresh_python:
        env = {"PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"}
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=user_dir, capture_output=True, text=True, env=env, timeout=300
        )
        assert out.returncode == 0, out.stderr
        assert "imported: []" in out.stdout  # timm, safetensors, PIL and torch only
    else:
        cwd = Path.cwd()
        os.chdir(user_dir)
        try:
            exec(compile(code, "timm_snippet", "exec"), {})
        finally:
            os.chdir(cwd)
    return np.load(user_dir / "emb.npy"), np.load(user_dir / "local.npy")


def _evaluation() -> EvaluateRecord:
    ingested = IngestRecord(shard_folder="/s/abc", manifest_path="/s/abc/manifest.json", fingerprint="f" * 64,
                            samples={"train": 240, "test": 60}, num_classes=10, rejected=0, reused=False,
                            duration_s=1.0)  # fmt: skip
    pretrain = PretrainRecord(ingest=ingested, run_name="r", storage_path="/r", checkpoint_path="/r/c", epochs=1,
                              steps=3, final_loss=4.0, images_per_s=100.0, history=[], duration_s=1.0)  # fmt: skip
    metrics = {"digits/ssl/knn_k20_top1": 0.8, "digits/random_init/knn_k20_top1": 0.6}
    return EvaluateRecord(pretrain=pretrain, metrics=metrics, headline="digits/ssl/knn_k20_top1",
                          baseline="digits/random_init/knn_k20_top1", datasets=["digits"], duration_s=1.0)  # fmt: skip


def _export(model: ModelConfig, folder: Path) -> Encoder:
    """A random-init encoder (fixed seed) written by the export that ``register`` uses."""
    torch.manual_seed(0)
    encoder = Encoder(create_backbone(model), spec_for(model, MEAN, STD))
    encoder.save(folder)
    return encoder


@pytest.fixture
def local_mlflow(monkeypatch):
    """``register``'s embedded default, SQLite in the work dir; the global URI it sets is undone after."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_default_model_loads_in_plain_timm_with_the_pyfunc_embeddings(tmp_path, local_mlflow) -> None:
    cfg = registry_config(tmp_path / "work", "model.image_size=32", "mlflow.model_name=enc-timm-export")
    assert cfg.model == ModelConfig()  # the default configuration: resnet10t, stock stem, 32 px
    record = register.fn(cfg, training_run(cfg, "run-timm", knn=0.8))

    user = tmp_path / "user"
    user.mkdir()
    mlflow.artifacts.download_artifacts(run_id=record.run_id, artifact_path="timm", dst_path=str(user))
    assert {p.name for p in (user / "timm").iterdir()} == {TIMM_CONFIG_FILE, WEIGHTS_FILE, SPEC_FILE}
    images = _user_images(user, cfg.model.image_size)
    emb, local = _run_snippet(user, fresh_python=True)

    pyfunc = mlflow.pyfunc.load_model(record.model_uri)
    expected = np.concatenate([pyfunc.predict(x) for x in images])
    assert emb.shape == expected.shape == (2, 512)
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(local, expected, rtol=1e-5, atol=1e-5)
    description = mlflow.MlflowClient().get_model_version(record.model_name, record.version).description
    assert TIMM_SNIPPET in description


@pytest.mark.parametrize(
    ("model", "model_args"),
    [
        (ModelConfig(widths=(16, 32, 64, 128)), {"channels": [16, 32, 64, 128]}),
        (ModelConfig(backbone="test_vit", patch_size=8), {"img_size": 32, "patch_size": 8}),
    ],
    ids=["resnet_widths", "vit_patch_size"],
)
def test_timm_args_for_widths_and_vit_sizes_travel_in_the_timm_config(
    tmp_path, model: ModelConfig, model_args: dict[str, object]
) -> None:
    encoder = _export(model, tmp_path / "timm")
    assert json.loads((tmp_path / "timm" / TIMM_CONFIG_FILE).read_text())["model_args"] == model_args
    images = _user_images(tmp_path, model.image_size)
    emb, local = _run_snippet(tmp_path)

    # what the pyfunc's load_context and predict do, from the same files
    served = Encoder.load(tmp_path / "timm" / SPEC_FILE, tmp_path / "timm" / WEIGHTS_FILE, device="cpu")
    expected = np.concatenate([served.embed(x) for x in images])
    np.testing.assert_allclose(expected, np.concatenate([encoder.embed(x) for x in images]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(local, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("override", ["model.small_image_stem=true", "model.stem_pool=false"])
def test_a_changed_stem_has_no_timm_config_and_the_card_names_the_loader(tmp_path, override: str) -> None:
    cfg = load_config(None, [override])
    encoder = _export(cfg.model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [WEIGHTS_FILE, SPEC_FILE]  # no config.json
    card = model_card(cfg, _evaluation())
    assert "not a stock timm architecture" in card and SSLCORE_LOADER in card and TIMM_SNIPPET not in card

    # why: resnet10t's deep stem keeps its weights' shapes, so stock timm takes them and embeds differently
    stock = timm.create_model(cfg.model.backbone, num_classes=0).eval()
    stock.load_state_dict(load_file(str(tmp_path / WEIGHTS_FILE)))
    x = torch.randn(2, 3, cfg.model.image_size, cfg.model.image_size)
    with torch.no_grad():
        assert not torch.allclose(stock(x), encoder.backbone(x), atol=1e-3)
    loaded = Encoder.load(tmp_path / SPEC_FILE, tmp_path / WEIGHTS_FILE, device="cpu")  # the named loader
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    np.testing.assert_allclose(loaded.embed(images), encoder.embed(images), rtol=1e-6, atol=1e-6)


def test_card_and_docs_show_the_tested_snippet() -> None:
    tree = ast.parse(TIMM_SNIPPET)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {name.split(".")[0] for name in imported} == {"json", "timm", "torch", "PIL", "safetensors"}
    cfg: PipelineConfig = load_config(None, [])
    assert TIMM_SNIPPET in model_card(cfg, _evaluation())
    assert TIMM_SNIPPET in (REPO / "docs" / "registry.md").read_text()
