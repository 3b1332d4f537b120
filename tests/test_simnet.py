"""Simnet end to end: the daemons' LND client and raw gRPC stubs over TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import time

import grpc
import grpc.aio
import pytest

from distributedcharge.lightning import bolt11, errors, macaroons
from distributedcharge.lightning.client import LndClient
from distributedcharge.lightning.node import NodeAddress, parse_lndconnect
from distributedcharge.simnet.server import Simnet, SimnetError
from protos import (
    invoices_pb2,
    invoices_pb2_grpc,
    lightning_pb2,
    lightning_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)

FEE_LIMIT_MSAT = 5_000


def run(scenario):
    asyncio.run(scenario())


@contextlib.asynccontextmanager
async def simnet_in(path, **options):
    async with Simnet(path / "net", **options) as simnet:
        yield simnet


@contextlib.asynccontextmanager
async def client(simnet, node="car", kind="admin", macaroon: bytes | None = None):
    address = simnet.node(node).address_for(kind)
    if macaroon is not None:
        address = NodeAddress(address.host, address.port, address.tls_cert_pem, macaroon)
    async with LndClient(address, timeout_s=5) as lnd:
        yield lnd


@contextlib.asynccontextmanager
async def raw_stubs(simnet, node="car"):
    """Stubs on a TLS channel that pins the node's cert but sends no macaroon by itself."""
    address = simnet.node(node).address
    channel = grpc.aio.secure_channel(address.target, grpc.ssl_channel_credentials(address.tls_cert_pem))
    try:
        yield (
            lightning_pb2_grpc.LightningStub(channel),
            invoices_pb2_grpc.InvoicesStub(channel),
            router_pb2_grpc.RouterStub(channel),
        )
    finally:
        await channel.close()


def admin_metadata(simnet, node="car"):
    return [("macaroon", simnet.node(node).macaroon_path("admin").read_bytes().hex())]


async def rpc_error(awaitable) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    return caught.value


async def stream_error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    return caught.value


def baked(simnet, node, permissions, *caveats):
    raw = macaroons.bake(simnet.state.root_keys(node)["0"], permissions)
    for caveat in caveats:
        raw = macaroons.add_first_party_caveat(raw, caveat)
    return raw


def total_msat(simnet) -> int:
    state = simnet.state
    nodes = state.node_names()
    return state.fees_msat() + sum(
        state.balance(n).local_msat + state.balance(n).unsettled_local_msat for n in nodes
    )


async def collect(updates):
    return [update async for update in updates]


# --- files and identity ----------------------------------------------------------------------


def test_each_node_gets_lnd_style_files_and_a_signed_regtest_identity(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            car = simnet.node("car")
            document = json.loads(car.node_json_path.read_text())
            assert document["host"] == "127.0.0.1"
            assert document["port"] == car.port
            assert document["network"] == "regtest"
            assert set(document["lndconnect"]) == {"admin", "invoice", "readonly"}
            for kind in ("admin", "invoice", "readonly"):
                uri_address = parse_lndconnect(document["lndconnect"][kind])
                assert uri_address.macaroon == car.macaroon_path(kind).read_bytes()
                assert uri_address.port == car.port
                granted = macaroons.parse(uri_address.macaroon).permissions
                assert granted == macaroons.DEFAULT_MACAROON_PERMISSIONS[kind]
            assert oct(car.macaroon_path("admin").stat().st_mode & 0o777) == "0o640"
            async with client(simnet, "wall") as wall, client(simnet, "car") as lnd:
                info = await lnd.get_info()
                assert info.pubkey == document["pubkey"] == car.pubkey
                assert info.alias == "car"
                assert info.network == "regtest"
                added = await wall.add_invoice(25_000, memo="25 Wh", expiry=600)
                invoice = bolt11.decode(added.payment_request)
                assert added.payment_request.startswith("lnbcrt")
                assert invoice.payee.hex() == simnet.node("wall").pubkey
                assert invoice.amount_msat == 25_000
                assert invoice.payment_secret == added.payment_addr
                decoded = await lnd.decode_pay_req(added.payment_request)
                assert decoded.destination == simnet.node("wall").pubkey
                assert decoded.num_msat == 25_000
                assert decoded.expiry == 600
                assert decoded.description == "25 Wh"

    run(scenario)


# --- macaroons ------------------------------------------------------------------------------


def test_invoice_macaroon_can_create_invoices_but_not_pay(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            async with client(simnet, "wall") as wall, client(simnet, "car", "invoice") as car_invoices:
                own = await car_invoices.add_invoice(1_000)
                assert own.payment_request.startswith("lnbcrt")
                bill = await wall.add_invoice(5_000)
                with pytest.raises(errors.PermissionDenied, match="permission denied"):
                    await car_invoices.pay(bill.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                with pytest.raises(errors.PermissionDenied):
                    await car_invoices.get_info()
                assert (await wall.lookup_invoice(bill.r_hash)).state == "OPEN"
            assert simnet.state.balance("car").local_msat == 1_000_000_000

    run(scenario)


def test_readonly_macaroon_reads_but_cannot_write(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            async with client(simnet, "car", "readonly") as reader, client(simnet, "wall") as wall:
                assert (await reader.get_info()).alias == "car"
                assert await reader.channel_balance_msat() == 1_000_000_000
                with pytest.raises(errors.PermissionDenied, match="permission denied"):
                    await reader.add_invoice(1_000)
                with pytest.raises(errors.PermissionDenied):
                    await reader.add_hold_invoice(os.urandom(32), 1_000, "", 600, 0)
                bill = await wall.add_invoice(5_000)
                with pytest.raises(errors.PermissionDenied):
                    await reader.pay(bill.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)

    run(scenario)


def test_caveats_are_enforced_as_lnd_does(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            info = [("info", "read")]
            past = macaroons.time_before_caveat(dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1))
            future = macaroons.time_before_caveat(dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5))
            refused = {
                "macaroon has expired": baked(simnet, "car", info, past),
                "macaroon locked to different IP address": baked(
                    simnet, "car", info, macaroons.ip_address_caveat("192.0.2.7")
                ),
                "macaroon locked to different IP range": baked(
                    simnet, "car", info, macaroons.ip_range_caveat("10.0.0.0/8")
                ),
                "caveat not recognized": baked(simnet, "car", info, "valid-on weekdays"),
                "signature mismatch": baked(simnet, "wall", info),
            }
            for text, macaroon in refused.items():
                async with client(simnet, macaroon=macaroon) as lnd:
                    with pytest.raises(errors.PermissionDenied, match=text):
                        await lnd.get_info()
            accepted = [
                baked(simnet, "car", info, future, macaroons.ip_address_caveat("127.0.0.1")),
                baked(simnet, "car", info, macaroons.ip_range_caveat("127.0.0.0/8")),
                baked(simnet, "car", [("uri", "/lnrpc.Lightning/GetInfo")]),
            ]
            for macaroon in accepted:
                async with client(simnet, macaroon=macaroon) as lnd:
                    assert (await lnd.get_info()).alias == "car"
            uri_only = baked(simnet, "car", [("uri", "/lnrpc.Lightning/GetInfo")])
            async with client(simnet, macaroon=uri_only) as lnd:
                with pytest.raises(errors.PermissionDenied):
                    await lnd.channel_balance_msat()

    run(scenario)


def test_missing_duplicate_and_garbage_macaroons_get_lnd_answers(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            good = simnet.node("car").macaroon_path("admin").read_bytes()
            flipped = bytearray(good)
            flipped[-1] ^= 1
            cases = [
                ([], "expected 1 macaroon, got 0"),
                ([("macaroon", good.hex()), ("macaroon", good.hex())], "expected 1 macaroon, got 2"),
                ([("macaroon", "zz")], "encoding/hex: invalid byte: U+007A 'z'"),
                ([("macaroon", "abc")], "encoding/hex: odd length hex string"),
                ([("macaroon", "")], None),
                ([("macaroon", "00" * 40)], "unknown macaroon version"),
                ([("macaroon", bytes(flipped).hex())], "signature mismatch"),
                ([("macaroon", good.hex().upper())], "ok"),
            ]
            async with raw_stubs(simnet) as (lightning, _, _):
                for metadata, text in cases:
                    call = lightning.GetInfo(lightning_pb2.GetInfoRequest(), metadata=metadata)
                    if text == "ok":
                        assert (await call).alias == "car"
                        continue
                    error = await rpc_error(call)
                    assert error.code() == grpc.StatusCode.UNKNOWN
                    if text is not None:
                        assert text in error.details()
                assert (await lightning.GetInfo(lightning_pb2.GetInfoRequest(), metadata=admin_metadata(simnet))).alias

    run(scenario)


def test_undecodable_requests_and_unknown_methods_leave_the_server_running(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            address = simnet.node("car").address
            metadata = admin_metadata(simnet)
            channel = grpc.aio.secure_channel(address.target, grpc.ssl_channel_credentials(address.tls_cert_pem))
            try:
                garbage = channel.unary_unary("/lnrpc.Lightning/AddInvoice")
                error = await rpc_error(garbage(b"\xff\xff\xff\xff", metadata=metadata))
                assert error.code() == grpc.StatusCode.INTERNAL
                assert "error unmarshalling request" in error.details()
                streaming = channel.unary_stream("/invoicesrpc.Invoices/SubscribeSingleInvoice")
                error = await stream_error(streaming(b"\x12\x05abc", metadata=metadata))
                assert "error unmarshalling request" in error.details()
                unknown = channel.unary_unary("/lnrpc.Lightning/StopDaemon")
                error = await rpc_error(unknown(b"", metadata=metadata))
                assert error.code() == grpc.StatusCode.UNIMPLEMENTED
                stub = lightning_pb2_grpc.LightningStub(channel)
                assert (await stub.GetInfo(lightning_pb2.GetInfoRequest(), metadata=metadata)).alias == "car"
            finally:
                await channel.close()

    run(scenario)


# --- invoices -------------------------------------------------------------------------------


def test_invoice_requests_are_checked_with_lnd_words(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            metadata = admin_metadata(simnet)
            async with raw_stubs(simnet) as (lightning, invoices, _):
                refusals = [
                    (lightning.AddInvoice(lightning_pb2.Invoice(value=1, value_msat=1000), metadata=metadata),
                     grpc.StatusCode.UNKNOWN, "sat and msat arguments are mutually exclusive"),
                    (lightning.AddInvoice(lightning_pb2.Invoice(value_msat=-5), metadata=metadata),
                     grpc.StatusCode.UNKNOWN, "amount cannot be negative"),
                    (lightning.AddInvoice(lightning_pb2.Invoice(r_preimage=b"short"), metadata=metadata),
                     grpc.StatusCode.UNKNOWN, "invalid preimage length of 5, want 32"),
                    (lightning.AddInvoice(lightning_pb2.Invoice(expiry=366 * 86400), metadata=metadata),
                     grpc.StatusCode.UNKNOWN, "expiry of 3.16224e+07 seconds greater than max expiry of 3.1536e+07"),
                    (lightning.AddInvoice(lightning_pb2.Invoice(memo="x" * 1025), metadata=metadata),
                     grpc.StatusCode.UNKNOWN, "memo too large: 1025 bytes (maxsize=1024)"),
                    (lightning.AddInvoice(lightning_pb2.Invoice(memo="x" * 700), metadata=metadata),
                     grpc.StatusCode.UNKNOWN, "data length too big to fit within 10 bits: 1120"),
                    (lightning.AddInvoice(lightning_pb2.Invoice(value=2**62), metadata=metadata),
                     grpc.StatusCode.UNKNOWN, "is too large, max is 100000 BTC"),
                    (lightning.LookupInvoice(lightning_pb2.PaymentHash(r_hash=b"\1" * 31), metadata=metadata),
                     grpc.StatusCode.UNKNOWN, "payment hash must be exactly 32 bytes, is instead 31"),
                    (lightning.LookupInvoice(lightning_pb2.PaymentHash(r_hash=b"\1" * 32), metadata=metadata),
                     grpc.StatusCode.NOT_FOUND, "there are no existing invoices"),
                    (lightning.LookupInvoice(lightning_pb2.PaymentHash(r_hash_str="xyz"), metadata=metadata),
                     grpc.StatusCode.UNKNOWN, "encoding/hex: invalid byte"),
                    (invoices.AddHoldInvoice(invoices_pb2.AddHoldInvoiceRequest(hash=b"\1" * 33), metadata=metadata),
                     grpc.StatusCode.UNKNOWN, "invalid hash length of 33, want 32"),
                    (invoices.SettleInvoice(invoices_pb2.SettleInvoiceMsg(preimage=b""), metadata=metadata),
                     grpc.StatusCode.UNKNOWN, "invalid preimage length of 0, want 32"),
                    (invoices.SettleInvoice(invoices_pb2.SettleInvoiceMsg(preimage=b"\1" * 32), metadata=metadata),
                     grpc.StatusCode.UNKNOWN, "unable to locate invoice"),
                    (invoices.CancelInvoice(invoices_pb2.CancelInvoiceMsg(payment_hash=b"\1" * 3), metadata=metadata),
                     grpc.StatusCode.UNKNOWN, "invalid hash length of 3, want 32"),
                    (invoices.LookupInvoiceV2(invoices_pb2.LookupInvoiceMsg(payment_hash=b"\1"), metadata=metadata),
                     grpc.StatusCode.INVALID_ARGUMENT, "unable to parse pay hash: invalid hash length of 1, want 32"),
                    (invoices.LookupInvoiceV2(invoices_pb2.LookupInvoiceMsg(), metadata=metadata),
                     grpc.StatusCode.INVALID_ARGUMENT, "invoice ref must be set"),
                    (lightning.DecodePayReq(lightning_pb2.PayReqString(pay_req="lnbc1garbage"), metadata=metadata),
                     grpc.StatusCode.UNKNOWN, ""),
                ]
                for call, code, text in refusals:
                    error = await rpc_error(call)
                    assert error.code() == code, error.details()
                    assert text in error.details()
                await lightning.AddInvoice(lightning_pb2.Invoice(value_msat=1000), metadata=metadata)
                error = await rpc_error(
                    lightning.LookupInvoice(lightning_pb2.PaymentHash(r_hash=b"\1" * 32), metadata=metadata)
                )
                assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "unable to locate invoice")

    run(scenario)


def test_duplicate_hash_and_foreign_network_are_refused(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            metadata = admin_metadata(simnet)
            mainnet = bolt11.encode(network="mainnet", amount_msat=1000, payment_hash=bytes(32),
                                    private_key=b"\1" * 32, payment_secret=b"\2" * 32, description="",
                                    timestamp=1_700_000_000)
            async with raw_stubs(simnet) as (lightning, invoices, _):
                preimage = os.urandom(32)
                await lightning.AddInvoice(lightning_pb2.Invoice(r_preimage=preimage), metadata=metadata)
                hold = invoices_pb2.AddHoldInvoiceRequest(hash=hashlib.sha256(preimage).digest(), value_msat=1)
                error = await rpc_error(invoices.AddHoldInvoice(hold, metadata=metadata))
                assert error.details() == "invoice with payment hash already exists"
                error = await rpc_error(lightning.DecodePayReq(lightning_pb2.PayReqString(pay_req=mainnet),
                                                               metadata=metadata))
                assert error.details() == "invoice not for current active network 'regtest'"

    run(scenario)


def test_subscribe_invoices_replays_then_follows(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            metadata = admin_metadata(simnet, "wall")
            async with raw_stubs(simnet, "wall") as (lightning, _, _), client(simnet, "car") as car:
                first = await lightning.AddInvoice(lightning_pb2.Invoice(value_msat=1000), metadata=metadata)
                second = await lightning.AddInvoice(lightning_pb2.Invoice(value_msat=2000), metadata=metadata)
                call = lightning.SubscribeInvoices(lightning_pb2.InvoiceSubscription(add_index=1), metadata=metadata)
                replayed = await call.read()
                assert (replayed.add_index, replayed.value_msat) == (second.add_index, 2000)
                await car.pay(first.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                settled = await call.read()
                assert (settled.r_hash, settled.state, settled.settle_index) == (
                    first.r_hash, lightning_pb2.Invoice.SETTLED, 1)
                call.cancel()

    run(scenario)


# --- payments -------------------------------------------------------------------------------


def test_payment_moves_exact_msat_and_fee_and_cannot_be_repeated(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path, fee_base_msat=1000, fee_ppm=200) as simnet:
            money = total_msat(simnet)
            async with client(simnet, "wall") as wall, client(simnet, "car") as car:
                bill = await wall.add_invoice(123_457, memo="energy")
                car_before = await car.channel_balance_msat()
                updates = await collect(car.send_payment(bill.payment_request, timeout_s=10,
                                                         fee_limit_msat=FEE_LIMIT_MSAT))
                assert [u.status for u in updates] == ["IN_FLIGHT", "SUCCEEDED"]
                paid = updates[-1]
                assert paid.fee_msat == 1000 + 25  # 123457 * 200 / 1e6 = 24.69, rounded up
                assert hashlib.sha256(bytes.fromhex(paid.preimage)).digest() == bill.r_hash
                assert await car.channel_balance_msat() == car_before - 123_457 - 1025
                assert await wall.channel_balance_msat() == 123_457
                invoice = await wall.lookup_invoice(bill.r_hash)
                assert (invoice.state, invoice.amt_paid_msat) == ("SETTLED", 123_457)
                with pytest.raises(errors.AlreadyPaid, match="invoice is already paid"):
                    await car.pay(bill.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                tracked = await collect(car.track_payment(bill.r_hash))
                assert [(t.status, t.fee_msat) for t in tracked] == [("SUCCEEDED", 1025)]
            assert total_msat(simnet) == money
            assert simnet.state.fees_msat() == 1025

    run(scenario)


def test_concurrent_payments_of_one_invoice_pay_once(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path, payment_latency_s=0.05) as simnet:
            async with client(simnet, "wall") as wall, client(simnet, "car") as car:
                bill = await wall.add_invoice(10_000)
                attempts = await asyncio.gather(
                    *(car.pay(bill.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT) for _ in range(4)),
                    return_exceptions=True,
                )
                succeeded = [a for a in attempts if not isinstance(a, Exception)]
                refused = [a for a in attempts if isinstance(a, errors.AlreadyPaid)]
                assert len(succeeded) == 1 and len(refused) == 3
                assert all("payment is in transition" in str(r) or "already paid" in str(r) for r in refused)
                assert await wall.channel_balance_msat() == 10_000

    run(scenario)


def test_two_payers_racing_for_one_invoice_only_one_pays(tmp_path):
    async def scenario():
        nodes = [("car", 1_000_000), ("wall", 0), ("van", 1_000_000)]
        async with simnet_in(tmp_path, nodes=nodes) as simnet:
            money = total_msat(simnet)
            async with client(simnet, "wall") as wall, client(simnet, "car") as car, client(simnet, "van") as van:
                bill = await wall.add_invoice(10_000)
                outcomes = await asyncio.gather(
                    car.pay(bill.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT),
                    van.pay(bill.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT),
                    return_exceptions=True,
                )
                failures = [o for o in outcomes if isinstance(o, errors.PaymentFailed)]
                assert len(failures) == 1
                assert failures[0].reason == "FAILURE_REASON_INCORRECT_PAYMENT_DETAILS"
                assert await wall.channel_balance_msat() == 10_000
            assert total_msat(simnet) == money

    run(scenario)


def test_payment_failures_carry_lnd_reasons_and_move_nothing(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path, nodes=[("car", 10), ("wall", 1_000_000)]) as simnet:
            money = total_msat(simnet)
            async with client(simnet, "wall") as wall, client(simnet, "car") as car:
                too_big = await wall.add_invoice(50_000)
                with pytest.raises(errors.PaymentFailed) as caught:
                    await car.pay(too_big.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                assert caught.value.reason == "FAILURE_REASON_INSUFFICIENT_BALANCE"
                small = await wall.add_invoice(1_000)
                with pytest.raises(errors.PaymentFailed) as caught:
                    await car.pay(small.payment_request, timeout_s=10, fee_limit_msat=1)
                assert caught.value.reason == "FAILURE_REASON_NO_ROUTE"
                own = await car.add_invoice(1_000)
                with pytest.raises(errors.InvalidRequest, match="self-payments not allowed"):
                    await car.pay(own.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                assert (await wall.lookup_invoice(small.r_hash)).state == "OPEN"
            assert total_msat(simnet) == money
            assert simnet.state.balance("car").local_msat == 10_000

    run(scenario)


def test_payment_request_checks_use_lnd_words(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            metadata = admin_metadata(simnet)
            expired = bolt11.encode(network="regtest", amount_msat=1000, payment_hash=bytes(32),
                                    private_key=b"\1" * 32, payment_secret=b"\2" * 32, description="",
                                    timestamp=1_600_000_000, expiry=60)
            async with client(simnet, "wall") as wall, raw_stubs(simnet) as (_, _, router):
                bill = await wall.add_invoice(1_000)
                cases = [
                    (router_pb2.SendPaymentRequest(payment_request=expired, fee_limit_msat=10),
                     "invoice expired. Valid until 2020-09-13 12:27:40 +0000 UTC"),
                    (router_pb2.SendPaymentRequest(payment_request=bill.payment_request, amt_msat=5),
                     "amount must not be specified when paying a non-zero amount invoice"),
                    (router_pb2.SendPaymentRequest(payment_request=bill.payment_request, fee_limit_sat=1,
                                                   fee_limit_msat=1), "sat and msat arguments are mutually exclusive"),
                    (router_pb2.SendPaymentRequest(payment_request=bill.payment_request, dest=b"\2" * 33),
                     "dest and payment_request cannot appear together"),
                    (router_pb2.SendPaymentRequest(dest=b"\2" * 32, amt=1), "invalid vertex length of 32, want 33"),
                    (router_pb2.SendPaymentRequest(dest=b"\2" * 33), "amount must be specified"),
                    (router_pb2.SendPaymentRequest(payment_request="lnbcrt1nonsense"), ""),
                ]
                for request, text in cases:
                    error = await stream_error(router.SendPaymentV2(request, metadata=metadata))
                    assert error.code() == grpc.StatusCode.UNKNOWN
                    assert text in error.details()
                error = await stream_error(router.TrackPaymentV2(
                    router_pb2.TrackPaymentRequest(payment_hash=bytes(32)), metadata=metadata))
                assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "payment isn't initiated")
                error = await stream_error(router.TrackPaymentV2(
                    router_pb2.TrackPaymentRequest(payment_hash=bytes(31)), metadata=metadata))
                assert error.details() == "invalid hash length of 31, want 32"

    run(scenario)


def test_zero_amount_invoice_is_paid_with_the_amount_given(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            async with client(simnet, "wall") as wall, client(simnet, "car") as car:
                open_amount = await wall.add_invoice(0)
                with pytest.raises(errors.InvalidRequest, match="amount must be specified when paying a zero amount"):
                    await car.pay(open_amount.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                paid = await car.pay(open_amount.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT,
                                     amt_msat=7_777)
                assert paid.value_msat == 7_777
                assert (await wall.lookup_invoice(open_amount.r_hash)).amt_paid_msat == 7_777

    run(scenario)


def test_expired_invoices_are_refused_and_cancelled(tmp_path):
    async def scenario():
        offset = [0]

        def clock():
            return time.time_ns() + offset[0]

        async with simnet_in(tmp_path, clock=clock) as simnet:
            async with client(simnet, "wall") as wall, client(simnet, "car") as car:
                bill = await wall.add_invoice(1_000, expiry=60)
                offset[0] = 61 * 1_000_000_000
                with pytest.raises(errors.InvalidRequest, match="invoice expired. Valid until"):
                    await car.pay(bill.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                states = [update.state async for update in wall.subscribe_single_invoice(bill.r_hash, timeout_s=10)]
                assert states[-1] == "CANCELED"
                assert await wall.channel_balance_msat() == 0

    run(scenario)


# --- hold invoices --------------------------------------------------------------------------


def test_hold_invoice_is_accepted_then_settled(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            preimage = os.urandom(32)
            payment_hash = hashlib.sha256(preimage).digest()
            async with client(simnet, "wall") as wall, client(simnet, "car") as car:
                hold = await wall.add_hold_invoice(payment_hash, 40_000, "deposit", 600, 144)
                watch = wall.subscribe_single_invoice(payment_hash)
                assert (await anext(watch)).state == "OPEN"
                with pytest.raises(errors.InvalidRequest, match="invoice still open"):
                    await wall.settle_invoice(preimage)
                payment = car.send_payment(hold.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                assert (await anext(payment)).status == "IN_FLIGHT"
                accepted = await anext(watch)
                assert (accepted.state, accepted.amt_paid_msat) == ("ACCEPTED", 40_000)
                assert simnet.state.balance("car").unsettled_local_msat == 41_001
                assert await wall.channel_balance_msat() == 0
                await wall.settle_invoice(preimage)
                assert (await anext(watch)).state == "SETTLED"
                with pytest.raises(StopAsyncIteration):
                    await anext(watch)  # the stream closes after a final state, as lnd's does
                rest = [update async for update in payment]
                assert rest[-1].status == "SUCCEEDED"
                assert rest[-1].preimage == preimage.hex()
                assert await wall.channel_balance_msat() == 40_000
                await wall.settle_invoice(preimage)  # settling again succeeds, as in lnd

    run(scenario)


def test_hold_invoice_cancel_fails_the_payment_and_releases_the_msat(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            money = total_msat(simnet)
            payment_hash = os.urandom(32)
            async with client(simnet, "wall") as wall, client(simnet, "car") as car:
                hold = await wall.add_hold_invoice(payment_hash, 40_000, "deposit", 600, 144)
                payment = car.send_payment(hold.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                assert (await anext(payment)).status == "IN_FLIGHT"
                async for update in wall.subscribe_single_invoice(payment_hash):
                    if update.state == "ACCEPTED":
                        break
                await wall.cancel_invoice(payment_hash)
                rest = [update async for update in payment]
                assert (rest[-1].status, rest[-1].failure_reason) == (
                    "FAILED", "FAILURE_REASON_INCORRECT_PAYMENT_DETAILS")
                assert await car.channel_balance_msat() == 1_000_000_000
                assert (await wall.lookup_invoice(payment_hash)).state == "CANCELED"
                await wall.cancel_invoice(payment_hash)  # cancelling again succeeds, as in lnd
                with pytest.raises(errors.PaymentFailed):
                    await car.pay(hold.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
            assert total_msat(simnet) == money

    run(scenario)


def test_watching_an_invoice_before_it_exists(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            preimage = os.urandom(32)
            payment_hash = hashlib.sha256(preimage).digest()
            metadata = admin_metadata(simnet, "wall")
            async with raw_stubs(simnet, "wall") as (lightning, invoices, _):
                watch = invoices.SubscribeSingleInvoice(
                    invoices_pb2.SubscribeSingleInvoiceRequest(r_hash=payment_hash), metadata=metadata)
                await asyncio.sleep(0.05)
                await lightning.AddInvoice(lightning_pb2.Invoice(r_preimage=preimage, value_msat=1), metadata=metadata)
                first = await watch.read()
                assert (first.r_hash, first.state) == (payment_hash, lightning_pb2.Invoice.OPEN)
                watch.cancel()
                error = await stream_error(invoices.SubscribeSingleInvoice(
                    invoices_pb2.SubscribeSingleInvoiceRequest(r_hash=b"\0" * 16), metadata=metadata))
                assert error.details() == "invalid hash length of 16, want 32"

    run(scenario)


# --- restart and faults ---------------------------------------------------------------------


def test_state_survives_a_restart(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            port = simnet.node("car").port
            pubkey = simnet.node("car").pubkey
            admin = simnet.node("car").macaroon_path("admin").read_bytes()
            certificate = simnet.node("car").tls_cert_path.read_bytes()
            async with client(simnet, "wall") as wall, client(simnet, "car") as car:
                paid = await wall.add_invoice(30_000)
                await car.pay(paid.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                preimage = os.urandom(32)
                hold = await wall.add_hold_invoice(hashlib.sha256(preimage).digest(), 20_000, "", 600, 144)
                locked = car.send_payment(hold.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                async for _ in locked:
                    if simnet.state.balance("car").unsettled_local_msat:
                        break
                await locked.aclose()
            balances = {name: simnet.state.balance(name) for name in ("car", "wall")}

        async with simnet_in(tmp_path, nodes=[("car", 5), ("wall", 5)]) as simnet:
            assert simnet.node("car").port == port
            assert simnet.node("car").pubkey == pubkey
            assert simnet.node("car").tls_cert_path.read_bytes() == certificate
            assert {name: simnet.state.balance(name) for name in ("car", "wall")} == balances
            async with client(simnet, "car", macaroon=admin) as car, client(simnet, "wall") as wall:
                assert (await car.get_info()).pubkey == pubkey
                assert (await wall.lookup_invoice(paid.r_hash)).state == "SETTLED"
                with pytest.raises(errors.AlreadyPaid):
                    await car.pay(paid.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                assert (await wall.lookup_invoice(hold.r_hash)).state == "ACCEPTED"
                await wall.settle_invoice(preimage)
                tracked = await collect(car.track_payment(hold.r_hash))
                assert tracked[-1].status == "SUCCEEDED"
                assert await wall.channel_balance_msat() == 50_000

    run(scenario)


def test_offline_node_is_unreachable_until_back_on_its_port(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            wall_node = simnet.node("wall")
            port = wall_node.port
            async with client(simnet, "wall") as wall, client(simnet, "car") as car:
                bill = await wall.add_invoice(2_000)
                await wall_node.go_offline()
                with pytest.raises(errors.Unreachable):
                    await wall.get_info()
                with pytest.raises(errors.PaymentFailed) as caught:
                    await car.pay(bill.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                assert caught.value.reason == "FAILURE_REASON_NO_ROUTE"
                await wall_node.go_online()
                assert wall_node.port == port
                await wall.wait_ready(10)
                assert (await wall.get_info()).alias == "wall"
                await car.pay(bill.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                assert await wall.channel_balance_msat() == 2_000

    run(scenario)


def test_fail_payments_and_latency_faults(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path) as simnet:
            car_node = simnet.node("car")
            async with client(simnet, "wall") as wall, client(simnet, "car") as car:
                car_node.fail_payments(2)
                bill = await wall.add_invoice(3_000)
                for _ in range(2):
                    with pytest.raises(errors.PaymentFailed) as caught:
                        await car.pay(bill.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                    assert caught.value.reason == "FAILURE_REASON_NO_ROUTE"
                assert await wall.channel_balance_msat() == 0
                await car.pay(bill.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
                assert await wall.channel_balance_msat() == 3_000

                car_node.set_latency_ms(3_000)
                address = car_node.address
                async with LndClient(address, timeout_s=0.3) as impatient:
                    with pytest.raises(errors.Unreachable):
                        await impatient.get_info()
                car_node.set_latency_ms(0)
                assert (await car.get_info()).alias == "car"

    run(scenario)


def test_bad_node_lists_and_a_second_server_on_one_directory_are_refused(tmp_path):
    for nodes, text in [
        ([("car", 1), ("car", 2)], "listed twice"),
        ([("../evil", 1)], "node name"),
        ([("car", -1)], "channel size"),
        ([], "at least one node"),
    ]:
        with pytest.raises(SimnetError, match=text):
            Simnet(tmp_path, nodes)

    async def scenario():
        async with simnet_in(tmp_path):
            with pytest.raises(SimnetError, match="already running"):
                async with simnet_in(tmp_path):
                    pass

    run(scenario)


def test_deprecated_fields_older_clients_read_are_filled_as_lnd_fills_them(tmp_path):
    async def scenario():
        async with simnet_in(tmp_path, fee_base_msat=1000, fee_ppm=0) as simnet:
            async with client(simnet, "wall") as wall, client(simnet, "car") as car:
                bill = await wall.add_invoice(12_345, memo="energy")
                await car.pay(bill.payment_request, timeout_s=10, fee_limit_msat=FEE_LIMIT_MSAT)
            async with raw_stubs(simnet, "wall") as (lightning, _, _), raw_stubs(simnet, "car") as (
                car_lightning, _, router
            ):
                invoice = await lightning.LookupInvoice(
                    lightning_pb2.PaymentHash(r_hash=bill.r_hash), metadata=admin_metadata(simnet, "wall")
                )
                assert invoice.settled and invoice.amt_paid == 12_345 and invoice.amt_paid_sat == 12
                assert 14 in invoice.features and invoice.features[14].name == "payment-addr"
                balance = await car_lightning.ChannelBalance(
                    lightning_pb2.ChannelBalanceRequest(), metadata=admin_metadata(simnet, "car")
                )
                assert balance.balance == balance.local_balance.sat
                track = router.TrackPaymentV2(
                    router_pb2.TrackPaymentRequest(payment_hash=bill.r_hash), metadata=admin_metadata(simnet)
                )
                final = [update async for update in track][-1]
                assert (final.value, final.fee) == (12, 1)
                assert final.creation_date == final.creation_time_ns // 1_000_000_000

    run(scenario)
