"""Run a simulated Lightning network: one LND-compatible gRPC+TLS server per node.

Usable in-process (tests, the charge-session simulator)::

    async with Simnet(tmp_path) as simnet:
        client = LndClient(simnet.node("car").address)

or from the command line (``distributedcharge simnet``). For every node, ``DIR/NAME/``
holds what a real lnd would hand its owner: ``tls.cert``, ``admin.macaroon``,
``invoice.macaroon``, ``readonly.macaroon`` and ``node.json`` (host, port, identity pubkey,
lndconnect URIs). The books live in ``DIR/simnet.sqlite3`` and survive restarts; a node
keeps its port across restarts when the port is still free.

Every RPC passes the same gate first, as in lnd's interceptor chain: the control-channel
latency, then the macaroon check against the node's root keys with the caller's address
from the gRPC peer, then the handler. Refusals carry lnd's texts and status codes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
from google.protobuf.message import DecodeError

from distributedcharge import log
from distributedcharge.lightning import macaroons
from distributedcharge.lightning.node import NodeAddress, to_lndconnect
from distributedcharge.simnet import control, tls
from distributedcharge.simnet.network import Faults, Network
from distributedcharge.simnet.services import (
    NETWORK,
    InvoicesService,
    LightningService,
    RouterService,
    status_code,
)
from distributedcharge.simnet.state import LndError, NetworkState
from protos import invoices_pb2_grpc, lightning_pb2_grpc, router_pb2_grpc

logger = log.get("simnet")

HOST = "127.0.0.1"
STATE_FILE = "simnet.sqlite3"
LOCK_FILE = "simnet.lock"
DEFAULT_NODES: tuple[tuple[str, int], ...] = (("car", 1_000_000), ("wall", 0))
# lnd bakes them in this order and gives admin.macaroon the stricter file mode.
MACAROON_MODES = {"invoice": 0o644, "readonly": 0o644, "admin": 0o640}
SERVER_OPTIONS = [
    # A port held by another process must make the bind fail, not be shared.
    ("grpc.so_reuseport", 0),
    # lnd's keepalive defaults: server pings every minute, clients may ping every 5 s in a call.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
]
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
MAX_CHANNEL_SAT = 21_000_000 * 100_000_000


class SimnetError(Exception):
    """The simnet cannot start as asked; the message says why."""


def check_node_specs(specs: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    if not specs:
        raise SimnetError("at least one node is needed")
    seen: set[str] = set()
    for name, sats in specs:
        if not isinstance(name, str) or not NODE_NAME.fullmatch(name):
            raise SimnetError(
                f"node name {name!r}: use 1-32 letters, digits, '-' or '_', starting with a letter or digit"
            )
        if name in seen:
            raise SimnetError(f"node {name!r} is listed twice")
        seen.add(name)
        if isinstance(sats, bool) or not isinstance(sats, int) or not 0 <= sats <= MAX_CHANNEL_SAT:
            raise SimnetError(f"node {name!r}: channel size must be a whole number of sat from 0 to {MAX_CHANNEL_SAT}")
    return list(specs)


def _lock_state_dir(state_dir: Path) -> IO[bytes]:
    """Hold ``DIR/simnet.lock``: two servers over one set of books would pay invoices twice."""
    handle = open(state_dir / LOCK_FILE, "ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SimnetError(f"another simnet is already running in {state_dir}") from None
    return handle


def _peer_ip(peer: str) -> str:
    """Host part of a gRPC peer string such as ``ipv4:127.0.0.1:5000`` or ``ipv6:[::1]:5000``."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")]
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return ""


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request whose bytes are not the method's protobuf message."""

    reason: str


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    # grpc would log a traceback for a DecodeError; the gate answers it as grpc-go does instead.
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return deserialize


class _Gate(grpc.aio.ServerInterceptor):
    """Latency, macaroon check and error translation around every method of one node."""

    def __init__(self, node: SimNode):
        self.node = node

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            # Nothing simnet serves streams requests; refusing keeps every served method gated.
            return None
        method = handler_call_details.method
        codecs = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(self._streaming(method, handler.unary_stream), **codecs)
        return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary), **codecs)

    async def _admit(self, method: str, context: grpc.aio.ServicerContext) -> None:
        latency = self.node.faults.latency_s
        if latency:
            await asyncio.sleep(latency)
        values = [value for key, value in (context.invocation_metadata() or ()) if key == "macaroon"]
        peer_ip = _peer_ip(context.peer())
        network = self.node.simnet.network
        now = dt.datetime.fromtimestamp(network.now_ns() / 1e9, dt.timezone.utc)
        try:
            macaroons.verify_metadata(values, network.state.root_keys(self.node.name), method, peer_ip, now)
        except macaroons.MacaroonVerificationError as exc:
            logger.info("macaroon refused", node=self.node.name, method=method, peer=peer_ip, reason=exc.message)
            await context.abort(grpc.StatusCode.UNKNOWN, exc.message)

    def _unary(self, method, behaviour):
        # grpc-go decodes a unary request before the interceptors run, a streaming one after.
        async def handle(request, context):
            await self._reject_undecodable(method, request, context)
            await self._admit(method, context)
            try:
                return await behaviour(request, context)
            except LndError as exc:
                await self._refuse(method, context, exc)

        return handle

    def _streaming(self, method, behaviour):
        async def handle(request, context):
            await self._admit(method, context)
            await self._reject_undecodable(method, request, context)
            try:
                async for response in behaviour(request, context):
                    yield response
            except LndError as exc:
                await self._refuse(method, context, exc)

        return handle

    async def _reject_undecodable(self, method: str, request, context: grpc.aio.ServicerContext) -> None:
        if isinstance(request, _Undecodable):
            logger.info("undecodable request", node=self.node.name, method=method, reason=request.reason)
            await context.abort(grpc.StatusCode.INTERNAL, f"grpc: error unmarshalling request: {request.reason}")

    async def _refuse(self, method: str, context: grpc.aio.ServicerContext, error: LndError) -> None:
        logger.info("request refused", node=self.node.name, method=method, code=error.code, reason=error.message)
        await context.abort(status_code(error), error.message)


class SimNode:
    """One simulated lnd: its files, its gRPC server and its fault switches."""

    def __init__(self, simnet: Simnet, name: str):
        self.simnet = simnet
        self.name = name
        self.directory = simnet.state_dir / name
        self.host = HOST
        self.port: int | None = simnet.state.node(name).port
        self._server: grpc.aio.Server | None = None
        self._credentials: grpc.ServerCredentials | None = None
        self._cert_pem = b""

    @property
    def faults(self) -> Faults:
        return self.simnet.network.faults[self.name]

    @property
    def pubkey(self) -> str:
        return self.simnet.state.node(self.name).pubkey_hex

    @property
    def tls_cert_path(self) -> Path:
        return self.directory / "tls.cert"

    @property
    def node_json_path(self) -> Path:
        return self.directory / "node.json"

    def macaroon_path(self, kind: str = "admin") -> Path:
        if kind not in MACAROON_MODES:
            raise ValueError(f"unknown macaroon kind {kind!r}; choose one of {', '.join(MACAROON_MODES)}")
        return self.directory / f"{kind}.macaroon"

    @property
    def address(self) -> NodeAddress:
        """Where and how to reach this node with its admin macaroon."""
        return self.address_for("admin")

    def address_for(self, kind: str) -> NodeAddress:
        if self.port is None:
            raise RuntimeError(f"simnet node {self.name} has not been started")
        return NodeAddress(self.host, self.port, self._cert_pem, self.macaroon_path(kind).read_bytes())

    async def start(self, created: bool, now: dt.datetime) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cert_pem, key_pem = tls.ensure_certificate(
            self.tls_cert_path, self.directory / "tls.key", self.name, now
        )
        self._credentials = grpc.ssl_server_credentials([(key_pem, self._cert_pem)])
        self._write_macaroons(overwrite=created)
        await self._serve()
        self.faults.online = True

    def _write_macaroons(self, overwrite: bool) -> None:
        root_key = self.simnet.state.root_keys(self.name)["0"]
        for kind, mode in MACAROON_MODES.items():
            path = self.macaroon_path(kind)
            if overwrite or not path.exists():
                raw = macaroons.bake(root_key, macaroons.DEFAULT_MACAROON_PERMISSIONS[kind])
                tls.write_atomically(path, raw, mode)

    async def _serve(self) -> None:
        server = grpc.aio.server(interceptors=[_Gate(self)], options=SERVER_OPTIONS)
        network = self.simnet.network
        lightning_pb2_grpc.add_LightningServicer_to_server(LightningService(network, self.name), server)
        invoices_pb2_grpc.add_InvoicesServicer_to_server(InvoicesService(network, self.name), server)
        router_pb2_grpc.add_RouterServicer_to_server(RouterService(network, self.name), server)
        port = self._bind(server, self.port) if self.port else 0
        if not port:
            port = self._bind(server, 0)
        if not port:
            raise OSError(f"cannot bind a port on {self.host} for simnet node {self.name}")
        await server.start()
        self._server = server
        if port != self.port:
            self.port = port
            self.simnet.state.set_port(self.name, port)
        self._write_node_json()
        logger.info("node serving", node=self.name, host=self.host, port=port, pubkey=self.pubkey)

    def _bind(self, server: grpc.aio.Server, port: int) -> int:
        try:
            return server.add_secure_port(f"{self.host}:{port}", self._credentials)
        except RuntimeError:
            return 0

    def _write_node_json(self) -> None:
        document = {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "pubkey": self.pubkey,
            "network": NETWORK,
            "lndconnect": {kind: to_lndconnect(self.address_for(kind)) for kind in ("admin", "invoice", "readonly")},
        }
        tls.write_atomically(self.node_json_path, (json.dumps(document, indent=2) + "\n").encode(), 0o640)

    async def go_offline(self) -> None:
        """Close the port: clients get UNAVAILABLE and payments towards this node find no route."""
        self.faults.online = False
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(None)
            logger.info("node offline", node=self.name)

    async def go_online(self) -> None:
        if self._server is None:
            await self._serve()
        self.faults.online = True

    def set_latency_ms(self, ms: int) -> None:
        self.faults.latency_s = ms / 1000

    def fail_payments(self, count: int) -> None:
        self.faults.failing_payments = count

    def status(self) -> dict[str, Any]:
        return {
            "online": self.faults.online,
            "port": self.port,
            "latency_ms": round(self.faults.latency_s * 1000),
            "failing_payments": self.faults.failing_payments,
        }

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(None)


class Simnet:
    """A whole simulated network; ``async with Simnet(dir) as simnet`` starts and stops it.

    ``clock`` (Unix nanoseconds) is what invoices, expiry, block height and macaroon
    ``time-before`` checks see, so a simulation may run the network's time faster.
    """

    def __init__(
        self,
        state_dir: str | Path,
        nodes: Sequence[tuple[str, int]] = DEFAULT_NODES,
        *,
        fee_base_msat: int = 1000,
        fee_ppm: int = 1,
        payment_latency_s: float = 0.02,
        control_socket: bool = True,
        clock: Callable[[], int] = time.time_ns,
    ):
        if fee_base_msat < 0 or fee_ppm < 0:
            raise SimnetError("routing fees cannot be negative")
        self.state_dir = Path(state_dir)
        self.node_specs = check_node_specs(nodes)
        self.fee_base_msat = fee_base_msat
        self.fee_ppm = fee_ppm
        self.payment_latency_s = payment_latency_s
        self.control_socket = control_socket
        self.clock = clock
        self.nodes: dict[str, SimNode] = {}
        self.state: NetworkState | None = None
        self.network: Network | None = None
        self._background: list[asyncio.Task] = []
        self._control: asyncio.AbstractServer | None = None
        self._lock: IO[bytes] | None = None

    def node(self, name: str) -> SimNode:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"no simnet node {name!r}; nodes: {', '.join(self.nodes)}") from None

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_state_dir(self.state_dir)
        try:
            self.state = NetworkState(self.state_dir / STATE_FILE)
            self.network = Network(
                self.state, fee_base_msat=self.fee_base_msat, fee_ppm=self.fee_ppm,
                payment_latency_s=self.payment_latency_s, clock=self.clock,
            )
            await self._start_nodes()
        except BaseException:
            await self.stop()
            raise

    async def _start_nodes(self) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        created = set(self.state.ensure_nodes(self.node_specs, self.network.now_ns()))
        known = {name for name, _ in self.node_specs}
        for name in self.state.node_names():
            if name not in known:
                logger.info("serving node from earlier run", node=name)
            node = SimNode(self, name)
            self.nodes[name] = node
            await node.start(name in created, now)
        self.network.resume_payments()
        self._background.append(asyncio.get_running_loop().create_task(self.network.sweep_expired_invoices()))
        if self.control_socket:
            path = control.socket_path(self.state_dir)
            try:
                self._control = await control.serve(self, path)
            except control.ControlError as exc:
                logger.warning("control socket disabled", reason=str(exc))

    async def stop(self) -> None:
        if self._control is not None:
            self._control.close()
            await self._control.wait_closed()
            control.socket_path(self.state_dir).unlink(missing_ok=True)
            self._control = None
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        for node in self.nodes.values():
            await node.stop()
        self.nodes = {}
        if self.network is not None:
            await self.network.close()
            self.network = None
        if self.state is not None:
            self.state.close()
            self.state = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    async def __aenter__(self) -> Simnet:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()
