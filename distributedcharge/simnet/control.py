"""Fault control of a running simnet over a Unix socket, ``DIR/control.sock``.

Protocol: the client sends one JSON object on one line and reads one JSON object back.

* ``{"command": "status"}`` -> ``{"ok": true, "nodes": {NAME: STATUS, ...}}``
* ``{"command": "offline" | "online", "node": NAME}``: stop or restart the node's gRPC
  server (on the same port), so clients see exactly what an unreachable lnd looks like.
* ``{"command": "latency", "node": NAME, "ms": MS}``: delay every RPC of the node by MS.
* ``{"command": "fail-payments", "node": NAME, "count": N}``: the node's next N payments
  fail with FAILURE_REASON_NO_ROUTE without moving money.

Every answer is ``{"ok": true, "node": STATUS}`` or ``{"ok": false, "error": TEXT}``; a
malformed request never disturbs the server. STATUS is
``{"online", "port", "latency_ms", "failing_payments"}``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributedcharge import log

if TYPE_CHECKING:
    from distributedcharge.simnet.server import Simnet

logger = log.get("simnet")

SOCKET_NAME = "control.sock"
# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
MAX_REQUEST_BYTES = 4096
REQUEST_TIMEOUT_S = 10.0
MAX_LATENCY_MS = 600_000
MAX_FAILING_PAYMENTS = 1_000_000
ACTIONS = ("offline", "online", "latency", "fail-payments")


class ControlError(Exception):
    """The request could not be delivered or was refused; the message says why."""


def socket_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


def check_socket_path(path: Path) -> None:
    if len(str(path).encode()) > MAX_SOCKET_PATH:
        raise ControlError(
            f"{path}: path too long for a Unix socket ({len(str(path).encode())} bytes, "
            f"at most {MAX_SOCKET_PATH}); use a shorter --state-dir"
        )


def build_request(node: str, action: str, value: str | None) -> dict[str, Any]:
    """The request for ``control NODE ACTION [VALUE]``; ControlError explains bad arguments."""
    if action not in ACTIONS:
        raise ControlError(f"unknown action {action!r}; choose one of {', '.join(ACTIONS)}")
    if action in ("offline", "online"):
        if value is not None:
            raise ControlError(f"{action} takes no value")
        return {"command": action, "node": node}
    if value is None:
        raise ControlError(f"{action} needs a value: {'MS' if action == 'latency' else 'N'}")
    if not value.isascii() or not value.isdigit():
        raise ControlError(f"{action} value must be a non-negative whole number, got {value!r}")
    if action == "latency":
        return {"command": action, "node": node, "ms": int(value)}
    return {"command": action, "node": node, "count": int(value)}


def send(state_dir: str | Path, request: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """Deliver one request to the simnet running in ``state_dir`` and return its answer."""
    path = socket_path(state_dir)
    check_socket_path(path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout_s)
            connection.connect(str(path))
            connection.sendall(json.dumps(request).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except FileNotFoundError:
        raise ControlError(f"no simnet is running in {state_dir} ({path} does not exist)") from None
    except ConnectionRefusedError:
        raise ControlError(f"no simnet is listening on {path}") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(reply)
    except ValueError:
        raise ControlError(f"unreadable answer from the simnet: {reply[:200]!r}") from None
    if not isinstance(answer, dict):
        raise ControlError(f"unreadable answer from the simnet: {reply[:200]!r}")
    return answer


async def serve(simnet: Simnet, path: Path) -> asyncio.AbstractServer:
    check_socket_path(path)
    path.unlink(missing_ok=True)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), REQUEST_TIMEOUT_S)
            answer = await _answer(simnet, line)
        except TimeoutError:
            answer = {"ok": False, "error": f"no request within {REQUEST_TIMEOUT_S} s"}
        except asyncio.LimitOverrunError:
            answer = {"ok": False, "error": f"request longer than {MAX_REQUEST_BYTES} bytes"}
        except asyncio.IncompleteReadError:
            answer = {"ok": False, "error": "request must end with a newline"}
        try:
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, path=str(path), limit=MAX_REQUEST_BYTES)
    path.chmod(0o600)
    return server


async def _answer(simnet: Simnet, line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError:
        return {"ok": False, "error": "request is not JSON"}
    if not isinstance(request, dict):
        return {"ok": False, "error": "request must be a JSON object"}
    command = request.get("command")
    if command == "status":
        return {"ok": True, "nodes": {name: node.status() for name, node in simnet.nodes.items()}}
    if command not in ACTIONS:
        return {"ok": False, "error": f"unknown command {command!r}"}
    name = request.get("node")
    node = simnet.nodes.get(name) if isinstance(name, str) else None
    if node is None:
        return {"ok": False, "error": f"unknown node {name!r}; nodes: {', '.join(simnet.nodes)}"}
    if command == "offline":
        await node.go_offline()
    elif command == "online":
        try:
            await node.go_online()
        except OSError as exc:
            return {"ok": False, "error": f"cannot bring {name} online: {exc}"}
    elif command == "latency":
        ms = request.get("ms")
        if not _whole(ms, MAX_LATENCY_MS):
            return {"ok": False, "error": f"ms must be a whole number from 0 to {MAX_LATENCY_MS}"}
        node.set_latency_ms(ms)
    else:
        count = request.get("count")
        if not _whole(count, MAX_FAILING_PAYMENTS):
            return {"ok": False, "error": f"count must be a whole number from 0 to {MAX_FAILING_PAYMENTS}"}
        node.fail_payments(count)
    logger.info("control", command=command, node=name)
    return {"ok": True, "node": node.status()}


def _whole(value: Any, maximum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum
