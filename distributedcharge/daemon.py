"""What every daemon does around its own work: config, logs, signals, systemd.

A daemon is an object with ``async start()`` (connect, check privileges; raise
:class:`StartupError` to refuse to run), ``async run()`` (the work, until cancelled) and
``async stop()`` (close cleanly). :func:`main` loads and validates the config before
anything touches hardware, reports READY to systemd, feeds the watchdog only while the
daemon's loop is alive, and turns SIGTERM/SIGINT into a clean stop.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Callable, Protocol

from distributedcharge import config, log, systemd


class StartupError(Exception):
    """The daemon refuses to run (bad macaroon, missing device...): exit non-zero."""


class Daemon(Protocol):
    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


LOG_FIELDS = [
    config.Field("log.level", str, "info", config.one_of("debug", "info", "warning", "error")),
    config.Field("log.json", str, "auto", config.one_of("auto", "always", "never"),
                 "JSON lines for journald; auto = when stderr is not a terminal"),
]


def load_config(path: str, role: str) -> config.Config | None:
    try:
        _, cfg = config.load(path, role)
    except config.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None
    return cfg


def configure_logging(cfg: config.Config) -> None:
    section = cfg.get("log", {})
    json = {"auto": None, "always": True, "never": False}[section.get("json", "auto")]
    log.configure(section.get("level", "info"), json=json)


def main(role: str, config_path: str, build: Callable[[config.Config], Daemon]) -> int:
    cfg = load_config(config_path, role)
    if cfg is None:
        return 2
    configure_logging(cfg)
    logger = log.get(role)
    try:
        return asyncio.run(serve(build(cfg), logger))
    except StartupError as exc:
        logger.error("refusing to start", reason=str(exc))
        return 1


async def serve(daemon: Daemon, logger) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await daemon.start()
    systemd.notify("READY=1")
    logger.info("started")
    work = asyncio.create_task(daemon.run(), name="daemon")
    watchdog = asyncio.create_task(_feed_watchdog(), name="watchdog")
    stop_wait = asyncio.create_task(stopping.wait(), name="signals")
    try:
        await asyncio.wait({work, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        systemd.notify("STOPPING=1")
        for task in (work, watchdog, stop_wait):
            task.cancel()
        await asyncio.gather(work, watchdog, stop_wait, return_exceptions=True)
        await daemon.stop()
    if work.done() and not work.cancelled() and work.exception() is not None:
        logger.error("daemon failed", exc_info=work.exception())
        return 1
    logger.info("stopped")
    return 0


async def _feed_watchdog() -> None:
    interval = systemd.watchdog_interval_s()
    if interval is None:
        return
    while True:
        # Only a running event loop gets here, which is what the watchdog is meant to prove.
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)
