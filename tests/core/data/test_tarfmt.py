"""sslcore.data.tarfmt's reader: the same samples as webdataset's, from our shards and from tars
other tools write, and a clear error for a damaged archive."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest
from webdataset import tariterators

from sslcore.data.tarfmt import encode_sample, end_of_archive, iter_members, iter_samples


def _ours(samples: dict[str, dict[str, bytes]]) -> bytes:
    body = b"".join(encode_sample(key, members) for key, members in samples.items())
    return body + end_of_archive(len(body))


def _by_tarfile(members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT, *, directory: bool = False) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        if directory:
            info = tarfile.TarInfo("some/dir")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _webdataset(data: bytes) -> list[dict]:
    files = tariterators.tar_file_expander([{"url": "u", "stream": io.BytesIO(data)}])
    return list(tariterators.group_by_keys(files))


def _fast(data: bytes) -> list[dict]:
    return list(iter_samples(io.BytesIO(data), "u"))


SAMPLES = {
    f"{i:06d}": {"png": bytes([i]) * (100 + 300 * i), "cls": str(i % 3).encode(), "json": b"{}"} for i in range(5)
}
LONG = "d" * 120 + "/" + "k" * 130  # past ustar's 100-byte name field
ARCHIVES = {
    "our-shards": lambda: _ours(SAMPLES),
    "empty": lambda: _ours({}),
    "pax-long-names": lambda: _by_tarfile([(f"{LONG}.PNG", b"x" * 700), (f"{LONG}.cls", b"1"), ("ab.c.d", b"2")]),
    "gnu-long-names": lambda: _by_tarfile([(f"{LONG}.png", b"y"), ("z.cls", b"0")], tarfile.GNU_FORMAT),
    "ustar-dirs": lambda: _by_tarfile([("a/b.png", b"1"), ("a/b.cls", b"2")], tarfile.USTAR_FORMAT, directory=True),
    "skipped-names": lambda: _by_tarfile(
        [("__meta__", b"m"), (".hidden", b"h"), ("noext", b"n"), ("a.b/c", b"c"), ("k.png", b"p")]
    ),
    "gzip": lambda: gzip.compress(_ours(SAMPLES), mtime=0),
}


@pytest.mark.parametrize("archive", list(ARCHIVES))
def test_same_samples_as_webdataset(archive: str) -> None:
    data = ARCHIVES[archive]()
    assert _fast(data) == _webdataset(data)


def test_our_shards_round_trip() -> None:
    got = _fast(_ours(SAMPLES))
    assert [s["__key__"] for s in got] == list(SAMPLES)
    assert all({k: v for k, v in s.items() if not k.startswith("__")} == SAMPLES[s["__key__"]] for s in got)


def test_a_truncated_archive_fails_after_its_whole_members() -> None:
    data = _ours(SAMPLES)
    cut = len(encode_sample("000000", SAMPLES["000000"])) + 2 * 1024 + 600  # inside sample 1's png
    got: list[str] = []
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        for name, _ in iter_members(io.BytesIO(data[:cut])):
            got.append(name)
    assert got == ["000000.cls", "000000.json", "000000.png", "000001.cls", "000001.json"]


def test_a_damaged_header_fails() -> None:
    data = bytearray(_ours(SAMPLES))
    data[3] ^= 0xFF  # a byte of the first member's name: the checksum no longer matches
    with pytest.raises(tarfile.ReadError, match="checksum"):
        list(iter_members(io.BytesIO(bytes(data))))


def test_an_archive_ending_without_its_end_marker_reads_to_the_end() -> None:
    body = b"".join(encode_sample(key, members) for key, members in SAMPLES.items())
    assert [s["__key__"] for s in _fast(body)] == list(SAMPLES)


def test_a_repeated_extension_is_an_error() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        _fast(_by_tarfile([("k.png", b"1"), ("k.PNG", b"2")]))


@pytest.mark.parametrize("record", [b"0 path=x\n", b"abc path=x\n", b"3 path=x\n"])
def test_a_damaged_pax_header_fails(record: bytes) -> None:
    info = tarfile.TarInfo("PaxHeader/k")
    info.type = tarfile.XHDTYPE
    info.size = len(record)
    member = tarfile.TarInfo("k.png")
    member.size = 1
    blocks = info.tobuf(tarfile.USTAR_FORMAT) + record + b"\0" * (-len(record) % 512)
    blocks += member.tobuf(tarfile.USTAR_FORMAT) + b"p" + b"\0" * 511
    with pytest.raises(tarfile.ReadError, match="pax header"):
        list(iter_members(io.BytesIO(blocks + b"\0" * 1024)))
