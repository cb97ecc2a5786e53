"""The ``storage`` section: how to reach ``s3://`` URLs."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, PositiveInt, SecretStr

from sslcore.config.base import StrictModel

__all__ = ["StorageConfig"]


class StorageConfig(StrictModel):
    """How to reach ``s3://`` URLs (shards, sources, checkpoints) through s3fs.

    Unset fields fall back to the usual places: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
    ``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` and ``~/.aws``. Secrets are ``SecretStr``: they print
    as ``**********`` in logs, manifests, MLflow params and Prefect artifacts.
    """

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000.")
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    region: str | None = None
    profile: str | None = None
    max_attempts: Annotated[
        PositiveInt,
        Field(
            description="Tries per S3 request, the first included (botocore 'standard' retries of 5xx, throttling "
            "and dropped connections, with jittered exponential backoff capped at 20 s: at 8, about 35 s of waiting "
            "on average, 71 s at most) before the stage fails; for throttling and dropped connections s3fs repeats "
            "the whole sequence up to 5 times."
        ),
    ] = 8
