"""The three gRPC services of one simulated node, answering as lnd v0.21 does.

Request checks follow lnd's own order and words (rpcserver.go, invoicesrpc, routerrpc), so a
client's error handling is exercised by the same texts it will meet on a real node. Refusals
are raised as :class:`LndError`; the server's wrapper turns them into gRPC statuses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import AsyncIterator
from decimal import Decimal

import grpc

from distributedcharge.lightning import bolt11
from distributedcharge.simnet.network import Network, invoice_topic, payment_topic
from distributedcharge.simnet.state import (
    NS_PER_S,
    HtlcState,
    InvoiceRecord,
    InvoiceState,
    LndError,
    NetworkState,
    PaymentRecord,
    PaymentStatus,
)
from protos import (
    invoices_pb2,
    invoices_pb2_grpc,
    lightning_pb2,
    lightning_pb2_grpc,
    router_pb2_grpc,
)

NETWORK = "regtest"
VERSION = "0.21.2-beta commit=distributedcharge-simnet"

# lnd's limits and defaults (invoices/invoices.go, invoicesrpc/addinvoice.go, chainreg, routing).
MAX_MEMO_SIZE = 1024
MAX_INVOICE_SAT = 100_000 * 100_000_000
MAX_EXPIRY_S = 365 * 24 * 3600
DEFAULT_EXPIRY_S = 24 * 3600
DEFAULT_CLTV_EXPIRY = 80
MIN_CLTV_DELTA = 24
MAX_FINAL_CLTV_DELTA = 65535
DEFAULT_MAX_PARTS = 16
MAX_PARTS_UPPER_LIMIT = 1000
HASH_SIZE = 32
# A BOLT11 tagged field's length is 10 bits of 5-bit groups (zpay32 writeTaggedField).
MAX_FIELD_GROUPS = 1023
VERTEX_SIZE = 33
# Larger amounts cannot be paid on any network; refusing them keeps every sum inside int64.
MAX_PAYMENT_MSAT = bolt11.MAX_AMOUNT_MSAT

# BOLT 9 names lnd gives the feature bits an invoice can carry (lnwire/features.go).
FEATURE_NAMES = {
    8: "tlv-onion", 9: "tlv-onion",
    14: "payment-addr", 15: "payment-addr",
    16: "multi-path-payments", 17: "multi-path-payments",
    24: "route-blinding", 25: "route-blinding",
    30: "amp", 31: "amp",
    48: "payment-metadata", 49: "payment-metadata",
}
AMP_FEATURE_BITS = (30, 31)


def _go_amount_btc(sat: int) -> str:
    """btcutil.Amount's String(): BTC with the shortest exact decimals."""
    text = format(Decimal(sat) / 100_000_000, "f")
    return (text.rstrip("0").rstrip(".") if "." in text else text) + " BTC"


def _go_float(value: int) -> str:
    """Go's %v of float64(value) for a whole number: shortest digits, %e from 1e6 on."""
    digits, exponent = _shortest_digits(float(value))
    if exponent < 6:
        return str(int(float(value)))
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{mantissa}e+{exponent:02d}"


def _shortest_digits(value: float) -> tuple[str, int]:
    _, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    return digits, len(digits) + exponent - 1


def unmarshall_amount(sat: int, msat: int) -> int:
    """lnrpc.UnmarshallAmt: one of sat and msat, never negative."""
    if sat and msat:
        raise LndError("sat and msat arguments are mutually exclusive")
    if sat < 0 or msat < 0:
        raise LndError("amount cannot be negative")
    return sat * 1000 if sat else msat


def make_hash(data: bytes) -> bytes:
    if len(data) != HASH_SIZE:
        raise LndError(f"invalid hash length of {len(data)}, want {HASH_SIZE}")
    return bytes(data)


def make_preimage(data: bytes) -> bytes:
    if len(data) != HASH_SIZE:
        raise LndError(f"invalid preimage length of {len(data)}, want {HASH_SIZE}")
    return bytes(data)


def make_vertex(data: bytes) -> bytes:
    if len(data) != VERTEX_SIZE:
        raise LndError(f"invalid vertex length of {len(data)}, want {VERTEX_SIZE}")
    return bytes(data)


def go_hex_decode(text: str) -> bytes:
    """encoding/hex DecodeString, with Go's error texts and its order of checks."""
    valid = "0123456789abcdefABCDEF"
    bad = next((char for char in text[: len(text) - len(text) % 2] if char not in valid), None)
    if bad is None and len(text) % 2 and text[-1] not in valid:
        bad = text[-1]
    if bad is not None:
        raise LndError(f"encoding/hex: invalid byte: {_go_rune(bad)}")
    if len(text) % 2:
        raise LndError("encoding/hex: odd length hex string")
    return bytes.fromhex(text)


def _go_rune(char: str) -> str:
    """Go's %#U: code point, then the character itself when printable."""
    return f"U+{ord(char):04X} '{char}'" if char.isprintable() else f"U+{ord(char):04X}"


def decode_payment_request(text: str) -> bolt11.Invoice:
    """zpay32.Decode for the regtest network."""
    try:
        invoice = bolt11.decode(text)
    except bolt11.InvoiceError as exc:
        raise LndError(str(exc)) from None
    if invoice.network != NETWORK:
        raise LndError(f"invoice not for current active network '{NETWORK}'")
    return invoice


def _features(bits: int) -> dict[int, lightning_pb2.Feature]:
    features = {}
    for bit in range(bits.bit_length()):
        if bits >> bit & 1:
            name = FEATURE_NAMES.get(bit, "unknown")
            features[bit] = lightning_pb2.Feature(name=name, is_required=bit % 2 == 0, is_known=bit in FEATURE_NAMES)
    return features


def invoice_message(invoice: InvoiceRecord, channel_id: int, *, with_htlcs: bool = True) -> lightning_pb2.Invoice:
    message = lightning_pb2.Invoice(
        memo=invoice.memo,
        r_hash=invoice.payment_hash,
        value=invoice.value_msat // 1000,
        value_msat=invoice.value_msat,
        creation_date=invoice.creation_date,
        settle_date=invoice.settle_date,
        payment_request=invoice.payment_request,
        description_hash=invoice.description_hash or b"",
        expiry=invoice.expiry,
        cltv_expiry=invoice.cltv_expiry,
        add_index=invoice.add_index,
        settle_index=invoice.settle_index,
        amt_paid_sat=invoice.amt_paid_msat // 1000,
        amt_paid_msat=invoice.amt_paid_msat,
        state=int(invoice.state),
        payment_addr=invoice.payment_addr,
        features=_features(bolt11.DEFAULT_FEATURES),
        # Deprecated in lnd but still filled by it, and still read by older clients.
        settled=invoice.state == InvoiceState.SETTLED,
        amt_paid=invoice.amt_paid_msat,
    )
    if invoice.preimage is not None:
        message.r_preimage = invoice.preimage
    htlc = invoice.htlc
    if htlc is not None and with_htlcs:
        message.htlcs.append(
            lightning_pb2.InvoiceHTLC(
                chan_id=channel_id,
                htlc_index=htlc.index,
                amt_msat=htlc.amt_msat,
                accept_height=htlc.accept_height,
                accept_time=htlc.accept_time,
                resolve_time=0 if htlc.state == HtlcState.ACCEPTED else htlc.resolve_time,
                expiry_height=htlc.expiry_height,
                state=int(htlc.state),
                mpp_total_amt_msat=htlc.amt_msat,
            )
        )
    return message


def payment_message(payment: PaymentRecord) -> lightning_pb2.Payment:
    succeeded = payment.status == PaymentStatus.SUCCEEDED
    # lnd counts fees of settled HTLCs only, so a locked HTLC shows no fee yet.
    fee_msat = payment.fee_msat if succeeded else 0
    message = lightning_pb2.Payment(
        payment_hash=payment.payment_hash.hex(),
        payment_preimage=(payment.preimage if succeeded and payment.preimage else bytes(32)).hex(),
        value_sat=payment.value_msat // 1000,
        value_msat=payment.value_msat,
        payment_request=payment.payment_request,
        status=int(payment.status),
        fee_sat=fee_msat // 1000,
        fee_msat=fee_msat,
        creation_time_ns=payment.creation_time_ns,
        value=payment.value_msat // 1000,
        creation_date=payment.creation_time_ns // NS_PER_S,
        fee=fee_msat // 1000,
        payment_index=payment.payment_index,
        failure_reason=int(payment.failure_reason),
    )
    if payment.attempt_time_ns is not None:
        attempt = lightning_pb2.HTLCAttempt(
            attempt_id=payment.payment_index,
            attempt_time_ns=payment.attempt_time_ns,
            status={
                PaymentStatus.IN_FLIGHT: lightning_pb2.HTLCAttempt.IN_FLIGHT,
                PaymentStatus.SUCCEEDED: lightning_pb2.HTLCAttempt.SUCCEEDED,
                PaymentStatus.FAILED: lightning_pb2.HTLCAttempt.FAILED,
            }[payment.status],
        )
        if payment.resolve_time_ns is not None:
            attempt.resolve_time_ns = payment.resolve_time_ns
        if succeeded and payment.preimage:
            attempt.preimage = payment.preimage
        message.htlcs.append(attempt)
    return message


class _NodeService:
    def __init__(self, network: Network, node: str):
        self.network = network
        self.node = node

    @property
    def state(self) -> NetworkState:
        return self.network.state

    def _channel_id(self) -> int:
        return self.state.node(self.node).channel_id

    def _invoice_message(self, invoice: InvoiceRecord, *, with_htlcs: bool = True) -> lightning_pb2.Invoice:
        return invoice_message(invoice, self._channel_id(), with_htlcs=with_htlcs)

    def create_invoice(
        self,
        request: lightning_pb2.Invoice | invoices_pb2.AddHoldInvoiceRequest,
        value_msat: int,
        *,
        preimage: bytes | None,
        payment_hash: bytes | None,
    ) -> InvoiceRecord:
        """invoicesrpc.AddInvoice, for both requests (lnd's two messages name these fields
        alike): checks in lnd's order, then sign and store."""
        memo, description_hash, fallback_addr = request.memo, request.description_hash, request.fallback_addr
        expiry, cltv_expiry = request.expiry, request.cltv_expiry
        memo_size = len(memo.encode("utf-8"))
        if memo_size > MAX_MEMO_SIZE:
            raise LndError(f"memo too large: {memo_size} bytes (maxsize={MAX_MEMO_SIZE})")
        if description_hash and len(description_hash) != 32:
            raise LndError(f"description hash is {len(description_hash)} bytes, must be 32")
        if value_msat // 1000 > MAX_INVOICE_SAT:
            raise LndError(
                f"invoice amount {_go_amount_btc(value_msat // 1000)} is too large, "
                f"max is {_go_amount_btc(MAX_INVOICE_SAT)}"
            )
        if fallback_addr:
            raise LndError("invalid fallback address: simnet has no on-chain wallet")
        if expiry > MAX_EXPIRY_S:
            raise LndError(
                f"expiry of {_go_float(expiry)} seconds greater than max expiry of "
                f"{_go_float(MAX_EXPIRY_S)} seconds"
            )
        expiry = expiry if expiry > 0 else DEFAULT_EXPIRY_S
        if cltv_expiry > MAX_FINAL_CLTV_DELTA:
            raise LndError(f"CLTV delta of {cltv_expiry} is too large, max accepted is: {MAX_FINAL_CLTV_DELTA}")
        if cltv_expiry == 0:
            cltv_expiry = DEFAULT_CLTV_EXPIRY
        elif cltv_expiry < MIN_CLTV_DELTA:
            raise LndError(f"CLTV delta of {cltv_expiry} must be greater than minimum of {MIN_CLTV_DELTA}")
        if request.route_hints:
            raise LndError("route hints are not supported by simnet: its channels are all public")
        description_groups = -(-memo_size * 8 // 5)
        if not description_hash and description_groups > MAX_FIELD_GROUPS:
            raise LndError(f"data length too big to fit within 10 bits: {description_groups}")

        if payment_hash is None:
            preimage = preimage if preimage is not None else os.urandom(32)
            payment_hash = hashlib.sha256(preimage).digest()
        payment_addr = os.urandom(32)
        now_s = self.network.now_ns() // NS_PER_S
        node = self.state.node(self.node)
        payment_request = bolt11.encode(
            network=NETWORK,
            amount_msat=value_msat or None,
            payment_hash=payment_hash,
            private_key=node.private_key,
            payment_secret=payment_addr,
            description=None if description_hash else memo,
            description_hash=description_hash or None,
            expiry=expiry,
            timestamp=now_s,
            min_final_cltv_expiry=cltv_expiry,
        )
        invoice = self.state.add_invoice(
            self.node,
            payment_hash=payment_hash,
            preimage=preimage,
            payment_addr=payment_addr,
            memo=memo,
            description_hash=description_hash or None,
            value_msat=value_msat,
            creation_date=now_s,
            expiry=expiry,
            cltv_expiry=cltv_expiry,
            payment_request=payment_request,
        )
        self.network.publish_invoice(invoice)
        return invoice


class LightningService(_NodeService, lightning_pb2_grpc.LightningServicer):
    async def GetInfo(self, request, context):
        node = self.state.node(self.node)
        now_ns = self.network.now_ns()
        height = self.state.block_height(now_ns)
        active = self.state.balance(self.node).capacity_msat > 0
        return lightning_pb2.GetInfoResponse(
            identity_pubkey=node.pubkey_hex,
            alias=self.node,
            num_active_channels=int(active),
            num_peers=1,
            block_height=height,
            block_hash=hashlib.sha256(f"simnet block {height}".encode()).hexdigest(),
            synced_to_chain=True,
            synced_to_graph=True,
            wallet_synced=True,
            best_header_timestamp=now_ns // NS_PER_S,
            version=VERSION,
            chains=[lightning_pb2.Chain(network=NETWORK)],
            color="#3399ff",
            features=_features(bolt11.DEFAULT_FEATURES),
        )

    async def ChannelBalance(self, request, context):
        balance = self.state.balance(self.node)

        def amount(msat: int) -> lightning_pb2.Amount:
            return lightning_pb2.Amount(sat=msat // 1000, msat=msat)

        return lightning_pb2.ChannelBalanceResponse(
            balance=balance.local_msat // 1000,
            local_balance=amount(balance.local_msat),
            remote_balance=amount(balance.remote_msat),
            unsettled_local_balance=amount(balance.unsettled_local_msat),
            unsettled_remote_balance=amount(balance.unsettled_remote_msat),
            pending_open_local_balance=amount(0),
            pending_open_remote_balance=amount(0),
        )

    async def AddInvoice(self, request, context):
        value = unmarshall_amount(request.value, request.value_msat)
        if request.is_amp:
            raise LndError("AMP invoices are not supported by simnet")
        preimage = make_preimage(request.r_preimage) if request.r_preimage else None
        invoice = self.create_invoice(request, value, preimage=preimage, payment_hash=None)
        return lightning_pb2.AddInvoiceResponse(
            r_hash=invoice.payment_hash,
            payment_request=invoice.payment_request,
            add_index=invoice.add_index,
            payment_addr=invoice.payment_addr,
        )

    async def LookupInvoice(self, request, context):
        payment_hash = go_hex_decode(request.r_hash_str) if request.r_hash_str else request.r_hash
        if len(payment_hash) not in (0, HASH_SIZE):
            raise LndError(f"payment hash must be exactly 32 bytes, is instead {len(payment_hash)}")
        invoice = self.state.find_invoice(self.node, payment_hash.ljust(HASH_SIZE, b"\0"))
        if invoice is None:
            if not self.state.has_invoices(self.node):
                raise LndError("there are no existing invoices", "NOT_FOUND")
            raise LndError("unable to locate invoice", "NOT_FOUND")
        return self._invoice_message(invoice)

    async def DecodePayReq(self, request, context):
        invoice = decode_payment_request(request.pay_req)
        return lightning_pb2.PayReq(
            destination=invoice.payee.hex(),
            payment_hash=invoice.payment_hash.hex(),
            num_satoshis=(invoice.amount_msat or 0) // 1000,
            num_msat=invoice.amount_msat or 0,
            timestamp=invoice.timestamp,
            expiry=invoice.expiry,
            description=invoice.description or "",
            description_hash=(invoice.description_hash or b"").hex(),
            cltv_expiry=invoice.min_final_cltv_expiry,
            route_hints=[
                lightning_pb2.RouteHint(
                    hop_hints=[
                        lightning_pb2.HopHint(
                            node_id=hop.pubkey.hex(),
                            chan_id=hop.short_channel_id,
                            fee_base_msat=hop.fee_base_msat,
                            fee_proportional_millionths=hop.fee_ppm,
                            cltv_expiry_delta=hop.cltv_delta,
                        )
                        for hop in hint
                    ]
                )
                for hint in invoice.route_hints
            ],
            payment_addr=invoice.payment_secret or bytes(32),
            features=_features(invoice.features),
        )

    async def SubscribeInvoices(self, request, context) -> AsyncIterator[lightning_pb2.Invoice]:
        sent_add, sent_settle = request.add_index, request.settle_index
        async with self.network.hub.subscribe(invoice_topic(self.node)) as queue:
            backlog: list[InvoiceRecord] = []
            if request.add_index:
                backlog += self.state.invoices_added_after(self.node, request.add_index)
            if request.settle_index:
                backlog += self.state.invoices_settled_after(self.node, request.settle_index)
            for invoice in backlog:
                sent_add, sent_settle = _advance(invoice, sent_add, sent_settle)
                yield self._invoice_message(invoice)
            while True:
                invoice = await queue.get()
                if invoice.state == InvoiceState.OPEN and invoice.add_index <= sent_add:
                    continue
                if invoice.state == InvoiceState.SETTLED and invoice.settle_index <= sent_settle:
                    continue
                sent_add, sent_settle = _advance(invoice, sent_add, sent_settle)
                yield self._invoice_message(invoice)


def _advance(invoice: InvoiceRecord, sent_add: int, sent_settle: int) -> tuple[int, int]:
    if invoice.state == InvoiceState.OPEN:
        sent_add = max(sent_add, invoice.add_index)
    if invoice.state == InvoiceState.SETTLED:
        sent_settle = max(sent_settle, invoice.settle_index)
    return sent_add, sent_settle


class InvoicesService(_NodeService, invoices_pb2_grpc.InvoicesServicer):
    async def SubscribeSingleInvoice(self, request, context) -> AsyncIterator[lightning_pb2.Invoice]:
        payment_hash = make_hash(request.r_hash)
        async with self.network.hub.subscribe(invoice_topic(self.node)) as queue:
            # lnd lets a client watch an invoice that does not exist yet: nothing is sent until it does.
            invoice = self.state.find_invoice(self.node, payment_hash)
            while True:
                if invoice is not None and invoice.payment_hash == payment_hash:
                    yield self._invoice_message(invoice)
                    if invoice.is_final:
                        return
                invoice = await queue.get()

    async def AddHoldInvoice(self, request, context):
        payment_hash = make_hash(request.hash)
        value = unmarshall_amount(request.value, request.value_msat)
        invoice = self.create_invoice(request, value, preimage=None, payment_hash=payment_hash)
        return invoices_pb2.AddHoldInvoiceResp(
            payment_request=invoice.payment_request,
            add_index=invoice.add_index,
            payment_addr=invoice.payment_addr,
        )

    async def SettleInvoice(self, request, context):
        preimage = make_preimage(request.preimage)
        self.network.publish(self.state.settle_invoice(self.node, preimage, self.network.now_ns()))
        return invoices_pb2.SettleInvoiceResp()

    async def CancelInvoice(self, request, context):
        payment_hash = make_hash(request.payment_hash)
        self.network.publish(self.state.cancel_invoice(self.node, payment_hash, self.network.now_ns()))
        return invoices_pb2.CancelInvoiceResp()

    async def LookupInvoiceV2(self, request, context):
        reference = request.WhichOneof("invoice_ref")
        if reference == "payment_hash":
            try:
                payment_hash = make_hash(request.payment_hash)
            except LndError as exc:
                raise LndError(f"unable to parse pay hash: {exc.message}", "INVALID_ARGUMENT") from None
            invoice = self.state.find_invoice(self.node, payment_hash)
            if invoice is None and not self.state.has_invoices(self.node):
                raise LndError("there are no existing invoices")
        elif reference == "payment_addr":
            invoice = self.state.find_invoice_by_addr(self.node, request.payment_addr[:32].ljust(32, b"\0"))
        elif reference == "set_id":
            invoice = None
        else:
            raise LndError("invoice ref must be set", "INVALID_ARGUMENT")
        if invoice is None:
            raise LndError("unable to locate invoice", "NOT_FOUND")
        blank = reference == "payment_addr" and request.lookup_modifier == invoices_pb2.HTLC_SET_BLANK
        return self._invoice_message(invoice, with_htlcs=not blank)


class RouterService(_NodeService, router_pb2_grpc.RouterServicer):
    async def SendPaymentV2(self, request, context) -> AsyncIterator[lightning_pb2.Payment]:
        intent = self._payment_intent(request)
        payment_hash = intent["payment_hash"]
        async with self.network.hub.subscribe(payment_topic(self.node, payment_hash)) as queue:
            self.network.start_payment(self.node, **intent)
            async for update in self._updates(queue, None, request.no_inflight_updates):
                yield update

    async def TrackPaymentV2(self, request, context) -> AsyncIterator[lightning_pb2.Payment]:
        payment_hash = make_hash(request.payment_hash)
        async with self.network.hub.subscribe(payment_topic(self.node, payment_hash)) as queue:
            payment = self.state.find_payment(self.node, payment_hash)
            if payment is None:
                raise LndError("payment isn't initiated", "NOT_FOUND")
            async for update in self._updates(queue, payment, request.no_inflight_updates):
                yield update

    async def _updates(self, queue, payment: PaymentRecord | None, no_inflight_updates: bool):
        while True:
            if payment is None:
                payment = await queue.get()
            if payment.is_final or not no_inflight_updates:
                yield payment_message(payment)
            if payment.is_final:
                return
            payment = None

    def _payment_intent(self, request) -> dict:
        """routerrpc extractIntentFromSendRequest, for the parts simnet can honour."""
        if not -1 <= request.time_pref <= 1:
            raise LndError("time preference out of range")
        if request.last_hop_pubkey:
            make_vertex(request.last_hop_pubkey)
        max_parts = request.max_parts or DEFAULT_MAX_PARTS
        if request.max_shard_size_msat > 0 and max_parts > MAX_PARTS_UPPER_LIMIT:
            raise LndError(
                f"requested max_parts ({max_parts}) exceeds the allowed upper limit of "
                f"{MAX_PARTS_UPPER_LIMIT}; cannot send payment amount with "
                f"max_shard_size_msat={request.max_shard_size_msat} mSAT"
            )
        fee_limit = unmarshall_amount(request.fee_limit_sat, request.fee_limit_msat)
        requested = unmarshall_amount(request.amt, request.amt_msat)
        if request.amp:
            raise LndError("AMP payments are not supported by simnet")

        if request.payment_request:
            if request.dest:
                raise LndError("dest and payment_request cannot appear together")
            if request.payment_hash:
                raise LndError("payment_hash and payment_request cannot appear together")
            if request.final_cltv_delta:
                raise LndError("final_cltv_delta and payment_request cannot appear together")
            invoice = decode_payment_request(request.payment_request)
            now_ns = self.network.now_ns()
            if now_ns > invoice.expires_at * NS_PER_S:
                raise LndError(f"invoice expired. Valid until {_go_time(invoice.expires_at)}")
            if invoice.payment_secret is None:
                raise LndError("payment request must contain either a payment address or blinded paths")
            if not invoice.amount_msat:
                if requested == 0:
                    raise LndError("amount must be specified when paying a zero amount invoice")
                value = requested
            else:
                if requested:
                    raise LndError("amount must not be specified when paying a non-zero amount invoice")
                value = invoice.amount_msat
            if any(invoice.features >> bit & 1 for bit in AMP_FEATURE_BITS):
                raise LndError("AMP invoices are not supported by simnet")
            target, payment_hash, payment_addr = invoice.payee, invoice.payment_hash, invoice.payment_secret
        else:
            target = make_vertex(request.dest)
            if requested == 0:
                raise LndError("amount must be specified")
            value = requested
            payment_hash = make_hash(request.payment_hash)
            payment_addr = request.payment_addr[:32].ljust(32, b"\0") if request.payment_addr else None

        if value > MAX_PAYMENT_MSAT:
            raise LndError(f"payment of {value} mSAT is too large, max payment allowed is {MAX_PAYMENT_MSAT} mSAT")
        if not request.allow_self_payment and target == self.state.node(self.node).pubkey:
            raise LndError("self-payments not allowed")
        return {
            "payment_hash": payment_hash,
            "payee_pubkey": target,
            "payment_addr": payment_addr,
            "payment_request": request.payment_request,
            "value_msat": value,
            "fee_limit_msat": min(fee_limit, MAX_PAYMENT_MSAT),
        }


def _go_time(unix_s: int) -> str:
    """A time.Time from time.Unix printed with %v, as lnd on a UTC machine prints it."""
    moment = dt.datetime.fromtimestamp(unix_s, dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def status_code(error: LndError) -> grpc.StatusCode:
    return grpc.StatusCode[error.code]
