"""The LND gRPC client both daemons use, on ``grpc.aio``.

Every call carries the macaroon (lowercase hex in the ``macaroon`` metadata, as lncli
sends it) over TLS that trusts only the node's own certificate when one is given, and
every call has a deadline. A call never retries or waits for the node: if the node is
down it raises :class:`Unreachable` at once, and the daemon decides what to do (cut
power, pause charging). ``wait_ready`` is the one place that waits, rebuilding the channel
with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.x509.oid import NameOID

from distributedcharge.lightning.errors import (
    InvalidRequest,
    LightningError,
    PaymentFailed,
    Unreachable,
    from_rpc_error,
)
from distributedcharge.lightning.node import NodeAddress
from protos import (
    invoices_pb2,
    invoices_pb2_grpc,
    lightning_pb2,
    lightning_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)

HASH_LENGTH = 32
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class NodeInfo:
    pubkey: str
    alias: str
    network: str
    block_height: int


@dataclass(frozen=True)
class AddedInvoice:
    r_hash: bytes
    payment_request: str
    add_index: int
    payment_addr: bytes


@dataclass(frozen=True)
class InvoiceStatus:
    r_hash: bytes
    state: str  # OPEN, SETTLED, CANCELED or ACCEPTED
    value_msat: int
    amt_paid_msat: int
    settle_index: int
    payment_request: str

    @property
    def final(self) -> bool:
        return self.state in ("SETTLED", "CANCELED")


@dataclass(frozen=True)
class PayReqInfo:
    destination: str
    payment_hash: str
    num_msat: int
    timestamp: int
    expiry: int
    description: str
    description_hash: str
    cltv_expiry: int
    payment_addr: bytes


@dataclass(frozen=True)
class PaymentStatus:
    payment_hash: str
    status: str  # IN_FLIGHT, SUCCEEDED or FAILED
    preimage: str
    value_msat: int
    fee_msat: int
    failure_reason: str

    @property
    def final(self) -> bool:
        return self.status in ("SUCCEEDED", "FAILED")


def _invoice_status(invoice: lightning_pb2.Invoice) -> InvoiceStatus:
    states = lightning_pb2.Invoice.InvoiceState
    state = states.Name(invoice.state) if invoice.state in states.values() else f"UNKNOWN_{invoice.state}"
    return InvoiceStatus(
        r_hash=invoice.r_hash,
        state=state,
        value_msat=invoice.value_msat,
        amt_paid_msat=invoice.amt_paid_msat,
        settle_index=invoice.settle_index,
        payment_request=invoice.payment_request,
    )


def _payment_status(payment: lightning_pb2.Payment) -> PaymentStatus:
    statuses = lightning_pb2.Payment.PaymentStatus
    # INITIATED (routerrpc.usestatusinitiated) and anything unknown are not final: treating
    # them as in flight is the only reading that can neither double-pay nor drop a payment.
    status = {statuses.SUCCEEDED: "SUCCEEDED", statuses.FAILED: "FAILED"}.get(payment.status, "IN_FLIGHT")
    reasons = lightning_pb2.PaymentFailureReason
    reason = payment.failure_reason
    return PaymentStatus(
        payment_hash=payment.payment_hash,
        status=status,
        preimage=payment.payment_preimage,
        value_msat=payment.value_msat,
        fee_msat=payment.fee_msat,
        failure_reason=reasons.Name(reason) if reason in reasons.values() else f"FAILURE_REASON_UNKNOWN_{reason}",
    )


def _require_hash(name: str, value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_LENGTH:
        shown = len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise InvalidRequest(f"{name} must be {HASH_LENGTH} bytes, got {shown}")
    return bytes(value)


def _require_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


class _MacaroonMetadata(grpc.AuthMetadataPlugin):
    def __init__(self, macaroon_hex: str):
        self._metadata = (("macaroon", macaroon_hex),)

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback(self._metadata, None)


def _certificate_names(pem: bytes) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses the certificate is valid for (CN when it has no SAN)."""
    certificate = x509.load_pem_x509_certificate(pem)
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return [str(name.value) for name in common_names], []
    return san.get_values_for_type(x509.DNSName), [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def _target_name_override(address: NodeAddress) -> str | None:
    """A name the pinned cert carries, when the host we dial is not one of them.

    The pinned certificate is the only trust root, so any name in it identifies the node;
    this lets an owner reach LND by a LAN IP that was never added with --tlsextraip.
    """
    if address.tls_cert_pem is None:
        return None
    dns_names, ips = _certificate_names(address.tls_cert_pem)
    host = address.host.lower()
    try:
        if str(ipaddress.ip_address(host)) in ips:
            return None
    except ValueError:
        if host in (name.lower() for name in dns_names):
            return None
    return (dns_names or ips or [None])[0]


def channel_options(address: NodeAddress) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.min_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 30_000),
        # A Pi on Wi-Fi can lose the link silently; pings during calls notice within ~40 s.
        # LND allows client pings every 5 s, but only while a call is active.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    override = _target_name_override(address)
    if override:
        options.append(("grpc.ssl_target_name_override", override))
    return options


def channel_credentials(address: NodeAddress) -> grpc.ChannelCredentials:
    # root_certificates=None means grpc's trust store: for nodes behind a public CA.
    transport = grpc.ssl_channel_credentials(root_certificates=address.tls_cert_pem)
    macaroon = grpc.metadata_call_credentials(_MacaroonMetadata(address.macaroon.hex()), name="macaroon")
    return grpc.composite_channel_credentials(transport, macaroon)


class LndClient:
    def __init__(
        self,
        address: NodeAddress,
        *,
        timeout_s: float = 10.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.address = address
        self._timeout_s = timeout_s
        self._credentials = channel_credentials(address)
        self._options = channel_options(address)
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._clock = clock
        self._backoff_s = backoff_initial_s
        self._channel: grpc.aio.Channel | None = None
        self._stubs: dict[str, Any] = {}
        self._broken = False
        self._rebuild_after = 0.0
        self._closed = False

    async def __aenter__(self) -> LndClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    def _open_channel(self) -> None:
        self._channel = grpc.aio.secure_channel(self.address.target, self._credentials, options=self._options)
        self._stubs = {
            "lnrpc.Lightning": lightning_pb2_grpc.LightningStub(self._channel),
            "routerrpc.Router": router_pb2_grpc.RouterStub(self._channel),
            "invoicesrpc.Invoices": invoices_pb2_grpc.InvoicesStub(self._channel),
        }

    async def _current_channel(self) -> grpc.aio.Channel:
        if self._closed:
            raise LightningError("the LND client is closed")
        if self._channel is None:
            self._open_channel()
        elif self._broken and self._clock() >= self._rebuild_after:
            # A fresh channel re-resolves the host and restarts grpc's own reconnect
            # backoff, which otherwise may have grown long during an outage.
            old = self._channel
            self._rebuild_after = self._clock() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, self._backoff_max_s)
            self._open_channel()
            await old.close()
        assert self._channel is not None
        return self._channel

    def _healthy(self) -> None:
        self._broken = False
        self._backoff_s = self._backoff_initial_s

    def _failure(self, error: grpc.RpcError, path: str) -> LightningError:
        failure = from_rpc_error(error, path)
        # Only a connection failure condemns the channel; a slow answer (deadline) does not,
        # and rebuilding would cut the invoice and payment streams that share it.
        if failure.code == grpc.StatusCode.UNAVAILABLE.name:
            self._broken = True
        return failure

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until a TLS connection to the node is up; Unreachable after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            channel = await self._current_channel()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Unreachable(f"{self.address.target}: no connection within {timeout_s:g} s", code="UNAVAILABLE")
            try:
                await asyncio.wait_for(channel.channel_ready(), timeout=min(remaining, max(self._backoff_s, 0.1)))
            except asyncio.TimeoutError:
                self._broken = True
                continue
            self._healthy()
            return

    async def _unary(self, service: str, method: str, request: Any) -> Any:
        await self._current_channel()
        path = f"/{service}/{method}"
        try:
            response = await getattr(self._stubs[service], method)(request, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise self._failure(exc, path) from None
        self._healthy()
        return response

    async def _stream(self, service: str, method: str, request: Any, timeout_s: float | None) -> AsyncIterator[Any]:
        await self._current_channel()
        path = f"/{service}/{method}"
        call = getattr(self._stubs[service], method)(request, timeout=timeout_s)
        try:
            async for message in call:
                self._healthy()
                yield message
        except grpc.RpcError as exc:
            raise self._failure(exc, path) from None
        finally:
            call.cancel()

    async def get_info(self) -> NodeInfo:
        info = await self._unary("lnrpc.Lightning", "GetInfo", lightning_pb2.GetInfoRequest())
        return NodeInfo(
            pubkey=info.identity_pubkey,
            alias=info.alias,
            network=info.chains[0].network if info.chains else "",
            block_height=info.block_height,
        )

    async def channel_balance_msat(self) -> int:
        """Spendable balance in our channels (local side), msat."""
        balance = await self._unary("lnrpc.Lightning", "ChannelBalance", lightning_pb2.ChannelBalanceRequest())
        return balance.local_balance.msat

    async def add_invoice(self, value_msat: int, memo: str = "", expiry: int = 3600) -> AddedInvoice:
        request = lightning_pb2.Invoice(
            value_msat=_require_int("value_msat", value_msat, 0, INT64_MAX),
            memo=memo,
            expiry=_require_int("expiry", expiry, 1, INT64_MAX),
        )
        added = await self._unary("lnrpc.Lightning", "AddInvoice", request)
        return AddedInvoice(added.r_hash, added.payment_request, added.add_index, added.payment_addr)

    async def add_hold_invoice(
        self, payment_hash: bytes, value_msat: int, memo: str, expiry: int, cltv_expiry: int
    ) -> AddedInvoice:
        request = invoices_pb2.AddHoldInvoiceRequest(
            hash=_require_hash("payment_hash", payment_hash),
            value_msat=_require_int("value_msat", value_msat, 0, INT64_MAX),
            memo=memo,
            expiry=_require_int("expiry", expiry, 1, INT64_MAX),
            cltv_expiry=_require_int("cltv_expiry", cltv_expiry, 0, INT64_MAX),
        )
        added = await self._unary("invoicesrpc.Invoices", "AddHoldInvoice", request)
        return AddedInvoice(bytes(payment_hash), added.payment_request, added.add_index, added.payment_addr)

    async def settle_invoice(self, preimage: bytes) -> None:
        request = invoices_pb2.SettleInvoiceMsg(preimage=_require_hash("preimage", preimage))
        await self._unary("invoicesrpc.Invoices", "SettleInvoice", request)

    async def cancel_invoice(self, payment_hash: bytes) -> None:
        request = invoices_pb2.CancelInvoiceMsg(payment_hash=_require_hash("payment_hash", payment_hash))
        await self._unary("invoicesrpc.Invoices", "CancelInvoice", request)

    async def lookup_invoice(self, payment_hash: bytes) -> InvoiceStatus:
        request = lightning_pb2.PaymentHash(r_hash=_require_hash("payment_hash", payment_hash))
        return _invoice_status(await self._unary("lnrpc.Lightning", "LookupInvoice", request))

    def subscribe_single_invoice(
        self, payment_hash: bytes, *, timeout_s: float | None = None
    ) -> AsyncIterator[InvoiceStatus]:
        """Current state first, then every change; ends after SETTLED or CANCELED."""
        request = invoices_pb2.SubscribeSingleInvoiceRequest(r_hash=_require_hash("payment_hash", payment_hash))
        return self._invoice_updates(request, timeout_s)

    async def _invoice_updates(self, request: Any, timeout_s: float | None) -> AsyncIterator[InvoiceStatus]:
        async for invoice in self._stream("invoicesrpc.Invoices", "SubscribeSingleInvoice", request, timeout_s):
            yield _invoice_status(invoice)

    async def decode_pay_req(self, pay_req: str) -> PayReqInfo:
        if not isinstance(pay_req, str) or not pay_req:
            raise InvalidRequest("payment request must be non-empty text")
        decoded = await self._unary("lnrpc.Lightning", "DecodePayReq", lightning_pb2.PayReqString(pay_req=pay_req))
        return PayReqInfo(
            destination=decoded.destination,
            payment_hash=decoded.payment_hash,
            num_msat=decoded.num_msat,
            timestamp=decoded.timestamp,
            expiry=decoded.expiry,
            description=decoded.description,
            description_hash=decoded.description_hash,
            cltv_expiry=decoded.cltv_expiry,
            payment_addr=decoded.payment_addr,
        )

    def send_payment(
        self,
        payment_request: str,
        *,
        timeout_s: int,
        fee_limit_msat: int,
        allow_self_payment: bool = False,
        amt_msat: int | None = None,
    ) -> AsyncIterator[PaymentStatus]:
        """Pay a BOLT11 invoice; yields each state change, the last one final.

        ``timeout_s`` bounds how long lnd keeps trying new routes. The gRPC deadline is
        that plus the call timeout; if it expires (Unreachable) the payment may still be
        in flight, so the caller must ``track_payment`` before deciding anything.
        """
        if not isinstance(payment_request, str) or not payment_request:
            raise InvalidRequest("payment request must be non-empty text")
        request = router_pb2.SendPaymentRequest(
            payment_request=payment_request,
            # lnd before v0.19 refuses a zero timeout; a zero fee limit allows only fee-free routes.
            timeout_seconds=_require_int("timeout_s", timeout_s, 1, INT32_MAX),
            fee_limit_msat=_require_int("fee_limit_msat", fee_limit_msat, 1, INT64_MAX),
            allow_self_payment=allow_self_payment,
            amt_msat=0 if amt_msat is None else _require_int("amt_msat", amt_msat, 1, INT64_MAX),
        )
        return self._payment_updates("SendPaymentV2", request, timeout_s + self._timeout_s)

    def track_payment(self, payment_hash: bytes, *, timeout_s: float | None = None) -> AsyncIterator[PaymentStatus]:
        """State of an earlier payment, then its changes until final; NotFound if never sent."""
        request = router_pb2.TrackPaymentRequest(payment_hash=_require_hash("payment_hash", payment_hash))
        return self._payment_updates("TrackPaymentV2", request, timeout_s)

    async def _payment_updates(self, method: str, request: Any, timeout_s: float | None) -> AsyncIterator[PaymentStatus]:
        async for payment in self._stream("routerrpc.Router", method, request, timeout_s):
            yield _payment_status(payment)

    async def pay(
        self,
        payment_request: str,
        *,
        timeout_s: int,
        fee_limit_msat: int,
        allow_self_payment: bool = False,
        amt_msat: int | None = None,
    ) -> PaymentStatus:
        """``send_payment`` to its end: the SUCCEEDED status, or PaymentFailed(reason)."""
        updates = self.send_payment(
            payment_request,
            timeout_s=timeout_s,
            fee_limit_msat=fee_limit_msat,
            allow_self_payment=allow_self_payment,
            amt_msat=amt_msat,
        )
        async with contextlib.aclosing(updates):
            async for status in updates:
                if status.status == "SUCCEEDED":
                    return status
                if status.status == "FAILED":
                    raise PaymentFailed(status.failure_reason)
        raise Unreachable("payment stream ended before a final state; track the payment to learn its outcome")
