"""Waste-bin fill level from an ultrasonic range finder: trigger/echo (HC-SR04, JSN-SR04T) or UART frames.

    level = UltrasonicFillLevel(Pin(14, Pin.OUT), Pin(15, Pin.IN), empty_mm=1100, full_mm=250)
    level.set_temperature(bme.temperature)          # 0.01 degC, when a BME280 is present
    if level.sample():
        level.distance_mm, level.level_permille     # 0..1000 inside the calibrated range

    uart_level = UartFillLevel(UART(1, 9600), empty_mm=1100, full_mm=250)   # A02YYUW / JSN-SR04T UART

One sample cycle takes `samples` echoes (default 9) and keeps the densest cluster:
the echoes are sorted and the largest run whose spread stays within
`tolerance_mm` (or 2 % of the distance, whichever is larger) wins; its median is
the distance. Lids, bags and the bin walls give spurious echoes that scatter,
the contents give echoes that agree, so with 20 % spurious echoes the contents
still win. Fewer than a third of the echoes agreeing -> FAULT_NOISY, no value;
most echoes lost -> FAULT_TIMEOUT.

Trigger/echo: distance = echo time x speed of sound / 2, with the speed of sound
from the air temperature (331.3 + 0.606 x T m/s; 20 degC until `set_temperature`
is called). UART modules (frames 0xFF, H, L, SUM with SUM = (0xFF + H + L) & 0xFF,
distance H*256 + L mm) convert to millimetres themselves (the A02YYUW compensates
temperature internally), in auto-output mode (a frame every ~100 ms) or, with
`triggered=True`, answering each 0x55 byte (JSN-SR04T UART-on-request mode).

Calibration: the installer measures `empty_mm` (sensor to the bottom of the empty
bin) and `full_mm` (sensor to the "full" line); level = (empty - d) / (empty - full).
A distance farther than empty or nearer than full (beyond `tolerance_mm`) keeps its
computed level (negative, or over 1000 = overfull) and is flagged FAULT_RANGE: never
clamped silently.

`sample()` blocks for the whole cycle (gap_ms between pings; ~0.5 s by default);
an asyncio application awaits `sample_async()` instead, which sleeps between steps.
"""

import time
from array import array

from micropython import const

from lanterne.sensors import FAULT_MISSING, FAULT_NOISY, FAULT_RANGE, FAULT_STUCK, FAULT_TIMEOUT, Sensor

_C10_0C = const(3313)  # speed of sound at 0 degC, 0.1 m/s
_C10_PER_C100 = const(606)  # +0.606 m/s per degC -> 0.1 m/s per 0.01 degC is 606 / 10000
_TOL_PERCENT = const(2)


class _FillLevel(Sensor):
    def __init__(self, empty_mm, full_mm, samples, tolerance_mm, stuck_cycles):
        super().__init__(stuck_cycles)
        if samples < 3:
            raise ValueError("samples must be >= 3")
        self.samples = samples
        self.tolerance_mm = tolerance_mm
        self.calibrate(empty_mm, full_mm)
        self.distance_mm = 0
        self.level_permille = 0  # 0.1 %: 0 empty .. 1000 full; beyond (flagged FAULT_RANGE) when out of range
        self.valid_echoes = 0  # echoes received in the last cycle
        self.agreeing_echoes = 0  # echoes in the winning cluster
        self.temperature_c100 = 2000
        self._d = array("i", [0] * samples)
        self._n = 0
        self._k = 0
        self._lost = 0
        self._result = False
        self._raw_lo = self._raw_hi = -1
        self._last_raw = -1

    def calibrate(self, empty_mm, full_mm):
        """Installer calibration: distances (mm) from the sensor to the empty bottom and to the full line."""
        if not 0 <= full_mm < empty_mm:
            raise ValueError("need 0 <= full_mm < empty_mm")
        self.empty_mm = int(empty_mm)
        self.full_mm = int(full_mm)

    def set_temperature(self, c100):
        """Air temperature in 0.01 degC (e.g. BME280.temperature) for the speed of sound."""
        self.temperature_c100 = int(c100)

    # -- one cycle, in steps ------------------------------------------------------
    def start(self):
        self._n = 0
        self._k = 0
        self._lost = 0
        self._raw_lo = 0x7FFFFFFF
        self._raw_hi = -1

    def _add(self, distance_mm, raw):
        if self._n < self.samples:
            self._d[self._n] = distance_mm
            self._n += 1
        if raw < self._raw_lo:
            self._raw_lo = raw
        if raw > self._raw_hi:
            self._raw_hi = raw

    def sample(self):
        """One blocking cycle; True when `distance_mm` / `level_permille` are fresh (maybe FAULT_RANGE)."""
        self.start()
        while True:
            wait = self.step()
            if wait < 0:
                return self._result
            if wait:
                time.sleep_ms(wait)

    async def sample_async(self):
        import asyncio

        self.start()
        while True:
            wait = self.step()
            if wait < 0:
                return self._result
            await asyncio.sleep_ms(wait)

    def _finish(self):
        n = self._n
        self.valid_echoes = n
        d = self._d
        # insertion sort in place (n <= samples, small)
        for i in range(1, n):
            v = d[i]
            j = i - 1
            while j >= 0 and d[j] > v:
                d[j + 1] = d[j]
                j -= 1
            d[j + 1] = v
        quorum = (self.samples + 2) // 3
        if n < quorum:
            self.agreeing_echoes = 0
            self._result = self._failed(FAULT_TIMEOUT if self._lost > self.samples // 2 else FAULT_NOISY)
            return
        # stuck: every raw word of this cycle identical, and identical to the previous cycle's
        unchanged = self._raw_lo == self._raw_hi and self._raw_lo == self._last_raw
        self._last_raw = self._raw_lo if self._raw_lo == self._raw_hi else -1
        if self._stuck(unchanged):
            self._result = self._failed(FAULT_STUCK)
            return
        # densest cluster: longest run d[i..j] with d[j] - d[i] <= tolerance; ties go to the farther run
        best_i = 0
        best_len = 0
        j = 0
        for i in range(n):
            if j < i:
                j = i
            tol = d[i] * _TOL_PERCENT // 100
            if tol < self.tolerance_mm:
                tol = self.tolerance_mm
            while j + 1 < n and d[j + 1] - d[i] <= tol:
                j += 1
            if j - i + 1 >= best_len:
                best_len = j - i + 1
                best_i = i
        self.agreeing_echoes = best_len
        if best_len < quorum:
            self._result = self._failed(FAULT_NOISY)
            return
        mid = best_i + (best_len - 1) // 2
        distance = d[mid] if best_len & 1 else (d[mid] + d[mid + 1] + 1) // 2
        self.distance_mm = distance
        span = self.empty_mm - self.full_mm
        self.level_permille = (self.empty_mm - distance) * 1000 // span
        tol = self.tolerance_mm
        self.fault = FAULT_RANGE if distance > self.empty_mm + tol or distance < self.full_mm - tol else 0
        self._result = True


class UltrasonicFillLevel(_FillLevel):
    """Trigger/echo module: a 10 us pulse on `trigger`, the echo pulse width on `echo` (time_pulse_us)."""

    def __init__(
        self,
        trigger,
        echo,
        *,
        empty_mm,
        full_mm,
        samples=9,
        max_mm=4500,
        gap_ms=60,
        tolerance_mm=20,
        stuck_cycles=3,
        pulse=None,
    ):
        super().__init__(empty_mm, full_mm, samples, tolerance_mm, stuck_cycles)
        if pulse is None:
            from machine import time_pulse_us as pulse
        self.trigger = trigger
        self.echo = echo
        self.gap_ms = gap_ms  # between pings: lets the last ping's echoes die out (HC-SR04: 60 ms)
        self._pulse = pulse
        # round trip to max_mm at the slowest speed of sound we meet (-30 degC, ~313 m/s), plus margin
        self.timeout_us = max_mm * 2000 // 313 + 2000
        trigger.value(0)

    def ping(self):
        """One measurement: the echo pulse width in microseconds, or negative (no echo / timeout)."""
        t = self.trigger
        t.value(0)
        time.sleep_us(2)
        t.value(1)
        time.sleep_us(10)
        t.value(0)
        try:
            return self._pulse(self.echo, 1, self.timeout_us)
        except OSError:
            return -3

    def distance_of(self, us):
        """Millimetres for an echo time, at the current air temperature (integer math)."""
        c10 = _C10_0C + self.temperature_c100 * _C10_PER_C100 // 10000
        return us * c10 // 20000

    def step(self):
        us = self.ping()
        if us > 0:
            self._add(self.distance_of(us), us)
        else:
            self._lost += 1
        self._k += 1
        if self._k >= self.samples:
            self._finish()
            return -1
        return self.gap_ms


_FRAME_HEAD = const(0xFF)
_TRIGGER = b"\x55"


class UartFillLevel(_FillLevel):
    """UART module: frames 0xFF H L SUM at 9600 baud, in auto-output mode or on request (0x55)."""

    def __init__(
        self,
        uart,
        *,
        empty_mm,
        full_mm,
        samples=9,
        triggered=False,
        frame_ms=100,
        tolerance_mm=20,
        stuck_cycles=5,
    ):
        super().__init__(empty_mm, full_mm, samples, tolerance_mm, stuck_cycles)
        self.uart = uart
        self.triggered = triggered
        self.frame_ms = frame_ms  # auto mode: one frame per ~100 ms; request mode: wait per request
        self.bad_frames = 0  # checksum errors since start-up
        self._rx = bytearray(32)
        self._state = 0
        self._hi = 0
        self._lo = 0
        self._bytes = 0
        self._readinto = getattr(uart, "readinto", None)

    def _drain(self, keep):
        """Read what the UART holds; parse frames into the cycle when `keep`. Returns bytes read."""
        total = 0
        rx = self._rx
        for _ in range(16):  # bounded: at most 512 bytes per call
            if self._readinto is not None:
                got = self._readinto(rx)
                data = rx
            else:
                data = self.uart.read(len(rx))
                got = len(data) if data else 0
            if not got:
                break
            total += got
            if keep:
                for i in range(got):
                    self._byte(data[i])
            if got < len(rx):
                break
        return total

    def _byte(self, b):
        s = self._state
        if s == 0:
            if b == _FRAME_HEAD:
                self._state = 1
        elif s == 1:
            self._hi = b
            self._state = 2
        elif s == 2:
            self._lo = b
            self._state = 3
        else:
            if (_FRAME_HEAD + self._hi + self._lo) & 0xFF == b:
                mm = (self._hi << 8) | self._lo
                if mm:
                    self._add(mm, mm)
                else:
                    self._lost += 1  # 0: the module saw no echo
                self._state = 0
            else:
                self.bad_frames += 1
                self._state = 1 if b == _FRAME_HEAD else 0

    def step(self):
        k = self._k
        self._k = k + 1
        if k == 0:
            # start of a cycle: drop what queued up since the last one (stale frames)
            self._drain(False)
            self._state = 0
            self._bytes = 0
            if self.triggered:
                self.uart.write(_TRIGGER)
            return self.frame_ms
        self._bytes += self._drain(True)
        if self._n >= self.samples or k > 2 * self.samples:
            if not self._bytes:
                # not a byte for the whole cycle: the module is absent or unpowered
                self.valid_echoes = 0
                self._result = self._failed(FAULT_MISSING)
                return -1
            self._finish()
            return -1
        if self.triggered:
            self.uart.write(_TRIGGER)
        return self.frame_ms
