"""Webdataset samples encoded as tar members, byte for byte deterministic.

A tar file is a sequence of (512-byte header, data padded to 512) members followed by two zero
blocks, padded to a 10 KiB record. Encoding a sample's members is the costly part of writing a
shard, so ingestion workers do it in parallel and the writer only concatenates the blobs. Members
follow webdataset's conventions: ``<key>.<ext>``, sorted by extension, regular files, mode 0444,
mtime 0, no owner, as ``webdataset.TarWriter(mtime=0)`` writes them.
"""

from __future__ import annotations

import tarfile

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
