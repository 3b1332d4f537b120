"""Exponential backoff: the one retry schedule the cores and the edges share."""

from __future__ import annotations


class Backoff:
    """Doubles from ``first_s`` up to ``most_s``; :meth:`reset` after a success."""

    def __init__(self, first_s: float, most_s: float) -> None:
        if not 0 < first_s <= most_s:
            raise ValueError(f"backoff needs 0 < first_s <= most_s, got {first_s} and {most_s}")
        self.first_s = first_s
        self.most_s = most_s
        self._next_s = first_s

    def next(self) -> float:
        delay, self._next_s = self._next_s, min(self._next_s * 2, self.most_s)
        return delay

    def reset(self) -> None:
        self._next_s = self.first_s
