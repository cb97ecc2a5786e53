"""Helpers shared by the sslcore.data tests: generated images and one digits ingest per session.

This is a plain module rather than a ``conftest.py``: ``tests/conftest.py`` is imported by name
(``from conftest import REPO``), and a second ``conftest`` module (there are no ``__init__.py``
files) would replace it in ``sys.modules``. Test modules in this folder import it by name.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sslcore.config import IngestConfig
from sslcore.data.ingest import IngestResult, ingest

# Small enough that the digits train split (~1,440 samples) spans 8 shards and the test split 2.
DIGITS_SHARD_SAMPLES = 200

_digits_cache: dict[str, IngestResult] = {}


def digits_config() -> IngestConfig:
    return IngestConfig(shard_max_samples=DIGITS_SHARD_SAMPLES)


def ingest_digits_once(tmp_path_factory: pytest.TempPathFactory) -> IngestResult:
    """Ingest scikit-learn's digits once per test session, however many modules ask for it."""
    if "digits" not in _digits_cache:
        root = tmp_path_factory.mktemp("digits-shards")
        _digits_cache["digits"] = ingest(digits_config(), str(root))
    return _digits_cache["digits"]


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    """Encode a PIL image to bytes in ``fmt`` (``"PNG"``, ``"JPEG"``, ``"GIF"``)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A random 8-bit image of the given size; ``mode`` is ``"L"`` or ``"RGB"``."""
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, 3)
    return Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8))


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
