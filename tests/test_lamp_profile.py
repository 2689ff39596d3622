"""Lamp profile (firmware/lanterne/lamp_profile.py): the schedule a street light keeps on its own.

Pure-function cases on CPython, the same module on the unix port for days of
simulated time, and the profile driving the lamp driver and photocell of a virtual
lamp board (times passed in, so no test waits for dusk).
"""

from __future__ import annotations

import calendar
import sys

import pytest
from test_sensors_support import FirmwareRepl, virtual_parts

from host_tools.runtime import paths, unix_port

sys.path.insert(0, str(paths.FIRMWARE))
from lanterne import lamp_profile, sun  # noqa: E402
from lanterne.lamp_profile import LampProfile  # noqa: E402

PARIS = (48.8566, 2.3522)


def utc(y, mo, d, h=0, mi=0) -> int:
    return calendar.timegm((y, mo, d, h, mi, 0))


def paris(**kw) -> LampProfile:
    return LampProfile(*PARIS, utc_offset_min=60, dst="eu", steps=((23 * 60, 5 * 60, 50),), **kw)


def civil(y, mo, d, lat=PARIS[0], lon=PARIS[1]):
    state, dawn, dusk = sun.events(y, mo, d, lat, lon, sun.CIVIL)
    return utc(y, mo, d) + dawn, utc(y, mo, d) + dusk


def test_on_at_dusk_off_at_dawn_dimmed_at_night():
    p = paris()
    dawn, dusk = civil(2024, 1, 15)
    assert p.level(dusk - 60) == 0 and p.reason == "day"
    assert p.level(dusk + 60) == 100 and p.reason == "schedule"
    assert p.level(utc(2024, 1, 15, 22, 30)) == 50 and p.reason == "dimmed"  # 23:30 CET
    assert p.level(utc(2024, 1, 16, 3, 59)) == 50  # 04:59 CET
    assert p.level(utc(2024, 1, 16, 4, 1)) == 100  # 05:01 CET: the step ended, still night
    next_dawn, _ = civil(2024, 1, 16)
    assert p.level(next_dawn - 60) == 100
    assert p.level(next_dawn + 60) == 0 and p.reason == "day"


def test_dimming_steps_follow_local_summer_time():
    p = paris()
    assert lamp_profile.utc_offset_s(utc(2024, 3, 31, 0, 59), 60, "eu") == 3600
    assert lamp_profile.utc_offset_s(utc(2024, 3, 31, 1, 0), 60, "eu") == 7200
    assert lamp_profile.utc_offset_s(utc(2024, 10, 27, 0, 59), 60, "eu") == 7200
    assert lamp_profile.utc_offset_s(utc(2024, 10, 27, 1, 0), 60, "eu") == 3600
    assert p.level(utc(2024, 7, 1, 21, 15)) == 50  # 23:15 CEST
    assert p.level(utc(2024, 1, 15, 21, 15)) == 100  # 22:15 CET


def test_photocell_override_with_hysteresis():
    p = paris(photocell_on_lx=30, photocell_off_lx=60, photocell_window_min=60)
    dawn, dusk = civil(2024, 1, 15)
    # a dark evening: on before the astronomical dusk
    assert p.level(dusk - 30 * 60, lux=10) == 100 and p.reason == "photocell"
    # middle of the night, the lamp lights its own photocell: stays on
    assert p.level(utc(2024, 1, 15, 20, 0), lux=500) == 100 and p.reason == "schedule"
    # a bright morning: off before the astronomical dawn
    next_dawn, _ = civil(2024, 1, 16)
    assert p.level(next_dawn - 20 * 60, lux=200) == 0 and p.reason == "photocell"
    # a storm at noon: on; between the thresholds it stays on; only clear light switches off
    noon = utc(2024, 1, 16, 11, 0)
    assert p.level(noon, lux=12) == 100 and p.reason == "photocell"
    assert p.level(noon + 60, lux=45) == 100
    assert p.level(noon + 120, lux=70) == 0 and p.reason == "day"
    assert p.level(noon + 180, lux=45) == 0


def test_failsafe_without_clock_or_site():
    p = paris()
    assert p.level(None, lux=5) == 100 and p.reason == "failsafe-photocell"
    assert p.level(None, lux=45) == 100  # hysteresis holds
    assert p.level(None, lux=500) == 0 and p.reason == "failsafe-photocell"
    assert p.level(None, lux=None, contact=False) == 100 and p.reason == "failsafe-on"
    nowhere = LampProfile(failsafe_level=80)  # not provisioned with a site yet
    assert nowhere.level(utc(2024, 1, 15, 12, 0)) == 80 and nowhere.reason == "failsafe-on"
    assert nowhere.level(utc(2024, 1, 15, 12, 0), lux=400) == 0 and nowhere.reason == "failsafe-photocell"


def test_back_office_override():
    p = paris()
    noon = utc(2024, 1, 16, 11, 0)
    p.override(30, until=noon + 3600)
    assert p.level(noon) == 30 and p.reason == "override"
    assert p.level(noon + 1800, contact=False) == 30  # with a clock it runs out on its own
    assert p.level(noon + 3600) == 0 and p.reason == "day"
    p.override(60)
    assert p.level(None, lux=500, contact=True) == 60  # no clock: held while the back office is there
    assert p.level(None, lux=500, contact=False) == 0  # no clock, no contact: failsafe
    p.override(None)
    assert p.level(noon) == 0


def test_polar_night_and_midnight_sun():
    svalbard = LampProfile(78.2461, 15.4656, utc_offset_min=60)
    assert svalbard.level(utc(2024, 12, 21, 11, 0)) == 100 and svalbard.night is True
    assert svalbard.level(utc(2024, 6, 21, 23, 0)) == 0 and svalbard.night is False
    assert svalbard.level(utc(2024, 6, 21, 12, 0), lux=3) == 100  # a dark photocell still wins by day


def test_bad_profiles_are_refused():
    with pytest.raises(ValueError):
        LampProfile(*PARIS, dst="mars")
    with pytest.raises(ValueError):
        LampProfile(*PARIS, photocell_on_lx=60, photocell_off_lx=30)
    with pytest.raises(ValueError):
        LampProfile(*PARIS, steps=((1500, 60, 50),))


DAYS_SCRIPT = """
import json
from lanterne.lamp_profile import LampProfile
p = LampProfile(48.8566, 2.3522, utc_offset_min=60, dst="eu", steps=((23 * 60, 5 * 60, 50),))
start = {start}
changes = []
last = None
for i in range({steps}):
    t = start + i * {step}
    level = p.level(t, None, False)
    if level != last:
        changes.append([t, level])
        last = level
print(json.dumps(changes))
"""


def _changes_cpython(start, steps, step):
    p = paris()
    out, last = [], None
    for i in range(steps):
        t = start + i * step
        level = p.level(t, None, False)
        if level != last:
            out.append([t, level])
            last = level
    return out


def test_runs_for_days_without_the_back_office_on_the_unix_port():
    """Four days across the March summer-time change, a decision every 5 minutes, no contact at all."""
    start, step, steps = utc(2024, 3, 29, 12, 0), 300, 4 * 288
    on_board = unix_port.run_json(DAYS_SCRIPT.format(start=start, steps=steps, step=step))
    assert on_board == _changes_cpython(start, steps, step)  # same decisions as CPython
    levels = [level for _, level in on_board]
    assert levels[0] == 0 and levels.count(50) == 4  # every night dimmed once
    ons = [t for t, level in on_board if level == 100 and t > start]
    offs = [t for t, level in on_board if level == 0 and t > start]
    assert len(offs) == 4 and len(ons) >= 4
    for t in offs:  # each switch-off lies at civil dawn (to the decision step)
        y, mo, d = sun.civil_from_days(t // 86400)
        dawn, _ = civil(y, mo, d)
        assert 0 <= t - dawn < step
    for t, level in on_board:
        if level == 50:  # the step begins at 23:00 local, CET or CEST
            local = (t + lamp_profile.utc_offset_s(t, 60, "eu")) % 86400
            assert 23 * 3600 <= local < 23 * 3600 + step


LAMP_BOARD_SETUP = """
from machine import ADC, I2C, PWM, Pin
from lanterne.actuators.lamp import Lamp
from lanterne.lamp_profile import LampProfile
from lanterne.sensors.light import BH1750
import time
lamp = Lamp(PWM(Pin(25)), ramp_ms=0, current_adc=ADC(Pin(35)))
light = BH1750(I2C(0, scl=Pin(22), sda=Pin(21)))
profile = LampProfile(48.8566, 2.3522, utc_offset_min=60, dst="eu", steps=((23 * 60, 5 * 60, 50),))

def tick(now):
    # the application's loop, reduced: photocell -> profile -> lamp
    lux = None
    for _ in range(6):
        if light.sample():
            lux = light.lux
            break
        time.sleep_ms(light.settle_ms + 2)
    lamp.set(profile.level(now, lux if light.ok else None, False))
    lamp.update()
    return [lamp.level, profile.reason]
"""


def test_virtual_lamp_board_follows_dusk_steps_and_photocell():
    dawn, dusk = civil(2024, 1, 15)
    with virtual_parts("esp32-devkitc", illuminance_lx=400.0) as hal:
        w = hal.world

        def duty():
            pwm = w.pwm(25)
            return round(pwm["duty_u16"] / 65535 * 100) if pwm else 0

        with FirmwareRepl(LAMP_BOARD_SETUP, hal=hal) as fw:
            assert fw(f"tick({dusk - 3 * 3600})") == [0, "day"] and duty() == 0
            w.set(illuminance_lx=5.0)
            fw.run("time.sleep_ms(light.RANGES[light.range][3])")
            assert fw(f"tick({dusk + 60})") == [100, "schedule"] and duty() == 100
            assert fw(f"tick({utc(2024, 1, 15, 23, 10)})") == [50, "dimmed"] and duty() == 50
            # the clock is lost (no sync since a power cut): the photocell decides
            assert fw("tick(None)") == [100, "failsafe-photocell"] and duty() == 100
            w.set(illuminance_lx=2000.0)
            fw.run("time.sleep_ms(light.RANGES[light.range][3])")
            assert fw("tick(None)") == [0, "failsafe-photocell"] and duty() == 0
            # and no photocell either (it stopped answering): the lamp stays on
            w.inject("bh1750", "missing")
            assert fw("tick(None)") == [100, "failsafe-on"] and duty() == 100
