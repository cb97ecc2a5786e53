"""Decode-once image validation: every input is opened, checked and (if needed) re-encoded here."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

KEEP_FORMATS = {"PNG": "png", "JPEG": "jpg"}


class RejectedImage(ValueError):
    """An input that cannot become a training sample; ``reason`` is a stable short code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CleanImage:
    data: bytes
    ext: str  # webdataset extension: "png" or "jpg"
    width: int
    height: int
    mode: str  # "L" or "RGB"


def clean_image(
    raw: bytes, *, min_side: int, max_pixels: int, reencode_format: str = "png", jpeg_quality: int = 95
) -> CleanImage:
    """Validate encoded bytes and return what goes into a shard.

    The original bytes are kept when they are a PNG or JPEG that needs no change; otherwise the
    decoded image (EXIF orientation applied, converted to ``L`` or ``RGB``, first frame of an
    animation) is re-encoded as ``reencode_format``.

    Raises:
        RejectedImage: empty, not an image, truncated, too many pixels, or too small.
    """
    if not raw:
        raise RejectedImage("empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            width, height = img.size
            if width * height > max_pixels:
                raise RejectedImage("too_many_pixels", f"{width}x{height} > {max_pixels}")
            img.load()
    except RejectedImage:
        raise
    except Image.DecompressionBombError as exc:
        raise RejectedImage("too_many_pixels", str(exc)) from None
    except Exception as exc:  # PIL raises many types for broken inputs
        reason = "truncated_or_corrupt" if isinstance(exc, OSError | SyntaxError) else "not_an_image"
        if "cannot identify image file" in str(exc):
            reason = "not_an_image"
        raise RejectedImage(reason, f"{type(exc).__name__}: {exc}") from None
    if min(width, height) < min_side:
        raise RejectedImage("too_small", f"{width}x{height} < {min_side}px")

    fmt = img.format
    changed = False
    oriented = ImageOps.exif_transpose(img)
    if oriented is not img:
        changed = True
        img = oriented
    target_mode = "L" if img.mode in ("1", "L", "I;16", "I", "LA") and not _has_alpha(img) else "RGB"
    if img.mode != target_mode:
        img = img.convert(target_mode) if img.mode != "I;16" else _convert_16bit(img)
        changed = True
    if not changed and fmt in KEEP_FORMATS:
        return CleanImage(raw, KEEP_FORMATS[fmt], img.width, img.height, target_mode)
    buf = io.BytesIO()
    if reencode_format == "jpeg":
        img.save(buf, format="JPEG", quality=jpeg_quality)
        ext = "jpg"
    else:
        img.save(buf, format="PNG")
        ext = "png"
    return CleanImage(buf.getvalue(), ext, img.width, img.height, target_mode)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("LA", "RGBA", "PA") or "transparency" in img.info


def _convert_16bit(img: Image.Image) -> Image.Image:
    return img.point(lambda v: v / 256).convert("L")


def decode_rgb(data: bytes) -> Image.Image:
    """Decode shard bytes to an RGB PIL image (grayscale is replicated to three channels)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")
