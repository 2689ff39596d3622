"""A slice of the battery bin's simulated week (host_tools/reliability/battery_week.py; the whole
week is `python -m host_tools.reliability.battery_week`, docs/battery.md): six hours at a 10-minute
period over MQTT in ~20 s of real time, a lid alarm and a power cut while asleep on the way."""

from __future__ import annotations

import pytest

from host_tools.reliability.battery_week import run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_six_hours_every_reading_delivered_once_through_an_alarm_and_a_power_cut():
    rep = run(days=0.25, period_s=600, speedup=100_000.0, cut_at=0.6, alarm_at=0.3)
    assert rep["readings_missing"] == 0 and rep["readings_duplicated"] == 0, rep
    assert rep["dropped"] == 0
    assert rep["readings_stored"] >= 36  # one reading per 10 minutes (and one per alarm edge, per cold start)
    assert rep["readings_delivered"] + rep["readings_in_store_not_sent"] == rep["readings_stored"]
    assert rep["cold_starts"] == 2  # power-on and the power cut: every other wake ran on its RTC state
    assert rep["rtc_wakes"] >= 34
    # batched: a frame an hour (send_period_s), plus the cold starts and the alarm's two edges
    assert 6 <= rep["send_wakes"] <= 12, rep
    assert rep["alarm_uplink_s"] is not None and rep["alarm_uplink_s"] < 5


def _lorawan_firmware() -> bool:
    from host_tools.runtime.paths import FIRMWARE

    return (FIRMWARE / "lanterne" / "transport" / "lorawan.py").exists()


@pytest.mark.skipif(not _lorawan_firmware(), reason="the firmware's LoRaWAN link is not in this build")
def test_six_hours_over_lorawan_one_join_every_reading_once():
    # The battery bin itself: the RAK3172 twin, the network server, the uplink service and its
    # delivery ledger on the world's clock. The modem keeps its session across wakes and the power
    # cut: one join for the whole run.
    rep = run(days=0.25, period_s=600, speedup=100_000.0, transport="lorawan", cut_at=0.6, alarm_at=0.3)
    assert rep["joins"] == 1, rep
    assert rep["readings_missing"] == 0 and rep["readings_duplicated"] == 0, rep
    assert rep["readings_delivered"] + rep["readings_in_store_not_sent"] == rep["readings_stored"] >= 36
    assert rep["cold_starts"] == 2 and rep["rtc_wakes"] >= 34
    assert rep["alarm_uplink_s"] is not None and rep["alarm_uplink_s"] < 5
