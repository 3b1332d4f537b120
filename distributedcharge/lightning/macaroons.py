"""LND macaroons: parse, bake, attenuate and verify them the way lnd does.

An LND macaroon is a libmacaroons "v2" binary macaroon whose identifier is the byte 3
followed by a protobuf ``MacaroonId`` (nonce, root key id, permitted operations). The
binary format and the HMAC chain come from ``pymacaroons``; this module adds LND's
identifier, its permission tables, the caveats lnd understands, and lnd's exact error
texts, so the simulated node (simnet) refuses exactly what a real node refuses.

Everything here is pure: ``verify`` takes the peer address and the time as arguments.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from hashlib import sha256
from pathlib import Path

from google.protobuf.message import DecodeError
from pymacaroons import Macaroon as _PyMacaroon
from pymacaroons.serializers.binary_serializer import BinarySerializer

from protos import lightning_pb2

BINARY_VERSION = 2
IDENTIFIER_VERSION = 3
SIGNATURE_LENGTH = 32
NONCE_LENGTH = 16

Permission = tuple[str, str]


class MacaroonError(ValueError):
    """The bytes or text given are not a usable LND macaroon."""


class MacaroonVerificationError(Exception):
    """lnd would refuse the call; ``message`` is lnd's own error text."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Macaroon:
    raw: bytes
    location: str
    identifier: bytes
    nonce: bytes
    storage_id: str
    permissions: frozenset[Permission]
    caveats: tuple[str, ...]
    signature: bytes

    def hex(self) -> str:
        return self.raw.hex()

    def allows(self, method: str) -> bool:
        """True if the permissions (ignoring caveats) let ``method`` through, as lnd decides."""
        required = METHOD_PERMISSIONS.get(method)
        if required is None:
            return False
        return required <= self.permissions or ("uri", method) in self.permissions


def _ops(text: str) -> frozenset[Permission]:
    return frozenset((entity, action) for entity, _, action in (op.partition(":") for op in text.split()))


# Full gRPC path -> every operation the caller's macaroon must grant (lnd v0.21.2:
# rpcserver.go MainRPCServerPermissions, invoicesrpc and routerrpc macPermissions).
METHOD_PERMISSIONS: dict[str, frozenset[Permission]] = {
    f"/lnrpc.Lightning/{name}": _ops(ops)
    for ops, names in [
        ("onchain:write", "SendCoins SendMany"),
        ("onchain:read", "ListUnspent WalletBalance EstimateFee SubscribeTransactions GetTransactions"),
        ("address:write", "NewAddress"),
        ("message:write", "SignMessage"),
        ("message:read", "VerifyMessage"),
        ("peers:write", "ConnectPeer DisconnectPeer"),
        ("peers:read", "ListPeers SubscribePeerEvents"),
        ("onchain:write offchain:write",
         "OpenChannel BatchOpenChannel OpenChannelSync CloseChannel ChannelAcceptor FundingStateStep"),
        ("offchain:write",
         "AbandonChannel DeletePayment DeleteAllPayments UpdateChannelPolicy RestoreChannelBackups "
         "SendCustomMessage SendOnionMessage"),
        ("info:read",
         "GetInfo GetRecoveryInfo DescribeGraph GetNodeMetrics GetChanInfo GetNodeInfo QueryRoutes "
         "GetNetworkInfo SubscribeChannelGraph ListPermissions"),
        ("info:read offchain:read onchain:read peers:read", "GetDebugInfo"),
        ("info:write", "StopDaemon DebugLevel"),
        ("offchain:read",
         "ChannelBalance PendingChannels ListChannels SubscribeChannelEvents ClosedChannels ListPayments "
         "DecodePayReq FeeReport ForwardingHistory ExportChannelBackup VerifyChanBackup "
         "ExportAllChannelBackups SubscribeChannelBackups SubscribeCustomMessages SubscribeOnionMessages "
         "LookupHtlcResolution ListAliases"),
        ("invoices:write", "AddInvoice DeleteCanceledInvoice"),
        ("invoices:read", "LookupInvoice ListInvoices SubscribeInvoices"),
        ("macaroon:generate", "BakeMacaroon"),
        ("macaroon:read", "ListMacaroonIDs CheckMacaroonPermissions"),
        ("macaroon:write", "DeleteMacaroonID"),
    ]
    for name in names.split()
} | {
    f"/invoicesrpc.Invoices/{name}": _ops(ops)
    for ops, names in [
        ("invoices:read", "SubscribeSingleInvoice"),
        ("invoices:write", "SettleInvoice CancelInvoice AddHoldInvoice LookupInvoiceV2 HtlcModifier"),
    ]
    for name in names.split()
} | {
    f"/routerrpc.Router/{name}": _ops(ops)
    for ops, names in [
        ("offchain:write",
         "SendPaymentV2 SendToRouteV2 XImportMissionControl SetMissionControlConfig ResetMissionControl "
         "HtlcInterceptor UpdateChanStatus XAddLocalChanAliases XDeleteLocalChanAliases "
         "DeleteForwardingHistory"),
        ("offchain:read",
         "TrackPaymentV2 TrackPayments EstimateRouteFee QueryMissionControl GetMissionControlConfig "
         "QueryProbability BuildRoute SubscribeHtlcEvents"),
    ]
    for name in names.split()
}

# The macaroons lnd writes next to its wallet (lnd.go genDefaultMacaroons, v0.21.2).
DEFAULT_MACAROON_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "admin": _ops(
        "address:read address:write info:read info:write invoices:read invoices:write "
        "macaroon:generate macaroon:read macaroon:write message:read message:write "
        "offchain:read offchain:write onchain:read onchain:write peers:read peers:write "
        "signer:generate signer:read"
    ),
    "invoice": _ops("address:read address:write invoices:read invoices:write onchain:read"),
    "readonly": _ops(
        "address:read info:read invoices:read macaroon:read message:read offchain:read "
        "onchain:read peers:read signer:read"
    ),
}


def parse(data: bytes) -> Macaroon:
    """Decode a binary v2 macaroon with an LND identifier; MacaroonError says what is wrong."""
    decoded, signature = _read(data)
    return _assemble(data, decoded, signature)


def _assemble(data: bytes, decoded: _PyMacaroon, signature: bytes) -> Macaroon:
    identifier = bytes(decoded.identifier_bytes)
    nonce, storage_id, permissions = _decode_identifier(identifier)
    caveats = []
    for index, caveat in enumerate(decoded.caveats, 1):
        try:
            caveats.append(bytes(caveat.caveat_id_bytes).decode("utf-8"))
        except UnicodeDecodeError:
            raise MacaroonError(f"caveat {index} is not valid UTF-8 text") from None
    return Macaroon(
        raw=bytes(data),
        location=decoded.location,
        identifier=identifier,
        nonce=nonce,
        storage_id=storage_id,
        permissions=permissions,
        caveats=tuple(caveats),
        signature=signature,
    )


def _read(data: bytes) -> tuple[_PyMacaroon, bytes]:
    """The v2 binary envelope: location, identifier, first-party caveats, 32-byte signature."""
    if not isinstance(data, (bytes, bytearray)):
        raise MacaroonError(f"macaroon must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise MacaroonError("empty macaroon")
    if data[0] != BINARY_VERSION:
        raise MacaroonError(
            f"unsupported macaroon format: first byte is 0x{data[0]:02x}, "
            "LND macaroons are binary version 2 (first byte 0x02)"
        )
    decoded = _deserialize(data)
    if decoded.third_party_caveats():
        raise MacaroonError("macaroon has a third-party caveat; LND neither issues nor accepts those")
    signature = binascii.unhexlify(decoded.signature_bytes)
    if len(signature) != SIGNATURE_LENGTH:
        raise MacaroonError(f"signature is {len(signature)} bytes, expected {SIGNATURE_LENGTH}")
    trailing = len(data) - len(_serialize(decoded))
    if trailing:
        raise MacaroonError(f"{trailing} unexpected bytes after the signature")
    return decoded, signature


def _deserialize(data: bytes) -> _PyMacaroon:
    try:
        return BinarySerializer().deserialize_raw(data)
    except UnicodeDecodeError:
        raise MacaroonError("macaroon location is not valid UTF-8 text") from None
    except Exception as exc:  # pymacaroons raises bare Exception, IndexError, ValueError... on bad input
        raise MacaroonError(f"malformed macaroon: {exc}") from None


def _serialize(macaroon: _PyMacaroon) -> bytes:
    return BinarySerializer().serialize_raw(macaroon)


def _decode_identifier(identifier: bytes) -> tuple[bytes, str, frozenset[Permission]]:
    if not identifier:
        raise MacaroonError("macaroon identifier is empty")
    if identifier[0] != IDENTIFIER_VERSION:
        raise MacaroonError(
            f"macaroon identifier version is {identifier[0]}, LND identifiers are version {IDENTIFIER_VERSION}"
        )
    message = lightning_pb2.MacaroonId()
    try:
        message.ParseFromString(identifier[1:])
    except DecodeError as exc:
        raise MacaroonError(f"macaroon identifier is not a valid MacaroonId protobuf: {exc}") from None
    try:
        storage_id = message.storageId.decode("ascii")
    except UnicodeDecodeError:
        raise MacaroonError("macaroon root key id is not ASCII text") from None
    permissions = frozenset((op.entity, action) for op in message.ops for action in op.actions)
    return bytes(message.nonce), storage_id, permissions


def _canonical_ops(permissions: Iterable[Permission]) -> list[lightning_pb2.Op]:
    by_entity: dict[str, set[str]] = {}
    for entity, action in permissions:
        if not entity or not action:
            raise MacaroonError(f"permission needs an entity and an action, got {entity!r}:{action!r}")
        by_entity.setdefault(entity, set()).add(action)
    return [lightning_pb2.Op(entity=entity, actions=sorted(by_entity[entity])) for entity in sorted(by_entity)]


def bake(
    root_key: bytes,
    permissions: Iterable[Permission],
    storage_id: str = "0",
    location: str = "lnd",
    nonce: bytes | None = None,
) -> bytes:
    """Mint a macaroon as lnd's BakeMacaroon would, signed with ``root_key``."""
    ops = _canonical_ops(permissions)
    if not ops:
        raise MacaroonError("permission list cannot be empty")
    if not storage_id.isascii() or not storage_id.isdigit():
        raise MacaroonError(f"root key id must be a decimal number, got {storage_id!r}")
    nonce = os.urandom(NONCE_LENGTH) if nonce is None else nonce
    identifier = bytes([IDENTIFIER_VERSION]) + lightning_pb2.MacaroonId(
        nonce=nonce, storageId=storage_id.encode("ascii"), ops=ops
    ).SerializeToString()
    minted = _PyMacaroon(location=location, identifier=identifier, key=root_key, version=BINARY_VERSION)
    return _serialize(minted)


def add_first_party_caveat(raw: bytes, caveat: str) -> bytes:
    """Attenuate a macaroon; anyone holding it can do this, no root key involved."""
    parse(raw)
    if not caveat or caveat != caveat.strip() or "\n" in caveat:
        raise MacaroonError(f"caveat must be non-empty text without surrounding whitespace, got {caveat!r}")
    decoded = _deserialize(raw)
    decoded.add_first_party_caveat(caveat)
    return _serialize(decoded)


def time_before_caveat(when: datetime) -> str:
    """``time-before`` caveat in Go's RFC3339Nano form, as lnd and lncli write it."""
    if when.tzinfo is None:
        raise ValueError("time_before_caveat needs a timezone-aware datetime")
    moment = when.astimezone(timezone.utc)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return f"time-before {text}{'.' + fraction if fraction else ''}Z"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if "%" in text:
        raise ValueError(text)
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def ip_address_caveat(ip: str) -> str:
    """``ipaddr`` caveat with the address in canonical form, as lnd writes it."""
    try:
        return f"ipaddr {_ip(ip)}"
    except ValueError:
        raise MacaroonError(f"not an IP address: {ip!r}") from None


def ip_range_caveat(cidr: str) -> str:
    """``iprange`` caveat; host bits are cleared, as Go's ParseCIDR does."""
    try:
        return f"iprange {ipaddress.ip_network(cidr, strict=False)}"
    except ValueError:
        raise MacaroonError(f"not an IP range in CIDR form: {cidr!r}") from None


_HEX = re.compile(r"[0-9a-fA-F]+")
_BASE64 = re.compile(r"[A-Za-z0-9_\-+/]+={0,2}")


def decode_text(text: str) -> bytes:
    """Hex or base64 (url-safe or standard, padding optional) text of a macaroon to bytes."""
    text = text.strip()
    if not text:
        raise MacaroonError("empty macaroon text")
    if _HEX.fullmatch(text) and len(text) % 2 == 0:
        return bytes.fromhex(text)
    if _BASE64.fullmatch(text):
        body = text.rstrip("=").replace("+", "-").replace("/", "_")
        try:
            return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except binascii.Error:
            pass
    raise MacaroonError("not macaroon text: expected hex or base64")


def load(source: str | bytes) -> Macaroon:
    """A macaroon from binary bytes, a file (binary or hex), hex or base64 text, or an lndconnect URI."""
    if isinstance(source, (bytes, bytearray)):
        return parse(bytes(source))
    if not isinstance(source, str):
        raise MacaroonError(f"macaroon source must be text or bytes, got {type(source).__name__}")
    if source.lower().startswith("lndconnect:"):
        # Imported here because node imports this module.
        from distributedcharge.lightning.node import LndConnectError, parse_lndconnect

        try:
            return parse(parse_lndconnect(source).macaroon)
        except LndConnectError as exc:
            raise MacaroonError(str(exc)) from None
    path = Path(source)
    try:
        is_file = path.is_file()
    except (OSError, ValueError):
        is_file = False
    if is_file:
        return _load_file(path)
    if os.sep in source or source.endswith(".macaroon"):
        try:
            return parse(decode_text(source))
        except MacaroonError:
            raise MacaroonError(f"{source}: file not found") from None
    try:
        raw = decode_text(source)
    except MacaroonError:
        raw = b""
    if raw[:1] != bytes([BINARY_VERSION]) and not _HEX.fullmatch(source.strip()):
        # Random words decode as base64 too; "no such file" is the likelier mistake.
        raise MacaroonError("no such file, and not a macaroon in hex or base64 or an lndconnect URI")
    return parse(raw)


def _load_file(path: Path) -> Macaroon:
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise MacaroonError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if content[:1] == bytes([BINARY_VERSION]):
        return _parse_file_content(path, content)
    try:
        decoded = decode_text(content.decode("ascii"))
    except (UnicodeDecodeError, MacaroonError):
        raise MacaroonError(f"{path}: not a macaroon file (neither binary nor hex/base64 text)") from None
    return _parse_file_content(path, decoded)


def _parse_file_content(path: Path, raw: bytes) -> Macaroon:
    try:
        return parse(raw)
    except MacaroonError as exc:
        raise MacaroonError(f"{path}: {exc}") from None


# Verification, following lnd's macaroons.Service and the macaroon-bakery checkers.

_RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,9}))?(Z|[+-][0-9]{2}:[0-9]{2})"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _unix_nanoseconds(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _parse_rfc3339_ns(text: str) -> int:
    """Instant as integer nanoseconds; nanosecond caveats must not be rounded into acceptance."""
    match = _RFC3339.fullmatch(text)
    if not match:
        raise ValueError(f'parsing time "{text}" as RFC3339: cannot parse')
    seconds, fraction, zone = match.groups()
    moment = datetime.fromisoformat(seconds + ("+00:00" if zone == "Z" else zone))
    return _unix_nanoseconds(moment) + int((fraction or "").ljust(9, "0"))


def _check_time_before(arg: str, now: datetime, caveats: tuple[str, ...], peer_ip: str) -> str | None:
    try:
        deadline = _parse_rfc3339_ns(arg)
    except ValueError as exc:
        return str(exc)
    return None if _unix_nanoseconds(now) < deadline else "macaroon has expired"


def _peer(peer_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return _ip(peer_ip)
    except ValueError:
        return None


def _check_ipaddr(arg: str, now: datetime, caveats: tuple[str, ...], peer_ip: str) -> str | None:
    peer = _peer(peer_ip)
    if peer is None:
        return "unable to parse peer address"
    try:
        locked = _ip(arg)
    except ValueError:
        locked = None
    return None if locked == peer else "macaroon locked to different IP address"


def _check_iprange(arg: str, now: datetime, caveats: tuple[str, ...], peer_ip: str) -> str | None:
    peer = _peer(peer_ip)
    if peer is None:
        return "unable to parse peer address"
    try:
        network = ipaddress.ip_network(arg, strict=False)
    except ValueError:
        return "unable to parse macaroon IP range"
    return None if peer in network else "macaroon locked to different IP range"


def _check_declared(arg: str, now: datetime, caveats: tuple[str, ...], peer_ip: str) -> str | None:
    key, space, value = arg.partition(" ")
    if not space:
        return "declared caveat has no value"
    declared = {c.split(" ", 2)[2] for c in caveats if c.startswith(f"declared {key} ") and c.count(" ") >= 2}
    if len(declared) != 1:
        return f'got {key}=null, expected "{value}"'
    return None


def _check_error(arg: str, now: datetime, caveats: tuple[str, ...], peer_ip: str) -> str | None:
    return arg


def _check_lnd_custom(arg: str, now: datetime, caveats: tuple[str, ...], peer_ip: str) -> str | None:
    name = arg.split(" ", 1)[0]
    return f"cannot accept macaroon with custom caveat '{name}', no middleware registered to handle it"


_CHECKERS = {
    "time-before": _check_time_before,
    "ipaddr": _check_ipaddr,
    "iprange": _check_iprange,
    "declared": _check_declared,
    "error": _check_error,
    "lnd-custom": _check_lnd_custom,
}


def _caveat_problem(caveat: str, caveats: tuple[str, ...], peer_ip: str, now: datetime) -> str | None:
    if not caveat:
        return 'cannot parse caveat "": empty caveat'
    if caveat[0] == " ":
        return f'cannot parse caveat "{caveat}": caveat starts with space character'
    condition, _, arg = caveat.partition(" ")
    checker = _CHECKERS.get(condition)
    if checker is None:
        return f'caveat "{caveat}" not satisfied: caveat not recognized'
    problem = checker(arg, now, caveats, peer_ip)
    return None if problem is None else f'caveat "{caveat}" not satisfied: {problem}'


def _chain_signature(root_key: bytes, identifier: bytes, caveats: Iterable[bytes]) -> bytes:
    derived = hmac.new(b"macaroons-key-generator", root_key, sha256).digest()
    signature = hmac.new(derived, identifier, sha256).digest()
    for caveat in caveats:
        signature = hmac.new(signature, caveat, sha256).digest()
    return signature


def verify(raw: bytes, root_keys: Mapping[str, bytes], method: str, peer_ip: str, now: datetime) -> Macaroon:
    """Accept or refuse a call to ``method`` the way lnd v0.21 does; refusal carries lnd's text.

    ``peer_ip`` is the host part of the caller's address; ``now`` must be timezone-aware.
    """
    required = METHOD_PERMISSIONS.get(method)
    if required is None:
        raise MacaroonVerificationError(f"{method}: unknown permissions required for method")
    if raw[:1] != bytes([BINARY_VERSION]):
        raise MacaroonVerificationError("unknown macaroon version")
    try:
        decoded, signature = _read(raw)
        if bytes(decoded.identifier_bytes)[:1] != bytes([IDENTIFIER_VERSION]):
            raise MacaroonVerificationError("invalid ID")
        mac = _assemble(raw, decoded, signature)
    except MacaroonError as exc:
        raise MacaroonVerificationError(str(exc)) from None
    root_key = root_keys.get(mac.storage_id)
    if root_key is None:
        raise MacaroonVerificationError(f"cannot get macaroon: root key with id {mac.storage_id} doesn't exist")
    expected = _chain_signature(root_key, mac.identifier, (c.encode("utf-8") for c in mac.caveats))
    if not hmac.compare_digest(expected, mac.signature):
        raise MacaroonVerificationError("verification failed: signature mismatch after caveat verification")
    for caveat in mac.caveats:
        problem = _caveat_problem(caveat, mac.caveats, peer_ip, now)
        if problem is not None:
            raise MacaroonVerificationError(problem)
    if not mac.allows(method):
        raise MacaroonVerificationError("permission denied")
    return mac


def verify_metadata(
    values: list[str], root_keys: Mapping[str, bytes], method: str, peer_ip: str, now: datetime
) -> Macaroon:
    """``verify`` starting from the gRPC ``macaroon`` metadata values, as lnd's interceptor does."""
    if method not in METHOD_PERMISSIONS:
        raise MacaroonVerificationError(f"{method}: unknown permissions required for method")
    if len(values) != 1:
        raise MacaroonVerificationError(f"expected 1 macaroon, got {len(values)}")
    text = values[0]
    if len(text) % 2:
        raise MacaroonVerificationError("encoding/hex: odd length hex string")
    bad = next((c for c in text if c not in "0123456789abcdefABCDEF"), None)
    if bad is not None:
        raise MacaroonVerificationError(f"encoding/hex: invalid byte: U+{ord(bad):04X} {bad!r}")
    return verify(bytes.fromhex(text), root_keys, method, peer_ip, now)
