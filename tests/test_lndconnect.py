"""Node address: lndconnect URIs, certificate and macaroon files, the [lightning] config section."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography import x509
from cryptography.x509.oid import NameOID

from distributedcharge import config
from distributedcharge.lightning import macaroons, node
from distributedcharge.lightning.node import LndConnectError, NodeAddress, NodeAddressError

# LN-Zap/node-lndconnect test/test.js.
ZAP_CERT = (
    "MIICuDCCAl6gAwIBAgIQeubXIhKzlGo_scDmWj9VtzAKBggqhkjOPQQDAjA_MR8wHQYDVQQKExZsbmQgYXV0b2dlbmVyYXRlZCBjZXJ0MRww"
    "GgYDVQQDExN0aGVkZWF0aG1hY2hpbmUubGFuMB4XDTE5MDEwMjExMzUxOVoXDTIwMDIyNzExMzUxOVowPzEfMB0GA1UEChMWbG5kIGF1dG9n"
    "ZW5lcmF0ZWQgY2VydDEcMBoGA1UEAxMTdGhlZGVhdGhtYWNoaW5lLmxhbjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABFosqs1rkSPwi6gO"
    "tuKSd7jMx8XSgadnbjWTbAH14-wFKYP7710JfosoikHW2dwZlUEfbeFNs33T2ifMTqD3hVujggE6MIIBNjAOBgNVHQ8BAf8EBAMCAqQwDwYD"
    "VR0TAQH_BAUwAwEB_zCCAREGA1UdEQSCAQgwggEEghN0aGVkZWF0aG1hY2hpbmUubGFugglsb2NhbGhvc3SCBHVuaXiCCnVuaXhwYWNrZXSH"
    "BH8AAAGHEAAAAAAAAAAAAAAAAAAAAAGHEP6AAAAAAAAAAAAAAAAAAAGHEP6AAAAAAAAAEOe3k9fX-f6HBMCoVs2HEP6AAAAAAAAAvPC7__6r"
    "GHCHEP6AAAAAAAAA8JND8_hwxvqHEP6AAAAAAAAA6rX1aP4vsbaHEP6AAAAAAAAAlbtYbhCVtbeHEP6AAAAAAAAALZmwBSSILp-HEP6AAAAA"
    "AAAAKNvxGH98fU-HEP6AAAAAAAAAvOC7LgFuUZGHEP6AAAAAAAAArt5I__4AESIwCgYIKoZIzj0EAwIDSAAwRQIhALwsEmlLQfARQOca0gbF"
    "8XnTofXHqnjkBhyO0vTgTH5lAiB-GU2TVpSAsPAoKv6XopMG_oMolgo5T1YByHu202p9Uw"
)
ZAP_MACAROON = (
    "AgEDbG5kArsBAwoQ_Dvl5gsNFAUTkjbCq4w1_hIBMBoWCgdhZGRyZXNzEgRyZWFkEgV3cml0ZRoTCgRpbmZvEgRyZWFkEgV3cml0ZRoX"
    "CghpbnZvaWNlcxIEcmVhZBIFd3JpdGUaFgoHbWVzc2FnZRIEcmVhZBIFd3JpdGUaFwoIb2ZmY2hhaW4SBHJlYWQSBXdyaXRlGhYKB29u"
    "Y2hhaW4SBHJlYWQSBXdyaXRlGhQKBXBlZXJzEgRyZWFkEgV3cml0ZQAABiBsG0xskPH_9m_383wpzL5oaB-a_GXkMF9_gfs9HFocfw"
)
ZAP_URI = f"lndconnect://1.2.3.4:10009?cert={ZAP_CERT}&macaroon={ZAP_MACAROON}"
# LN-Zap/lndconnect lnd_connect_uri.md: its example macaroon has byte 72 corrupted.
CORRUPTED_MACAROON = (
    "AgEDbG5kArsBAwoQ3_I9f6kgSE6aUPd85lWpOBIBMBoWCgdhZGRyZXNzEgRyZWFkEgV3cml0ZRoTCgRpbmZvEgRyZWFkEgV32ml0ZRoX"
    "CghpbnZvaWNlcxIEcmVhZBIFd3JpdGUaFgoHbWVzc2FnZRIEcmVhZBIFd3JpdGUaFwoIb2ZmY2hhaW4SBHJlYWQSBXdyaXRlGhYKB29u"
    "Y2hhaW4SBHJlYWQSBXdyaXRlGhQKBXBlZXJzEgRyZWFkEgV3cml0ZQAABiAiUTBv3Eh6iDbdjmXCfNxp4HBEcOYNzXhrm-ncLHf5jA"
)
MACAROON = macaroons.bake(b"\x01" * 32, [("invoices", "read"), ("invoices", "write")])
M = base64.urlsafe_b64encode(MACAROON).decode().rstrip("=")


def unpadded_b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_published_vector_decodes():
    address = node.parse_lndconnect(ZAP_URI)
    assert (address.host, address.port, address.target) == ("1.2.3.4", 10009, "1.2.3.4:10009")
    assert address.macaroon == unpadded_b64url(ZAP_MACAROON)
    cert = x509.load_pem_x509_certificate(address.tls_cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "thedeathmachine.lan"
    assert node.to_lndconnect(address) == ZAP_URI


def test_corrupted_published_macaroon_is_refused():
    assert unpadded_b64url(CORRUPTED_MACAROON)[72] == 0xDA
    with pytest.raises(LndConnectError, match="^macaroon: macaroon identifier is not a valid MacaroonId"):
        node.parse_lndconnect(f"lndconnect://192.168.1.4:10009?macaroon={CORRUPTED_MACAROON}")


def test_port_defaults_to_10009_and_cert_is_optional():
    address = node.parse_lndconnect(f"lndconnect://mynode.example.com?macaroon={M}")
    assert (address.host, address.port, address.tls_cert_pem, address.macaroon) == (
        "mynode.example.com", 10009, None, MACAROON)


def test_ipv6_and_onion_hosts():
    ipv6 = node.parse_lndconnect(f"lndconnect://[::1]:10010?macaroon={M}")
    assert (ipv6.host, ipv6.target) == ("::1", "[::1]:10010")
    assert node.parse_lndconnect(node.to_lndconnect(ipv6)) == ipv6
    onion = "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx.onion"
    assert node.parse_lndconnect(f"lndconnect://{onion}:10009?macaroon={M}").host == onion


def test_hex_macaroon_and_standard_base64_cert_with_plus_are_accepted():
    der = unpadded_b64url(ZAP_CERT)
    standard = base64.b64encode(der).decode()
    assert "+" in standard and "/" in standard
    for cert_text in (standard, standard.replace("+", "%2B").replace("/", "%2F")):
        address = node.parse_lndconnect(f"lndconnect://1.2.3.4?cert={cert_text}&macaroon={MACAROON.hex()}")
        assert address.macaroon == MACAROON
        assert address.tls_cert_pem == node.parse_lndconnect(ZAP_URI).tls_cert_pem


@pytest.mark.parametrize(
    "uri, message",
    [
        (f"https://1.2.3.4:10009?macaroon={M}", "not an lndconnect URI"),
        (f"lndconnect:1.2.3.4?macaroon={M}", "must start with 'lndconnect://'"),
        (f"lndconnect://:10009?macaroon={M}", "has no host"),
        (f"lndconnect://1.2.3.4:abc?macaroon={M}", "port 'abc' is not a number"),
        (f"lndconnect://1.2.3.4:?macaroon={M}", "port is empty"),
        (f"lndconnect://1.2.3.4:70000?macaroon={M}", "port must be an integer from 1 to 65535, got 70000"),
        (f"lndconnect://::1:10009?macaroon={M}", "IPv6 hosts must be written in brackets"),
        (f"lndconnect://[::1:10009?macaroon={M}", "missing its closing"),
        (f"lndconnect://[1.2.3.4]:10009?macaroon={M}", "is not an IPv6 address"),
        (f"lndconnect://bad_host!:10009?macaroon={M}", "is not a valid host name"),
        (f"lndconnect://me@1.2.3.4:10009?macaroon={M}", "must not contain user information"),
        (f"lndconnect://1.2.3.4:10009/grpc?macaroon={M}", "unexpected path '/grpc'"),
        (f"lndconnect://1.2.3.4:10009?cert={ZAP_CERT}", "has no macaroon parameter"),
        ("lndconnect://1.2.3.4:10009?macaroon=", "macaroon is empty"),
        ("lndconnect://1.2.3.4:10009?macaroon=AgED$bG5k", "macaroon contains '$', not base64url"),
        ("lndconnect://1.2.3.4:10009?macaroon=AgED=bG5k", "macaroon has '=' padding in the middle"),
        (f"lndconnect://1.2.3.4:10009?macaroon={M}&macaroon={M}", "parameter 'macaroon' is given twice"),
        (f"lndconnect://1.2.3.4:10009?cert=AAAA&macaroon={M}", "cert is not a DER X.509 certificate"),
        (f"lndconnect://1.2.3.4:10009?cert=AAAAA&macaroon={M}", "cert is not valid base64url"),
        (f"lndconnect://1.2.3.4:10009?cert={ZAP_CERT.replace('-', ' ', 1)}&macaroon={M}",
         "cert contains ' ', not base64url"),
        ("lndconnect://1.2.3.4:10009?macaroon=AQID", "macaroon: unsupported macaroon format: first byte is 0x01"),
    ],
)
def test_malformed_uris_get_an_error_naming_the_part(uri, message):
    with pytest.raises(LndConnectError, match=re.escape(message)):
        node.parse_lndconnect(uri)


def test_repr_keeps_the_macaroon_out_of_logs():
    address = node.parse_lndconnect(ZAP_URI)
    assert ZAP_MACAROON[:20] not in repr(address) and address.macaroon.hex()[:20] not in repr(address)
    assert "1.2.3.4:10009" in repr(address)


@pytest.fixture
def files(tmp_path):
    cert = tmp_path / "tls.cert"
    cert.write_bytes(node.parse_lndconnect(ZAP_URI).tls_cert_pem)
    mac = tmp_path / "invoice.macaroon"
    mac.write_bytes(MACAROON)
    return cert, mac


def test_from_files(files, tmp_path):
    cert, mac = files
    address = node.from_files("[::1]", 10009, str(cert), str(mac))
    assert address == NodeAddress("::1", 10009, cert.read_bytes(), MACAROON)
    der = tmp_path / "tls.der"
    der.write_bytes(unpadded_b64url(ZAP_CERT))
    assert node.from_files("lnd", 10009, str(der), str(mac)).tls_cert_pem == cert.read_bytes()
    assert node.from_files("lnd", 10009, None, str(mac)).tls_cert_pem is None


def test_from_files_names_what_is_wrong(files, tmp_path):
    cert, mac = files
    with pytest.raises(NodeAddressError, match="tls.missing: file not found"):
        node.from_files("lnd", 10009, str(tmp_path / "tls.missing"), str(mac))
    with pytest.raises(NodeAddressError, match="not an X.509 certificate"):
        node.from_files("lnd", 10009, str(mac), str(mac))
    with pytest.raises(NodeAddressError, match="tls.cert: not a macaroon file"):
        node.from_files("lnd", 10009, str(cert), str(cert))
    garbled = tmp_path / "garbled.macaroon"
    garbled.write_bytes(MACAROON[:-5])
    with pytest.raises(NodeAddressError, match="garbled.macaroon: malformed macaroon"):
        node.from_files("lnd", 10009, str(cert), str(garbled))
    with pytest.raises(NodeAddressError, match="port must be an integer"):
        node.from_files("lnd", 0, str(cert), str(mac))


def section(data: dict) -> dict:
    return config.validate({"lightning": data}, node.LIGHTNING_FIELDS, "car.toml")["lightning"]


def test_config_with_lndconnect_and_defaults():
    values = section({"lndconnect": ZAP_URI})
    assert (values["allow_overprivileged_macaroon"], values["rpc_timeout_s"], values["port"]) == (False, 10.0, 10009)
    assert node.address_from_config(values, "car.toml") == node.parse_lndconnect(ZAP_URI)


def test_config_with_files(files):
    cert, mac = files
    values = section({"host": "10.0.0.5", "port": 10010, "tls_cert": str(cert), "macaroon": str(mac)})
    assert node.address_from_config(values).target == "10.0.0.5:10010"


def test_config_must_use_exactly_one_way(files):
    cert, mac = files
    with pytest.raises(config.ConfigError) as both:
        node.address_from_config(section({"lndconnect": ZAP_URI, "macaroon": str(mac)}), "car.toml")
    assert both.value.problems == [
        "car.toml: lightning: give either lndconnect or host/tls_cert/macaroon, not both (found lndconnect and "
        "macaroon)"]
    with pytest.raises(config.ConfigError) as neither:
        node.address_from_config(section({}), "car.toml")
    assert neither.value.problems == [
        "car.toml: lightning.host: missing (required unless lndconnect is given)",
        "car.toml: lightning.macaroon: missing (required unless lndconnect is given)",
    ]


def test_config_reports_every_bad_file_at_once(files, tmp_path):
    cert, mac = files
    values = section({"host": "10.0.0.5", "tls_cert": str(mac), "macaroon": str(tmp_path / "gone.macaroon")})
    with pytest.raises(config.ConfigError) as raised:
        node.address_from_config(values, "w.toml")
    assert [p.split(":")[1].strip() for p in raised.value.problems] == ["lightning.tls_cert", "lightning.macaroon"]
    with pytest.raises(config.ConfigError, match="lightning.lndconnect: port is empty"):
        node.address_from_config(section({"lndconnect": "lndconnect://h:?macaroon=x"}), "w.toml")


def test_config_checks_types_and_ranges():
    with pytest.raises(config.ConfigError) as raised:
        section({"lndconnect": ZAP_URI, "rpc_timeout_s": 0, "port": 0, "allow_overprivileged_macaroon": "yes"})
    assert len(raised.value.problems) == 3


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120), st.sampled_from(["", "lndconnect://", "lndconnect://[", "lndconnect://h:1?macaroon="]))
def test_arbitrary_text_raises_only_lndconnect_error(text, prefix):
    try:
        node.parse_lndconnect(prefix + text)
    except LndConnectError:
        pass
