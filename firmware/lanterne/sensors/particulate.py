"""What every particulate-matter (PM) driver shares: the fan duty cycle, averaging, humidity, faults.

    pm = PMS5003(uart)                    # or SDS011(uart), SPS30(i2c): lanterne.sensors.pms5003 ...
    pm.set_humidity(bme.humidity_centi)   # 0.01 %RH, each time the BME280 is read
    if pm.tick():                         # call about once a second (an asyncio task)
        pm.pm1, pm.pm25, pm.pm10          # ug/m3, integers; pm.humid: taken above the humidity limit

Duty cycle. Low-cost optical sensors wear out with fan hours (Plantower and Nova
give about 8 000 h, a year of continuous running), so by default the fan runs only
for one measurement every `period_s` (300 s): the driver wakes the sensor, waits
`warmup_s` (30 s: Plantower's "stable data ... at least 30 seconds after the sensor
wakeup", Nova's and Sensirion's stabilisation times are similar), averages the
frames of the next `measure_s` (10 s), then puts the sensor to sleep. That is
40 s of fan time in 300 s (13 %): the fan lasts ~7 years instead of one.
`period_s = 0` keeps the fan running and gives a value every `measure_s`.

Humidity. Particles take up water in humid air and grow, so an optical sensor
over-reads, strongly above ~80 %RH. A measurement taken above `humidity_max`
(85 %RH) is flagged (`humid`, the reading's `pm_humid` status flag). With
`kappa_milli` set (the option; 0 = off), the value is also corrected with the
kappa-Koehler hygroscopic growth of the particle mass, as used for low-cost optical
counters by Crilley et al. (2018), "Evaluation of a low-cost optical particle counter
(Alphasense OPC-N2) for ambient air monitoring", Atmos. Meas. Tech. 11, 709-720,
eq. 2 (after Petters and Kreidenweis 2007, Atmos. Chem. Phys. 7, 1961-1971):

    PM_dry = PM_measured / C,   C = 1 + (kappa / 1.65) / (1 / a_w - 1),   a_w = RH / 100

(1.65 g/cm3 is the density of the dry particles assumed there). kappa depends on
the aerosol (about 0.2 to 0.6 for urban air; Crilley et al. fit about 0.4): set it
from a co-location with a reference instrument. RH is capped at 98 % (the growth
diverges at saturation). Integer arithmetic: C in thousandths.

Faults (lanterne.sensors bits, in `fault`): no byte at all since start-up ->
FAULT_MISSING; no valid frame in a measurement window -> FAULT_TIMEOUT; most frames
failing their checksum/CRC -> FAULT_CHECKSUM; frames of another kind (another
sensor, another mode) -> FAULT_FRAME; the part reports its fan failed (SPS30) ->
FAULT_FAN; identical raw values for `stuck_cycles` measurements (a stopped fan or a
frozen part: real air always moves the counts) -> FAULT_STUCK. The values of the last
good measurement stay in place; `fresh` says whether the last window gave one.
"""

import time

from micropython import const

from lanterne.sensors import (
    FAULT_CHECKSUM,
    FAULT_FAN,
    FAULT_FRAME,
    FAULT_MISSING,
    FAULT_STUCK,
    FAULT_TIMEOUT,
    Sensor,
)

_ASLEEP = const(0)
_WARMING = const(1)
_MEASURING = const(2)

_HUMIDITY_MAX_CENTI = const(8500)  # 85 %RH
_RH_CAP_CENTI = const(9800)


def growth_milli(kappa_milli, rh_centi):
    """Hygroscopic growth factor C x 1000 at rh_centi (0.01 %RH), kappa x 1000 (see the module doc)."""
    if kappa_milli <= 0 or rh_centi <= 0:
        return 1000
    if rh_centi > _RH_CAP_CENTI:
        rh_centi = _RH_CAP_CENTI
    # (1 / a_w - 1) = (10000 - h) / h  ->  kappa / 1.65 * h / (10000 - h)
    t = kappa_milli * rh_centi // (10000 - rh_centi)  # kappa_milli * a_w / (1 - a_w)
    return 1000 + (t * 1000 + 825) // 1650


class ParticulateSensor(Sensor):
    """Base of the PM drivers: subclasses provide _wake(), _sleep(), _poll(now_ms) and _fan_ok()."""

    def __init__(self, period_s=300, warmup_s=30, measure_s=10, humidity_max_centi=_HUMIDITY_MAX_CENTI,
                 kappa_milli=0, stuck_cycles=3):
        super().__init__(stuck_cycles)
        if period_s and period_s < warmup_s + measure_s:
            raise ValueError("period_s must be 0 (fan always on) or >= warmup_s + measure_s")
        if measure_s < 1:
            raise ValueError("measure_s must be >= 1")
        self.period_s = period_s
        self.warmup_s = warmup_s
        self.measure_s = measure_s
        self.humidity_max_centi = humidity_max_centi
        self.kappa_milli = kappa_milli
        self.pm1 = self.pm25 = self.pm10 = 0  # ug/m3 (corrected when the option is on)
        self.raw_pm25 = self.raw_pm10 = 0  # as the sensor said, averaged
        self.fresh = False  # the last window gave values
        self.humid = False  # the last values were taken above humidity_max
        self.measured_ms = None  # ticks_ms when the last values were taken
        self.measurements = 0
        self.frames = 0  # good frames since start-up
        self.bad_frames = 0  # checksum / CRC failures since start-up
        self.wrong_frames = 0  # frames of another kind since start-up
        self.fan_seconds = 0  # fan time since start-up (the wear this schedule saves)
        self.humidity_centi = -1  # unknown until set_humidity
        self.state = _ASLEEP
        self._seen = False  # any byte / answer since start-up
        self._due = None  # ticks_ms of the next wake-up (None: now)
        self._t = 0  # ticks_ms when the current state began
        self._n = self._s1 = self._s25 = self._s10 = 0
        self._ok = self._bad = self._wrong = 0
        self._last_sig = -1
        self._fan_failed = False

    def set_humidity(self, rh_centi):
        """Relative humidity in 0.01 % (BME280 humidity_centi); < 0: unknown."""
        self.humidity_centi = rh_centi

    def configure(self, period_s=None, kappa_milli=None):
        """Change the duty cycle / the correction at run time (set-config)."""
        if period_s is not None:
            if period_s and period_s < self.warmup_s + self.measure_s:
                raise ValueError("period_s must be 0 or >= %d" % (self.warmup_s + self.measure_s))
            self.period_s = period_s
        if kappa_milli is not None:
            self.kappa_milli = kappa_milli

    # -- the cycle --------------------------------------------------------------------
    def tick(self, now_ms=None):
        """Advance the duty cycle; True when a measurement window just ended with values."""
        now = time.ticks_ms() if now_ms is None else now_ms
        st = self.state
        if st == _ASLEEP:
            if self._due is not None and time.ticks_diff(now, self._due) < 0:
                return False
            self._due = now if self._due is None else self._due
            self._wake_safe()
            self.state = _WARMING
            self._t = now
            self._reset_window()
            return False
        self._poll_safe(now, st == _MEASURING)
        spent = time.ticks_diff(now, self._t)
        if st == _WARMING:
            if spent >= self.warmup_s * 1000:
                self.fan_seconds += spent // 1000
                self.state = _MEASURING
                self._t = now
                self._reset_window()
            return False
        if spent < self.measure_s * 1000:
            return False
        self.fan_seconds += spent // 1000
        got = self._finish(now)
        if self.period_s:
            self._sleep_safe()
            self.state = _ASLEEP
            self._due = time.ticks_add(self._due, self.period_s * 1000)
            if time.ticks_diff(self._due, now) <= 0:  # late (a long stall): start afresh from now
                self._due = time.ticks_add(now, self.period_s * 1000 - (self.warmup_s + self.measure_s) * 1000)
        else:
            self._t = now
            self._reset_window()
        return got

    def _reset_window(self):
        self._n = self._s1 = self._s25 = self._s10 = 0
        self._ok = self._bad = self._wrong = 0
        self._sig = 0

    def _add(self, pm1, pm25, pm10, sig):
        """A good frame from the subclass: ug/m3 (x10 for SDS011: see `scale10`), a raw signature."""
        self._seen = True
        self.frames += 1
        self._ok += 1
        self._n += 1
        self._s1 += pm1
        self._s25 += pm25
        self._s10 += pm10
        self._sig = (((self._sig << 3) & 0xFFFFFF) ^ sig) & 0x3FFFFFF  # small ints on every port

    def _bad_frame(self):
        self._seen = True
        self.bad_frames += 1
        self._bad += 1

    def _wrong_frame(self):
        self._seen = True
        self.wrong_frames += 1
        self._wrong += 1

    scale10 = False  # subclasses whose frames carry 0.1 ug/m3 set this
    has_pm1 = True  # False: the part gives no PM1.0 (SDS011)

    def _finish(self, now):
        n = self._n
        fault = 0
        if self._fan_failed:
            fault |= FAULT_FAN
        if n == 0:
            if self._bad:
                fault |= FAULT_CHECKSUM
            elif self._wrong:
                fault |= FAULT_FRAME
            elif not self._seen:
                fault |= FAULT_MISSING
            else:
                fault |= FAULT_TIMEOUT
            self.fresh = False
            self._failed(fault)
            return False
        if self._bad > self._ok:
            fault |= FAULT_CHECKSUM
        if self._wrong > self._ok:
            fault |= FAULT_FRAME
        sig = self._sig
        if self._stuck(sig == self._last_sig):
            fault |= FAULT_STUCK
        self._last_sig = sig
        d = n * 10 if self.scale10 else n
        half = d // 2
        pm1 = (self._s1 + half) // d
        pm25 = (self._s25 + half) // d
        pm10 = (self._s10 + half) // d
        self.raw_pm25 = pm25
        self.raw_pm10 = pm10
        h = self.humidity_centi
        self.humid = h > self.humidity_max_centi
        c = growth_milli(self.kappa_milli, h)
        if c != 1000:
            pm1 = (pm1 * 1000 + c // 2) // c
            pm25 = (pm25 * 1000 + c // 2) // c
            pm10 = (pm10 * 1000 + c // 2) // c
        self.pm1 = pm1
        self.pm25 = pm25
        self.pm10 = pm10
        self.measured_ms = now
        self.measurements += 1
        self.fresh = True
        if fault:
            self._failed(fault)
        else:
            self.fault = 0
        return True

    # -- bus errors never escape ----------------------------------------------------------
    def _wake_safe(self):
        try:
            self._wake()
        except OSError:
            pass  # reported through the window: no frames -> TIMEOUT / MISSING

    def _sleep_safe(self):
        try:
            self._sleep()
        except OSError:
            pass

    def _poll_safe(self, now, keep):
        try:
            self._poll(now, keep)
        except OSError:
            pass

    # -- subclass interface ------------------------------------------------------------------
    def _wake(self):
        raise NotImplementedError

    def _sleep(self):
        raise NotImplementedError

    def _poll(self, now, keep):
        raise NotImplementedError


class UartFrames:
    """Byte-by-byte frame assembly from a UART into one preallocated buffer (no allocation)."""

    def __init__(self, uart, size):
        self.uart = uart
        self.rx = bytearray(32)
        self.frame = bytearray(size)
        self.pos = 0

    def drain(self, feed):
        """Read what the UART holds; call feed(byte) for each. Returns the bytes read."""
        total = 0
        rx = self.rx
        readinto = self.uart.readinto
        for _ in range(16):  # bounded: at most 512 bytes per call
            got = readinto(rx)
            if not got:
                break
            total += got
            for i in range(got):
                feed(rx[i])
            if got < len(rx):
                break
        return total
