"""``distributedcharge twcsim``: a simulated TWC Gen 2 slave on a pty or a TCP port.

``--pty-link PATH`` creates a pseudo-terminal and points PATH at its device, so a master
opens PATH as if it were an RS-485 adapter (ours with ``[twc] port = PATH``, TWCManager
with ``interface.RS485.port``). ``--tcp PORT`` listens on 127.0.0.1:PORT for one client
at a time (``socket://127.0.0.1:PORT`` in pyserial terms).

SIGUSR1 plugs the simulated car in, SIGUSR2 unplugs it; SIGINT or SIGTERM end the run.
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import selectors
import signal
import socket
import threading
import time
import tty
from pathlib import Path
from typing import Callable

from distributedcharge import log
from distributedcharge.sim.twc_slave import SimpleCar, SlaveConfig, TwcSlave
from distributedcharge.units import NJ_PER_WH

_log = log.get("twcsim")

POLL_INTERVAL = 0.005  # a real slave answers within 1-25 ms


class PtyLink:
    """A pty whose device is reachable at ``path`` (a symlink), like a USB adapter."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._master: int | None = None
        self._slave: int | None = None

    def open(self) -> None:
        if self.path.exists() and not self.path.is_symlink():
            raise FileExistsError(f"{self.path} exists and is not a symlink; refusing to replace it")
        master, slave = os.openpty()
        # Raw from the start: before a master opens the device, the default line
        # discipline would echo our frames back and turn 0D bytes into 0A.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(os.ttyname(slave))
        os.replace(temporary, self.path)
        _log.info("twcsim_pty_ready", link=str(self.path), device=os.ttyname(slave))

    def close(self) -> None:
        """Take the device away, as unplugging a USB adapter would."""
        try:
            if self.path.is_symlink():
                self.path.unlink()
        except OSError as exc:
            _log.warning("twcsim_unlink_failed", link=str(self.path), reason=str(exc))
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def register(self, selector: selectors.BaseSelector) -> None:
        assert self._master is not None
        selector.register(self._master, selectors.EVENT_READ, self)

    def on_readable(self, fileobj: object) -> bytes:
        assert self._master is not None
        try:
            return os.read(self._master, 4096)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:  # no process has the device open
                return b""
            raise

    def write(self, data: bytes) -> None:
        if self._master is None:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._master, view):]
            except (BlockingIOError, OSError):
                # Nobody reads the device: bytes on an RS-485 bus nobody listens to are lost.
                return


class TcpLink:
    """Listens on 127.0.0.1; the newest client is the bus."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self._server: socket.socket | None = None
        self._client: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None

    def open(self) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.host, self.port))
        server.listen(1)
        server.setblocking(False)
        self._server = server
        self.port = server.getsockname()[1]
        _log.info("twcsim_tcp_ready", url=f"socket://{self.host}:{self.port}")

    def close(self) -> None:
        for sock in (self._client, self._server):
            if sock is not None:
                sock.close()
        self._client = self._server = None

    def register(self, selector: selectors.BaseSelector) -> None:
        assert self._server is not None
        self._selector = selector
        selector.register(self._server, selectors.EVENT_READ, self)

    def on_readable(self, fileobj: object) -> bytes:
        if fileobj is self._server:
            self._accept()
            return b""
        assert self._client is not None
        try:
            data = self._client.recv(4096)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            data = b""
        if not data:
            self._drop_client()
        return data

    def _accept(self) -> None:
        assert self._server is not None and self._selector is not None
        try:
            client, peer = self._server.accept()
        except BlockingIOError:
            return
        self._drop_client()
        client.setblocking(False)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = client
        self._selector.register(client, selectors.EVENT_READ, self)
        _log.info("twcsim_client_connected", peer=f"{peer[0]}:{peer[1]}")

    def _drop_client(self) -> None:
        if self._client is not None:
            if self._selector is not None:
                self._selector.unregister(self._client)
            self._client.close()
            self._client = None
            _log.info("twcsim_client_disconnected")

    def write(self, data: bytes) -> None:
        if self._client is None:
            return
        try:
            self._client.sendall(data)
        except OSError:
            self._drop_client()


Link = PtyLink | TcpLink


def run_slave(
    slave: TwcSlave,
    link: Link,
    stop: threading.Event,
    clock: Callable[[], float] = time.monotonic,
    pending: list[Callable[[float], None]] | None = None,
) -> None:
    """Serve ``slave`` on an opened ``link`` until ``stop`` is set.

    ``pending`` holds actions (plug, unplug) queued from signal handlers or other
    threads; each is called with ``now`` on the serving thread.
    """
    selector = selectors.DefaultSelector()
    link.register(selector)
    reported: tuple[object, ...] | None = None
    try:
        while not stop.is_set():
            for key, _ in selector.select(POLL_INTERVAL):
                data = key.data.on_readable(key.fileobj)
                if data:
                    slave.receive(data, clock())
            now = clock()
            while pending:
                pending.pop(0)(now)
            slave.tick(now)
            outgoing = slave.bytes_to_send()
            if outgoing:
                link.write(outgoing)
            summary = (slave.slave_id, slave.state, slave.load.plugged, slave.linked,
                       slave.offered_centiamps, slave.relay_closed)
            if summary != reported:
                reported = summary
                _log.info("twcsim_state", slave=f"{slave.slave_id:04X}", state=f"{slave.state:02X}",
                          plugged=slave.load.plugged, linked=slave.linked,
                          master=None if slave.master_id is None else f"{slave.master_id:04X}",
                          offered_a=slave.offered_centiamps / 100, drawing_a=slave.actual_centiamps / 100,
                          lifetime_kwh=slave.lifetime_kwh)
    finally:
        selector.close()


def _hex_id(text: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        value = -1
    if not 0 < value < 0xFFFF or len(text) != 4:
        raise argparse.ArgumentTypeError(f"a TWCID is 4 hex digits other than 0000 and FFFF, got {text!r}")
    return value


def _firmware(text: str) -> tuple[int, int, int, int]:
    try:
        parts = [int(p) for p in text.split(".")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"firmware looks like 4.5.3, got {text!r}") from None
    if not 3 <= len(parts) <= 4 or any(not 0 <= p <= 255 for p in parts):
        raise argparse.ArgumentTypeError(f"firmware looks like 4.5.3, got {text!r}")
    return tuple(parts + [0] * (4 - len(parts)))  # type: ignore[return-value]


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}, got {value}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    link = parser.add_mutually_exclusive_group(required=True)
    link.add_argument("--pty-link", metavar="PATH", help="create a pty and symlink its device to PATH")
    link.add_argument("--tcp", metavar="PORT", type=_int_between(0, 65535), help="listen on 127.0.0.1:PORT")
    parser.add_argument("--slave-id", type=_hex_id, help="TWCID as 4 hex digits (default: random)")
    parser.add_argument("--max-amps", type=_int_between(6, 80), default=32,
                        help="rating announced in linkready: 32 on EU units, 80 on US units (default 32)")
    parser.add_argument("--voltage", type=_int_between(100, 480), default=230,
                        help="line voltage in volts (default 230)")
    parser.add_argument("--phases", type=int, choices=(1, 3), default=1, help="supply phases (default 1)")
    parser.add_argument("--protocol", type=int, choices=(1, 2), default=2, help="load-sharing protocol (default 2)")
    parser.add_argument("--firmware", type=_firmware, default=None,
                        help="firmware version (default 4.5.3 on protocol 2, none on protocol 1)")
    parser.add_argument("--lifetime-kwh", type=_int_between(0, 2**32 - 1), default=0,
                        help="lifetime energy at start (default 0)")
    parser.add_argument("--unplugged", action="store_true", help="start with no car plugged in")
    parser.add_argument("--vin", default=SimpleCar.vin, help="VIN the simulated car reports")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def run(args: argparse.Namespace) -> int:
    log.configure(args.log_level)
    if args.firmware is None:
        firmware = (4, 5, 3, 0) if args.protocol == 2 else None
    else:
        firmware = args.firmware
    volts = (args.voltage,) * args.phases + (0,) * (3 - args.phases)
    config = SlaveConfig(slave_id=args.slave_id, max_centiamps=args.max_amps * 100, protocol=args.protocol,
                         firmware=firmware, volts=volts, lifetime_kwh=args.lifetime_kwh)
    car = SimpleCar(plugged=not args.unplugged, vin=args.vin or None)
    slave = TwcSlave(config, car, random.Random())
    link: Link = PtyLink(args.pty_link) if args.pty_link else TcpLink(args.tcp)
    try:
        link.open()
    except OSError as exc:
        _log.error("twcsim_link_failed", reason=str(exc))
        return 1
    stop = threading.Event()
    pending: list[Callable[[float], None]] = []

    def on_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGUSR1:
            pending.append(slave.plug)
        elif signum == signal.SIGUSR2:
            pending.append(slave.unplug)
        else:
            stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, on_signal)
    _log.info("twcsim_started", slave=f"{slave.slave_id:04X}", protocol=args.protocol,
              firmware=".".join(map(str, firmware[:3])) if firmware else None, max_amps=args.max_amps,
              plugged=car.plugged)
    try:
        run_slave(slave, link, stop, pending=pending)
    finally:
        link.close()
    _log.info("twcsim_stopped", lifetime_kwh=slave.lifetime_kwh, energy_wh=slave.energy_nj // NJ_PER_WH,
              heartbeats_answered=slave.counters.heartbeats_answered, id_changes=slave.counters.id_changes,
              power_offs=slave.counters.power_offs, line_errors=slave.receiver.stats.errors())
    return 0
