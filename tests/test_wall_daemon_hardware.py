"""The optional Pi hardware: pilot/proximity ADC windows, the MCP3008 and the SWCAN relay.

gpiozero's MockFactory stands in for the Pi: a small MCP3008 model answers on the mock SPI
pins, and the relay's pin state is read back from the mock pin.
"""

from __future__ import annotations

import sys

import pytest

from distributedcharge.daemon import StartupError
from test_wall_daemon import Rig, rig, run
from distributedcharge.relay import RelayError, SwcanRelay
from wallunit.hardware import AdcWindows, HardwareError, PlugAdc

WINDOWS = AdcWindows(plugged_min=0, plugged_max=511, unplugged_min=768, unplugged_max=1023)
NO_CABLE, CABLE_IN, IN_BETWEEN = 900, 200, 640


def test_adc_windows_say_plugged_unplugged_or_nothing():
    assert [WINDOWS.classify(raw) for raw in (0, 511, 512, 767, 768, 1023)] == [True, True, None, None, False, False]
    inverted = AdcWindows(plugged_min=600, plugged_max=1023, unplugged_min=0, unplugged_max=300)
    assert [inverted.classify(raw) for raw in (900, 100, 450)] == [True, False, None]
    assert [WINDOWS.classify(raw) for raw in (-1, 1024, True, 3.5, None)] == [None] * 5


def test_without_gpiozero_the_devices_refuse_with_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gpiozero", None)
    with pytest.raises(RelayError, match=r"pi extra"):
        SwcanRelay(16)
    with pytest.raises(HardwareError, match=r"pi extra"):
        PlugAdc(0, 0, WINDOWS)


def test_daemon_with_the_relay_enabled_and_no_gpiozero_refuses_to_start(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gpiozero", None)

    async def scenario() -> None:
        with pytest.raises(StartupError, match=r"needs gpiozero"):
            async with rig(tmp_path, relay={"enabled": True}):
                pass

    run(scenario())


gpiozero = pytest.importorskip("gpiozero")
from gpiozero.pins.mock import MockFactory, MockSPIDevice  # noqa: E402


class Mcp3008Model(MockSPIDevice):
    """The chip's side of an MCP3008 single-ended read: start bit, SGL, 3 channel bits, then
    a null bit and the 10-bit result."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.inputs = [0] * 8

    def on_bit(self) -> None:
        bits = self.rx_buf
        if 1 in bits and len(bits) - bits.index(1) == 5:
            start = bits.index(1)
            channel = bits[start + 2] << 2 | bits[start + 3] << 1 | bits[start + 4]
            self.tx_word(self.inputs[channel], 12)


@pytest.fixture
def pins(monkeypatch):
    factory = MockFactory()
    # gpiozero's software SPI takes its pins from the default factory.
    monkeypatch.setattr(gpiozero.Device, "pin_factory", factory)
    chip = Mcp3008Model(11, 10, 9, 8, pin_factory=factory)
    yield factory, chip
    chip.close()
    factory.close()


def test_plug_adc_reads_its_channel_and_classifies_the_reading(pins):
    factory, chip = pins
    adc = PlugAdc(channel=3, spi_device=0, windows=WINDOWS, pin_factory=factory)
    try:
        chip.inputs[3] = CABLE_IN
        assert (adc.read_raw(), adc.plugged()) == (CABLE_IN, True)
        chip.inputs[3] = NO_CABLE
        assert adc.plugged() is False
        chip.inputs[3] = IN_BETWEEN
        assert adc.plugged() is None
    finally:
        adc.close()


def test_relay_starts_open_and_follows_connect_and_disconnect(pins):
    factory, _ = pins
    relay = SwcanRelay(16, pin_factory=factory)
    assert factory.pin(16).state is False and not relay.closed
    assert relay.set(True) and not relay.set(True)
    assert factory.pin(16).state is True and relay.closed
    relay.close()
    assert factory.pin(16).state is False
    inverted = SwcanRelay(20, active_high=False, pin_factory=factory)
    assert factory.pin(20).state is True
    inverted.set(True)
    assert factory.pin(20).state is False
    inverted.close()


def test_daemon_needs_the_adc_to_agree_before_selling_and_the_relay_follows_the_session(tmp_path, pins):
    factory, chip = pins
    chip.inputs[0] = NO_CABLE

    async def heartbeats(r: Rig, count: int) -> None:
        answered = r.twc.slave.counters.heartbeats_answered
        await r.until(lambda: r.twc.slave.counters.heartbeats_answered >= answered + count, "heartbeats")

    async def scenario() -> None:
        async with rig(tmp_path, adc={"enabled": True, "poll_s": 0.1}, relay={"enabled": True}) as r:
            relay = factory.pin(16)
            r.twc.plug()
            await r.until(lambda: r.daemon.plug._twc, "the TWC to report the car")
            await heartbeats(r, 3)
            assert r.daemon.policy.session is None and relay.state is False
            chip.inputs[0] = CABLE_IN
            session_id = await r.session_started()
            assert relay.state is True
            # The TWC still sees the car, but only the pilot can tell the cable is out.
            chip.inputs[0] = NO_CABLE
            await r.until(lambda: r.daemon.policy.session is None, "the ADC's unplug to end the session")
            assert relay.state is False and r.session_row(session_id)["ended_at"]

    run(scenario())
