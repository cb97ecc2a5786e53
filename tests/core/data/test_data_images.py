"""sslcore.data.images.clean_image on generated inputs: each accepted as the right mode, or rejected
with the right reason code."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from sslcore_data_testing import encode, noise_image

from sslcore.data.images import CleanImage, RejectedImage, clean_image, decode_rgb

LIMITS = {"min_side": 8, "max_pixels": 1_000_000}


def _clean(raw: bytes, **kwargs: object) -> CleanImage:
    return clean_image(raw, **{**LIMITS, **kwargs})  # type: ignore[arg-type]


def _reason(raw: bytes, **kwargs: object) -> str:
    with pytest.raises(RejectedImage) as info:
        _clean(raw, **kwargs)
    return info.value.reason


def _decoded(clean: CleanImage) -> Image.Image:
    img = Image.open(io.BytesIO(clean.data))
    img.load()
    return img


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bilevel_png(width: int, height: int, with_pixels: bool = True) -> bytes:
    """A real 1-bit grayscale PNG of zeros, written by hand: huge in pixels, tiny in bytes."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    pixels = b""
    if with_pixels:
        rows = (b"\x00" + b"\x00" * ((width + 7) // 8)) * height  # filter byte + packed row
        pixels = _png_chunk(b"IDAT", zlib.compress(rows, 9))
    return b"\x89PNG\r\n\x1a\n" + header + pixels + _png_chunk(b"IEND", b"")


# --------------------------------------------------------------------------- rejected


def test_empty_file() -> None:
    assert _reason(b"") == "empty_file"


def test_random_bytes_are_not_an_image() -> None:
    assert _reason(np.random.default_rng(0).bytes(2000)) == "not_an_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_files(fmt: str, keep: float) -> None:
    raw = encode(noise_image(64, 64), fmt)
    assert _reason(raw[: int(len(raw) * keep)]) == "truncated_or_corrupt"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # from our own probe
def test_decompression_bomb_is_rejected_before_decoding() -> None:
    raw = bilevel_png(10_000, 10_000)
    assert len(raw) < 50_000  # a 100-megapixel image in a few kilobytes
    with Image.open(io.BytesIO(raw)) as probe:  # it is a real PNG of that size
        assert probe.size == (10_000, 10_000)
    with pytest.raises(RejectedImage) as info:
        _clean(raw, max_pixels=1_000_000)
    assert info.value.reason == "too_many_pixels"
    assert "10000x10000" in info.value.detail


def test_pillow_bomb_error_is_mapped_to_too_many_pixels() -> None:
    # 400 Mpx is beyond Pillow's own hard limit, which fires inside Image.open.
    assert _reason(bilevel_png(20_000, 20_000, with_pixels=False), max_pixels=10**12) == "too_many_pixels"


@pytest.mark.parametrize(("width", "height"), [(7, 100), (100, 7), (4, 4)])
def test_too_small(width: int, height: int) -> None:
    assert _reason(encode(noise_image(width, height), "PNG")) == "too_small"


def test_min_side_is_inclusive() -> None:
    assert _clean(encode(noise_image(8, 30), "PNG")).width == 8


# --------------------------------------------------------------------------- accepted


def test_rgb_png_is_accepted_unchanged() -> None:
    raw = encode(noise_image(20, 12), "PNG")
    clean = _clean(raw)
    assert (clean.data, clean.ext, clean.mode, clean.width, clean.height) == (raw, "png", "RGB", 20, 12)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(encode(noise_image(20, 12), "JPEG", quality=90), id="rgb-jpeg"),
        pytest.param(encode(noise_image(20, 12, mode="L"), "JPEG", quality=90), id="gray-jpeg"),
        pytest.param(encode(noise_image(20, 12), "PNG", compress_level=1), id="fast-png"),
    ],
)
def test_images_needing_no_change_keep_their_bytes(raw: bytes) -> None:
    clean = _clean(raw)
    assert clean.data == raw
    assert not clean.reencoded
    assert clean.ext == ("jpg" if raw[:2] == b"\xff\xd8" else "png")


def test_keep_original_false_reencodes() -> None:
    raw = encode(noise_image(20, 12), "JPEG")
    clean = _clean(raw, keep_original=False)
    assert (clean.reencoded, clean.ext, clean.data[:4]) == (True, "png", b"\x89PNG")


def test_originals_above_max_image_bytes_are_reencoded() -> None:
    raw = encode(noise_image(20, 12), "PNG")
    assert _clean(raw, max_image_bytes=len(raw)).data == raw
    assert _clean(raw, max_image_bytes=len(raw) - 1).reencoded


def test_gray_png_stays_gray() -> None:
    clean = _clean(encode(noise_image(16, 16, mode="L"), "PNG"))
    assert (clean.mode, _decoded(clean).mode) == ("L", "L")


def test_bilevel_becomes_gray() -> None:
    clean = _clean(bilevel_png(40, 30))
    assert (clean.mode, clean.width, clean.height) == ("L", 40, 30)
    assert _decoded(clean).mode == "L"


def test_cmyk_jpeg_becomes_rgb() -> None:
    raw = encode(Image.new("CMYK", (16, 12), (0, 255, 0, 0)), "JPEG", quality=95)
    clean = _clean(raw)
    assert (clean.mode, clean.ext, clean.width, clean.height) == ("RGB", "png", 16, 12)
    decoded = _decoded(clean)
    assert decoded.mode == "RGB"
    expected = Image.open(io.BytesIO(raw)).convert("RGB")
    assert np.array_equal(np.asarray(decoded), np.asarray(expected))


def test_cmyk_can_be_reencoded_as_jpeg() -> None:
    clean = _clean(encode(Image.new("CMYK", (16, 12), (0, 255, 0, 0)), "JPEG"), reencode_format="jpeg")
    assert (clean.ext, clean.data[:2]) == ("jpg", b"\xff\xd8")
    assert _decoded(clean).mode == "RGB"


def test_palette_png_with_transparency_becomes_rgb_on_white() -> None:
    img = Image.new("P", (12, 12), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (0, 0, 6, 12))
    raw = encode(img, "PNG", transparency=0)  # palette index 0 (red) is transparent
    assert "transparency" in Image.open(io.BytesIO(raw)).info
    clean = _clean(raw)
    assert (clean.mode, clean.ext, clean.reencoded) == ("RGB", "png", True)
    pixels = np.asarray(_decoded(clean))
    assert pixels[0, 0].tolist() == [0, 0, 255]  # opaque blue stays
    assert pixels[0, 11].tolist() == [255, 255, 255]  # transparent becomes white, not red or black


def test_rgba_is_composited_on_white() -> None:
    img = Image.new("RGBA", (10, 10), (10, 20, 30, 128))
    img.putpixel((0, 0), (0, 0, 0, 0))
    img.putpixel((1, 0), (40, 50, 60, 255))
    clean = _clean(encode(img, "PNG"))
    assert clean.mode == "RGB"
    pixels = np.asarray(_decoded(clean)).astype(int)
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[0, 1].tolist() == [40, 50, 60]
    alpha = 128 / 255
    expected = [c * alpha + 255 * (1 - alpha) for c in (10, 20, 30)]
    assert np.abs(pixels[5, 5] - np.array(expected)).max() <= 1


def test_16bit_gray_png_is_scaled_to_8bit() -> None:
    values = np.array([0, 256 * 100, 32768, 65535], dtype=np.uint16)
    arr = np.tile(np.repeat(values, 4), (16, 1))  # 16 x 16, four vertical bands
    raw = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(raw)).mode.startswith("I")
    clean = _clean(raw)
    assert (clean.mode, clean.reencoded) == ("L", True)
    out = np.asarray(_decoded(clean))
    assert out[0, ::4].tolist() == [0, 100, 128, 255]  # scaled, not clipped to 255


@pytest.mark.parametrize(("mode", "source_mode"), [("RGB", "L"), ("L", "RGB")])
def test_mode_is_forced_when_asked(mode: str, source_mode: str) -> None:
    clean = _clean(encode(noise_image(12, 12, mode=source_mode), "PNG"), mode=mode)
    assert clean.mode == mode == _decoded(clean).mode
    assert clean.reencoded


def test_max_short_side_downscales_and_records_the_original_size() -> None:
    clean = _clean(encode(noise_image(40, 20), "PNG"), max_short_side=10)
    assert (clean.width, clean.height, clean.original_width, clean.original_height) == (20, 10, 40, 20)
    assert _decoded(clean).size == (20, 10)
    untouched = _clean(encode(noise_image(40, 20), "PNG"), max_short_side=20)
    assert (untouched.width, untouched.height, untouched.reencoded) == (40, 20, False)


def test_animated_gif_keeps_the_first_frame() -> None:
    frames = [Image.new("RGB", (12, 10), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    raw = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert getattr(Image.open(io.BytesIO(raw)), "n_frames", 1) == 3
    clean = _clean(raw)
    assert (clean.mode, clean.ext, clean.width, clean.height) == ("RGB", "png", 12, 10)
    decoded = _decoded(clean)
    assert getattr(decoded, "n_frames", 1) == 1
    assert np.asarray(decoded)[5, 5].tolist() == [255, 0, 0]


def test_exif_orientation_is_applied() -> None:
    # 32 wide x 16 high: left half black, right half white; Orientation 6 = rotate 90 clockwise.
    arr = np.zeros((16, 32, 3), dtype=np.uint8)
    arr[:, 16:] = 255
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    clean = _clean(encode(img, "JPEG", quality=95, exif=exif.tobytes()))
    assert (clean.width, clean.height) == (16, 32)
    pixels = np.asarray(_decoded(clean).convert("L"), dtype=np.float64)
    assert pixels.shape == (32, 16)
    assert pixels[:14].mean() < 30 and pixels[18:].mean() > 225  # black on top after rotation


def test_decode_rgb_replicates_gray() -> None:
    gray = noise_image(9, 9, mode="L")
    img = decode_rgb(encode(gray, "PNG"))
    assert img.mode == "RGB"
    assert (np.asarray(img) == np.asarray(gray)[..., None]).all()
