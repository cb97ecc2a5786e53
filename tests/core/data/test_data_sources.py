"""sslcore.data.sources: folder and digits sources list their inputs in a deterministic order,
grouped into units, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from sslcore_data_testing import encode, noise_image, write_bytes

from sslcore.config import DigitsSource, FolderSource
from sslcore.data.sources import DigitsImages, FolderImages, ImageSource, RawSample, SourceError, open_source


def _folder(path: Path, **kwargs: object) -> ImageSource:
    source = open_source(FolderSource(path=str(path), **kwargs))  # type: ignore[arg-type]
    assert isinstance(source, FolderImages)
    return source


def read_all(source: ImageSource, chunk_size: int = 2) -> list[RawSample]:
    return [sample for unit in source.units(chunk_size) for sample in source.read_unit(unit)]


def test_open_source_dispatches_on_kind(tmp_path: Path) -> None:
    assert isinstance(open_source(DigitsSource()), DigitsImages)
    assert isinstance(open_source(FolderSource(path=str(tmp_path))), FolderImages)


def test_folder_order_extensions_and_keys(tmp_path: Path) -> None:
    png = encode(noise_image(8, 8), "PNG")
    for rel in ["b/z.png", "a.PNG", "b/a.jpeg", "c.txt", "d.png.bak", "a/b/c.webp"]:
        write_bytes(tmp_path / rel, png)
    source = _folder(tmp_path)
    source.check()
    assert source.count() == 4
    samples = read_all(source, chunk_size=3)
    assert [s.source_key for s in samples] == ["a.PNG", "a/b/c.webp", "b/a.jpeg", "b/z.png"]
    assert [s.key for s in samples] == ["000000_000000", "000000_000001", "000000_000002", "000001_000000"]
    assert all(s.data == png and s.label is None and s.reject is None for s in samples)
    assert source.label_names() is None


def test_read_unit_skips_the_given_indices(tmp_path: Path) -> None:
    for i in range(3):
        write_bytes(tmp_path / f"{i}.png", encode(noise_image(8, 8, seed=i), "PNG"))
    source = _folder(tmp_path)
    (unit,) = source.units(10)
    assert [s.source_key for s in source.read_unit(unit, skip=frozenset({0, 2}))] == ["1.png"]


def test_subfolder_labels(tmp_path: Path) -> None:
    png = encode(noise_image(8, 8), "PNG")
    for rel in ["dog/1.png", "cat/x/2.png", "top.png"]:
        write_bytes(tmp_path / rel, png)
    source = _folder(tmp_path, labels="subfolder")
    source.check()
    assert source.label_names() == ("cat", "dog")
    assert {s.source_key: s.label for s in read_all(source)} == {
        "cat/x/2.png": "cat",
        "dog/1.png": "dog",
        "top.png": None,
    }


def test_fingerprint_tracks_the_set_of_files(tmp_path: Path) -> None:
    write_bytes(tmp_path / "a.png", encode(noise_image(8, 8), "PNG"))
    first = _folder(tmp_path).fingerprint()
    assert _folder(tmp_path).fingerprint() == first
    write_bytes(tmp_path / "b.png", encode(noise_image(8, 8), "PNG"))
    assert _folder(tmp_path).fingerprint() != first


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "does not exist"),
        ("file", "is not a folder"),
        ("empty", "holds no files with an image extension"),
        ("no-images", "holds no files with an image extension"),
    ],
)
def test_folder_check_errors(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "src"
    if layout == "file":
        write_bytes(root, b"x")
    elif layout == "empty":
        root.mkdir()
    elif layout == "no-images":
        write_bytes(root / "a.txt", b"x")
    with pytest.raises(SourceError, match=message) as info:
        _folder(root).check()
    assert "ingest.source.path" in str(info.value)


def test_subfolder_labels_need_class_folders(tmp_path: Path) -> None:
    write_bytes(tmp_path / "a.png", encode(noise_image(8, 8), "PNG"))
    with pytest.raises(SourceError, match="no class sub-folders"):
        _folder(tmp_path, labels="subfolder").check()


def test_digits_source() -> None:
    source = open_source(DigitsSource())
    source.check()
    assert source.count() == 1797
    assert source.label_names() == tuple(str(i) for i in range(10))
    units = source.units(500)
    assert [len(u.items) for u in units] == [500, 500, 500, 297]
    first = next(iter(source.read_unit(units[0])))
    assert (first.key, first.source_key, first.label) == ("000000_000000", "digits/00000", "0")
    assert first.data.startswith(b"\x89PNG")
    assert source.fingerprint() == open_source(DigitsSource()).fingerprint()
