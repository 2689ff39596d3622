"""Ambient light: BH1750 and VEML7700 drivers on the unix port against the simulated parts, 0 .. 120 000 lx.

What an installer checks: the reading follows the light from night to full sun
(auto-ranging), saturation is flagged rather than passed off as a value, and a
sensor that disappears or freezes is reported and comes back by itself.
"""

from __future__ import annotations

import pytest
from test_sensors_support import FirmwareRepl, board_with, virtual_parts

FAULT_MISSING, FAULT_BUS, FAULT_STUCK, FAULT_RANGE = 0x01, 0x02, 0x04, 0x08

BOARD = board_with(
    "esp32-devkitc",
    sensors=[
        {"type": "bh1750", "bus": "i2c0", "address": 0x23},
        {"type": "veml7700", "bus": "i2c0", "address": 0x10},
    ],
)

SETUP = """
import time
from machine import I2C, Pin
from lanterne.sensors.light import BH1750, VEML7700
i2c = I2C(0, scl=Pin(22), sda=Pin(21))

def read(s):
    # what an application does: sample, and when the driver re-ranges, come back after settle_ms
    for _ in range(8):
        if s.sample():
            return [s.millilux, s.range, s.fault]
        if s.fault and not s.present:
            break
        time.sleep_ms(s.settle_ms + 2)
    return [None, s.range, s.fault]
"""

LEVELS = [0.8, 12.0, 250.0, 3000.0, 18000.0, 60000.0, 120000.0]


@pytest.mark.parametrize("driver", ["BH1750", "VEML7700"])
def test_follows_the_light_from_night_to_full_sun(driver):
    with virtual_parts(BOARD) as hal:
        with FirmwareRepl(SETUP + f"s = {driver}(i2c)", hal=hal) as fw:
            ranges = set()
            for lux in LEVELS:
                hal.world.set(illuminance_lx=lux)
                fw.run("time.sleep_ms(s.RANGES[s.range][3])")  # the light changed: one integration to see it
                millilux, rng, fault = fw("read(s)")
                assert fault == 0, (driver, lux, fault)
                assert millilux is not None
                assert abs(millilux / 1000 - lux) <= max(0.5, 0.02 * lux), (driver, lux, millilux, rng)
                ranges.add(rng)
            assert len(ranges) >= 3  # it really auto-ranged
            # and back down to dusk light after full sun
            hal.world.set(illuminance_lx=20.0)
            fw.run("time.sleep_ms(s.RANGES[s.range][3])")
            millilux, rng, fault = fw("read(s)")
            assert fault == 0 and abs(millilux / 1000 - 20.0) <= 0.5 and rng == 0


@pytest.mark.parametrize("driver", ["BH1750", "VEML7700"])
def test_saturation_is_flagged(driver):
    with virtual_parts(BOARD, illuminance_lx=250_000.0) as hal:
        with FirmwareRepl(SETUP + f"s = {driver}(i2c)", hal=hal) as fw:
            millilux, rng, fault = fw("read(s)")
            assert fault == FAULT_RANGE
            assert millilux >= 115_000_000  # kept: the light is at least that


@pytest.mark.parametrize("driver,name", [("BH1750", "bh1750"), ("VEML7700", "veml7700")])
def test_missing_nack_stuck_and_recovery(driver, name):
    with virtual_parts(BOARD, illuminance_lx=40_000.0) as hal:
        w = hal.world
        w.inject(name, "missing")
        with FirmwareRepl(SETUP + f"s = {driver}(i2c, stuck_cycles=3)", hal=hal) as fw:
            assert fw("s.sample(), s.fault") == [False, FAULT_MISSING]
            w.clear(name)
            assert fw("read(s)")[2] == 0
            last = fw("s.millilux")
            w.inject(name, "nack")
            assert fw("s.sample(), s.fault, s.millilux") == [False, FAULT_BUS, last]
            w.clear(name)
            assert fw("read(s)")[2] == 0
            # frozen data register: three conversions later the driver calls it stuck
            w.inject(name, "stuck")
            fw.run(
                "r = []\nfor _ in range(6):\n    time.sleep_ms(s.RANGES[s.range][3] + 5)\n    s.sample()\n    r.append(s.fault)"
            )
            assert fw("r")[-1] == FAULT_STUCK
            w.clear(name)
            fw.run("time.sleep_ms(s.RANGES[s.range][3] + 5)")
            assert fw("read(s)")[2] == 0


def test_darkness_is_not_stuck():
    """0 counts for hours is a dark night, not a frozen sensor."""
    with virtual_parts(BOARD, illuminance_lx=0.0) as hal:
        with FirmwareRepl(SETUP + "s = BH1750(i2c, stuck_cycles=2)", hal=hal) as fw:
            fw.run(
                "r = []\nfor _ in range(3):\n    r.append(read(s))\n    time.sleep_ms(s.RANGES[s.range][3] + 5)"
            )
            assert all(x == [0, 0, 0] for x in fw("r"))
