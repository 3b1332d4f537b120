"""The benchmark harness plays a real session with the daemons' cores, and replays it faithfully."""

from __future__ import annotations

from fractions import Fraction

import pytest
import structlog

from benchmarks import session_cores


@pytest.fixture(autouse=True)
def default_logging():
    """Another test may leave structlog writing to a stream pytest has since closed."""
    structlog.reset_defaults()


def test_cores_sell_and_pay_for_the_energy_step_by_step(tmp_path):
    result = session_cores.play(0.1, checkpoint_every_s=120, record_dir=tmp_path)
    # Six minutes at 11 kW is about 1.1 kWh: one 25 Wh payment at a time, ahead of the meter.
    assert result.wall_meter_wh > 1000
    assert result.paid_msat == result.paid_steps * 2500
    paid_wh = result.paid_steps * 25
    assert result.wall_meter_wh - 25 <= paid_wh <= result.car_meter_wh + 110 + 25
    assert abs(result.wall_meter_wh - result.car_meter_wh) < result.plant_energy_wh * Fraction(1, 100)
    assert [c.paid_steps for c in result.checkpoints] == sorted(c.paid_steps for c in result.checkpoints)

    replays = session_cores.replay([("wall", tmp_path / "wall.pickles"), ("bare-car", tmp_path / "car.pickles")],
                                   tuple(c.tick for c in result.checkpoints))
    wall, bare_car = replays
    assert wall.digest == result.digests["wall"]  # the replay took every decision the session took
    assert bare_car.digest != result.digests["car"]  # a bare loop decides nothing
    assert len(wall.cpu_s_at) == len(result.checkpoints) and wall.peak_rss_kib_at[-1] > 0
