"""Webdataset samples encoded as tar members, byte for byte deterministic, and read back fast.

A tar file is a sequence of (512-byte header, data padded to 512) members followed by two zero
blocks, padded to a 10 KiB record. Encoding a sample's members is the costly part of writing a
shard, so ingestion workers do it in parallel and the writer only concatenates the blobs. Members
follow webdataset's conventions: ``<key>.<ext>``, sorted by extension, regular files, mode 0444,
mtime 0, no owner, as ``webdataset.TarWriter(mtime=0)`` writes them.

Reading (:func:`iter_samples`) parses only the header fields a sample needs (name, size, type,
checksum), several times faster than :mod:`tarfile`, which decodes every field of every header:
for 32 px images, :mod:`tarfile` plus webdataset's grouping took more time than decoding the PNGs.
Archives that are not plain ustar (compressed, or written by other tools) are read with
:mod:`tarfile` instead; both give the same samples.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from typing import Any, BinaryIO

BLOCK = 512
RECORD = 20 * BLOCK


def encode_sample(key: str, members: dict[str, bytes]) -> bytes:
    """The tar members ``<key>.<ext>`` for every ``ext`` in ``members``, in sorted order."""
    if "/" in key or key.startswith(".") or "." in key:
        raise ValueError(f"unsafe sample key {key!r}")
    parts = []
    for ext in sorted(members):
        data = members[ext]
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o444
        info.uname = info.gname = ""
        parts.append(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        parts.append(data)
        parts.append(b"\0" * (-len(data) % BLOCK))
    return b"".join(parts)


def end_of_archive(length: int) -> bytes:
    """Two zero blocks, then zeros up to the next full record, after ``length`` bytes of members."""
    total = length + 2 * BLOCK
    return b"\0" * (2 * BLOCK + (-total % RECORD))


# --------------------------------------------------------------------------- reading

# Members webdataset skips as metadata (``__key__``-style names).
_META = re.compile(r"__[^/]*__($|/)")
_REGULAR = (b"0", b"\0", b"7")


def _number(field: bytes) -> int:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256 (first byte 0x80 or 0xff)."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - (256 ** (len(field) - 1)) if field[:1] == b"\xff" else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise tarfile.ReadError(f"invalid tar header field {field!r}") from None


def _read(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise tarfile.ReadError(f"unexpected end of data: {len(data)} of {size} bytes")
    return data


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header (``"<len> <key>=<value>\\n"`` records)."""
    path = None
    pos = 0
    while pos < len(data) and data[pos:].strip(b"\0"):
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        if length <= space - pos or data[pos + length - 1 : pos + length] != b"\n":
            raise tarfile.ReadError(f"invalid pax header record at byte {pos}")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        pos += length
    return path


class _Prepended:
    """A stream with ``head`` put back in front of it, for :mod:`tarfile` after a peek."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(size)
        if size < 0:
            data, self.head = self.head + self.stream.read(), b""
            return data
        data, self.head = self.head[:size], self.head[size:]
        return data + self.stream.read(size - len(data)) if len(data) < size else data


def iter_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of every regular member of a tar stream, in order, reading it once.

    Raises :class:`tarfile.ReadError` for a truncated or damaged archive, after yielding the members
    before the damage (as :mod:`tarfile` does).
    """
    header = stream.read(BLOCK)
    if header[257:262] != b"ustar" and any(header):
        yield from _members_by_tarfile(_Prepended(header, stream))  # gzip, old v7 tar, ...
        return
    long_name: str | None = None
    while header:
        if len(header) != BLOCK:
            raise tarfile.ReadError("unexpected end of data in a tar header")
        if not any(header):
            return  # end-of-archive marker
        stored = _number(header[148:156])
        if stored != sum(header[:148]) + 256 + sum(header[156:]):  # the checksum field counts as spaces
            raise tarfile.ReadError("bad checksum in a tar header")
        size = _number(header[124:136])
        kind = header[156:157]
        data = _read(stream, size)
        if size % BLOCK:
            _read(stream, BLOCK - size % BLOCK)
        if kind in (b"x", b"L"):  # pax extended header or GNU long name: the next member's name
            long_name = _pax_path(data) if kind == b"x" else data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif kind in _REGULAR:
            if long_name is not None:
                name, long_name = long_name, None
            else:
                name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                prefix = header[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = prefix.decode("utf-8", "surrogateescape") + "/" + name
            yield name, data
        else:
            long_name = None  # directories, links, global pax headers: nothing to read
        header = stream.read(BLOCK)


def _members_by_tarfile(stream: Any) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(fileobj=stream, mode="r|*") as archive:
        for info in archive:
            if info.isreg():
                member = archive.extractfile(info)
                assert member is not None  # regular files always have data
                yield info.name, member.read()


def iter_samples(stream: BinaryIO, url: str = "") -> Iterator[dict[str, Any]]:
    """Webdataset samples of a tar stream: consecutive members ``<key>.<ext>`` grouped into
    ``{"__key__": key, "__url__": url, ext: bytes, ...}``, exactly as webdataset's
    ``tar_file_expander`` + ``group_by_keys`` group them (the key ends at the first dot of the
    member's base name, extensions are lower-cased, ``__*__`` metadata members are skipped, a
    repeated extension within one sample is an error)."""
    sample: dict[str, Any] | None = None
    for name, data in iter_members(stream):
        if _META.match(name):
            continue
        slash = name.rfind("/") + 1
        dot = name.find(".", slash)
        if dot <= slash:
            continue  # no extension (or a name starting with a dot): not part of a sample
        key, ext = name[:dot], name[dot + 1 :].lower()
        if sample is None or key != sample["__key__"]:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__url__": url}
        if ext in sample:
            raise ValueError(f"{name}: duplicate file name in tar file {ext} {list(sample)}")
        sample[ext] = data
    if sample is not None:
        yield sample
