"""What every config section shares: the strict base model and the one error type."""

from __future__ import annotations

from sslcore.method_config import StrictModel

__all__ = ["ConfigError", "StrictModel"]


class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the key and the fix."""
