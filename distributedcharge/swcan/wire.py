"""How long a transfer occupies the 33.3 kbit/s SWCAN bus, bit for bit.

:func:`frame_bits` counts a classic base-format frame exactly: CRC-15 computed and bit
stuffing applied to the real identifier and data. :func:`isotp_frames` lets can-isotp
itself segment a payload (sender and receiver wired back to back in memory, no bus, no
sleeping) so the frames are the ones a real transfer puts on the wire.
:func:`transfer_seconds` adds the receiver's STmin the way the Linux isotp module spaces
consecutive frames, which is how the original DistributedCharge sends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import pairwise

import isotp

from distributedcharge.swcan.messages import ISOTP_CAR_TX_ID, ISOTP_WALL_TX_ID

SWCAN_BITRATE = 33_333
CRC15_POLYNOMIAL = 0x4599
# CRC delimiter, ACK slot, ACK delimiter, 7-bit end of frame, 3-bit intermission: never stuffed.
UNSTUFFED_TAIL_BITS = 13


@dataclass(frozen=True)
class Frame:
    can_id: int
    data: bytes

    @property
    def kind(self) -> str:
        """ISO-TP frame type from the PCI nibble: SF, FF, CF or FC."""
        return {0: "SF", 1: "FF", 2: "CF", 3: "FC"}.get(self.data[0] >> 4, "?") if self.data else "?"


def _crc15(bits: list[int]) -> int:
    crc = 0
    for bit in bits:
        feedback = bit ^ ((crc >> 14) & 1)
        crc = (crc << 1) & 0x7FFF
        if feedback:
            crc ^= CRC15_POLYNOMIAL
    return crc


def _bits(value: int, width: int) -> list[int]:
    return [(value >> shift) & 1 for shift in range(width - 1, -1, -1)]


def frame_bits(can_id: int, data: bytes) -> int:
    """Bits on the wire for a classic data frame with an 11-bit identifier, stuff bits included."""
    if not 0 <= can_id <= 0x7FF or len(data) > 8:
        raise ValueError("classic base frame needs an 11-bit id and at most 8 data bytes")
    # SOF, identifier, RTR, IDE, r0, DLC, data
    bits = [0] + _bits(can_id, 11) + [0, 0, 0] + _bits(len(data), 4)
    for byte in data:
        bits += _bits(byte, 8)
    bits += _bits(_crc15(bits), 15)
    stuffed = 0
    run_bit, run_length = -1, 0
    for bit in bits:
        if bit == run_bit:
            run_length += 1
        else:
            run_bit, run_length = bit, 1
        if run_length == 5:
            stuffed += 1
            # The stuff bit is the complement and starts the next run.
            run_bit, run_length = 1 - bit, 1
    return len(bits) + stuffed + UNSTUFFED_TAIL_BITS


def isotp_frames(payload: bytes, stmin: int, blocksize: int,
                 txid: int = ISOTP_WALL_TX_ID, rxid: int = ISOTP_CAR_TX_ID) -> list[Frame]:
    """The frames, in bus order, of one ISO-TP transfer without padding (as the original sends).

    ``stmin`` and ``blocksize`` are what the receiver advertises in its flow control; the
    sender is told to ignore the STmin so the segmentation costs no real time.
    """
    wire: list[Frame] = []
    to_receiver: deque[isotp.CanMessage] = deque()
    to_sender: deque[isotp.CanMessage] = deque()

    def link(inbox: deque[isotp.CanMessage], outbox: deque[isotp.CanMessage]):
        def rx() -> isotp.CanMessage | None:
            return inbox.popleft() if inbox else None

        def tx(message: isotp.CanMessage) -> None:
            wire.append(Frame(message.arbitration_id, bytes(message.data)))
            outbox.append(message)
        return rx, tx

    sender_rx, sender_tx = link(to_sender, to_receiver)
    receiver_rx, receiver_tx = link(to_receiver, to_sender)
    sender = isotp.TransportLayer(sender_rx, sender_tx, isotp.Address(
        isotp.AddressingMode.Normal_11bits, txid=txid, rxid=rxid), params={"override_receiver_stmin": 0})
    receiver = isotp.TransportLayer(receiver_rx, receiver_tx, isotp.Address(
        isotp.AddressingMode.Normal_11bits, txid=rxid, rxid=txid), params={"stmin": stmin, "blocksize": blocksize})
    sender.send(payload)
    # Each round moves at least one frame; a transfer needs at most one per 7 bytes plus flow controls.
    for _ in range(4 * len(payload) + 16):
        sender.process()
        receiver.process()
        if receiver.available():
            received = receiver.recv()
            if received != payload:
                raise RuntimeError("can-isotp delivered a different payload")
            return wire
    raise RuntimeError("ISO-TP transfer did not complete")


def stmin_seconds(stmin: int) -> float:
    """ISO 15765-2 STmin byte: 0-127 ms, or 0xF1-0xF9 for 100-900 us."""
    if 0xF1 <= stmin <= 0xF9:
        return (stmin - 0xF0) * 100e-6
    if 0 <= stmin <= 0x7F:
        return stmin / 1000
    raise ValueError(f"invalid STmin 0x{stmin:02X}")


def transfer_seconds(frames: list[Frame], stmin: int, bitrate: int = SWCAN_BITRATE) -> float:
    """Wire time of ``frames`` plus the sender's STmin pause between consecutive frames.

    Linux isotp starts the pause when the previous consecutive frame has left the bus and
    sends the frame after a flow control at once. Receiver turnaround is not modelled.
    """
    bits = sum(frame_bits(frame.can_id, frame.data) for frame in frames)
    kinds = [frame.kind for frame in frames]
    pauses = sum(1 for previous, current in pairwise(kinds) if previous == current == "CF")
    return bits / bitrate + pauses * stmin_seconds(stmin)
