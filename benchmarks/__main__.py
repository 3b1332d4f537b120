"""``make bench``: every benchmark, one table, each figure a ratio against a baseline from the same run.

    python -m benchmarks [--hours H]

``--hours`` shortens the long session (default 8) for a quick look.
"""

from __future__ import annotations

import argparse
import os
import time

from distributedcharge import log

Row = tuple[str, str, str, float]


def _vehicle_rows() -> list[Row]:
    from benchmarks import vehicle_decode

    rows = []
    results = vehicle_decode.run()
    baselines = {r["layout"]: r for r in results if r["decoder"].startswith("cantools decode_message (choices")}
    for result in results:
        if result["decoder"].startswith("our"):
            base = baselines[result["layout"]]
            rows.append((f"vehicle CAN decode, {result['layout']} layout: {result['decoder'][4:]}",
                         f"{result['frames_per_s']:,} frames/s", f"cantools {base['frames_per_s']:,} frames/s",
                         result["ratio_vs_cantools"]))
    return rows


def _swcan_rows() -> list[Row]:
    from benchmarks import swcan_invoice

    rows = []
    for result in swcan_invoice.run():
        rows.append((f"SWCAN invoice ({result['invoice']}), wire time",
                     f"v2 {result['v2_ms']:.0f} ms, {result['v2_frames']} frames",
                     f"v1 {result['v1_ms']:.0f} ms, {result['v1_frames']} frames", result["time_ratio_v2_v1"]))
    return rows


def _first_payment_rows() -> list[Row]:
    from benchmarks import first_payment

    result = first_payment.run()
    return [("plug-in to first paid step (real daemons, simulation, real time)", f"{result.ours_s:.2f} s",
             f"original's SWCAN settings {result.original_s:.2f} s", result.ratio)]


def _long_session_rows(hours: float) -> list[Row]:
    from benchmarks import long_session

    figures = long_session.run(hours)
    rows: list[Row] = [(f"{hours:g} h 11 kW session, cores at full speed-up: wall time",
                        f"{figures.wall_time_s:.0f} s for {figures.paid_steps} paid steps",
                        f"real time {hours * 3600:.0f} s", figures.wall_time_s / (hours * 3600))]
    for role in figures.roles:
        name = "wall unit" if role.role == "wall" else "car"
        rows += [
            (f"{name}: daemon cost per paid step, Lightning excluded", f"{role.us_per_step_first_hour:.0f} us",
             f"bare loop on the same I/O {role.bare_us_per_step_first_hour:.0f} us", role.over_bare),
            (f"{name}: cost per paid step, last hour against first", f"{role.us_per_step_last_hour:.0f} us",
             f"first hour {role.us_per_step_first_hour:.0f} us", role.growth),
            (f"{name}: peak RSS at the end against after 1 h", f"{role.rss_kib_end / 1024:.1f} MiB",
             f"{role.rss_kib_first_hour / 1024:.1f} MiB", role.rss_growth),
        ]
    if not figures.replay_faithful:
        rows.append(("replays diverged from the session: per-role figures are not trustworthy", "", "", 0.0))
    return rows


def table(rows: list[Row]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    header = ("benchmark", "figure", "baseline (same run)")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    lines = [f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]:<{widths[2]}}  {'ratio':>8}",
             "  ".join("-" * w for w in widths) + "  " + "-" * 8]
    for name, figure, baseline, ratio in rows:
        lines.append(f"{name:<{widths[0]}}  {figure:<{widths[1]}}  {baseline:<{widths[2]}}  {ratio:>8.3g}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=8.0, help="length of the long session (default 8)")
    args = parser.parse_args()
    # Set before the benchmarks (imported below) load gRPC: its connection notices would clutter the table.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    log.configure("warning")
    started = time.monotonic()
    rows: list[Row] = []
    for name, part in (("vehicle CAN decode", _vehicle_rows), ("SWCAN invoice transfer", _swcan_rows),
                       ("plug-in to first paid step", _first_payment_rows),
                       ("long session", lambda: _long_session_rows(args.hours))):
        print(f"running: {name} ...", flush=True)
        rows += part()
    print()
    print("\n".join(table(rows)))
    print(f"\n(all benchmarks took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
