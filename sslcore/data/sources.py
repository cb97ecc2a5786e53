"""Where images come from. Each source yields raw samples in a sorted, deterministic order."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from sslcore.config import DigitsSource, FolderSource
from sslcore.registry import Registry


class SourceError(ValueError):
    """The source is missing, empty or unreadable; the message says how to fix it."""


@dataclass(frozen=True)
class RawSample:
    key: str  # stable identifier in the source: a relative path or a dataset index
    data: bytes  # encoded image bytes as found in the source
    label: str | None = None


class ImageSource(Protocol):
    def check(self) -> None:
        """Raise :class:`SourceError` if the source cannot be read; cheap, before any work."""

    def fingerprint(self) -> str:
        """A hash that changes whenever the set of inputs changes."""

    def label_names(self) -> tuple[str, ...] | None: ...

    def __iter__(self) -> Iterator[RawSample]: ...


SOURCES: Registry[type] = Registry("source")


@SOURCES.register("digits")
class DigitsImages:
    """scikit-learn's digits (UCI ML hand-written digits): 1,797 8x8 images, values 0-16."""

    def __init__(self, cfg: DigitsSource) -> None:
        self.cfg = cfg

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
        return images, bunch.target.astype(np.int64)

    def check(self) -> None:
        return None

    def fingerprint(self) -> str:
        images, labels = self._arrays()
        h = hashlib.sha256(b"digits")
        h.update(images.tobytes())
        h.update(labels.tobytes())
        return h.hexdigest()

    def label_names(self) -> tuple[str, ...]:
        return tuple(str(i) for i in range(10))

    def __iter__(self) -> Iterator[RawSample]:
        images, labels = self._arrays()
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            buf = io.BytesIO()
            Image.fromarray(image, mode="L").save(buf, format="PNG")
            yield RawSample(key=f"digits/{i:05d}", data=buf.getvalue(), label=str(int(label)))


@SOURCES.register("folder")
class FolderImages:
    """Image files under a folder, recursively; optionally labelled by their first sub-folder."""

    def __init__(self, cfg: FolderSource) -> None:
        self.cfg = cfg
        self.root = Path(cfg.path).expanduser()

    def _files(self) -> list[Path]:
        exts = {e.lower() for e in self.cfg.extensions}
        files = [p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in exts]
        return sorted(files, key=lambda p: p.relative_to(self.root).as_posix())

    def check(self) -> None:
        if not self.root.exists():
            raise SourceError(
                f"ingest.source.path {self.root} does not exist: point it at a folder of images"
            )
        if not self.root.is_dir():
            raise SourceError(
                f"ingest.source.path {self.root} is not a folder: point it at a folder of images"
            )
        if not self._files():
            raise SourceError(
                f"ingest.source.path {self.root} holds no files with an image extension "
                f"({', '.join(self.cfg.extensions)}): add images or fix the path"
            )
        if self.cfg.labels == "subfolder" and not self.label_names():
            raise SourceError(
                f"ingest.source.labels=subfolder but {self.root} has no class sub-folders holding images"
            )

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"folder")
        for p in self._files():
            st = p.stat()
            h.update(f"{p.relative_to(self.root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def _label(self, path: Path) -> str | None:
        if self.cfg.labels != "subfolder":
            return None
        parts = path.relative_to(self.root).parts
        return parts[0] if len(parts) > 1 else None

    def label_names(self) -> tuple[str, ...] | None:
        if self.cfg.labels != "subfolder":
            return None
        return tuple(sorted({lab for p in self._files() if (lab := self._label(p)) is not None}))

    def __iter__(self) -> Iterator[RawSample]:
        for p in self._files():
            yield RawSample(
                key=p.relative_to(self.root).as_posix(), data=p.read_bytes(), label=self._label(p)
            )


def open_source(cfg: DigitsSource | FolderSource) -> ImageSource:
    source: ImageSource = SOURCES.get(cfg.kind)(cfg)
    return source
