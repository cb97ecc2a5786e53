"""Image folders made of scikit-learn's real digits, for evaluation tests that go through ingest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def digit_pngs(root: Path, n: int, *, subfolders: bool, start: int = 0, mixed_sizes: bool = False) -> Path:
    """``n`` digits as PNGs under ``root``: flat (no labels) or one sub-folder per class
    (``labels=subfolder``). ``mixed_sizes`` writes them at 8, 12 and 16 px in turn."""
    digits = load_digits()
    for i in range(start, start + n):
        image = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8))
        if mixed_sizes:
            side = 8 + (i % 3) * 4
            image = image.resize((side, side))
        folder = root / f"digit{digits.target[i]}" if subfolders else root
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:04d}.png")
    return root
