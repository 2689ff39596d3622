"""BME280 temperature / humidity / pressure over I2C (Bosch BST-BME280-DS002), integer compensation.

    bme = BME280(i2c, 0x76)                # forced mode, x1/x1/x1, filter off
    if bme.sample():
        bme.temperature, bme.humidity, bme.pressure   # 0.01 degC, 0.01 %RH, Pa

Datasheet references are to BST-BME280-DS002 (rev 1.6+):
- 5.4: register map; 5.4.4 ctrl_hum only takes effect after a write to ctrl_meas;
  5.4.6 writes to `config` may be ignored in normal mode, so it is written in sleep.
- 6.2.1: an I2C write is pairs (register, value) - no auto-increment on writes, so
  every register is written on its own; reads auto-increment (one burst 0xF7..0xFE).
- 4.2.3: the compensation, integer versions: 32-bit for temperature and humidity,
  64-bit for pressure.  Here the two 64-bit products that would pass 2**62 (the
  MicroPython small-int limit on 64-bit hosts) are split exactly, so a sample
  cycle allocates nothing after warm-up on the unix port.  On the ESP32 (31-bit
  small ints) the pressure formula still makes long ints; see docs/sensors.md.
- 9.1: measurement time, t_max = 1.25 + 2.3*osrs_t + (2.3*osrs_p + 0.575) + (2.3*osrs_h + 0.575) ms.
- 3.5.1: weather monitoring = forced mode, x1 oversampling, filter off: the default.

Results are integers in datasheet units: `temperature` in 0.01 degC (T), `humidity`
in 1/1024 %RH (Q22.10) and `pressure` in 1/256 Pa (Q24.8) as the datasheet gives
them, plus `humidity_centi` (0.01 %RH) and `pressure_pa` (Pa) rounded for payloads.
"""

import time

from micropython import const

from lanterne.sensors import FAULT_BUS, FAULT_MISSING, FAULT_RANGE, FAULT_STUCK, FAULT_TIMEOUT, Sensor

ADDRESS_PRIMARY = const(0x76)  # SDO to GND
ADDRESS_SECONDARY = const(0x77)  # SDO to VDDIO

CHIP_ID_BME280 = const(0x60)
CHIP_ID_BMP280 = const(0x58)  # same T/P core, no humidity: accepted, humidity left at 0

MODE_SLEEP = const(0)
MODE_FORCED = const(1)
MODE_NORMAL = const(3)

_REG_CALIB_TP = const(0x88)  # 0x88..0x9F dig_T1..dig_P9, 0xA1 dig_H1
_REG_CALIB_H1 = const(0xA1)
_REG_ID = const(0xD0)
_REG_RESET = const(0xE0)
_REG_CALIB_H = const(0xE1)  # 0xE1..0xE7 dig_H2..dig_H6
_REG_CTRL_HUM = const(0xF2)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_CONFIG = const(0xF5)
_REG_DATA = const(0xF7)  # press[3] temp[3] hum[2]

_RESET_WORD = const(0xB6)
_STATUS_MEASURING = const(0x08)
_STATUS_IM_UPDATE = const(0x01)

# Value of a skipped measurement (oversampling "skip", 5.4.7-5.4.9).
_SKIPPED_20 = const(0x80000)
_SKIPPED_16 = const(0x8000)

# oversampling factor -> osrs code (5.4.3, 5.4.5)
_OSRS = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}
# IIR filter coefficient -> filter code (5.4.6)
_FILTER = {0: 0, 2: 1, 4: 2, 8: 3, 16: 4}
# normal-mode standby (ms; 0 means 0.5 ms) -> t_sb code (5.4.6)
_STANDBY = {0: 0, 62: 1, 125: 2, 250: 3, 500: 4, 1000: 5, 10: 6, 20: 7}

# Plausible compensated ranges (datasheet operating range, 1.1): outside -> FAULT_RANGE.
_T_MIN = const(-4000)
_T_MAX = const(8500)
_P_MIN_Q8 = const(300 * 100 * 256)
_P_MAX_Q8 = const(1100 * 100 * 256)


def _s16(lo, hi):
    v = lo | (hi << 8)
    return v - 0x10000 if v & 0x8000 else v


class BME280(Sensor):
    def __init__(
        self,
        i2c,
        address=ADDRESS_PRIMARY,
        *,
        mode=MODE_FORCED,
        oversampling_t=1,
        oversampling_p=1,
        oversampling_h=1,
        iir=0,
        standby_ms=1000,
        stuck_cycles=5,
    ):
        super().__init__(stuck_cycles)
        if mode not in (MODE_FORCED, MODE_NORMAL):
            raise ValueError("mode must be MODE_FORCED or MODE_NORMAL")
        if oversampling_t not in _OSRS or oversampling_p not in _OSRS or oversampling_h not in _OSRS:
            raise ValueError("oversampling must be one of 0 (skip), 1, 2, 4, 8, 16")
        if iir not in _FILTER:
            raise ValueError("iir must be one of 0, 2, 4, 8, 16")
        if standby_ms not in _STANDBY:
            raise ValueError("standby_ms must be one of 0, 10, 20, 62, 125, 250, 500, 1000")
        self.i2c = i2c
        self.address = address
        self.mode = mode
        self._ctrl_hum = _OSRS[oversampling_h]
        self._ctrl_meas = (_OSRS[oversampling_t] << 5) | (_OSRS[oversampling_p] << 2)
        self._config = (_STANDBY[standby_ms] << 5) | (_FILTER[iir] << 2)
        # 9.1, maximum measurement time in microseconds
        us = 1250 + 2300 * oversampling_t
        if oversampling_p:
            us += 2300 * oversampling_p + 575
        if oversampling_h:
            us += 2300 * oversampling_h + 575
        self.measure_us = us
        # normal mode converts every t_measure + t_standby: reading faster re-reads the same conversion
        self._period_ms = (us // 1000 + 1 + (standby_ms or 1)) if mode == MODE_NORMAL else 0
        self.chip_id = 0
        self.has_humidity = False
        self.present = False  # initialised: chip id checked, reset done, calibration read
        self._seen = False  # answered at least once since start-up
        self._good_at = 0
        # results (datasheet fixed point) and their raw words
        self.t_fine = 0
        self.temperature = 0  # 0.01 degC
        self.humidity = 0  # 1/1024 %RH (Q22.10)
        self.pressure = 0  # 1/256 Pa (Q24.8)
        self.humidity_centi = 0  # 0.01 %RH, rounded
        self.pressure_pa = 0  # Pa, rounded
        self.adc_t = self.adc_p = self.adc_h = -1
        self._buf = bytearray(8)
        self._one = bytearray(1)
        self._cal = bytearray(33)
        self._mv = memoryview(self._cal)
        self.begin()

    # -- bus helpers -----------------------------------------------------------
    def _write(self, reg, value):
        self._one[0] = value
        self.i2c.writeto_mem(self.address, reg, self._one)

    def _read_byte(self, reg):
        self.i2c.readfrom_mem_into(self.address, reg, self._one)
        return self._one[0]

    # -- set-up ------------------------------------------------------------------
    def begin(self):
        """Find the chip, soft-reset it, read its calibration and write the settings. Never raises."""
        self.present = False
        try:
            chip = self._read_byte(_REG_ID)
        except OSError:
            return self._failed(FAULT_BUS if self._seen else FAULT_MISSING)
        self._seen = True
        self.chip_id = chip
        if chip != CHIP_ID_BME280 and chip != CHIP_ID_BMP280:
            return self._failed(FAULT_MISSING)
        self.has_humidity = chip == CHIP_ID_BME280
        try:
            self._write(_REG_RESET, _RESET_WORD)
            # 5.4.2: after reset the NVM is copied to the image registers (im_update), ~2 ms
            time.sleep_ms(2)
            for _ in range(20):
                if not self._read_byte(_REG_STATUS) & _STATUS_IM_UPDATE:
                    break
                time.sleep_ms(1)
            else:
                return self._failed(FAULT_TIMEOUT)
            cal = self._mv
            self.i2c.readfrom_mem_into(self.address, _REG_CALIB_TP, cal[0:24])
            self.i2c.readfrom_mem_into(self.address, _REG_CALIB_H1, cal[24:25])
            if self.has_humidity:
                self.i2c.readfrom_mem_into(self.address, _REG_CALIB_H, cal[25:32])
            self._unpack_calibration()
            # settings are written in sleep mode (after reset): config first, ctrl_hum before ctrl_meas
            self._write(_REG_CONFIG, self._config)
            self._write(_REG_CTRL_HUM, self._ctrl_hum)
            self._write(_REG_CTRL_MEAS, self._ctrl_meas | (MODE_NORMAL if self.mode == MODE_NORMAL else MODE_SLEEP))
        except OSError:
            return self._failed(FAULT_BUS)
        if self.dig_t1 == 0 or self.dig_p1 == 0:
            return self._failed(FAULT_MISSING)  # blank calibration: not a working chip
        self.present = True
        self.adc_t = -1
        self._good_at = time.ticks_ms()
        return True

    def _unpack_calibration(self):
        c = self._cal
        self.dig_t1 = c[0] | (c[1] << 8)
        self.dig_t2 = _s16(c[2], c[3])
        self.dig_t3 = _s16(c[4], c[5])
        self.dig_p1 = c[6] | (c[7] << 8)
        self.dig_p2 = _s16(c[8], c[9])
        self.dig_p3 = _s16(c[10], c[11])
        self.dig_p4 = _s16(c[12], c[13])
        self.dig_p5 = _s16(c[14], c[15])
        self.dig_p6 = _s16(c[16], c[17])
        self.dig_p7 = _s16(c[18], c[19])
        self.dig_p8 = _s16(c[20], c[21])
        self.dig_p9 = _s16(c[22], c[23])
        self.dig_h1 = c[24]
        self.dig_h2 = _s16(c[25], c[26])
        self.dig_h3 = c[27]
        # 0xE4/0xE5/0xE6: dig_H4 = E4[7:0] E5[3:0], dig_H5 = E6[7:0] E5[7:4], both signed 12-bit
        h4 = (c[28] << 4) | (c[29] & 0x0F)
        h5 = (c[30] << 4) | (c[29] >> 4)
        self.dig_h4 = h4 - 0x1000 if h4 & 0x800 else h4
        self.dig_h5 = h5 - 0x1000 if h5 & 0x800 else h5
        self.dig_h6 = c[31] - 0x100 if c[31] & 0x80 else c[31]

    # -- sampling ----------------------------------------------------------------
    def trigger(self):
        """Start a conversion (forced mode); returns the microseconds to wait before `read()`.

        In normal mode the chip converts by itself and this only returns 0. Never raises.
        """
        if not self.present and not self.begin():
            return 0
        if self.mode != MODE_FORCED:
            return 0
        try:
            self._write(_REG_CTRL_MEAS, self._ctrl_meas | MODE_FORCED)
        except OSError:
            self.present = False
            self._failed(FAULT_BUS)
            return 0
        return self.measure_us

    def read(self):
        """Read and compensate the latest conversion; True when fresh values are in the attributes.

        Fresh values outside the operating range (-40..85 degC, 300..1100 hPa) are
        kept and flagged FAULT_RANGE.
        """
        if not self.present:
            return False
        buf = self._buf
        try:
            if self.mode == MODE_FORCED and self._read_byte(_REG_STATUS) & _STATUS_MEASURING:
                return self._failed(FAULT_TIMEOUT)
            self.i2c.readfrom_mem_into(self.address, _REG_DATA, buf)
        except OSError:
            self.present = False
            return self._failed(FAULT_BUS)
        adc_p = (buf[0] << 12) | (buf[1] << 4) | (buf[2] >> 4)
        adc_t = (buf[3] << 12) | (buf[4] << 4) | (buf[5] >> 4)
        adc_h = (buf[6] << 8) | buf[7]
        if adc_t == _SKIPPED_20 or (self._ctrl_hum and self.has_humidity and adc_h == _SKIPPED_16):
            # No conversion in the data registers. In forced mode the chip has lost its settings
            # (a brown-out resets it): set it up again next cycle. In normal mode the first
            # conversion may still be running; only after two periods without one is it lost.
            if self.mode == MODE_FORCED or time.ticks_diff(time.ticks_ms(), self._good_at) > 2 * self._period_ms + 100:
                self.present = False
            return self._failed(FAULT_TIMEOUT)
        self._good_at = time.ticks_ms()
        unchanged = adc_t == self.adc_t and adc_p == self.adc_p and adc_h == self.adc_h
        self.adc_t = adc_t
        self.adc_p = adc_p
        self.adc_h = adc_h
        if self._stuck(unchanged, self._period_ms):
            return self._failed(FAULT_STUCK)
        self._compensate_t(adc_t)
        fault = 0
        if adc_p != _SKIPPED_20:
            p = self._compensate_p(adc_p)
            self.pressure = p
            self.pressure_pa = (p + 128) >> 8
            if not _P_MIN_Q8 <= p <= _P_MAX_Q8:
                fault = FAULT_RANGE
        if self.has_humidity and adc_h != _SKIPPED_16:
            h = self._compensate_h(adc_h)
            self.humidity = h
            self.humidity_centi = (h * 100 + 512) >> 10
        if not _T_MIN <= self.temperature <= _T_MAX:
            fault = FAULT_RANGE
        # out of the datasheet's operating range: values kept, flagged, never clamped silently
        self.fault = fault
        return True

    def sample(self):
        """One blocking cycle: trigger, wait the conversion time (<= measure_us), read. Never raises.

        An asyncio application calls `trigger()`, sleeps the returned time, then `read()`.
        """
        wait = self.trigger()
        if not self.present:
            return False
        if wait:
            time.sleep_us(wait)
        return self.read()

    # -- datasheet 4.2.3 integer compensation -------------------------------------
    def _compensate_t(self, adc_t):
        t1 = self.dig_t1
        var1 = (((adc_t >> 3) - (t1 << 1)) * self.dig_t2) >> 11
        d = (adc_t >> 4) - t1
        var2 = (((d * d) >> 12) * self.dig_t3) >> 14
        self.t_fine = var1 + var2
        self.temperature = (self.t_fine * 5 + 128) >> 8

    def _compensate_p(self, adc_p):
        var1 = self.t_fine - 128000
        var2 = var1 * var1 * self.dig_p6
        var2 += (var1 * self.dig_p5) << 17
        var2 += self.dig_p4 << 35
        var1 = ((var1 * var1 * self.dig_p3) >> 8) + ((var1 * self.dig_p2) << 12)
        # (((1 << 47) + var1) * dig_P1) >> 33, split so no product passes 2**62:
        # x*P1 >> 33 == ((x >> 16)*P1 + (((x & 0xFFFF)*P1) >> 16)) >> 17, exactly (floor division).
        x = (1 << 47) + var1
        p1 = self.dig_p1
        var1 = (((x >> 16) * p1) + (((x & 0xFFFF) * p1) >> 16)) >> 17
        if var1 <= 0:
            return 0  # 4.2.3: avoid a division by zero; also a broken calibration
        p = 1048576 - adc_p
        n = (p << 31) - var2
        if n < 0:
            return 0
        # (n * 3125) // var1 with n*3125 > 2**62: n = q*var1 + r, so n*3125//var1 = q*3125 + r*3125//var1.
        q = n // var1
        p = q * 3125 + ((n - q * var1) * 3125) // var1
        var1 = (self.dig_p9 * (p >> 13) * (p >> 13)) >> 25
        var2 = (self.dig_p8 * p) >> 19
        return ((p + var1 + var2) >> 8) + (self.dig_p7 << 4)

    def _compensate_h(self, adc_h):
        v = self.t_fine - 76800
        v = (((adc_h << 14) - (self.dig_h4 << 20) - (self.dig_h5 * v)) + 16384) >> 15
        v2 = self.t_fine - 76800
        v = v * (
            (
                (
                    (((((v2 * self.dig_h6) >> 10) * (((v2 * self.dig_h3) >> 11) + 32768)) >> 10) + 2097152)
                    * self.dig_h2
                )
                + 8192
            )
            >> 14
        )
        v -= (((((v >> 15) * (v >> 15)) >> 7) * self.dig_h1) >> 4)
        if v < 0:
            v = 0
        elif v > 419430400:
            v = 419430400
        return v >> 12
