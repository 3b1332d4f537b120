"""The two ways a SWCAN exchange goes wrong: the peer sent something bad, or we misused a link."""

from __future__ import annotations


class SwcanProtocolError(ValueError):
    """Bytes from the bus that do not form a valid frame or payload; the message says why."""


class LinkStateError(RuntimeError):
    """A local call that the link's current state does not allow (a bug in the caller)."""
