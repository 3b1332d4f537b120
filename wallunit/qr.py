"""QR codes for manual pay: on the terminal and as a PNG for a screen or web page.

The code holds ``LIGHTNING:LNBC...`` in upper case. Upper-case text fits QR's
alphanumeric mode (5.5 bits a character instead of 8), so a 400-character invoice
needs a noticeably smaller, easier-to-scan symbol; wallets accept the scheme and the
invoice in either case (BIP 173 forbids only mixed case).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import segno

from distributedcharge.lightning.bech32 import Bech32Error, decode


class NotAnInvoice(ValueError):
    pass


def lightning_uri(bolt11: str) -> str:
    """Check ``bolt11`` is a bech32 Lightning invoice and return its upper-case URI."""
    text = bolt11.strip()
    if text.lower().startswith("lightning:"):
        text = text[len("lightning:"):]
    try:
        hrp, _ = decode(text)
    except Bech32Error as exc:
        raise NotAnInvoice(f"not a BOLT11 invoice: {exc}") from None
    if not hrp.startswith("ln"):
        raise NotAnInvoice(f"not a BOLT11 invoice: prefix {hrp!r} does not start with 'ln'")
    return "LIGHTNING:" + text.upper()


def make(bolt11: str) -> segno.QRCode:
    return segno.make_qr(lightning_uri(bolt11), error="m")


def terminal_text(bolt11: str) -> str:
    """The code drawn with Unicode half blocks, two rows per line, for a log or console."""
    out = io.StringIO()
    make(bolt11).terminal(out=out, compact=True)
    return out.getvalue()


def write_png(bolt11: str, path: str | Path, scale: int = 6) -> Path:
    """Write the code as PNG, replacing ``path`` atomically so a viewer never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    code = make(bolt11)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            code.save(handle, kind="png", scale=scale, border=4)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def remove_png(path: str | Path) -> None:
    Path(path).unlink(missing_ok=True)
