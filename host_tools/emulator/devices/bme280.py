"""Simulated Bosch BME280 (BST-BME280-DS002): register map, soft reset, forced/normal timing, IIR, raw ADC words.

The chip holds a real calibration block (the T/P words of the Bosch BMP280 datasheet
worked example, section 3.12, and humidity words typical of production parts) and
turns the world's temperature, humidity and pressure into the raw 20/16-bit ADC
words a real chip would hold, by inverting the datasheet's compensation (the
double-precision formulas of section 8.1) with a bisection over the ADC code.

Behaviour a driver meets here as on the part:
- I2C writes are (register, value) pairs, reads auto-increment (6.2.1);
- `ctrl_hum` takes effect at the next `ctrl_meas` write; `config` writes are
  ignored in normal mode (5.4.4, 5.4.6);
- soft reset (0xB6 to 0xE0) restores the reset values and raises `im_update`
  for 2 ms while the NVM is copied (5.4.2, 5.4.4);
- forced mode converts once (status bit 3 `measuring` for the typical
  measurement time of 9.1), then the mode bits read back as sleep; normal mode
  converts every t_measure + t_standby;
- resolution is 16 + (osrs - 1) bits with the filter off, 20 bits with it on;
  a skipped channel reads 0x80000 / 0x8000; the IIR filter (3.4.4) smooths T and P;
- a small intrinsic noise (datasheet RMS noise, reduced by oversampling) moves the
  low bits like on a real part; `world.noise` adds relative noise on top.

Faults (world.inject("bme280", kind)): "missing"/"nack" -> no ACK; "stuck" -> the
data registers stop updating (the firmware sees identical raw words).
"""

from __future__ import annotations

import math
import random
import struct
import time

from host_tools.emulator.devices import I2CDevice
from host_tools.emulator.devices.parts import register

#: dig_T1..dig_P9 from the BMP280 datasheet worked example (3.12); humidity words of a production BME280.
DATASHEET_CALIBRATION = {
    "T1": 27504, "T2": 26435, "T3": -1000,
    "P1": 36477, "P2": -10685, "P3": 3024, "P4": 2855, "P5": 140, "P6": -7,
    "P7": 15500, "P8": -14600, "P9": 6000,
    "H1": 75, "H2": 362, "H3": 0, "H4": 313, "H5": 50, "H6": 30,
}  # fmt: skip

CHIP_ID = 0x60
_OSRS_FACTOR = (0, 1, 2, 4, 8, 16, 16, 16)
_FILTER_COEF = (1, 2, 4, 8, 16, 16, 16, 16)
_STANDBY_MS = (0.5, 62.5, 125.0, 250.0, 500.0, 1000.0, 10.0, 20.0)
#: RMS noise at x1 oversampling (datasheet 1.1/3.5 order of magnitude): degC, Pa, %RH
_NOISE = (0.005, 2.5, 0.02)


def calibration_bytes(cal: dict) -> tuple[bytes, int, bytes]:
    """The calibration as stored on the chip: (0x88..0x9F, 0xA1, 0xE1..0xE7)."""
    tp = struct.pack(
        "<HhhHhhhhhhhh", cal["T1"], cal["T2"], cal["T3"], cal["P1"], cal["P2"], cal["P3"],
        cal["P4"], cal["P5"], cal["P6"], cal["P7"], cal["P8"], cal["P9"],
    )  # fmt: skip
    h4, h5 = cal["H4"] & 0xFFF, cal["H5"] & 0xFFF
    h = struct.pack("<hB", cal["H2"], cal["H3"]) + bytes(
        [h4 >> 4, (h4 & 0x0F) | ((h5 & 0x0F) << 4), h5 >> 4, cal["H6"] & 0xFF]
    )
    return tp, cal["H1"], h


# -- datasheet 8.1 compensation (double precision): the chip's model of itself --------
def t_fine_of(cal, adc_t: float) -> float:
    var1 = (adc_t / 16384.0 - cal["T1"] / 1024.0) * cal["T2"]
    d = adc_t / 131072.0 - cal["T1"] / 8192.0
    return var1 + d * d * cal["T3"]


def pressure_of(cal, adc_p: float, t_fine: float) -> float:
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * cal["P6"] / 32768.0
    var2 = var2 + var1 * cal["P5"] * 2.0
    var2 = var2 / 4.0 + cal["P4"] * 65536.0
    var1 = (cal["P3"] * var1 * var1 / 524288.0 + cal["P2"] * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * cal["P1"]
    if var1 == 0:
        return 0.0
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = cal["P9"] * p * p / 2147483648.0
    var2 = p * cal["P8"] / 32768.0
    return p + (var1 + var2 + cal["P7"]) / 16.0


def humidity_of(cal, adc_h: float, t_fine: float) -> float:
    v = t_fine - 76800.0
    h = (adc_h - (cal["H4"] * 64.0 + cal["H5"] / 16384.0 * v)) * (
        cal["H2"] / 65536.0 * (1.0 + cal["H6"] / 67108864.0 * v * (1.0 + cal["H3"] / 67108864.0 * v))
    )
    return h * (1.0 - cal["H1"] * h / 524288.0)


def _invert(f, target: float, lo: int, hi: int, increasing: bool) -> int:
    """The ADC code in [lo, hi] whose compensated value is nearest `target` (f monotonic)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return lo if abs(f(lo) - target) <= abs(f(hi) - target) else hi


def raw_words(
    cal: dict, temperature_c: float, pressure_pa: float, humidity_pct: float
) -> tuple[int, int, int]:
    """(adc_T, adc_P, adc_H) whose compensation gives these physical values (20, 20, 16 bits)."""
    adc_t = _invert(lambda a: t_fine_of(cal, a) / 5120.0, temperature_c, 0, (1 << 20) - 1, True)
    t_fine = t_fine_of(cal, adc_t)
    adc_p = _invert(lambda a: pressure_of(cal, a, t_fine), pressure_pa, 0, (1 << 20) - 1, False)
    adc_h = _invert(lambda a: humidity_of(cal, a, t_fine), humidity_pct, 0, (1 << 16) - 1, True)
    return adc_t, adc_p, adc_h


class BME280Chip(I2CDevice):
    name = "bme280"
    address = 0x76

    def __init__(
        self, world, address: int | None = None, calibration: dict | None = None, chip_id: int = CHIP_ID
    ):
        super().__init__(world, address)
        self.calibration = dict(calibration or DATASHEET_CALIBRATION)
        self.chip_id = chip_id
        #: seconds, monotonic; tests may replace it with a controlled clock
        self.clock = time.monotonic
        self.rng = random.Random(world.rng.random())
        self.regs = bytearray(256)
        self.pointer = 0
        self.conversions = 0
        self._reset(self.clock(), power_on=True)

    # -- state ----------------------------------------------------------------
    def _reset(self, now: float, power_on: bool = False) -> None:
        r = self.regs
        r[:] = bytes(256)
        tp, h1, h = calibration_bytes(self.calibration)
        r[0x88 : 0x88 + 24] = tp
        r[0xA1] = h1
        r[0xE1 : 0xE1 + 7] = h
        r[0xD0] = self.chip_id
        r[0xF7:0xFF] = bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])  # reset values of the data registers
        self._hum_active = 0
        self._mode = 0
        self._busy_until = 0.0
        self._im_update_until = -math.inf if power_on else now + 0.002
        self._cycle_start = 0.0
        self._filtered: list[float] | None = None

    def _timing(self) -> tuple[float, float]:
        """(typical measurement time, normal-mode period) in seconds (9.1, 9.2)."""
        ctrl = self.regs[0xF4]
        t, p, h = _OSRS_FACTOR[ctrl >> 5], _OSRS_FACTOR[(ctrl >> 2) & 7], _OSRS_FACTOR[self._hum_active & 7]
        ms = 1.0 + 2.0 * t + (2.0 * p + 0.5 if p else 0.0) + (2.0 * h + 0.5 if h else 0.0)
        standby = _STANDBY_MS[self.regs[0xF5] >> 5]
        return ms / 1000.0, (ms + standby) / 1000.0

    def _advance(self, now: float) -> None:
        if self._mode == 1 and now >= self._busy_until:
            self._convert(1)
            self._mode = 0
            self.regs[0xF4] &= 0xFC  # back to sleep (5.3.3)
        elif self._mode == 3:
            meas, period = self._timing()
            done = (
                int((now - self._cycle_start - meas) // period) + 1 if now >= self._cycle_start + meas else 0
            )
            if done > 0:
                self._convert(min(done, 32))
                self._cycle_start += done * period

    def _measuring(self, now: float) -> bool:
        if self._mode == 1:
            return now < self._busy_until
        if self._mode == 3:
            meas, period = self._timing()
            return ((now - self._cycle_start) % period) < meas
        return False

    def _convert(self, repeats: int) -> None:
        self.conversions += repeats
        if self.world.fault(self.name, "stuck"):
            return
        w = self.world
        ctrl = self.regs[0xF4]
        os_t, os_p, os_h = (
            _OSRS_FACTOR[ctrl >> 5],
            _OSRS_FACTOR[(ctrl >> 2) & 7],
            _OSRS_FACTOR[self._hum_active & 7],
        )
        coef = _FILTER_COEF[(self.regs[0xF5] >> 2) & 7]
        for _ in range(repeats):
            t = w.noisy(w.get("temperature_c")) + self.rng.gauss(0, _NOISE[0] / math.sqrt(max(os_t, 1)))
            p = w.noisy(w.get("pressure_hpa")) * 100.0 + self.rng.gauss(
                0, _NOISE[1] / math.sqrt(max(os_p, 1))
            )
            h = w.noisy(w.get("humidity_pct")) + self.rng.gauss(0, _NOISE[2] / math.sqrt(max(os_h, 1)))
            adc_t, adc_p, adc_h = raw_words(self.calibration, t, p, min(max(h, 0.0), 100.0))
            # 3.4.4 IIR filter on T and P: x = (x_prev * (c - 1) + x_new) / c
            if coef > 1 and self._filtered is not None:
                ft, fp = self._filtered
                adc_t = (ft * (coef - 1) + adc_t) / coef
                adc_p = (fp * (coef - 1) + adc_p) / coef
            self._filtered = [float(adc_t), float(adc_p)]
        adc_t, adc_p = int(round(self._filtered[0])), int(round(self._filtered[1]))
        if coef == 1:  # 3.4.2/3.4.3: 16 + (osrs - 1) bits without the filter
            adc_t &= ~((1 << max(0, 5 - os_t.bit_length())) - 1) if os_t else 0
            adc_p &= ~((1 << max(0, 5 - os_p.bit_length())) - 1) if os_p else 0
        if not os_t:
            adc_t = 0x80000
        if not os_p:
            adc_p = 0x80000
        if not os_h:
            adc_h = 0x8000
        r = self.regs
        r[0xF7], r[0xF8], r[0xF9] = adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4
        r[0xFA], r[0xFB], r[0xFC] = adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4
        r[0xFD], r[0xFE] = adc_h >> 8, adc_h & 0xFF

    def _status(self, now: float) -> int:
        return (0x08 if self._measuring(now) else 0) | (0x01 if now < self._im_update_until else 0)

    # -- bus ------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        now = self.clock()
        self._advance(now)
        if not data:
            return  # address probe
        if len(data) % 2:
            self.pointer = data[-1]
        for i in range(0, len(data) - 1, 2):
            self._write_register(data[i], data[i + 1], now)

    def _write_register(self, reg: int, value: int, now: float) -> None:
        if reg == 0xE0:
            if value == 0xB6:
                self._reset(now)
        elif reg == 0xF2:
            self.regs[0xF2] = value & 0x07
        elif reg == 0xF4:
            self.regs[0xF4] = value
            self._hum_active = self.regs[0xF2]  # 5.4.4: ctrl_hum becomes effective now
            mode = value & 3
            if mode in (1, 2):
                self._mode = 1
                self._busy_until = now + self._timing()[0]
            elif mode == 3:
                if self._mode != 3:
                    self._cycle_start = now
                self._mode = 3
            else:
                self._mode = 0
        elif reg == 0xF5:
            if self._mode != 3:  # 5.4.6: writes in normal mode may be ignored; this chip ignores them
                self.regs[0xF5] = value & 0xFD
                self._filtered = None
        # every other register is read-only

    def read(self, n: int) -> bytes:
        now = self.clock()
        self._advance(now)
        out = bytearray()
        for _ in range(n):
            reg = self.pointer
            out.append(self._status(now) if reg == 0xF3 else self.regs[reg])
            if self.pointer < 0xFF:
                self.pointer += 1
        return bytes(out)

    # -- tests ----------------------------------------------------------------
    def image(self) -> bytes:
        """The 256-byte register file as a driver would read it now (status included)."""
        now = self.clock()
        self._advance(now)
        img = bytearray(self.regs)
        img[0xF3] = self._status(now)
        return bytes(img)


@register("bme280")
def _factory(world, spec, board):
    return BME280Chip(world, address=spec.get("address", 0x76), calibration=spec.get("calibration"))
