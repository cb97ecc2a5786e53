"""Self-supervised losses as pure functions of tensors."""

from sslcore.losses.ntxent import ntxent

__all__ = ["ntxent"]
