"""LND macaroons: baking, parsing hostile bytes, and verifying exactly as lnd refuses."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymacaroons import Macaroon as PyMacaroon
from pymacaroons.serializers.binary_serializer import BinarySerializer

from distributedcharge.lightning import macaroons
from distributedcharge.lightning.macaroons import (
    DEFAULT_MACAROON_PERMISSIONS,
    METHOD_PERMISSIONS,
    MacaroonError,
    MacaroonVerificationError,
)
from protos import invoices_pb2, lightning_pb2, router_pb2

ROOT_KEY = bytes.fromhex("a3" * 32)
ROOT_KEYS = {"0": ROOT_KEY}
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
PEER = "192.168.1.50"

# LN-Zap/node-lndconnect test/test.js: an admin.macaroon from a 2019 lnd (no macaroon:* or signer:*).
ZAP_ADMIN = (
    "AgEDbG5kArsBAwoQ_Dvl5gsNFAUTkjbCq4w1_hIBMBoWCgdhZGRyZXNzEgRyZWFkEgV3cml0ZRoTCgRpbmZvEgRyZWFkEgV3cml0ZRoX"
    "CghpbnZvaWNlcxIEcmVhZBIFd3JpdGUaFgoHbWVzc2FnZRIEcmVhZBIFd3JpdGUaFwoIb2ZmY2hhaW4SBHJlYWQSBXdyaXRlGhYKB29u"
    "Y2hhaW4SBHJlYWQSBXdyaXRlGhQKBXBlZXJzEgRyZWFkEgV3cml0ZQAABiBsG0xskPH_9m_383wpzL5oaB-a_GXkMF9_gfs9HFocfw"
)
# LN-Zap/lndconnect lnd_connect_uri.md example: lnd's testdata admin.macaroon with byte 72
# corrupted (0x72 -> 0xda, "write" -> "w\xdaite").
CORRUPTED_ADMIN = (
    "AgEDbG5kArsBAwoQ3_I9f6kgSE6aUPd85lWpOBIBMBoWCgdhZGRyZXNzEgRyZWFkEgV3cml0ZRoTCgRpbmZvEgRyZWFkEgV32ml0ZRoX"
    "CghpbnZvaWNlcxIEcmVhZBIFd3JpdGUaFgoHbWVzc2FnZRIEcmVhZBIFd3JpdGUaFwoIb2ZmY2hhaW4SBHJlYWQSBXdyaXRlGhYKB29u"
    "Y2hhaW4SBHJlYWQSBXdyaXRlGhQKBXBlZXJzEgRyZWFkEgV3cml0ZQAABiAiUTBv3Eh6iDbdjmXCfNxp4HBEcOYNzXhrm-ncLHf5jA"
)
OLD_ADMIN_PERMISSIONS = frozenset(
    (entity, action)
    for entity in ("address", "info", "invoices", "message", "offchain", "onchain", "peers")
    for action in ("read", "write")
)


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def baked(permissions=DEFAULT_MACAROON_PERMISSIONS["invoice"], caveats=(), **kwargs) -> bytes:
    raw = macaroons.bake(ROOT_KEY, permissions, **kwargs)
    for caveat in caveats:
        raw = macaroons.add_first_party_caveat(raw, caveat)
    return raw


def refusal(raw: bytes, method: str = "/lnrpc.Lightning/AddInvoice", peer: str = PEER, now: datetime = NOW,
            root_keys=ROOT_KEYS) -> str:
    with pytest.raises(MacaroonVerificationError) as raised:
        macaroons.verify(raw, root_keys, method, peer, now)
    assert str(raised.value) == raised.value.message
    return raised.value.message


# Baking and parsing


@pytest.mark.parametrize("name", ["admin", "invoice", "readonly"])
def test_default_macaroons_bake_and_parse_back(name):
    raw = macaroons.bake(ROOT_KEY, DEFAULT_MACAROON_PERMISSIONS[name])
    mac = macaroons.parse(raw)
    assert raw.hex().startswith("0201036c6e6402")
    assert (mac.location, mac.storage_id, mac.caveats) == ("lnd", "0", ())
    assert mac.permissions == DEFAULT_MACAROON_PERMISSIONS[name]
    assert len(mac.nonce) == 16 and len(mac.signature) == 32 and mac.hex() == raw.hex()


def test_pymacaroons_reserialises_our_macaroon_byte_for_byte():
    raw = baked(caveats=["ipaddr 10.0.0.2"])
    again = BinarySerializer().serialize_raw(BinarySerializer().deserialize_raw(raw))
    assert again == raw and again.hex().startswith("0201036c6e6402")


def test_identifier_matches_lnds_bytes_for_the_invoice_macaroon():
    # The cypherpunkpay invoice macaroon id quoted in the reference, reproduced from its nonce.
    raw = macaroons.bake(ROOT_KEY, DEFAULT_MACAROON_PERMISSIONS["invoice"],
                         nonce=bytes.fromhex("48e0f05f02ff3f5ff7a4046ba186016e"))
    assert macaroons.parse(raw).identifier.hex() == (
        "030a1048e0f05f02ff3f5ff7a4046ba186016e1201301a160a076164647265737312047265616412057772697465"
        "1a170a08696e766f69636573120472656164120577726974651a0f0a076f6e636861696e120472656164"
    )


def test_operations_are_canonicalised_like_lnd():
    nonce = b"\x11" * 16
    messy = [("onchain", "read"), ("address", "write"), ("address", "read"), ("onchain", "read")]
    tidy = sorted(set(messy))
    assert macaroons.bake(ROOT_KEY, messy, nonce=nonce) == macaroons.bake(ROOT_KEY, tidy, nonce=nonce)
    identifier = lightning_pb2.MacaroonId.FromString(macaroons.parse(macaroons.bake(ROOT_KEY, messy)).identifier[1:])
    assert [(op.entity, list(op.actions)) for op in identifier.ops] == [("address", ["read", "write"]),
                                                                        ("onchain", ["read"])]


def test_custom_macaroon_with_uri_permission_and_root_key_id():
    raw = macaroons.bake(ROOT_KEY, [("uri", "/lnrpc.Lightning/GetInfo"), ("invoices", "read")], storage_id="4200")
    mac = macaroons.parse(raw)
    assert mac.storage_id == "4200"
    assert mac.permissions == {("uri", "/lnrpc.Lightning/GetInfo"), ("invoices", "read")}
    assert macaroons.verify(raw, {"4200": ROOT_KEY}, "/lnrpc.Lightning/GetInfo", PEER, NOW) == mac
    assert refusal(raw, "/lnrpc.Lightning/AddInvoice", root_keys={"4200": ROOT_KEY}) == "permission denied"


def test_baking_nothing_is_refused():
    with pytest.raises(MacaroonError, match="permission list cannot be empty"):
        macaroons.bake(ROOT_KEY, [])


def test_signature_is_lnds_hmac_chain():
    raw = baked(caveats=["ipaddr 10.0.0.2", "time-before 2030-01-01T00:00:00Z"])
    mac = macaroons.parse(raw)
    signature = hmac.new(hmac.new(b"macaroons-key-generator", ROOT_KEY, hashlib.sha256).digest(),
                         mac.identifier, hashlib.sha256).digest()
    for caveat in mac.caveats:
        signature = hmac.new(signature, caveat.encode(), hashlib.sha256).digest()
    assert mac.signature == signature
    assert mac.caveats == ("ipaddr 10.0.0.2", "time-before 2030-01-01T00:00:00Z")


def test_published_admin_macaroon_vector():
    mac = macaroons.parse(b64url(ZAP_ADMIN))
    assert mac.permissions == OLD_ADMIN_PERMISSIONS and mac.storage_id == "0" and mac.location == "lnd"


def test_corrupted_macaroon_vector_is_refused_and_repairing_byte_72_fixes_it():
    corrupted = b64url(CORRUPTED_ADMIN)
    assert corrupted[72] == 0xDA
    with pytest.raises(MacaroonError, match="macaroon identifier is not a valid MacaroonId protobuf"):
        macaroons.parse(corrupted)
    repaired = corrupted[:72] + b"\x72" + corrupted[73:]
    assert macaroons.parse(repaired).permissions == OLD_ADMIN_PERMISSIONS


def test_every_truncation_is_a_macaroon_error():
    raw = baked(caveats=["ipaddr 10.0.0.2"])
    for length in range(len(raw)):
        with pytest.raises(MacaroonError):
            macaroons.parse(raw[:length])


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty macaroon"),
        (b"\x01\x02\x03", "first byte is 0x01"),
        (b"0061location lnd\n", "first byte is 0x30"),
        (b"\x02\x01\x03lnd\x02\x05hello", "malformed macaroon"),
        ("0201", "macaroon must be bytes, got str"),
    ],
)
def test_malformed_input_gets_a_precise_error(data, message):
    with pytest.raises(MacaroonError, match=message):
        macaroons.parse(data)


def test_trailing_bytes_are_refused():
    with pytest.raises(MacaroonError, match="2 unexpected bytes after the signature"):
        macaroons.parse(baked() + b"\x00\x00")


def test_identifier_that_is_not_lnds_version_3_is_refused():
    foreign = PyMacaroon(location="lnd", identifier=b"\x02anything", key=ROOT_KEY, version=2)
    raw = BinarySerializer().serialize_raw(foreign)
    with pytest.raises(MacaroonError, match="identifier version is 2"):
        macaroons.parse(raw)
    assert refusal(raw) == "invalid ID"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_macaroon_errors(data):
    for candidate in (data, b"\x02\x01\x03lnd\x02" + data):
        try:
            macaroons.parse(candidate)
        except MacaroonError:
            pass
        with pytest.raises(MacaroonVerificationError):
            macaroons.verify(candidate, ROOT_KEYS, "/lnrpc.Lightning/AddInvoice", PEER, NOW)


SIGNED = baked(caveats=["ipaddr 10.0.0.2"])
LOCATION_END = len(b"\x02\x01\x03lnd")  # the location is a hint, not covered by the signature


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=LOCATION_END, max_value=len(SIGNED) - 1), st.integers(min_value=1, max_value=255))
def test_any_flipped_signed_byte_is_refused(position, flip):
    raw = bytearray(SIGNED)
    raw[position] ^= flip
    try:
        macaroons.parse(bytes(raw))
    except MacaroonError:
        return
    with pytest.raises(MacaroonVerificationError):
        macaroons.verify(bytes(raw), ROOT_KEYS, "/lnrpc.Lightning/AddInvoice", "10.0.0.2", NOW)


# Verification


def test_valid_macaroon_is_accepted_and_returned():
    raw = baked(caveats=[f"ipaddr {PEER}", "time-before 2025-06-01T12:00:01Z"])
    assert macaroons.verify(raw, ROOT_KEYS, "/lnrpc.Lightning/AddInvoice", PEER, NOW).raw == raw


def test_unknown_method_is_refused_before_looking_at_the_macaroon():
    assert refusal(b"junk", "/lnrpc.Lightning/Nope") == "/lnrpc.Lightning/Nope: unknown permissions required for method"


def test_refusals_use_lnds_texts_in_lnds_order():
    raw = baked(caveats=["ipaddr 10.9.9.9"])
    assert refusal(b"0061location lnd\n") == "unknown macaroon version"
    assert refusal(raw, root_keys={"7": ROOT_KEY}) == "cannot get macaroon: root key with id 0 doesn't exist"
    assert refusal(raw, root_keys={"0": b"\x00" * 32}) == (
        "verification failed: signature mismatch after caveat verification")
    # The caveat fails before the missing permission is noticed.
    assert refusal(raw, "/lnrpc.Lightning/GetInfo") == (
        'caveat "ipaddr 10.9.9.9" not satisfied: macaroon locked to different IP address')
    assert refusal(baked(), "/lnrpc.Lightning/GetInfo") == "permission denied"


def test_tampered_caveat_breaks_the_signature():
    raw = baked(caveats=["ipaddr 10.9.9.9"])
    forged = raw.replace(b"10.9.9.9", PEER.encode()[:8])
    assert refusal(forged) == "verification failed: signature mismatch after caveat verification"


def test_time_before_is_checked_to_the_nanosecond():
    assert macaroons.verify(baked(caveats=["time-before 2025-06-01T12:00:00.000000001Z"]), ROOT_KEYS,
                            "/lnrpc.Lightning/AddInvoice", PEER, NOW)
    expired = baked(caveats=["time-before 2025-06-01T12:00:00Z"])
    assert refusal(expired) == 'caveat "time-before 2025-06-01T12:00:00Z" not satisfied: macaroon has expired'
    assert macaroons.verify(baked(caveats=["time-before 2025-06-01T14:00:01+02:00"]), ROOT_KEYS,
                            "/lnrpc.Lightning/AddInvoice", PEER, NOW)


def test_unparsable_time_is_a_refusal():
    assert refusal(baked(caveats=["time-before tomorrow"])).startswith(
        'caveat "time-before tomorrow" not satisfied: parsing time "tomorrow"')


def test_ip_caveats():
    mapped = baked(caveats=[f"ipaddr {PEER}"])
    assert macaroons.verify(mapped, ROOT_KEYS, "/lnrpc.Lightning/AddInvoice", f"::ffff:{PEER}", NOW)
    ranged = baked(caveats=["iprange 192.168.1.0/24"])
    assert macaroons.verify(ranged, ROOT_KEYS, "/lnrpc.Lightning/AddInvoice", PEER, NOW)
    assert refusal(ranged, peer="192.168.2.1") == (
        'caveat "iprange 192.168.1.0/24" not satisfied: macaroon locked to different IP range')


@pytest.mark.parametrize(
    "caveat, problem",
    [
        ("mystery 42", "caveat not recognized"),
        ("lnd-custom subscribe ms:100", "cannot accept macaroon with custom caveat 'subscribe', "
                                        "no middleware registered to handle it"),
        ("error go away", "go away"),
    ],
)
def test_caveats_lnd_cannot_satisfy_are_refused(caveat, problem):
    assert refusal(baked(caveats=[caveat])) == f'caveat "{caveat}" not satisfied: {problem}'


def test_metadata_must_carry_exactly_one_hex_macaroon():
    raw = baked()
    method = "/lnrpc.Lightning/AddInvoice"
    assert macaroons.verify_metadata([raw.hex().upper()], ROOT_KEYS, method, PEER, NOW).raw == raw
    for values, message in [([], "expected 1 macaroon, got 0"), ([raw.hex()] * 2, "expected 1 macaroon, got 2"),
                            (["0g"], "encoding/hex: invalid byte: U+0067 'g'"),
                            (["abc"], "encoding/hex: odd length hex string")]:
        with pytest.raises(MacaroonVerificationError) as raised:
            macaroons.verify_metadata(values, ROOT_KEYS, method, PEER, NOW)
        assert raised.value.message == message


# Caveat helpers and loading


def test_time_before_caveat_is_go_rfc3339nano():
    moment = datetime(2022, 8, 8, 10, 10, 4, 889300, tzinfo=timezone(timedelta(hours=2)))
    assert macaroons.time_before_caveat(moment) == "time-before 2022-08-08T08:10:04.8893Z"
    assert macaroons.time_before_caveat(NOW) == "time-before 2025-06-01T12:00:00Z"
    with pytest.raises(ValueError):
        macaroons.time_before_caveat(datetime(2025, 1, 1))


def test_ip_address_caveat_is_canonical():
    assert macaroons.ip_address_caveat("::FFFF:1.2.3.4") == "ipaddr 1.2.3.4"
    assert macaroons.ip_address_caveat("2001:0db8:0:0::0001") == "ipaddr 2001:db8::1"
    assert macaroons.ip_range_caveat("192.168.1.77/24") == "iprange 192.168.1.0/24"
    with pytest.raises(MacaroonError, match="not an IP address"):
        macaroons.ip_address_caveat("charger.local")


@pytest.mark.parametrize("caveat", ["", " leading", "trailing ", "two\nlines"])
def test_caveats_with_stray_whitespace_are_refused(caveat):
    with pytest.raises(MacaroonError):
        macaroons.add_first_party_caveat(baked(), caveat)


def test_load_accepts_every_form_an_owner_has(tmp_path):
    raw = baked()
    binary = tmp_path / "invoice.macaroon"
    binary.write_bytes(raw)
    hex_file = tmp_path / "invoice.hex"
    hex_file.write_text(raw.hex() + "\n")
    standard_b64 = base64.b64encode(raw).decode()
    forms = [raw, str(binary), str(hex_file), raw.hex(), base64.urlsafe_b64encode(raw).decode().rstrip("="),
             standard_b64, f"lndconnect://10.0.0.1:10009?macaroon={base64.urlsafe_b64encode(raw).decode()}"]
    assert all(macaroons.load(form).raw == raw for form in forms)


def test_load_names_a_missing_file_and_garbage():
    with pytest.raises(MacaroonError, match="/nowhere/admin.macaroon: file not found"):
        macaroons.load("/nowhere/admin.macaroon")
    for typo in ("not a macaroon!", "adminmacaroon"):
        with pytest.raises(MacaroonError, match="no such file, and not a macaroon in hex or base64"):
            macaroons.load(typo)
    with pytest.raises(MacaroonError, match="lndconnect URI has no macaroon"):
        macaroons.load("lndconnect://host:10009")


def test_permission_table_covers_every_rpc_we_use():
    services = [lightning_pb2.DESCRIPTOR.services_by_name["Lightning"],
                router_pb2.DESCRIPTOR.services_by_name["Router"],
                invoices_pb2.DESCRIPTOR.services_by_name["Invoices"]]
    paths = [f"/{service.full_name}/{method.name}" for service in services for method in service.methods]
    assert paths and all(path in METHOD_PERMISSIONS for path in paths)
    assert METHOD_PERMISSIONS["/invoicesrpc.Invoices/LookupInvoiceV2"] == {("invoices", "write")}
    assert METHOD_PERMISSIONS["/lnrpc.Lightning/OpenChannel"] == {("onchain", "write"), ("offchain", "write")}
    # lnd v0.21.2's MainRPCServerPermissions has 66 entries.
    assert sum(path.startswith("/lnrpc.Lightning/") for path in METHOD_PERMISSIONS) == 66


def test_default_invoice_macaroon_cannot_pay_or_read_balance():
    invoice = baked(DEFAULT_MACAROON_PERMISSIONS["invoice"])
    for method in ("/routerrpc.Router/SendPaymentV2", "/lnrpc.Lightning/ChannelBalance", "/lnrpc.Lightning/GetInfo"):
        assert refusal(invoice, method) == "permission denied"
    readonly = baked(DEFAULT_MACAROON_PERMISSIONS["readonly"])
    assert refusal(readonly, "/lnrpc.Lightning/AddInvoice") == "permission denied"
    admin = baked(DEFAULT_MACAROON_PERMISSIONS["admin"])
    assert macaroons.verify(admin, ROOT_KEYS, "/routerrpc.Router/SendPaymentV2", PEER, NOW)
