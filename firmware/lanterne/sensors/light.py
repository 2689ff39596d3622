"""Ambient light over I2C with auto-ranging across 0 .. 120 000 lx: ROHM BH1750FVI and Vishay VEML7700.

    light = BH1750(i2c)            # or VEML7700(i2c)
    if light.sample():
        light.millilux             # integer, 0.001 lx

Why both: the BH1750 is the part on our boards (cheap, everywhere, spectral
response close to the eye, 1 lx steps over 1..65535 counts); it reaches 120 klx
only by shortening its measurement time register (MTreg = 31). The VEML7700
reaches 140 klx natively (gain 1/8, 25 ms) with finer steps in the dark,
which helps the photocell near civil dusk, but needs Vishay's non-linearity
correction in bright light. The photocell logic of the lamp profile only needs
`millilux`, so either part can sit on the board (`bh1750` / `veml7700` in the
board file).

Both drivers run the sensor continuously and pick, after each reading, the most
sensitive range that does not saturate. A range change restarts the
integration: until it completes `sample()` returns False (not a fault) and
`settle_ms` says how long to wait. A reading that triggered a change to a finer
range is still reported when it has at least 1000 counts (0.1 % steps); a
coarser one is dropped and the finer range answers after `settle_ms`. A reading
saturated in the least sensitive range (or, for the VEML7700, beyond its specified
140 klx) is kept and flagged FAULT_RANGE.

Stuck detection ignores zero counts: darkness legitimately reads 0 for hours.
"""

import time

from micropython import const

from lanterne.sensors import FAULT_BUS, FAULT_MISSING, FAULT_RANGE, FAULT_STUCK, Sensor

_SATURATED = const(0xFFFF)
_UP_AT = const(60000)  # counts: switch to a less sensitive range above this (~92 % of full scale)
_DOWN_PERCENT = const(40)  # switch to the more sensitive range when the light is below 40 % of its full scale
_COARSE = const(1000)  # counts: below this a reading taken before a range change is not reported (> 0.1 % steps)


class _LightSensor(Sensor):
    """Shared auto-ranging and fault handling. Subclasses define RANGES and the bus words."""

    #: per range, most sensitive first: (setting a, setting b, microlux per count, max integration ms)
    RANGES = ()
    #: beyond this the part is out of its specified range (flagged FAULT_RANGE, value kept)
    MAX_MILLILUX = 0x3FFFFFFF

    def __init__(self, i2c, address, stuck_cycles):
        super().__init__(stuck_cycles)
        self.i2c = i2c
        self.address = address
        self.millilux = 0
        self.has_value = False  # True once a reading was reported (millilux = 0 before is not darkness)
        self.counts = -1
        self.range = len(self.RANGES) - 1  # start in the least sensitive range: never saturates
        self.present = False
        self._seen = False
        self._ready_at = 0
        self._buf = bytearray(2)
        self._mv1 = memoryview(self._buf)[:1]
        # per range: the light (mlx) below which the next finer range is used instead
        self._down_at = tuple(_SATURATED * r[2] // 1000 * _DOWN_PERCENT // 100 for r in self.RANGES)
        self.begin()

    @property
    def lux(self):
        return (self.millilux + 500) // 1000

    @property
    def settle_ms(self):
        """Milliseconds until the next reading is valid (0 when it is)."""
        d = time.ticks_diff(self._ready_at, time.ticks_ms())
        return d if d > 0 else 0

    def begin(self):
        """Find the part and start it in the current range. Never raises."""
        self.present = False
        try:
            if not self._start():
                return self._failed(FAULT_MISSING)
            self._configure(self.range)
        except OSError:
            return self._failed(FAULT_BUS if self._seen else FAULT_MISSING)
        self._seen = True
        self.present = True
        self.counts = -1
        return True

    def _configure(self, index):
        a, b, _, ms = self.RANGES[index]
        self._apply(a, b)
        self.range = index
        self._ready_at = time.ticks_add(time.ticks_ms(), ms)

    def sample(self):
        """Read the latest conversion and re-range if needed; True when `millilux` is fresh."""
        if not self.present and not self.begin():
            return False
        if self.settle_ms:
            return False
        try:
            counts = self._read_counts()
        except OSError:
            self.present = False
            return self._failed(FAULT_BUS)
        unchanged = counts == self.counts and counts != 0
        self.counts = counts
        if self._stuck(unchanged, self.RANGES[self.range][3]):
            return self._failed(FAULT_STUCK)
        index = self.range
        ulx = self.RANGES[index][2]
        # counts * ulx // 1000 without a product beyond 2**30 (a long int on the ESP32)
        raw = counts * (ulx // 1000) + counts * (ulx % 1000) // 1000
        last = len(self.RANGES) - 1
        try:
            if counts >= _UP_AT and index < last:
                self._configure(last)  # saturated: how bright is unknown, measure again in the widest range
                return False
            # the most sensitive range in which this light stays below _DOWN_PERCENT of full scale
            best = index
            while best > 0 and raw < self._down_at[best - 1]:
                best -= 1
            if best != index:
                self._configure(best)
                if counts < _COARSE:
                    return False  # too coarse to report: the finer range answers after settle_ms
        except OSError:
            self.present = False
            return self._failed(FAULT_BUS)
        millilux = self._correct(raw, index)
        self.millilux = millilux
        self.has_value = True
        self.fault = FAULT_RANGE if counts >= _SATURATED or millilux > self.MAX_MILLILUX else 0
        return True

    def _correct(self, millilux, index):
        return millilux


# -- ROHM BH1750FVI ------------------------------------------------------------------------
_BH_POWER_ON = const(0x01)
_BH_RESET = const(0x07)
_BH_CONT_H = const(0x10)  # 1 lx resolution at MTreg 69
_BH_CONT_H2 = const(0x11)  # 0.5 lx resolution at MTreg 69
_BH_MT_HIGH = const(0x40)  # 01000_MT[7:5]
_BH_MT_LOW = const(0x60)  # 011_MT[4:0]


def _bh_range(opcode, mtreg):
    # lux = counts / 1.2 * 69 / MTreg (H mode), halved in H2 mode; max measurement time 180 ms at MTreg 69
    ulx = 57_500_000 // mtreg  # 1e6 * 69 / 1.2 / MTreg
    if opcode == _BH_CONT_H2:
        ulx //= 2
    return (opcode, mtreg, ulx, 180 * mtreg // 69 + 10)


class BH1750(_LightSensor):
    """BH1750FVI at 0x23 (ADDR low) or 0x5C (ADDR high). Continuous high-resolution modes."""

    # 0.11 lx steps up to 7.4 klx ... 1.85 lx steps up to 121.5 klx (datasheet: MTreg 31..254)
    RANGES = (
        _bh_range(_BH_CONT_H2, 254),
        _bh_range(_BH_CONT_H, 138),
        _bh_range(_BH_CONT_H, 69),
        _bh_range(_BH_CONT_H, 31),
    )

    def __init__(self, i2c, address=0x23, *, stuck_cycles=30):
        super().__init__(i2c, address, stuck_cycles)

    def _cmd(self, opcode):
        self._buf[0] = opcode
        self.i2c.writeto(self.address, self._mv1)

    def _start(self):
        # No ID register: a part that ACKs power-on and reset is taken as present.
        self._cmd(_BH_POWER_ON)
        self._cmd(_BH_RESET)
        return True

    def _apply(self, opcode, mtreg):
        self._cmd(_BH_MT_HIGH | (mtreg >> 5))
        self._cmd(_BH_MT_LOW | (mtreg & 0x1F))
        self._cmd(opcode)  # (re)starts the continuous measurement with the new MTreg

    def _read_counts(self):
        self.i2c.readfrom_into(self.address, self._buf)
        return (self._buf[0] << 8) | self._buf[1]


# -- Vishay VEML7700 ------------------------------------------------------------------------
_VE_ALS_CONF = const(0x00)
_VE_ALS = const(0x04)
_VE_ID = const(0x07)
_VE_ID_LOW = const(0x81)  # device ID code, low byte of register 0x07

# ALS_GAIN bits 12:11 and ALS_IT bits 9:6 (datasheet table 1); 4200 microlux per count at gain 2,
# 800 ms (datasheet rev 1.7, 2023: corrected from 0.0036 lx); x2 per halving of gain or time.
_VE_GAIN_2 = const(0b01)
_VE_GAIN_1 = const(0b00)
_VE_GAIN_1_4 = const(0b11)
_VE_GAIN_1_8 = const(0b10)
_VE_IT_25 = const(0b1100)
_VE_IT_100 = const(0b0000)
_VE_IT_200 = const(0b0001)
_VE_IT_800 = const(0b0011)


class VEML7700(_LightSensor):
    """VEML7700 at 0x10. Non-linearity correction (Vishay app note 84323) at gains 1/4 and 1/8."""

    # datasheet rev 1.7: 140 klx; the correction polynomial is not valid beyond (the counts never saturate)
    MAX_MILLILUX = 140_000_000

    RANGES = (
        (_VE_GAIN_2, _VE_IT_800, 4200, 800 + 50),  # up to 275 lx
        (_VE_GAIN_2, _VE_IT_200, 16800, 200 + 50),  # 1.1 klx
        (_VE_GAIN_1, _VE_IT_100, 67200, 100 + 50),  # 4.4 klx
        (_VE_GAIN_1_4, _VE_IT_100, 268800, 100 + 50),  # 17.6 klx
        (_VE_GAIN_1_8, _VE_IT_100, 537600, 100 + 50),  # 35 klx
        (_VE_GAIN_1_8, _VE_IT_25, 2150400, 25 + 50),  # 141 klx
    )

    def __init__(self, i2c, address=0x10, *, stuck_cycles=30):
        super().__init__(i2c, address, stuck_cycles)

    def _start(self):
        self.i2c.readfrom_mem_into(self.address, _VE_ID, self._buf)
        return self._buf[0] == _VE_ID_LOW

    def _apply(self, gain, it):
        conf = (gain << 11) | (it << 6)  # persistence 1, interrupt off, SD = 0 (power on)
        self._buf[0] = conf & 0xFF
        self._buf[1] = conf >> 8
        self.i2c.writeto_mem(self.address, _VE_ALS_CONF, self._buf)

    def _read_counts(self):
        self.i2c.readfrom_mem_into(self.address, _VE_ALS, self._buf)
        return self._buf[0] | (self._buf[1] << 8)

    def _correct(self, lx, index):
        gain = self.RANGES[index][0]
        if gain == _VE_GAIN_1_4 or gain == _VE_GAIN_1_8:
            # app note 84323: lux_c = 6.0135e-13 x^4 - 9.3924e-9 x^3 + 8.1488e-5 x^2 + 1.0023 x (x in lx),
            # for the low gains, which the ranges above use only beyond ~1.7 klx. Floats: bright light only.
            x = lx / 1000
            lx = int((((6.0135e-13 * x - 9.3924e-9) * x + 8.1488e-5) * x + 1.0023) * x * 1000)
        return lx
