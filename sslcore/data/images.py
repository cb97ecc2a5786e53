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


def _decode(raw: bytes, max_pixels: int, draft: bool = False) -> tuple[Image.Image, list[str], tuple[int, int]]:
    """Open and load; returns the image, the warnings PIL raised doing so, and the full size.

    With ``draft``, a JPEG is decoded at 1/8 scale: every entropy-coded block is still read (so
    truncation and corruption are caught) but the inverse DCT and colour conversion are ~8x
    cheaper. Callers re-decode at full size when they need the pixels.
    """
    if not raw:
        raise RejectedImage("empty_file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img = Image.open(io.BytesIO(raw))
            width, height = img.size
            if width * height > max_pixels:
                raise RejectedImage("too_many_pixels", f"{width}x{height} > max_pixels={max_pixels}")
            if draft and img.format == "JPEG" and img.mode in ("L", "RGB"):
                img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
            img.load()
    except RejectedImage:
        raise
    except Image.DecompressionBombError as exc:
        raise RejectedImage("too_many_pixels", f"{exc} (max_pixels={max_pixels})") from None
    except Exception as exc:  # PIL raises many types for broken inputs
        message = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, Image.UnidentifiedImageError) or "cannot identify image file" in str(exc):
            raise RejectedImage("not_an_image", message) from None
        raise RejectedImage("truncated_or_corrupt", message) from None
    return img, [str(w.message) for w in caught], (width, height)


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
    """Validate encoded bytes and return what goes into a shard.

    Handled and kept: EXIF orientation (applied), CMYK, palette and alpha, 16-bit, grayscale
    (converted per ``mode``), animated images (first frame). The original bytes are kept when they
    are a PNG or JPEG that needs no change and is at most ``max_image_bytes``; otherwise the
    decoded image is re-encoded as ``reencode_format``.

    Raises:
        RejectedImage: empty, not an image, truncated/corrupt, too many pixels, too small, or
            unreadable EXIF.
    """
    may_keep = keep_original and len(raw) <= max_image_bytes
    img, decode_warnings, (original_width, original_height) = _decode(raw, max_pixels, draft=may_keep)
    fmt = img.format
    drafted = img.size != (original_width, original_height)
    if min(original_width, original_height) < min_side:
        raise RejectedImage("too_small", f"{original_width}x{original_height} < min_side={min_side}")
    changed = bool(getattr(img, "n_frames", 1) > 1)  # animations keep only the first frame
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
        messages = decode_warnings + [str(w.message) for w in caught]
        exif_warnings = [m for m in messages if "exif" in m.lower()]
        if exif_warnings:  # PIL only warns about corrupt EXIF and carries on with partial data
            raise RejectedImage("unreadable_exif", exif_warnings[0])
    except RejectedImage:
        raise
    except Exception as exc:  # malformed EXIF blocks raise from deep inside PIL
        raise RejectedImage("unreadable_exif", f"{type(exc).__name__}: {exc}") from None
    needs_resize = max_short_side is not None and min(original_width, original_height) > max_short_side
    if drafted:
        target = mode if mode != "keep" else img.mode
        if orientation in (None, 1) and not needs_resize and target == img.mode:
            return CleanImage(
                raw, "jpg", original_width, original_height, img.mode, original_width, original_height, False
            )
        img = _decode(raw, max_pixels)[0]  # the pixels are needed: decode at full size
    if orientation not in (None, 1):
        img = ImageOps.exif_transpose(img)
        changed = True
    converted = _to_mode(img, mode)
    changed = changed or converted is not img
    img = converted
    if needs_resize and max_short_side is not None:
        scale = max_short_side / min(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
        changed = True
    if keep_original and not changed and fmt in KEEP_FORMATS and len(raw) <= max_image_bytes:
        return CleanImage(
            raw, KEEP_FORMATS[fmt], img.width, img.height, img.mode, original_width, original_height, False
        )
    pil_format, ext = ENCODERS[reencode_format]
    buf = io.BytesIO()
    if pil_format == "PNG":
        img.save(buf, format="PNG", optimize=False, compress_level=6)
    else:
        img.save(buf, format=pil_format, quality=jpeg_quality)
    return CleanImage(buf.getvalue(), ext, img.width, img.height, img.mode, original_width, original_height, True)


def decode_rgb(data: bytes) -> Image.Image:
    """Decode shard bytes to an RGB PIL image (grayscale is replicated to three channels)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")
