"""The ``ingest`` section: the image sources and how they become shards."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt, model_validator

from sslcore.config.base import StrictModel

__all__ = [
    "IMAGE_EXTENSIONS",
    "DigitsSource",
    "FashionMnistSource",
    "FolderSource",
    "IngestConfig",
    "ShardsSource",
    "Source",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class DigitsSource(StrictModel):
    """scikit-learn's bundled *digits*: 1,797 real 8x8 grayscale images of 10 classes."""

    kind: Literal["digits"] = "digits"


class FolderSource(StrictModel):
    """Image files under a local folder or an ``s3://bucket/prefix``, found recursively."""

    kind: Literal["folder"] = "folder"
    path: str = Field(description="Local folder or s3://bucket/prefix, read recursively.")
    labels: Literal["none", "subfolder", "file"] = Field(
        "none",
        description="'subfolder': the first sub-folder level names the class (ImageFolder); "
        "'file': labels_file maps relative paths to labels.",
    )
    labels_file: str | None = Field(None, description="CSV (path,label) or JSONL ({path, label}).")
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS

    @model_validator(mode="after")
    def _labels_file_given(self) -> FolderSource:
        if (self.labels == "file") != (self.labels_file is not None):
            raise ValueError("set labels_file together with labels=file (and only then)")
        return self


class FashionMnistSource(StrictModel):
    """Fashion-MNIST IDX files (Debian's ``dataset-fashion-mnist`` puts them in the default path)."""

    kind: Literal["fashion_mnist"] = "fashion_mnist"
    path: str = "/usr/share/datasets/fashion-mnist"
    limit: PositiveInt | None = Field(None, description="Use only the first N images of each split.")


class ShardsSource(StrictModel):
    """Existing webdataset shards: validated and re-sharded, never extracted to disk."""

    kind: Literal["webdataset"] = "webdataset"
    path: str = Field(description="Folder or s3:// prefix holding .tar shards.")
    max_member_bytes: PositiveInt = Field(64 * 1024 * 1024, description="Larger tar members are rejected.")


Source = Annotated[DigitsSource | FolderSource | FashionMnistSource | ShardsSource, Field(discriminator="kind")]


class IngestConfig(StrictModel):
    source: Source = Field(default_factory=DigitsSource)
    output: str | None = Field(None, description="Shard folder or s3:// prefix; default <work_dir>/shards.")
    shard_max_samples: PositiveInt = 256
    shard_max_bytes: PositiveInt = 64 * 1024 * 1024
    split: Literal["auto", "hash"] = Field(
        "auto", description="'auto': the source's own train/test split when it has one, else by hash."
    )
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Hash split: share of samples in 'val'.")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Hash split: share of samples in 'test'.")
    mode: Literal["keep", "RGB", "L"] = Field(
        "keep", description="'keep': grayscale stays one channel, everything else becomes RGB."
    )
    max_short_side: PositiveInt | None = Field(None, description="Downscale so the shorter side is at most this.")
    keep_original: bool = Field(True, description="Store valid JPEG/PNG bytes unchanged when no change is needed.")
    max_image_bytes: PositiveInt = Field(16 * 1024 * 1024, description="Larger originals are re-encoded.")
    image_format: Literal["png", "jpeg", "webp"] = Field(
        "png", description="Encoding for images that must be re-encoded."
    )
    jpeg_quality: int = Field(95, ge=1, le=100)
    min_side: PositiveInt = Field(8, description="Images with a shorter side below this are rejected.")
    max_pixels: PositiveInt = Field(
        64_000_000, description="Images with more pixels are rejected (decompression-bomb guard)."
    )
    dedup: bool = Field(True, description="Keep exact duplicates (same encoded bytes) once.")
    max_reject_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Fail (after writing the rejects report) above this share."
    )
    workers: PositiveInt | None = Field(None, description="Decode/encode processes; default all cores.")
    chunk_size: PositiveInt = Field(256, description="Inputs per unit of parallel work.")

    @model_validator(mode="after")
    def _fractions(self) -> IngestConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1 (train would be empty)")
        return self
