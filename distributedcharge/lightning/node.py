"""Where the LND node is and how to prove who we are: host, port, TLS cert, macaroon.

An owner gives either one ``lndconnect://`` URI (what Zap, Zeus, Umbrel, Start9 and
``lndconnect`` print as a QR code) or the host, port and paths of ``tls.cert`` and the
macaroon file. Both end as a :class:`NodeAddress`. Parsing is strict: every malformed
part gets an error naming it, because a half-understood address would either fail
obscurely at the first payment or, worse, skip certificate checks.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from distributedcharge import config
from distributedcharge.lightning import macaroons

DEFAULT_PORT = 10009
SCHEME = "lndconnect"


class NodeAddressError(ValueError):
    """The node's address, certificate or macaroon cannot be used."""


class LndConnectError(NodeAddressError):
    """An lndconnect URI is malformed; the message names the part."""


@dataclass(frozen=True)
class NodeAddress:
    host: str
    port: int
    tls_cert_pem: bytes | None
    macaroon: bytes

    @property
    def target(self) -> str:
        """``host:port`` as gRPC wants it, IPv6 literals in brackets."""
        return f"{_bracketed(self.host)}:{self.port}"

    def __repr__(self) -> str:
        # The macaroon is a bearer credential: keep it out of logs and tracebacks.
        cert = "pinned cert" if self.tls_cert_pem else "system CAs"
        return f"NodeAddress({self.target}, {cert}, macaroon {len(self.macaroon)} bytes)"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_BASE64URL = re.compile(r"[A-Za-z0-9_\-+/]*={0,2}")
_BASE64_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_+/=")


def check_host(host: str) -> str:
    """Validated host: an IP literal (IPv6 without brackets) or a DNS / .onion name."""
    if not host:
        raise NodeAddressError("host is empty")
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise NodeAddressError(f"host {host!r} is not a valid IPv6 address") from None
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
        raise NodeAddressError(f"host {host!r} is not a valid host name or IP address")
    return host


def check_port(port: Any) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise NodeAddressError(f"port must be an integer from 1 to 65535, got {port!r}")
    return port


def _split_netloc(netloc: str) -> tuple[str, int]:
    if "@" in netloc:
        raise LndConnectError("lndconnect URI must not contain user information before the host")
    if netloc.startswith("["):
        close = netloc.find("]")
        if close < 0:
            raise LndConnectError("IPv6 host is missing its closing ']'")
        host, rest = netloc[1:close], netloc[close + 1 :]
        if not host or ":" not in host:
            raise LndConnectError(f"[{host}] is not an IPv6 address")
        if rest and not rest.startswith(":"):
            raise LndConnectError(f"unexpected {rest!r} after the IPv6 host")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text = netloc.partition(":")
        if ":" in port_text:
            raise LndConnectError("IPv6 hosts must be written in brackets, e.g. [::1]:10009")
        port_text = port_text if colon else None
    if not host:
        raise LndConnectError("lndconnect URI has no host")
    if port_text is None:
        port = DEFAULT_PORT
    elif not port_text.isascii() or not port_text.isdigit():
        raise LndConnectError(f"port {port_text!r} is not a number" if port_text else "port is empty")
    else:
        port = int(port_text)
    try:
        return check_host(host), check_port(port)
    except NodeAddressError as exc:
        raise LndConnectError(str(exc)) from None


def _b64url_decode(name: str, text: str) -> bytes:
    # Compliant producers use base64url without padding; '+' and '/' come from tools that
    # emit standard base64, and are accepted as long as nothing turned '+' into a space.
    if not text:
        raise LndConnectError(f"{name} is empty")
    bad = next((c for c in text if c not in _BASE64_CHARACTERS), None)
    if bad is not None:
        raise LndConnectError(f"{name} contains {bad!r}, not base64url")
    if not _BASE64URL.fullmatch(text):
        raise LndConnectError(f"{name} has '=' padding in the middle")
    body = text.rstrip("=").replace("+", "-").replace("/", "_")
    if len(body) % 4 == 1:
        raise LndConnectError(f"{name} is not valid base64url (truncated)")
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except binascii.Error as exc:
        raise LndConnectError(f"{name} is not valid base64url: {exc}") from None


def _cert_pem_from_der(der: bytes) -> bytes:
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError:
        raise LndConnectError("cert is not a DER X.509 certificate") from None
    return certificate.public_bytes(Encoding.PEM)


def _query(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in text.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        key = unquote(key)
        if key in params:
            raise LndConnectError(f"parameter {key!r} is given twice")
        # unquote, not unquote_plus: '+' is a base64 character here, never a space.
        params[key] = unquote(value)
    return params


def parse_lndconnect(uri: str) -> NodeAddress:
    """Decode ``lndconnect://host[:port]?[cert=…&]macaroon=…``."""
    if not isinstance(uri, str):
        raise LndConnectError(f"lndconnect URI must be text, got {type(uri).__name__}")
    uri = uri.strip()
    scheme, colon, rest = uri.partition(":")
    if not colon or scheme.lower() != SCHEME:
        raise LndConnectError(f"not an lndconnect URI: it must start with '{SCHEME}://'")
    if not rest.startswith("//"):
        raise LndConnectError(f"lndconnect URI must start with '{SCHEME}://'")
    rest, _, _fragment = rest[2:].partition("#")
    netloc_and_path, _, query = rest.partition("?")
    netloc, slash, path = netloc_and_path.partition("/")
    if path:
        raise LndConnectError(f"unexpected path '/{path}' after the host")
    host, port = _split_netloc(netloc)
    params = _query(query)
    if "macaroon" not in params:
        raise LndConnectError("lndconnect URI has no macaroon parameter")
    cert_pem = None
    if "cert" in params:
        cert_pem = _cert_pem_from_der(_b64url_decode("cert", params["cert"]))
    macaroon = _macaroon_from_param(params["macaroon"])
    return NodeAddress(host=host, port=port, tls_cert_pem=cert_pem, macaroon=macaroon)


def _macaroon_from_param(text: str) -> bytes:
    # Some tools and guides put the hex form in the URI; a base64url macaroon always starts
    # "AgEDbG5k" (0x02 0x01 0x03 "lnd"), which is never valid hex.
    if text and len(text) % 2 == 0 and re.fullmatch(r"[0-9a-fA-F]+", text):
        raw = bytes.fromhex(text)
    else:
        raw = _b64url_decode("macaroon", text)
    try:
        macaroons.parse(raw)
    except macaroons.MacaroonError as exc:
        raise LndConnectError(f"macaroon: {exc}") from None
    return raw


def to_lndconnect(address: NodeAddress) -> str:
    """The URI for ``address``, parameters in the order the Go tool writes them."""
    params = []
    if address.tls_cert_pem is not None:
        der = x509.load_pem_x509_certificate(address.tls_cert_pem).public_bytes(Encoding.DER)
        params.append("cert=" + _b64url(der))
    params.append("macaroon=" + _b64url(address.macaroon))
    return f"{SCHEME}://{address.target}?{'&'.join(params)}"


def _b64url(data: bytes) -> str:
    return quote(base64.urlsafe_b64encode(data).decode("ascii").rstrip("="), safe="-_")


def read_cert(path: str) -> bytes:
    """The PEM of the certificate in ``path`` (PEM or DER file)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise NodeAddressError(f"{path}: file not found") from None
    except OSError as exc:
        raise NodeAddressError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        if b"-----BEGIN" in data:
            certificate = x509.load_pem_x509_certificate(data)
        else:
            certificate = x509.load_der_x509_certificate(data)
    except ValueError:
        raise NodeAddressError(f"{path}: not an X.509 certificate (PEM or DER)") from None
    return certificate.public_bytes(Encoding.PEM)


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def read_macaroon(path: str) -> bytes:
    """The binary macaroon in file ``path`` (binary, hex or base64 content)."""
    if not Path(path).is_file():
        raise NodeAddressError(f"{path}: file not found")
    try:
        return macaroons.load(path).raw
    except macaroons.MacaroonError as exc:
        raise NodeAddressError(str(exc)) from None


def from_files(host: str, port: int, tls_cert: str | None, macaroon: str) -> NodeAddress:
    """Address from a host, a port and the paths of tls.cert (None: system CAs) and the macaroon."""
    return NodeAddress(
        host=check_host(_unbracket(host)),
        port=check_port(port),
        tls_cert_pem=None if tls_cert is None else read_cert(tls_cert),
        macaroon=read_macaroon(macaroon),
    )


def _port_check(value: Any) -> str | None:
    return None if 1 <= value <= 65535 else f"must be from 1 to 65535, got {value}"


LIGHTNING_FIELDS: list[config.Field] = [
    config.Field("lightning.lndconnect", str, None,
                 doc="lndconnect://host:port?cert=…&macaroon=… (instead of host, port, tls_cert, macaroon)"),
    config.Field("lightning.host", str, None, doc="LND gRPC host name or IP address"),
    config.Field("lightning.port", int, DEFAULT_PORT, _port_check, doc="LND gRPC port"),
    config.Field("lightning.tls_cert", str, None,
                 doc="path of LND's tls.cert; leave out only if the node's cert is signed by a public CA"),
    config.Field("lightning.macaroon", str, None, doc="path of the macaroon file (binary or hex)"),
    config.Field("lightning.allow_overprivileged_macaroon", bool, False,
                 doc="start even if the macaroon grants more than this daemon needs (logged at every start)"),
    config.Field("lightning.rpc_timeout_s", float, 10.0, config.between(0.5, 300),
                 doc="deadline for each LND call, seconds"),
]


def address_from_config(section: dict[str, Any], source: str = "config") -> NodeAddress:
    """The node address from a validated ``[lightning]`` section; every problem is reported at once."""
    uri = section.get("lndconnect")
    separate = sorted(key for key in ("host", "tls_cert", "macaroon") if section.get(key) is not None)
    if uri is not None and separate:
        raise config.ConfigError([
            f"{source}: lightning: give either lndconnect or host/tls_cert/macaroon, not both "
            f"(found lndconnect and {', '.join(separate)})"
        ])
    if uri is not None:
        try:
            return parse_lndconnect(uri)
        except LndConnectError as exc:
            raise config.ConfigError([f"{source}: lightning.lndconnect: {exc}"]) from None
    return _address_from_separate_keys(section, source)


def _address_from_separate_keys(section: dict[str, Any], source: str) -> NodeAddress:
    problems: list[str] = []
    values: dict[str, Any] = {}

    def attempt(key: str, compute) -> None:
        try:
            values[key] = compute()
        except NodeAddressError as exc:
            problems.append(f"{source}: lightning.{key}: {exc}")

    for key in ("host", "macaroon"):
        if section.get(key) is None:
            problems.append(f"{source}: lightning.{key}: missing (required unless lndconnect is given)")
    if section.get("host") is not None:
        attempt("host", lambda: check_host(_unbracket(section["host"])))
    attempt("port", lambda: check_port(section.get("port", DEFAULT_PORT)))
    tls_cert = section.get("tls_cert")
    attempt("tls_cert", lambda: None if tls_cert is None else read_cert(tls_cert))
    if section.get("macaroon") is not None:
        attempt("macaroon", lambda: read_macaroon(section["macaroon"]))
    if problems:
        raise config.ConfigError(problems)
    return NodeAddress(values["host"], values["port"], values["tls_cert"], values["macaroon"])


def config_problems(section: dict[str, Any], source: str) -> list[str]:
    """What is wrong with how a validated ``[lightning]`` section names the node, files unread."""
    uri = section["lndconnect"]
    separate = [key for key in ("host", "tls_cert", "macaroon") if section[key] is not None]
    if uri is not None and separate:
        return [f"{source}: lightning: give either lndconnect or host/tls_cert/macaroon, not both "
                f"(found lndconnect and {', '.join(separate)})"]
    if uri is not None:
        try:
            parse_lndconnect(uri)
        except LndConnectError as exc:
            return [f"{source}: lightning.lndconnect: {exc}"]
        return []
    problems = [f"{source}: lightning.{key}: missing (required unless lndconnect is given)"
                for key in ("host", "macaroon") if section[key] is None]
    if section["host"] is not None:
        try:
            check_host(_unbracket(section["host"]))
        except NodeAddressError as exc:
            problems.append(f"{source}: lightning.host: {exc}")
    return problems
