"""Decode-once image validation: every input is opened, checked and (if needed) re-encoded here."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageOps

KEEP_FORMATS = {"PNG": "png", "JPEG": "jpg"}
ENCODERS = {"png": ("PNG", "png"), "jpeg": ("JPEG", "jpg"), "webp": ("WEBP", "webp")}
EXIF_ORIENTATION = 0x0112
GRAY_MODES = ("1", "L", "I;16", "I;16B", "I;16L", "I", "F")


class RejectedImage(ValueError):
    """An input that cannot become a training sample; ``reason`` is a stable short code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CleanImage:
    data: bytes
    ext: str  # webdataset extension: "png", "jpg" or "webp"
    width: int
    height: int
    mode: str  # "L" or "RGB"
    original_width: int
    original_height: int
    reencoded: bool


def _to_mode(img: Image.Image, mode: Literal["keep", "RGB", "L"]) -> Image.Image:
    has_alpha = img.mode in ("LA", "RGBA", "PA", "La", "RGBa") or "transparency" in img.info
    if img.mode in GRAY_MODES and img.mode not in ("1", "L"):  # 16-bit and float grayscale -> 8-bit
        img = img.point(lambda v: v / 256).convert("L") if img.mode.startswith("I") else img.convert("L")
    if has_alpha:  # composite on white: transparent pixels become background, not black
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    target = mode if mode != "keep" else ("L" if img.mode in ("1", "L") else "RGB")
    return img.convert(target) if img.mode != target else img


def _open(raw: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as exc:
        raise RejectedImage("too_many_pixels", str(exc)) from None
    except Image.UnidentifiedImageError as exc:
        raise RejectedImage("not_an_image", f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # PIL raises many types for broken headers
        raise RejectedImage("truncated_or_corrupt", f"{type(exc).__name__}: {exc}") from None


def _load(img: Image.Image) -> None:
    try:
        img.load()
    except Exception as exc:
        raise RejectedImage("truncated_or_corrupt", f"{type(exc).__name__}: {exc}") from None


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("LA", "RGBA", "PA", "La", "RGBa") or "transparency" in img.info


def _target_mode(img: Image.Image, mode: Literal["keep", "RGB", "L"]) -> str:
    if mode != "keep":
        return mode
    return "L" if img.mode in GRAY_MODES and not _has_alpha(img) else "RGB"


def clean_image(
    raw: bytes,
    *,
    min_side: int,
    max_pixels: int,
    mode: Literal["keep", "RGB", "L"] = "keep",
    max_short_side: int | None = None,
    keep_original: bool = True,
    max_image_bytes: int = 16 * 1024 * 1024,
    reencode_format: str = "png",
    jpeg_quality: int = 95,
) -> CleanImage:
    """Validate encoded bytes, decoding them exactly once, and return what goes into a shard.

    Handled and kept: EXIF orientation (applied), CMYK, palette and alpha (composited on white),
    16-bit, grayscale (converted per ``mode``), animated images (first frame). The original bytes
    are kept when they are a PNG or JPEG that needs no change and is at most ``max_image_bytes``;
    otherwise the decoded image is re-encoded as ``reencode_format``. A JPEG kept as it is gets
    decoded at 1/8 scale: every entropy-coded block is still read, so truncation and corruption
    are caught, while the inverse DCT and colour conversion cost ~8x less.

    Raises:
        RejectedImage: empty, not an image, truncated/corrupt, too many pixels, too small, or
            unreadable EXIF.
    """
    if not raw:
        raise RejectedImage("empty_file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = _open(raw)
        fmt = img.format
        width, height = img.size
        if width * height > max_pixels:
            raise RejectedImage("too_many_pixels", f"{width}x{height} > max_pixels={max_pixels}")
        if min(width, height) < min_side:
            raise RejectedImage("too_small", f"{width}x{height} < min_side={min_side}")
        if fmt != "JPEG":  # only JPEG can be decoded at reduced scale; others read EXIF after the pixels
            _load(img)
        try:
            orientation = img.getexif().get(EXIF_ORIENTATION, 1) or 1
        except Exception as exc:  # malformed EXIF blocks raise from deep inside PIL
            raise RejectedImage("unreadable_exif", f"{type(exc).__name__}: {exc}") from None
        target = _target_mode(img, mode)
        needs_resize = max_short_side is not None and min(width, height) > max_short_side
        keep = (
            keep_original
            and fmt in KEEP_FORMATS
            and len(raw) <= max_image_bytes
            and orientation == 1
            and not needs_resize
            and target == img.mode
            and not _has_alpha(img)
            and getattr(img, "n_frames", 1) == 1
        )
        if fmt == "JPEG":
            if keep:
                img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
            _load(img)
    exif_warnings = [str(w.message) for w in caught if "exif" in str(w.message).lower()]
    if exif_warnings:  # PIL only warns about corrupt EXIF and carries on with partial data
        raise RejectedImage("unreadable_exif", exif_warnings[0])
    if keep:
        return CleanImage(raw, KEEP_FORMATS[str(fmt)], width, height, target, width, height, False)

    if orientation != 1:
        img = ImageOps.exif_transpose(img)
    img = _to_mode(img, mode)
    if needs_resize and max_short_side is not None:
        scale = max_short_side / min(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    pil_format, ext = ENCODERS[reencode_format]
    buf = io.BytesIO()
    if pil_format == "PNG":
        img.save(buf, format="PNG", optimize=False, compress_level=6)
    else:
        img.save(buf, format=pil_format, quality=jpeg_quality)
    return CleanImage(buf.getvalue(), ext, img.width, img.height, img.mode, width, height, True)


def decode_rgb(data: bytes) -> Image.Image:
    """Decode shard bytes to an RGB PIL image (grayscale is replicated to three channels)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")
