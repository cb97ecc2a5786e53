"""Reading image files for ``sslpipe embed``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def read_images(paths: list[Path]) -> list[np.ndarray]:
    """Each file -> uint8 (H, W, C): grayscale stays one channel, everything else becomes RGB."""
    images = []
    for p in paths:
        try:
            with Image.open(p) as img:
                img = ImageOps.exif_transpose(img)
                gray = img.mode in ("1", "L", "I;16", "I")
                arr = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.uint8)
        except (OSError, SyntaxError) as exc:
            raise ValueError(f"cannot read image {p}: {exc}") from None
        images.append(arr[..., None] if arr.ndim == 2 else arr)
    return images
