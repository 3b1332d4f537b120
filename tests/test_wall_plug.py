import pytest

from wallunit.plug import PlugDetector, PluggedIn, PlugTiming, Unplugged

CHARGING, READY, PLUGGED_NO_CHARGE, BUSY = 0x01, 0x00, 0x03, 0x05


def feed(detector: PlugDetector, start: float, end: float, state: int | None = None,
         adc: bool | None = None, step: float = 0.5) -> list:
    events, now = [], start
    while now <= end:
        events += detector.observe(now, twc_state=state, adc_plugged=adc)
        now += step
    return events


def test_plug_is_reported_after_three_steady_seconds():
    detector = PlugDetector()
    assert feed(detector, 0.0, 2.5, CHARGING) == []
    assert detector.observe(3.0, CHARGING) == [PluggedIn(3.0)]
    assert feed(detector, 3.5, 10.0, CHARGING) == []


def test_flicker_restarts_the_three_seconds():
    detector = PlugDetector()
    feed(detector, 0.0, 2.5, CHARGING)
    detector.observe(2.6, READY)
    assert feed(detector, 3.0, 5.5, PLUGGED_NO_CHARGE) == []
    assert detector.observe(6.0, PLUGGED_NO_CHARGE) == [PluggedIn(6.0)]


def test_unplug_then_fifteen_quiet_seconds_before_a_new_plug_counts():
    detector = PlugDetector(PlugTiming(unplug_confirm_s=0.0))
    feed(detector, 0.0, 3.0, CHARGING)
    assert detector.observe(10.0, READY) == [Unplugged(10.0)]
    assert feed(detector, 12.0, 24.5, CHARGING) == []
    assert detector.observe(25.0, CHARGING) == [PluggedIn(25.0)]


def test_a_short_ready_blip_does_not_end_the_session():
    detector = PlugDetector()
    feed(detector, 0.0, 3.0, CHARGING)
    assert feed(detector, 4.0, 8.0, READY) == []  # 4 s < the 5 s unplug confirmation
    assert feed(detector, 8.5, 20.0, CHARGING) == []
    assert detector.plugged
    assert feed(detector, 21.0, 26.0, READY) == [Unplugged(26.0)]


def test_busy_and_unknown_states_carry_no_plug_information():
    detector = PlugDetector()
    feed(detector, 0.0, 3.0, CHARGING)
    assert feed(detector, 3.5, 60.0, BUSY) == []
    assert feed(detector, 60.5, 120.0, 0x0F) == []
    assert detector.plugged


def test_tick_reports_the_plug_even_without_new_readings():
    detector = PlugDetector()
    detector.observe(0.0, CHARGING)
    assert detector.tick(2.0) == []
    assert detector.tick(3.0) == [PluggedIn(3.0)]


def test_adc_must_confirm_the_plug_and_decides_the_unplug():
    detector = PlugDetector(use_adc=True)
    assert feed(detector, 0.0, 5.0, CHARGING, adc=False) == []
    events = feed(detector, 5.5, 9.0, CHARGING, adc=True)
    assert events == [PluggedIn(8.5)]
    assert feed(detector, 9.5, 30.0, READY, adc=True) == []  # 00 "may or may not be plugged"
    assert feed(detector, 30.5, 36.0, READY, adc=False) == [Unplugged(35.5)]


def test_garbage_state_is_refused():
    detector = PlugDetector()
    for bad in (-1, 256, "01", True):
        with pytest.raises(ValueError):
            detector.observe(0.0, bad)
    assert not detector.plugged
