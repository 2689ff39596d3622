"""A virtual street light on its own: on at simulated dusk, dimmed at the night step, photocell without clock."""

from __future__ import annotations

import datetime
import time

import pytest

from host_tools.runtime import firmware_module

pytestmark = pytest.mark.integration

LYON = (45.764, 4.836)


def duty_percent(h):
    p = h.world.pwm(25)
    return 0 if p is None else round(p["duty_u16"] * 100 / 65535)


def wait_duty(h, predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate(duty_percent(h)):
            return duty_percent(h)
        time.sleep(0.1)
    pytest.fail(f"lamp never {what} (duty {duty_percent(h)} %); board said:\n{h.console()[-1500:]}")


def lamp_config(**extra):
    cfg = {"device": "light-1", "site": "lyon", "broker": "mqtt://127.0.0.1:9", "lat": LYON[0], "lon": LYON[1],
           "timezone_min": 60, "status_period_s": 3600}
    cfg.update(extra)
    return cfg


def civil_dusk_utc(day: datetime.date) -> int:
    sun = firmware_module("sun")
    state, _rise, dusk = sun.events(day.year, day.month, day.day, LYON[0], LYON[1], sun.CIVIL)
    assert state == sun.NORMAL
    return int(datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc).timestamp()) + int(dusk)


def test_switches_on_at_simulated_dusk(virtual_boards):
    day = datetime.date(2026, 11, 26)
    dusk = civil_dusk_utc(day)
    (h,) = virtual_boards(1, config=lamp_config(), power_on=False)
    h.world.inject("bh1750", "missing")  # no photocell: the astronomical clock alone decides
    h.world.set_clock(dusk - 8)
    h.power_on()
    wait_duty(h, lambda d: d == 0, 8, "off before dusk")
    on = wait_duty(h, lambda d: d >= 95, 20, "on after dusk")
    assert h.world.now() >= dusk  # not before civil dusk
    assert on >= 95


def test_dims_at_the_night_step(virtual_boards):
    # 26 Nov: CET, UTC+1 -> the 23:00 local step is at 22:00 UTC
    step = int(datetime.datetime(2026, 11, 26, 22, 0, tzinfo=datetime.timezone.utc).timestamp())
    (h,) = virtual_boards(1, config=lamp_config(), power_on=False)
    h.world.inject("bh1750", "missing")
    h.world.set_clock(step - 8)
    h.power_on()
    wait_duty(h, lambda d: d >= 95, 10, "fully on before 23:00")
    wait_duty(h, lambda d: 45 <= d <= 55, 20, "dimmed to 50 % at 23:00")
    assert h.world.now() >= step


def test_follows_the_photocell_when_the_clock_is_unsynced(virtual_boards):
    (h,) = virtual_boards(1, config=lamp_config(), power_on=False, world_values={"link_up": False, "illuminance_lx": 3})
    h.power_on()
    wait_duty(h, lambda d: d >= 95, 15, "on in the dark without a clock")
    h.world.set(illuminance_lx=40)  # inside the hysteresis band: stays on
    time.sleep(3)
    assert duty_percent(h) >= 95
    h.world.set(illuminance_lx=800)  # daylight: off
    wait_duty(h, lambda d: d == 0, 15, "off in daylight without a clock")
    h.world.set(illuminance_lx=2)
    wait_duty(h, lambda d: d >= 95, 15, "back on when dark again")
