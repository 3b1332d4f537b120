"""One invoice over 33.3 kbit/s SWCAN: the original's v1 against our v2, frames and wire time.

The invoices are real signed BOLT11 (distributedcharge.lightning.bolt11.encode with LND's
fields and defaults, throwaway keys), 280 to 400 characters. v1 is sent as the original
sends it: ASCII, no padding, the receiving car advertising STmin 25 ms and block size 10.
v2 is our packed invoice with the car's default flow control (STmin 0, block size 0).
Frames come from can-isotp itself; bits are counted with CRC and bit stuffing on the real
frame bytes; the time adds STmin between consecutive frames the way Linux isotp does (see
distributedcharge.swcan.wire). The baseline is v1 in the same run, so the ratio columns
are the result.
Run with ``python -m benchmarks.swcan_invoice``.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from coincurve import PrivateKey

from distributedcharge.lightning import bolt11
from distributedcharge.swcan import messages, wire
from distributedcharge.swcan.adapter import DEFAULT_BLOCKSIZE, DEFAULT_STMIN_MS
from distributedcharge.units import NJ_PER_WH

ORIGINAL_STMIN_MS = 25
ORIGINAL_BLOCKSIZE = 10
# LND's defaults: 24 h expiry, final CLTV delta 80.
LND_EXPIRY_S = 86_400
LND_FINAL_CLTV = 80


def _seeded(label: str, index: int, length: int = 32) -> bytes:
    return hashlib.sha256(f"{label}/{index}".encode()).digest()[:length]


def make_invoice(amount_msat: int, memo: str, route_hints: int, seed: int) -> str:
    """A signed mainnet invoice with the fields LND puts in one; hints are single-hop like LND's."""
    hints = [[bolt11.RouteHop(pubkey=PrivateKey(_seeded("hint-node", seed * 10 + hop)).public_key.format(),
                              short_channel_id=int.from_bytes(_seeded("scid", seed * 10 + hop, 8), "big"),
                              fee_base_msat=1_000, fee_ppm=1, cltv_delta=144)]
             for hop in range(route_hints)]
    return bolt11.encode(network="mainnet", amount_msat=amount_msat, payment_hash=_seeded("hash", seed),
                         private_key=_seeded("node-key", seed), payment_secret=_seeded("secret", seed),
                         description=memo, expiry=LND_EXPIRY_S, timestamp=1_750_000_000 + seed,
                         min_final_cltv_expiry=LND_FINAL_CLTV, route_hints=hints)


def sample_invoices() -> list[tuple[str, str]]:
    return [
        ("300 sat, short memo", make_invoice(300_000, "EV charge 1.0 kWh", 0, 1)),
        ("1500 sat, 30-char memo", make_invoice(1_500_000, "DistributedCharge: 1.00 kWh @", 0, 2)),
        ("12345 sat, 60-char memo", make_invoice(
            12_345_000, "DistributedCharge session 42: 123.45 kWh at 100 sat/kWh", 0, 3)),
        ("25 Wh payment, 1 route hint", make_invoice(2_500, "DistributedCharge 25 Wh", 1, 4)),
    ]


def _measure(payload: bytes, stmin: int, blocksize: int) -> dict:
    frames = wire.isotp_frames(payload, stmin, blocksize)
    kinds = Counter(frame.kind for frame in frames)
    return {
        "bytes": len(payload),
        "frames": len(frames),
        "ff_cf_fc": f"{kinds['FF']}/{kinds['CF']}/{kinds['FC']}",
        "bits": sum(wire.frame_bits(frame.can_id, frame.data) for frame in frames),
        "ms": round(wire.transfer_seconds(frames, stmin) * 1000, 1),
    }


def run() -> list[dict]:
    rows = []
    for name, invoice in sample_invoices():
        v1 = _measure(messages.encode_v1_invoice(invoice), ORIGINAL_STMIN_MS, ORIGINAL_BLOCKSIZE)
        v2 = _measure(messages.encode_v2_invoice(invoice, 0xBEEF, 0, 1_234 * NJ_PER_WH), DEFAULT_STMIN_MS,
                      DEFAULT_BLOCKSIZE)
        rows.append({
            "invoice": name,
            "chars": len(invoice),
            **{f"v1_{key}": value for key, value in v1.items()},
            **{f"v2_{key}": value for key, value in v2.items()},
            "size_ratio_v2_v1": round(v2["bytes"] / v1["bytes"], 3),
            "time_ratio_v2_v1": round(v2["ms"] / v1["ms"], 3),
        })
    return rows


def main() -> None:
    rows = run()
    print(f"SWCAN at {wire.SWCAN_BITRATE} bit/s. v1: ASCII, STmin {ORIGINAL_STMIN_MS} ms, BS {ORIGINAL_BLOCKSIZE} "
          f"(the original). v2: packed, STmin {DEFAULT_STMIN_MS}, BS {DEFAULT_BLOCKSIZE} (our car's defaults).")
    print(f"{'invoice':33} {'chars':>5} | {'v1 B':>5} {'FF/CF/FC':>8} {'bits':>5} {'ms':>7} | "
          f"{'v2 B':>5} {'FF/CF/FC':>8} {'bits':>5} {'ms':>6} | {'size':>5} {'time':>5}")
    for row in rows:
        print(f"{row['invoice']:33} {row['chars']:>5} | {row['v1_bytes']:>5} {row['v1_ff_cf_fc']:>8} "
              f"{row['v1_bits']:>5} {row['v1_ms']:>7.1f} | {row['v2_bytes']:>5} {row['v2_ff_cf_fc']:>8} "
              f"{row['v2_bits']:>5} {row['v2_ms']:>6.1f} | {row['size_ratio_v2_v1']:>5.3f} "
              f"{row['time_ratio_v2_v1']:>5.3f}")


if __name__ == "__main__":
    main()
