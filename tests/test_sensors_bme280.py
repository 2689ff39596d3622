"""BME280: the firmware driver on the unix port against the simulated chip, cross-checked with Adafruit's driver.

- the datasheet's worked example (BMP280 datasheet 3.12: adc_T 519888 -> 25.08 degC,
  adc_P 415148 -> 100653.27 Pa) through the driver's integer compensation;
- Adafruit's CircuitPython driver (CPython, float compensation) and ours (unix port,
  integer compensation) on identical register contents agree within 0.01 degC,
  0.01 %RH and 0.01 hPa, for several climates, on a chip driven by Adafruit and on
  a chip driven by our firmware through the virtual board's HAL;
- the simulated chip behaves like the datasheet (status, reset, timing, resolution);
- faults: missing, NACKing, stuck; recovery without reboot.
"""

from __future__ import annotations

import pytest
from adafruit_bme280 import basic as adafruit_bme280
from test_sensors_support import FirmwareRepl, part, virtual_parts

from host_tools.bench.sensors import FAKES
from host_tools.emulator.devices.bme280 import DATASHEET_CALIBRATION, BME280Chip, calibration_bytes
from host_tools.emulator.world import World
from host_tools.runtime import unix_port

FAULT_MISSING, FAULT_BUS, FAULT_STUCK, FAULT_RANGE, FAULT_TIMEOUT = 0x01, 0x02, 0x04, 0x08, 0x10

CLIMATES = [
    # temperature degC, humidity %RH, pressure hPa
    (15.0, 55.0, 1013.25),
    (-25.0, 90.0, 960.0),
    (38.5, 12.0, 1045.0),
    (4.2, 99.0, 700.0),
    (22.0, 40.0, 1100.0),
]


class ChipBus:
    """busio.I2C look-alike for Adafruit's driver, in front of a simulated chip (or a frozen register image)."""

    def __init__(self, chip):
        self.chip = chip

    def try_lock(self):
        return True

    def unlock(self):
        pass

    def writeto(self, address, buffer, *, start=0, end=None):
        self.chip.write(bytes(buffer[start:end]))

    def readfrom_into(self, address, buffer, *, start=0, end=None):
        end = len(buffer) if end is None else end
        buffer[start:end] = self.chip.read(end - start)

    def writeto_then_readfrom(
        self, address, out, into, *, out_start=0, out_end=None, in_start=0, in_end=None
    ):
        self.writeto(address, out, start=out_start, end=out_end)
        self.readfrom_into(address, into, start=in_start, end=in_end)


class FrozenChip:
    """A register image that reads like the chip (auto-increment) and ignores writes: identical contents."""

    def __init__(self, image: bytes):
        self.regs = bytes(image)
        self.pointer = 0

    def write(self, data: bytes):
        if len(data) % 2:
            self.pointer = data[-1]

    def read(self, n: int) -> bytes:
        out = self.regs[self.pointer : self.pointer + n]
        self.pointer = min(0xFF, self.pointer + n)
        return out


def firmware_on_image(image: bytes, mode: str = "MODE_FORCED") -> dict:
    """Our driver on the unix port reading a register image (FakeI2C from the bench doubles)."""
    code = (
        FAKES
        + f"""
import json
from lanterne.sensors.bme280 import BME280, {mode}
b = BME280(FakeI2C(bytes.fromhex("{image.hex()}")), 0x76, mode={mode})
ok = b.read()
print(json.dumps(dict(ok=ok, fault=b.fault, t=b.temperature, h=b.humidity, p=b.pressure, hc=b.humidity_centi,
                      pa=b.pressure_pa, present=b.present)))
"""
    )
    return unix_port.run_json(code)


def adafruit_on(chip) -> tuple[float, float, float]:
    sensor = adafruit_bme280.Adafruit_BME280_I2C(ChipBus(chip), 0x76)
    return sensor.temperature, sensor.relative_humidity, sensor.pressure


def assert_agree(ours: dict, theirs: tuple[float, float, float]):
    t, h, p = theirs
    assert abs(ours["t"] / 100 - t) <= 0.01, (ours, theirs)
    assert abs(ours["h"] / 1024 - h) <= 0.01, (ours, theirs)
    assert abs(ours["p"] / 256 / 100 - p) <= 0.01, (ours, theirs)
    # the rounded payload units stay within the same tolerance
    assert abs(ours["hc"] / 100 - h) <= 0.01 and abs(ours["pa"] / 100 - p) <= 0.01


def test_datasheet_worked_example():
    tp, h1, h = calibration_bytes(DATASHEET_CALIBRATION)
    image = bytearray(256)
    image[0x88 : 0x88 + 24] = tp
    image[0xA1] = h1
    image[0xE1 : 0xE1 + 7] = h
    image[0xD0] = 0x60
    adc_t, adc_p = 519888, 415148
    image[0xF7:0xFD] = bytes([adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0xF) << 4,
                              adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0xF) << 4])  # fmt: skip
    image[0xFD:0xFF] = bytes([0x66, 0x00])
    ours = firmware_on_image(bytes(image))
    assert ours["ok"] and ours["fault"] == 0
    assert ours["t"] == 2508  # 25.08 degC
    assert abs(ours["p"] / 256 - 100653.27) < 0.5  # Pa


@pytest.mark.parametrize("climate", CLIMATES)
def test_crosscheck_with_adafruit_on_identical_registers(climate):
    t, h, p = climate
    now = [0.0]
    chip = BME280Chip(World(seed=7, temperature_c=t, humidity_pct=h, pressure_hpa=p))
    chip.clock = lambda: now[0]
    sensor = adafruit_bme280.Adafruit_BME280_I2C(ChipBus(chip), 0x76)
    sensor.mode = adafruit_bme280.MODE_NORMAL  # the chip converts on its own; no writes while we read
    now[0] += 1.0
    theirs = sensor.temperature, sensor.relative_humidity, sensor.pressure
    ours = firmware_on_image(chip.image(), mode="MODE_NORMAL")
    assert ours["ok"] and ours["fault"] == 0
    assert_agree(ours, theirs)
    # and both are the world's values, within the chip's resolution and noise
    assert (
        abs(ours["t"] / 100 - t) < 0.05
        and abs(ours["h"] / 1024 - h) < 0.2
        and abs(ours["pa"] / 100 - p) < 0.1
    )


SETUP = """
from machine import I2C, Pin
from lanterne.sensors import bme280
from lanterne.sensors.bme280 import BME280
i2c = I2C(0, scl=Pin(22), sda=Pin(21))
"""


def test_through_the_virtual_board_and_crosscheck():
    """Our driver samples the board's chip through the HAL; Adafruit's reads the very same registers after."""
    with virtual_parts("esp32-devkitc", temperature_c=27.3, humidity_pct=71.0, pressure_hpa=998.4) as hal:
        chip = part(hal, "bme280")
        with FirmwareRepl(SETUP + "b = BME280(i2c, 0x76)", hal=hal) as fw:
            assert fw("b.present, b.chip_id, b.fault") == [True, 0x60, 0]
            ok, fault, t, h, p, hc, pa = fw("b.sample(), b.fault, b.temperature, b.humidity, b.pressure, "
                                            "b.humidity_centi, b.pressure_pa")  # fmt: skip
            assert ok and fault == 0
            image = chip.image()
        theirs = adafruit_on(FrozenChip(image))
        assert_agree(dict(t=t, h=h, p=p, hc=hc, pa=pa), theirs)
        assert abs(t / 100 - 27.3) < 0.05 and abs(hc / 100 - 71.0) < 0.2 and abs(pa / 100 - 998.4) < 0.1
        # forced mode: one conversion per sample, then the chip sleeps again
        assert chip.conversions == 1 and chip.regs[0xF4] & 3 == 0


def test_settings_reach_the_chip_normal_mode_and_filter():
    with virtual_parts("esp32-devkitc", temperature_c=10.0) as hal:
        chip = part(hal, "bme280")
        setup = SETUP + (
            "b = BME280(i2c, 0x76, mode=bme280.MODE_NORMAL, oversampling_t=2, oversampling_p=16, "
            "oversampling_h=4, iir=4, standby_ms=0)"
        )
        with FirmwareRepl(setup, hal=hal) as fw:
            assert fw("b.fault") == 0
            # datasheet 5.4: osrs_t=010, osrs_p=101, normal=11; osrs_h=011; filter 4 = 010, t_sb 0.5 ms = 000
            assert chip.regs[0xF4] == 0b010_101_11
            assert chip.regs[0xF2] == 0b011
            assert chip.regs[0xF5] == 0b000_010_00
            fw.run("import time\nfor _ in range(30):\n    time.sleep_ms(5)\n    ok = b.sample()")
            assert fw("ok, b.fault") == [True, 0]
            assert abs(fw("b.temperature") / 100 - 10.0) < 0.05
            assert chip.conversions > 1  # normal mode converts by itself


def test_faults_missing_nack_stuck_and_recovery():
    with virtual_parts("esp32-devkitc", temperature_c=20.0) as hal:
        w = hal.world
        w.inject("bme280", "missing")
        with FirmwareRepl(SETUP + "b = BME280(i2c, 0x76, stuck_cycles=4)", hal=hal) as fw:
            # absent at start-up: flagged, nothing raised into the app
            assert fw("b.sample(), b.fault, b.present") == [False, FAULT_MISSING, False]
            w.clear("bme280")
            # plugged in later: found, reset and used without a reboot
            assert fw("b.sample(), b.fault, b.present") == [True, 0, True]
            # NACKs mid-life: a bus fault, the last good values stay
            last = fw("b.temperature")
            w.inject("bme280", "nack")
            assert fw("b.sample(), b.fault, b.temperature") == [False, FAULT_BUS, last]
            w.clear("bme280")
            assert fw("b.sample(), b.fault") == [True, 0]
            # stuck: the data registers freeze; after 4 identical cycles the driver says so
            w.inject("bme280", "stuck")
            results = [fw("b.sample(), b.fault") for _ in range(5)]
            assert results[-1] == [False, FAULT_STUCK]
            assert [True, 0] in results[:3]
            w.clear("bme280")
            w.set(temperature_c=21.0)
            assert fw("b.sample(), b.fault") == [True, 0]
            assert abs(fw("b.temperature") / 100 - 21.0) < 0.05
            assert fw("b.errors") >= 3


def test_out_of_range_is_flagged_not_clamped():
    image_chip = BME280Chip(World(seed=2, temperature_c=20.0, pressure_hpa=250.0))
    now = [0.0]
    image_chip.clock = lambda: now[0]
    image_chip.write(bytes([0xF2, 0x01, 0xF4, 0x25]))
    now[0] += 0.1
    ours = firmware_on_image(image_chip.image())
    assert ours["ok"] and ours["fault"] == FAULT_RANGE
    assert abs(ours["pa"] - 25000) < 50  # the value is kept


def test_wrong_chip_id_is_missing():
    image = bytearray(256)
    image[0xD0] = 0x55
    ours = firmware_on_image(bytes(image))
    assert ours["present"] is False and ours["fault"] == FAULT_MISSING and ours["ok"] is False


# -- the simulated chip itself (CPython, controlled clock) ------------------------------------
def test_simulated_chip_forced_timing_status_and_reset():
    now = [100.0]
    chip = BME280Chip(World(seed=3))
    chip.clock = lambda: now[0]

    def reg(r):
        chip.write(bytes([r]))
        return chip.read(1)[0]

    assert reg(0xD0) == 0x60
    assert chip.read(0) == b""
    assert reg(0xF7) == 0x80  # reset value: no conversion yet
    chip.write(bytes([0xF2, 0x01]))
    assert reg(0xF2) == 0x01
    chip.write(bytes([0xF4, 0b001_001_01]))  # forced, x1/x1 (+ humidity x1 latched now)
    assert reg(0xF3) & 0x08  # measuring
    now[0] += 0.0080  # datasheet 9.1 typical for x1/x1/x1: 1 + 2 + 2.5 + 2.5 = 8 ms
    assert reg(0xF3) & 0x08 == 0
    assert reg(0xF4) & 0x03 == 0  # back to sleep
    assert reg(0xF7) != 0x80 and chip.conversions == 1
    # x1 without filter: 16-bit resolution, the 4 lowest bits of the 20-bit words are 0
    chip.write(bytes([0xF9]))
    assert chip.read(1)[0] & 0xF0 == 0
    # soft reset: im_update for 2 ms, control registers back to 0, calibration kept
    chip.write(bytes([0xE0, 0xB6]))
    assert reg(0xF3) & 0x01 and reg(0xF4) == 0
    now[0] += 0.003
    assert reg(0xF3) & 0x01 == 0
    chip.write(bytes([0x88]))
    assert chip.read(2) == calibration_bytes(DATASHEET_CALIBRATION)[0][:2]


def test_simulated_chip_ignores_config_in_normal_mode():
    now = [0.0]
    chip = BME280Chip(World(seed=4))
    chip.clock = lambda: now[0]
    chip.write(bytes([0xF4, 0b001_001_11]))  # normal mode
    chip.write(bytes([0xF5, 0b101_100_00]))  # config while in normal mode: may be ignored (5.4.6)
    chip.write(bytes([0xF5]))
    assert chip.read(1)[0] == 0
    chip.write(bytes([0xF4, 0b001_001_00, 0xF5, 0b101_100_00]))  # sleep first: accepted
    chip.write(bytes([0xF5]))
    assert chip.read(1)[0] == 0b101_100_00


def test_sample_cycle_allocation_budget():
    """The issue's budget: <= 64 bytes allocated per BME280 sample cycle after warm-up (unix port, board heap)."""
    from host_tools.bench.sensors import measure

    rows = {r["driver"]: r for r in measure(n=50)}
    assert rows["bme280"]["alloc_bytes_per_cycle"] <= 64
    assert all(r["fault"] == 0 for r in rows.values())  # the healthy path was measured


def test_a_chip_that_lost_its_settings_is_set_up_again():
    """A brown-out resets the chip (sleep mode, humidity off): the driver notices and re-initialises it."""
    with virtual_parts("esp32-devkitc", humidity_pct=48.0) as hal:
        chip = part(hal, "bme280")
        with FirmwareRepl(SETUP + "b = BME280(i2c, 0x76)", hal=hal) as fw:
            assert fw("b.sample(), b.fault") == [True, 0]
            chip.write(bytes([0xE0, 0xB6]))  # the chip resets behind the driver's back
            assert fw("b.sample(), b.fault") == [False, FAULT_TIMEOUT]
            assert fw("b.sample(), b.fault") == [True, 0]
            assert abs(fw("b.humidity_centi") / 100 - 48.0) < 0.3
