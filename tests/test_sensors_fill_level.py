"""Waste-bin fill level: ultrasonic drivers (trigger/echo and UART) on the unix port against the simulated bin.

What the city's waste team relies on: the level is right at any air temperature,
spurious echoes (lids, bags) do not move it, a reading outside the installer's
calibration is flagged (never clamped into 0..100 % silently), and a dead or
frozen sensor is reported, then used again once it answers.
"""

from __future__ import annotations

import pytest
from test_sensors_support import FirmwareRepl, board_with, part, virtual_parts

from host_tools.runtime import unix_port

FAULT_MISSING, FAULT_STUCK, FAULT_RANGE, FAULT_TIMEOUT, FAULT_NOISY = 0x01, 0x04, 0x08, 0x10, 0x20
EMPTY, FULL = 1100, 200

SETUP = f"""
from machine import Pin, UART
from lanterne.sensors.fill_level import UltrasonicFillLevel, UartFillLevel
ping = UltrasonicFillLevel(Pin(14, Pin.OUT), Pin(15, Pin.IN), empty_mm={EMPTY}, full_mm={FULL}, gap_ms=0)

def cycle(s):
    ok = s.sample()
    return [ok, s.distance_mm, s.level_permille, s.fault]
"""


def level_of(distance):
    return (EMPTY - distance) * 1000 / (EMPTY - FULL)


def test_level_at_any_air_temperature():
    with virtual_parts("olimex-esp32-poe") as hal:
        with FirmwareRepl(SETUP, hal=hal) as fw:
            for temp in (-15.0, 20.0, 38.0):
                for distance in (260.0, 650.0, 1080.0):
                    hal.world.set(temperature_c=temp, distance_mm=distance)
                    fw.run(f"ping.set_temperature({int(temp * 100)})")
                    ok, mm, permille, fault = fw("cycle(ping)")
                    assert ok and fault == 0
                    assert abs(mm - distance) <= 0.004 * distance + 1, (temp, distance, mm)
                    assert abs(permille - level_of(distance)) <= 5
            # without the air temperature (20 degC assumed) a hot day reads several % long:
            # that is what the BME280 temperature fixes
            hal.world.set(temperature_c=38.0, distance_mm=1000.0)
            fw.run("ping.set_temperature(2000)")
            ok, mm, _, _ = fw("cycle(ping)")
            assert mm < 1000 * 0.98


def test_twenty_percent_spurious_echoes_stay_within_three_percent():
    with virtual_parts(
        "olimex-esp32-poe", distance_mm=640.0, echo_outlier_ratio=0.2, temperature_c=12.0
    ) as hal:
        sensor = part(hal, "ultrasonic")
        with FirmwareRepl(SETUP + "ping.set_temperature(1200)", hal=hal) as fw:
            fw.run("r = [cycle(ping) for _ in range(40)]")
            results = fw("r")
        truth = level_of(640.0)
        reported = [r for r in results if r[0]]
        assert len(reported) >= 38  # a rare cycle may be too noisy to report: then it says so
        for _, mm, permille, fault in reported:
            assert fault == 0
            assert abs(permille - truth) <= 30, (permille, truth)  # 3 % of the bin
            assert abs(mm - 640) <= 0.03 * 640
        for ok, _, _, fault in results:
            assert ok or fault in (FAULT_NOISY, FAULT_TIMEOUT)
        assert sensor.outliers >= 0.1 * sensor.pings  # the noise really was there


def test_outside_the_calibration_is_flagged_not_clamped():
    with virtual_parts("olimex-esp32-poe", temperature_c=20.0) as hal:
        with FirmwareRepl(SETUP, hal=hal) as fw:
            hal.world.set(
                distance_mm=1250.0
            )  # farther than the empty bottom: bin moved, lid open, sensor tilted
            ok, mm, permille, fault = fw("cycle(ping)")
            assert ok and fault == FAULT_RANGE and permille < -100
            hal.world.set(distance_mm=120.0)  # above the full line: overfull
            ok, mm, permille, fault = fw("cycle(ping)")
            assert ok and fault == FAULT_RANGE and permille > 1050
            hal.world.set(distance_mm=1100.0)  # exactly empty: in range
            ok, mm, permille, fault = fw("cycle(ping)")
            assert ok and fault == 0 and abs(permille) <= 5
            # recalibration by the installer applies at once
            fw.run("ping.calibrate(1300, 300)")
            ok, mm, permille, fault = fw("cycle(ping)")
            assert ok and fault == 0 and abs(permille - 200) <= 5


def test_missing_and_stuck_sensor_then_recovery():
    with virtual_parts("olimex-esp32-poe", distance_mm=800.0) as hal:
        w = hal.world
        with FirmwareRepl(SETUP + "ping.stuck_cycles = 3", hal=hal) as fw:
            w.inject("ultrasonic", "missing")
            ok, mm, permille, fault = fw("cycle(ping)")
            assert not ok and fault == FAULT_TIMEOUT
            w.clear("ultrasonic")
            assert fw("cycle(ping)")[0] is True
            w.inject("ultrasonic", "stuck")
            faults = [fw("cycle(ping)")[3] for _ in range(4)]
            assert faults[-1] == FAULT_STUCK
            w.clear("ultrasonic")
            w.set(distance_mm=500.0)
            ok, mm, permille, fault = fw("cycle(ping)")
            assert ok and fault == 0 and abs(mm - 500) <= 5


UART_SETUP = (
    SETUP
    + f"""
uart_level = UartFillLevel(UART(1, 9600), empty_mm={EMPTY}, full_mm={FULL}, stuck_cycles=2)
"""
)


def test_uart_module_auto_output():
    with virtual_parts("olimex-esp32-poe", distance_mm=720.0, echo_outlier_ratio=0.2) as hal:
        with FirmwareRepl(UART_SETUP, hal=hal) as fw:
            ok, mm, permille, fault = fw("cycle(uart_level)")
            assert ok and fault == 0 and abs(mm - 720) <= 5
            assert abs(permille - level_of(720)) <= 10
            hal.world.inject("ultrasonic_uart", "missing")
            assert fw("cycle(uart_level)")[0::3] == [False, FAULT_MISSING]
            hal.world.clear("ultrasonic_uart")
            assert fw("cycle(uart_level)")[0::3] == [True, 0]


def test_uart_module_on_request_and_stuck():
    board = board_with(
        "olimex-esp32-poe", sensors=[{"type": "ultrasonic_uart", "bus": "uart1", "mode": "triggered"}]
    )
    with virtual_parts(board, distance_mm=450.0) as hal:
        setup = UART_SETUP.replace("stuck_cycles=2)", "stuck_cycles=2, triggered=True, frame_ms=5)")
        with FirmwareRepl(setup.replace("ping = Ultrasonic", "# ping = Ultrasonic"), hal=hal) as fw:
            ok, mm, permille, fault = fw("cycle(uart_level)")
            assert ok and fault == 0 and abs(mm - 450) <= 5
            assert fw("uart_level.valid_echoes") == 9
            hal.world.inject("ultrasonic_uart", "stuck")
            faults = [fw("cycle(uart_level)")[3] for _ in range(3)]
            assert faults[-1] == FAULT_STUCK
            hal.world.clear("ultrasonic_uart")
            assert fw("cycle(uart_level)")[0::3] == [True, 0]


# -- the cluster median on its own (unix port, scripted echoes) --------------------------------
SCRIPTED = """
import json
from lanterne.sensors.fill_level import UltrasonicFillLevel

class Pin:
    def value(self, v=None):
        return 0

class Script:
    def __init__(self, widths):
        self.widths = widths
        self.i = 0
    def pulse(self, pin, level, timeout):
        w = self.widths[self.i % len(self.widths)]
        self.i += 1
        return w

def run(widths):
    s = UltrasonicFillLevel(Pin(), Pin(), empty_mm=1100, full_mm=200, gap_ms=0, pulse=Script(widths).pulse)
    ok = s.sample()
    return [ok, s.distance_mm, s.fault, s.agreeing_echoes]
"""


@pytest.mark.parametrize(
    "widths,expect",
    [
        # 9 echoes at 20 degC: 5800 us is ~996 mm; spurious ones scattered nearer and farther
        ([5800, 5801, 1200, 5799, 5802, 9000, 5800, 2500, 5803], 996),
        # only 4 of 9 agree, the 5 others disagree among themselves: the contents still win
        ([5800, 1500, 5802, 2400, 3300, 5801, 7700, 4100, 5799], 996),
        # lost echoes (timeouts) are skipped, not averaged in
        ([5800, -1, 5801, -2, 5800, 5802, -1, 5799, 5800], 996),
    ],
)
def test_densest_cluster_wins(widths, expect):
    ok, mm, fault, agreeing = unix_port.run_json(SCRIPTED + f"print(json.dumps(run({widths})))")
    assert ok and fault == 0 and abs(mm - expect) <= 2


def test_no_agreement_is_noisy_and_no_echo_is_timeout():
    noisy = unix_port.run_json(
        SCRIPTED + "print(json.dumps(run([1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000])))"
    )
    assert noisy[0] is False and noisy[2] == FAULT_NOISY
    silent = unix_port.run_json(SCRIPTED + "print(json.dumps(run([-2])))")
    assert silent[0] is False and silent[2] == FAULT_TIMEOUT


def test_speed_of_sound_approximation_matches_physics():
    from host_tools.emulator.devices.fill_level import speed_of_sound

    code = SCRIPTED + (
        "s = UltrasonicFillLevel(Pin(), Pin(), empty_mm=1100, full_mm=200, gap_ms=0, pulse=Script([1]).pulse)\n"
        "out = []\n"
        "for t in range(-30, 55, 5):\n"
        "    s.set_temperature(t * 100)\n"
        "    out.append([t, s.distance_of(10000)])\n"
        "print(json.dumps(out))"
    )
    for t, mm in unix_port.run_json(code):
        exact = 10000e-6 * speed_of_sound(t) / 2 * 1000
        assert abs(mm - exact) <= 0.004 * exact, (t, mm, exact)


def test_asyncio_cycle_gives_the_same_answer():
    code = SCRIPTED + (
        "import sys\n"
        "sys.path.append('.frozen')  # asyncio is frozen into the unix port; unix_port.run's MICROPYPATH omits it\n"
        "import asyncio\n"
        "s = UltrasonicFillLevel(Pin(), Pin(), empty_mm=1100, full_mm=200, gap_ms=1,\n"
        "                        pulse=Script([5800, 5801, 1200, 5799, 5802, 9000, 5800, 2500, 5803]).pulse)\n"
        "ok = asyncio.run(s.sample_async())\n"
        "print(json.dumps([ok, s.distance_mm, s.fault, s.valid_echoes]))"
    )
    assert unix_port.run_json(code) == [True, 996, 0, 9]
