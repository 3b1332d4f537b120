"""The checked-in stubs are what protoc makes of our .proto files, and they speak LND's wire."""

from __future__ import annotations

from pathlib import Path

from protos import generate, invoices_pb2, lightning_pb2, router_pb2

PROTOS = Path(generate.__file__).parent


def test_checked_in_stubs_match_a_fresh_generation(tmp_path):
    generate.generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path / "protos") for p in (tmp_path / "protos").iterdir())
    assert fresh, "protoc produced nothing"
    for relative in fresh:
        checked_in = PROTOS / relative
        assert checked_in.exists(), f"{relative} is generated but not checked in"
        assert checked_in.read_bytes() == (tmp_path / "protos" / relative).read_bytes(), (
            f"protos/{relative} is stale: run `python -m protos.generate`"
        )


def test_method_paths_are_lnds():
    services = {
        "lnrpc.Lightning": lightning_pb2.DESCRIPTOR.services_by_name["Lightning"],
        "routerrpc.Router": router_pb2.DESCRIPTOR.services_by_name["Router"],
        "invoicesrpc.Invoices": invoices_pb2.DESCRIPTOR.services_by_name["Invoices"],
    }
    paths = {f"/{s.full_name}/{m.name}" for s in services.values() for m in s.methods}
    assert {
        "/lnrpc.Lightning/AddInvoice",
        "/routerrpc.Router/SendPaymentV2",
        "/routerrpc.Router/TrackPaymentV2",
        "/invoicesrpc.Invoices/SubscribeSingleInvoice",
        "/invoicesrpc.Invoices/AddHoldInvoice",
    } <= paths


def _field_numbers(message) -> dict[str, tuple[int, int]]:
    return {f.name: (f.number, f.type) for f in message.DESCRIPTOR.fields}


def test_field_numbers_that_are_easy_to_get_wrong():
    # Numbers from lnd v0.21's descriptors (shared/reference/lnd-grpc.md, pitfalls 3-4).
    assert invoices_pb2.SubscribeSingleInvoiceRequest.DESCRIPTOR.fields_by_name["r_hash"].number == 2
    assert invoices_pb2.AddHoldInvoiceRequest.DESCRIPTOR.fields_by_name["value_msat"].number == 10
    assert lightning_pb2.Invoice.DESCRIPTOR.fields_by_name["value_msat"].number == 23
    assert lightning_pb2.Invoice.DESCRIPTOR.fields_by_name["state"].number == 21
    payment = _field_numbers(lightning_pb2.Payment)
    assert payment["payment_hash"][0] == 1 and payment["fee_msat"][0] == 12 and payment["failure_reason"][0] == 16
    send = _field_numbers(router_pb2.SendPaymentRequest)
    assert send["timeout_seconds"][0] == 6 and send["fee_limit_msat"][0] == 13
    assert send["allow_self_payment"][0] == 15 and "outgoing_chan_id" not in send


def test_hex_string_versus_bytes_fields():
    string, raw = 9, 12  # FieldDescriptor.TYPE_STRING, TYPE_BYTES
    assert _field_numbers(lightning_pb2.Payment)["payment_hash"][1] == string
    assert _field_numbers(lightning_pb2.PayReq)["payment_hash"][1] == string
    assert _field_numbers(lightning_pb2.Invoice)["r_hash"][1] == raw
    assert _field_numbers(router_pb2.TrackPaymentRequest)["payment_hash"][1] == raw


def test_unknown_fields_from_a_newer_lnd_survive_a_round_trip():
    # Field 29 (is_blinded) exists in lnd's Invoice but not in our subset.
    wire = lightning_pb2.Invoice(memo="x", value_msat=2500).SerializeToString() + bytes([0xE8, 0x01, 0x01])
    parsed = lightning_pb2.Invoice.FromString(wire)
    assert parsed.value_msat == 2500
    assert parsed.SerializeToString() == wire
