"""Simulated ambient-light sensors: ROHM BH1750FVI (opcodes, MTreg, timing) and Vishay VEML7700 (registers).

Both read `illuminance_lx` from the world when an integration completes: a driver
that reads too early after (re)configuring gets the previous result (0 after
power-on), as on the parts. Counts carry a small shot-noise-like jitter and
saturate at 0xFFFF.

Faults (world.inject(<type>, kind), type "bh1750" or "veml7700"): "missing"/"nack"
-> no ACK; "stuck" -> the data register stops updating.
"""

from __future__ import annotations

import random
import time

from host_tools.emulator.devices import I2CDevice
from host_tools.emulator.devices.parts import register


def _jitter(rng: random.Random, counts: float) -> int:
    if counts <= 0:
        return 0
    return max(0, min(0xFFFF, int(round(counts + rng.gauss(0.0, 0.6 + 0.002 * counts)))))


class BH1750Chip(I2CDevice):
    """BH1750FVI: one-byte opcodes, two-byte big-endian result (datasheet: instruction set, p.5)."""

    name = "bh1750"
    address = 0x23

    def __init__(self, world, address: int | None = None):
        super().__init__(world, address)
        self.clock = time.monotonic
        self.rng = random.Random(world.rng.random())
        self.powered = False
        self.mode = 0  # last measurement opcode (0: none)
        self.mtreg = 69
        self.data = 0
        self._start = 0.0
        self._one_time_done = False

    def _period(self) -> float:
        low = self.mode in (0x13, 0x23)
        return (0.016 if low else 0.120) * self.mtreg / 69

    def _update(self, now: float) -> None:
        if not self.powered or not self.mode or now < self._start + self._period():
            return
        if self.mode >= 0x20:  # one-time: one result, then power down
            if self._one_time_done:
                return
            self._one_time_done = True
            self.powered = False
        else:
            # continuous: the latest completed integration
            periods = int((now - self._start) / self._period())
            self._start += periods * self._period()
        if self.world.fault(self.name, "stuck"):
            return
        lux = max(0.0, self.world.noisy(self.world.get("illuminance_lx")))
        counts = lux * 1.2 * self.mtreg / 69
        if self.mode in (0x11, 0x21):
            counts *= 2
        elif self.mode in (0x13, 0x23):
            counts = counts // 4 * 4  # 4 lx resolution
        self.data = _jitter(self.rng, counts)

    def write(self, data: bytes) -> None:
        now = self.clock()
        self._update(now)
        for op in data:
            if op == 0x00:
                self.powered = False
            elif op == 0x01:
                self.powered = True
            elif op == 0x07:
                if self.powered:
                    self.data = 0
            elif op in (0x10, 0x11, 0x13, 0x20, 0x21, 0x23):
                self.powered = True
                self.mode = op
                self._start = now
                self._one_time_done = False
            elif op & 0xF8 == 0x40:
                self.mtreg = (self.mtreg & 0x1F) | ((op & 0x07) << 5)
            elif op & 0xE0 == 0x60:
                self.mtreg = (self.mtreg & 0xE0) | (op & 0x1F)
        self.mtreg = max(31, min(254, self.mtreg))

    def read(self, n: int) -> bytes:
        self._update(self.clock())
        return bytes([self.data >> 8, self.data & 0xFF])[:n].ljust(n, b"\xff")


# -- VEML7700 -------------------------------------------------------------------------------
_GAIN = {0b00: 1.0, 0b01: 2.0, 0b10: 0.125, 0b11: 0.25}
_IT_MS = {0b1100: 25, 0b1000: 50, 0b0000: 100, 0b0001: 200, 0b0010: 400, 0b0011: 800}


def veml_correction(x: float) -> float:
    """Vishay app note 84323 non-linearity correction: reported lux -> true lux (gains 1/4, 1/8)."""
    return (((6.0135e-13 * x - 9.3924e-9) * x + 8.1488e-5) * x + 1.0023) * x


class VEML7700Chip(I2CDevice):
    """VEML7700: 16-bit little-endian registers behind a command code (datasheet, I2C protocol)."""

    name = "veml7700"
    address = 0x10

    def __init__(self, world, address: int | None = None):
        super().__init__(world, address)
        self.clock = time.monotonic
        self.rng = random.Random(world.rng.random())
        self.regs = {0x00: 0x0001, 0x01: 0, 0x02: 0, 0x03: 0, 0x04: 0, 0x05: 0, 0x06: 0, 0x07: 0xC481}
        self.command = 0
        self._start = 0.0

    def _settings(self) -> tuple[float, int]:
        conf = self.regs[0x00]
        return _GAIN[(conf >> 11) & 3], _IT_MS.get((conf >> 6) & 0xF, 100)

    def _update(self, now: float) -> None:
        conf = self.regs[0x00]
        gain, it = self._settings()
        if conf & 1 or now < self._start + it / 1000 + 0.0025:
            return
        self._start += int((now - self._start) / (it / 1000)) * it / 1000
        if self.world.fault(self.name, "stuck"):
            return
        lux = max(0.0, self.world.noisy(self.world.get("illuminance_lx")))
        if gain < 0.5:
            lux = self._uncorrect(lux)  # the part under-reads bright light at low gain
        resolution = 0.0042 * (2.0 / gain) * (800 / it)
        counts = lux / resolution
        self.regs[0x04] = _jitter(self.rng, counts)
        self.regs[0x05] = self.regs[0x04]

    @staticmethod
    def _uncorrect(lux: float) -> float:
        lo, hi = 0.0, lux
        for _ in range(60):
            mid = (lo + hi) / 2
            if veml_correction(mid) < lux:
                lo = mid
            else:
                hi = mid
        return lo

    def write(self, data: bytes) -> None:
        now = self.clock()
        self._update(now)
        if not data:
            return
        self.command = data[0]
        if len(data) >= 3 and self.command in (0x00, 0x01, 0x02, 0x03):
            old = self.regs[0x00]
            self.regs[self.command] = data[1] | (data[2] << 8)
            if self.command == 0x00 and self.regs[0x00] != old:
                self._start = now  # new settings: the integration restarts

    def read(self, n: int) -> bytes:
        self._update(self.clock())
        v = self.regs.get(self.command, 0)
        return bytes([v & 0xFF, v >> 8])[:n].ljust(n, b"\xff")


@register("bh1750")
def _bh1750(world, spec, board):
    return BH1750Chip(world, address=spec.get("address", 0x23))


@register("veml7700")
def _veml7700(world, spec, board):
    return VEML7700Chip(world, address=spec.get("address", 0x10))
