"""``distributedcharge macaroon``: see what a macaroon allows, and narrow it down.

``inspect`` decodes the permissions from the identifier (no node needed) and says which
of lnd's default macaroons it is, so an owner can tell at a glance whether a file is the
admin macaroon they should not copy to a charger. ``restrict`` adds ``ipaddr`` and
``time-before`` caveats offline: anyone holding a macaroon can attenuate it, no root key.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from distributedcharge.lightning import macaroons
from distributedcharge.lightning.privilege import ROLE_METHODS

_DURATION = re.compile(r"([1-9][0-9]{0,9})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = timedelta(days=3650)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    inspect = actions.add_parser("inspect", help="show location, root key id, permissions and caveats")
    inspect.add_argument("source", metavar="FILE|HEX|URI", help="macaroon file, hex/base64 text or lndconnect URI")
    inspect.add_argument("--json", action="store_true", help="print one JSON object (like lncli printmacaroon)")
    restrict = actions.add_parser("restrict", help="add IP and expiry caveats (no root key needed)")
    restrict.add_argument("source", metavar="IN", help="macaroon file, hex/base64 text or lndconnect URI")
    restrict.add_argument("--ip", metavar="ADDR", help="only usable from this IP address (as LND sees it)")
    restrict.add_argument("--expires", metavar="DURATION", help="usable for this long from now: 30d, 12h, 90m, 3600s")
    restrict.add_argument("-o", "--output", metavar="OUT", required=True,
                          help="where to write the binary macaroon ('-' prints hex)")


def parse_duration(text: str) -> timedelta:
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"duration {text!r} must be a positive whole number with s, m, h or d, e.g. 30d or 90m")
    duration = timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    if duration > MAX_DURATION:
        raise ValueError(f"duration {text!r} is longer than ten years")
    return duration


def _default_name(mac: macaroons.Macaroon) -> str | None:
    for name, permissions in macaroons.DEFAULT_MACAROON_PERMISSIONS.items():
        if mac.permissions == permissions:
            return name
    return None


def _usable_for(mac: macaroons.Macaroon) -> list[str]:
    return [role for role, methods in ROLE_METHODS.items() if all(mac.allows(m) for m in methods)]


def _inspect(args: argparse.Namespace) -> int:
    mac = macaroons.load(args.source)
    permissions = sorted(f"{entity}:{action}" for entity, action in mac.permissions)
    default = _default_name(mac)
    if args.json:
        print(json.dumps({
            "version": macaroons.BINARY_VERSION,
            "location": mac.location,
            "root_key_id": mac.storage_id,
            "permissions": permissions,
            "caveats": list(mac.caveats),
            "default_macaroon": default,
            "usable_for": _usable_for(mac),
        }, indent=2))
        return 0
    lines = [
        f"location:     {mac.location}",
        f"root key id:  {mac.storage_id}",
        f"nonce:        {mac.nonce.hex()}",
        f"same as lnd's default {default}.macaroon" if default else "custom permissions",
        f"usable by:    {', '.join(_usable_for(mac)) or 'neither the car nor the wall unit'}",
        "permissions:",
        *(f"  {p}" for p in permissions),
        "caveats:" if mac.caveats else "caveats:      none",
        *(f"  {c}" for c in mac.caveats),
    ]
    print("\n".join(lines))
    return 0


def _write_private(path: Path, data: bytes) -> None:
    """Atomically, readable by the owner only: a macaroon is a bearer credential."""
    directory = path.parent if str(path.parent) else Path(".")
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _restrict(args: argparse.Namespace) -> int:
    if args.ip is None and args.expires is None:
        raise ValueError("give --ip, --expires or both")
    caveats = []
    if args.ip is not None:
        caveats.append(macaroons.ip_address_caveat(args.ip))
    if args.expires is not None:
        caveats.append(macaroons.time_before_caveat(datetime.now(timezone.utc) + parse_duration(args.expires)))
    raw = macaroons.load(args.source).raw
    for caveat in caveats:
        raw = macaroons.add_first_party_caveat(raw, caveat)
    if args.output == "-":
        print(raw.hex())
    else:
        try:
            _write_private(Path(args.output), raw)
        except OSError as exc:
            raise ValueError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print("\n".join(f"added caveat: {c}" for c in caveats), file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return _inspect(args) if args.action == "inspect" else _restrict(args)
    except ValueError as exc:
        print(f"distributedcharge macaroon: error: {exc}", file=sys.stderr)
    return 1
