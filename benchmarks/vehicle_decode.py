"""Vehicle-CAN decode speed: our table-driven decoder and reader against cantools.

cantools decodes the same frames from a small DBC written here by hand from the
reference tables (model3dbc's layouts for "2020", the 2025/2026 definitions for
"2025"), independently of ``distributedcharge.vehicle.signals``, so agreement between
the two is a real check of our table. Run with ``python -m benchmarks.vehicle_decode``.
"""

from __future__ import annotations

import random
import time
from fractions import Fraction
from typing import Iterable

import cantools
from cantools.database.errors import DecodeError

from distributedcharge.sim.model3 import Model3Emitter, Model3State
from distributedcharge.vehicle import signals
from distributedcharge.vehicle.reader import VehicleState
from distributedcharge.vehicle.signals import AcChargeState

_EVSE_VALUES = """\
VAL_ 541 CP_proximity 0 "CHG_PROXIMITY_SNA" 1 "CHG_PROXIMITY_DISCONNECTED" 2 "CHG_PROXIMITY_UNLATCHED" 3 "CHG_PROXIMITY_LATCHED" ;
VAL_ 541 CP_acChargeState 0 "AC_CHARGE_INACTIVE" 1 "AC_CHARGE_CONNECTED_CHARGE_BLOCKED" 2 "AC_CHARGE_STANDBY" 3 "AC_CHARGE_ENABLED" 4 "AC_CHARGE_ONBOARD_CHARGER_SHUTDOWN" 5 "AC_CHARGE_VEH_SHUTDOWN" 6 "AC_CHARGE_FAULT" ;
"""

_SHARED = """\
BO_ 516 ID204PCS_chgStatus: 8 PCS
 SG_ PCS_chgMainState : 0|4@1+ (1,0) [0|9] "" X

BO_ 658 ID292BMS_SOC: 8 BMS
 SG_ SOCUI292 : 10|10@1+ (0.1,0) [0|102.3] "%" X
 SG_ SOCave292 : 30|10@1+ (0.1,0) [0|102.3] "%" X

BO_ 708 ID2C4PCS_logging: 8 PCS
 SG_ PCS_logMessageSelect M : 0|5@1+ (1,0) [0|26] "" X
 SG_ PCS_chgPhAInputIrms m0 : 5|9@1+ (0.1,0) [0|51.1] "A" X
 SG_ PCS_chgPhBInputIrms m1 : 5|9@1+ (0.1,0) [0|51.1] "A" X
 SG_ PCS_chgPhCInputIrms m2 : 5|9@1+ (0.1,0) [0|51.1] "A" X
 SG_ PCS_chgInputL1NVrms m3 : 5|12@1+ (0.2,0) [0|819] "V" X
 SG_ PCS_chgInputL2NVrms m3 : 17|12@1+ (0.2,0) [0|819] "V" X
 SG_ PCS_chgPhManCurrentToDist m5 : 44|10@1+ (0.1,0) [0|100] "A" X

BO_ 978 ID3D2TotalChargeDischarge: 8 BMS
 SG_ TotalDischargeKWh3D2 : 0|32@1+ (0.001,0) [0|4294967.295] "kWh" X
 SG_ TotalChargeKWh3D2 : 32|32@1+ (0.001,0) [0|4294967.295] "kWh" X
"""

_DBC = {
    "2020": """\
VERSION ""

NS_ :

BS_:

BU_: CP PCS BMS UI X

BO_ 541 ID21DCP_evseStatus: 8 CP
 SG_ CP_proximity : 2|2@1+ (1,0) [0|3] "" X
 SG_ CP_pilot : 4|3@1+ (1,0) [0|7] "" X
 SG_ CP_pilotCurrent : 8|8@1+ (0.5,0) [0|127.5] "A" X
 SG_ CP_teslaSwcanState : 34|3@1+ (1,0) [0|6] "" X
 SG_ CP_digitalCommsEstablished : 37|1@1+ (1,0) [0|1] "" X
 SG_ CP_acChargeState : 53|3@1+ (1,0) [0|6] "" X

BO_ 612 ID264ChargeLineStatus: 8 PCS
 SG_ ChargeLineVoltage264 : 0|14@1+ (0.0333,0) [0|545.5539] "V" X
 SG_ ChargeLineCurrent264 : 14|9@1+ (0.1,0) [0|51.1] "A" X
 SG_ ChargeLinePower264 : 24|8@1+ (0.1,0) [0|25.5] "kW" X
 SG_ ChargeLineCurrentLimit264 : 32|10@1+ (0.1,0) [0|102.3] "A" X

BO_ 826 ID33AUI_rangeSOC: 8 UI
 SG_ UI_Range : 0|10@1+ (1,0) [0|1023] "mi" X
 SG_ UI_SOC : 48|7@1+ (1,0) [0|127] "%" X

BO_ 1010 ID3F2BMSCounters: 8 BMS
 SG_ BMSCountersIndex3F2 M : 0|3@1+ (1,0) [0|7] "" X
 SG_ BMStotalACcharge3F2 m0 : 8|32@1+ (0.001,0) [0|4294967.295] "kWh" X
 SG_ BMStotalDCcharge3F2 m1 : 8|32@1+ (0.001,0) [0|4294967.295] "kWh" X
 SG_ BMStotalRegenCharge3F2 m2 : 8|32@1+ (0.001,0) [0|4294967.295] "kWh" X
 SG_ BMStotalDriveDischarge3F2 m3 : 8|32@1+ (0.001,0) [0|4294967.295] "kWh" X

""" + _SHARED + "\n" + _EVSE_VALUES,
    "2025": """\
VERSION ""

NS_ :

BS_:

BU_: CP PCS BMS UI X

BO_ 541 ID21DCP_evseStatus: 8 CP
 SG_ CP_proximity : 2|2@1+ (1,0) [0|3] "" X
 SG_ CP_pilot : 4|3@1+ (1,0) [0|7] "" X
 SG_ CP_digitalCommsEstablished : 7|1@1+ (1,0) [0|1] "" X
 SG_ CP_pilotCurrent : 8|8@1+ (0.5,0) [0|127.5] "A" X
 SG_ CP_teslaSwcanState : 34|4@1+ (1,0) [0|8] "" X
 SG_ CP_acChargeState : 52|3@1+ (1,0) [0|6] "" X

BO_ 612 ID264ChargeLineStatus: 6 PCS
 SG_ ChargeLineVoltage264 : 0|14@1+ (0.033,0) [0|540.639] "V" X
 SG_ ChargeLineCurrent264 : 14|9@1+ (0.1,0) [0|51.1] "A" X
 SG_ ChargeLinePower264 : 24|8@1+ (0.1,0) [0|25.5] "kW" X
 SG_ ChargeLineCurrentLimit264 : 32|10@1+ (0.1,0) [0|102.3] "A" X

BO_ 826 ID33AUI_rangeSOC: 8 UI
 SG_ UI_Range : 0|10@1+ (1,0) [0|1023] "mi" X
 SG_ UI_SOC : 20|7@1+ (1,0) [0|127] "%" X

BO_ 1010 ID3F2BMSCounters: 8 BMS
 SG_ BMSCountersIndex3F2 M : 0|4@1+ (1,0) [0|15] "" X
 SG_ BMStotalACcharge3F2 m0 : 8|32@1+ (0.001,0) [0|4294967.295] "kWh" X
 SG_ BMStotalDCcharge3F2 m1 : 8|32@1+ (0.001,0) [0|4294967.295] "kWh" X
 SG_ BMStotalRegenCharge3F2 m2 : 8|32@1+ (0.001,0) [0|4294967.295] "kWh" X
 SG_ BMStotalDriveDischarge3F2 m3 : 8|32@1+ (0.001,0) [0|4294967.295] "kWh" X

""" + _SHARED + "\n" + _EVSE_VALUES,
}


def cantools_database(layout: str) -> cantools.database.can.Database:
    return cantools.database.load_string(_DBC[layout], "dbc")


def table_differences(layout: str) -> list[str]:
    """Where our table and the hand-written DBC disagree on a signal's bits or scale."""
    ours = signals.layout(layout)
    db = cantools_database(layout)
    problems = []
    for frame_id, message in ours.messages.items():
        theirs = {s.name: s for s in db.get_message_by_frame_id(frame_id).signals}
        for signal in message.all_signals():
            other = theirs.get(signal.name)
            if other is None:
                problems.append(f"{signal.name}: missing from the DBC")
                continue
            mine = (signal.start, signal.length, signal.signed, signal.scale)
            dbc = (other.start, other.length, other.is_signed, Fraction(repr(other.scale)))
            if mine != dbc:
                problems.append(f"{signal.name}: ours {mine}, DBC {dbc}")
    return problems


def decode_disagreements(layout: str, frames: Iterable[tuple[int, bytes]]) -> list[str]:
    """Frames on which our decoder and cantools disagree. Where we refuse a frame for an
    undefined value, cantools must show that value outside our value names."""
    ours = signals.layout(layout)
    db = cantools_database(layout)
    problems = []
    for frame_id, data in frames:
        try:
            theirs = db.decode_message(frame_id, data, decode_choices=False, scaling=False, allow_truncated=True)
        except DecodeError:
            theirs = None
        try:
            mine = ours.decode(frame_id, data)
        except signals.FrameError as exc:
            message = ours.messages[frame_id]
            undefined = theirs is not None and any(
                s.value_names is not None and s.name in theirs and theirs[s.name] not in s.value_names
                for s in message.all_signals())
            if not undefined:
                problems.append(f"0x{frame_id:03X} {data.hex()}: we refused ({exc}), cantools read {theirs}")
            continue
        if theirs is None:
            only_page = message_page_only(ours, frame_id, mine)
            if not only_page:
                problems.append(f"0x{frame_id:03X} {data.hex()}: cantools refused, we read {mine}")
        elif mine != theirs:
            problems.append(f"0x{frame_id:03X} {data.hex()}: ours {mine}, cantools {theirs}")
    return problems


def message_page_only(layout: signals.Layout, frame_id: int, decoded: dict[str, int]) -> bool:
    """True when a multiplexed frame's page is one neither side defines."""
    message = layout.messages[frame_id]
    return message.multiplexer is not None and list(decoded) == [message.multiplexer.name]


def session_frames(layout: str, seconds: int = 120) -> list[tuple[float, int, bytes]]:
    """What a charging car puts out on the ids the reader subscribes to."""
    emitter = Model3Emitter(layout)
    state = Model3State(plugged=True, latched=True, swcan_established=True,
                        ac_charge_state=AcChargeState.ENABLED, line_voltage=Fraction("239.7"),
                        charger_current=Fraction("31.9"), pilot_current=32, soc_percent=61)
    frames = []
    for step in range(seconds * 100):
        now = step / 100
        frames.extend((now, frame_id, data) for frame_id, data in emitter.frames_at(now, state))
    return frames


def random_frames(layout: str, count: int, seed: int = 42) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    ids = list(signals.layout(layout).messages)
    frames = []
    for _ in range(count):
        frame_id = rng.choice(ids)
        length = signals.layout(layout).messages[frame_id].length
        frames.append((frame_id, rng.randbytes(length)))
    return frames


def _frames_per_second(decode, frames, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        decode(frames)
        best = min(best, time.perf_counter() - started)
    return len(frames) / best


def run(seconds: int = 120) -> list[dict]:
    rows = []
    for layout in signals.GENERATIONS:
        timed = session_frames(layout, seconds)
        frames = [(frame_id, data) for _, frame_id, data in timed]
        ours = signals.layout(layout)
        db = cantools_database(layout)

        def our_decoder(batch):
            for frame_id, data in batch:
                ours.decode(frame_id, data)

        def our_reader(batch):
            state = VehicleState(layout)
            for at, frame_id, data in batch:
                state.feed(frame_id, data, at)

        def cantools_default(batch):
            for frame_id, data in batch:
                try:
                    db.decode_message(frame_id, data, allow_truncated=True)
                except DecodeError:
                    pass

        def cantools_raw(batch):
            for frame_id, data in batch:
                try:
                    db.decode_message(frame_id, data, decode_choices=False, scaling=False, allow_truncated=True)
                except DecodeError:
                    pass

        baseline = _frames_per_second(cantools_default, frames)
        disagreements = (table_differences(layout) + decode_disagreements(layout, frames)
                         + decode_disagreements(layout, random_frames(layout, 20_000)))
        for name, decoder, batch in (
            ("cantools decode_message (choices, scaling)", cantools_default, frames),
            ("cantools decode_message (raw)", cantools_raw, frames),
            ("our table decoder", our_decoder, frames),
            ("our VehicleState.feed", our_reader, timed),
        ):
            rate = baseline if decoder is cantools_default else _frames_per_second(decoder, batch)
            rows.append({
                "layout": layout,
                "decoder": name,
                "frames": len(batch),
                "frames_per_s": round(rate),
                "ratio_vs_cantools": round(rate / baseline, 2),
                "disagreements": len(disagreements),
            })
    return rows


def main() -> None:
    rows = run()
    print(f"{'layout':6} {'decoder':44} {'frames/s':>11} {'x cantools':>10} {'disagree':>8}")
    for row in rows:
        print(f"{row['layout']:6} {row['decoder']:44} {row['frames_per_s']:>11,} "
              f"{row['ratio_vs_cantools']:>10.2f} {row['disagreements']:>8}")


if __name__ == "__main__":
    main()
