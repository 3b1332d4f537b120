"""The one bridge from python-can's Notifier thread to an asyncio loop.

python-can delivers frames on its Notifier thread; every core runs on the loop. This
listener hands each frame the caller wants, and each read error, to the loop with
``call_soon_threadsafe``, and sleeps a little after a read error because python-can
retries a failed read at once and a dead interface would otherwise spin a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import can


class LoopListener(can.Listener):
    def __init__(self, loop: asyncio.AbstractEventLoop, on_frame: Callable[[can.Message], None],
                 on_error: Callable[[Exception], None], *, error_backoff_s: float,
                 wants: Callable[[can.Message], bool] | None = None) -> None:
        self._loop = loop
        self._on_frame = on_frame
        self._on_error = on_error
        self._error_backoff_s = error_backoff_s
        self._wants = wants
        self.active = True

    def on_message_received(self, message: can.Message) -> None:
        if self._wants is None or self._wants(message):
            self._call_in_loop(self._on_frame, message)

    def on_error(self, exc: Exception) -> None:
        self._call_in_loop(self._on_error, exc)
        time.sleep(self._error_backoff_s)

    def _call_in_loop(self, callback: Callable[..., None], argument: object) -> None:
        if not self.active:
            return
        # RuntimeError: the loop closed between the check and the call; its owner is stopping.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, argument)
