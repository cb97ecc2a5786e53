"""Generated images: real-looking JPEGs, and every kind of broken or odd input ingestion must handle."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(rng: np.random.Generator, size: tuple[int, int] = (48, 40), quality: int = 90) -> bytes:
    """A smooth random picture (gradients plus blobs), JPEG-encoded like a camera image."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 60 * np.sin(a * xx / 7 + b * yy / 9 + p * 6)
    for _ in range(3):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 12)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png(image: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def exif_rotated_jpeg(rng: np.random.Generator) -> bytes:
    """A 40x24 JPEG whose EXIF orientation (6: rotate 90 CW) makes it 24x40 when applied."""
    img = Image.open(io.BytesIO(jpeg(rng, (40, 24))))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def bad_exif_jpeg(rng: np.random.Generator) -> bytes:
    """A JPEG whose APP1 EXIF segment is garbage after the 'Exif' header."""
    good = jpeg(rng)
    payload = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + b"\xff\xff" + b"\x00" * 20
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return good[:2] + segment + good[2:]


def png_bomb(side: int = 12000) -> bytes:
    """A tiny file that claims side x side pixels (1-bit, all zero: compresses to almost nothing)."""
    raw = zlib.compress(b"".join(b"\x00" + b"\x00" * ((side + 7) // 8) for _ in range(side)), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def animated_gif(rng: np.random.Generator) -> bytes:
    frames = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).convert("P") for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


# name -> (bytes, expected reason or None if kept, expected mode when kept)
def bad_and_odd(seed: int = 0) -> dict[str, tuple[bytes, str | None, str | None]]:
    rng = np.random.default_rng(seed)
    good_jpeg = jpeg(rng)
    good_png = png(Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)))
    cmyk = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).convert("CMYK").save(cmyk, format="JPEG")
    palette = Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).convert("P")
    palette.info["transparency"] = 0
    gray16 = Image.fromarray((rng.integers(0, 65535, (30, 30))).astype(np.uint16))
    rgba = Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), mode="RGBA")
    gray = Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8), mode="L")
    return {
        "ok/plain.jpg": (good_jpeg, None, "RGB"),
        "ok/plain.png": (good_png, None, "RGB"),
        "ok/z-copy-of-plain.jpg": (good_jpeg, "duplicate", None),
        "odd/cmyk.jpg": (cmyk.getvalue(), None, "RGB"),
        "odd/palette-alpha.png": (png(palette, transparency=0), None, "RGB"),
        "odd/gray16.png": (png(gray16), None, "L"),
        "odd/rgba.png": (png(rgba), None, "RGB"),
        "odd/gray.png": (png(gray), None, "L"),
        "odd/animated.gif": (animated_gif(rng), None, "RGB"),
        "odd/exif-rotated.jpg": (exif_rotated_jpeg(rng), None, "RGB"),
        "bad/empty.jpg": (b"", "empty_file", None),
        "bad/text-named.png": (b"this is a text file, not a picture\n" * 3, "not_an_image", None),
        "bad/truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], "truncated_or_corrupt", None),
        "bad/truncated.png": (good_png[: len(good_png) // 2], "truncated_or_corrupt", None),
        "bad/bomb.png": (png_bomb(), "too_many_pixels", None),
        "bad/tiny.png": (png(Image.new("RGB", (4, 30))), "too_small", None),
        "bad/bad-exif.jpg": (bad_exif_jpeg(rng), "unreadable_exif", None),
    }


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def jpeg_folder(root: Path, n: int, classes: int = 3, size: tuple[int, int] = (48, 40), seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    return write_tree(root, {f"class{i % classes}/img{i:05d}.jpg": jpeg(rng, size) for i in range(n)})
