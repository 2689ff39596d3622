"""Simulated ultrasonic range finders over a waste bin: trigger/echo (HC-SR04 / JSN-SR04T) and UART frames.

What they see is `distance_mm` (sensor to the bin contents) in air at
`temperature_c`: the echo comes back after 2 d / c, c = 331.3 sqrt(1 + T/273.15) m/s
(the physical law; the firmware uses its linear approximation). With probability
`echo_outlier_ratio` an echo is spurious: mostly a nearer reflector (lid, bag,
wall seam: anywhere from 120 mm to the contents), sometimes a longer multipath
echo, sometimes none (the module then holds the echo line high for ~38 ms,
beyond any sane timeout). Real echoes jitter by a few microseconds.

Trigger/echo ("ultrasonic": spec keys trigger, echo): a high-then-low on the
trigger pin arms one ping; `time_pulse_us(echo, 1, timeout)` then returns the
echo width, -1 when the echo outlasts the timeout, -2 when no ping was armed.

UART ("ultrasonic_uart": spec key bus, optional "mode": "auto" | "triggered"):
frames 0xFF H L SUM (SUM = (0xFF + H + L) & 0xFF, H*256 + L mm). In "auto" mode
(A02YYUW, JSN-SR04T mode 2) a frame every 100 ms, of which the UART keeps the
last 64 (its receive buffer); in "triggered" mode one frame per 0x55 received.
A lost echo is sent as distance 0.

Faults (world.inject(<type>, kind)): "missing"/"nack" -> no echo / no bytes at
all; "stuck" -> the same echo time (or frame) over and over whatever the world.
"""

from __future__ import annotations

import math
import random
import time

from host_tools.emulator.devices.parts import register

LOST_ECHO_US = 38000  # HC-SR04 class modules time out their echo line after ~38 ms


def speed_of_sound(temperature_c: float) -> float:
    """m/s in dry air."""
    return 331.3 * math.sqrt(1.0 + temperature_c / 273.15)


class _Echoes:
    """The echo model shared by both variants: one call, one echo distance (mm) or None."""

    name = "ultrasonic"

    def __init__(self, world):
        self.world = world
        self.rng = random.Random(world.rng.random())
        self.pings = 0
        self.outliers = 0

    def _absent(self) -> bool:
        return self.world.fault(self.name, "missing") or self.world.fault(self.name, "nack")

    def echo_mm(self) -> float | None:
        self.pings += 1
        w = self.world
        d = max(20.0, w.noisy(w.get("distance_mm")))
        if self.rng.random() < w.get("echo_outlier_ratio"):
            self.outliers += 1
            kind = self.rng.random()
            if kind < 0.65:
                return self.rng.uniform(min(120.0, d), d * 0.9)
            if kind < 0.85:
                return d * self.rng.uniform(1.3, 2.0)
            return None
        return d


class UltrasonicPing(_Echoes):
    name = "ultrasonic"

    def __init__(self, world, trigger: int, echo: int):
        super().__init__(world)
        self.trigger = trigger
        self.echo = echo
        self.pins_out = [trigger]
        self.pins_in = [echo]
        self._level = 0
        self._armed = False
        self._stuck_us: int | None = None

    def pin_write(self, pin: int, level: int) -> None:
        if pin == self.trigger:
            if self._level and not level:
                self._armed = True  # falling edge after the >= 10 us trigger pulse
            self._level = level

    def pin_read(self, pin: int) -> int:
        return 0

    def next_change(self) -> None:
        return None  # its echo line reads 0 outside time_pulse_us

    def time_pulse_us(self, pin: int, level: int, timeout_us: int) -> int:
        if pin != self.echo or level != 1 or not self._armed or self._absent():
            return -2  # the echo line never went high
        self._armed = False
        if self.world.fault(self.name, "stuck") and self._stuck_us is not None:
            us = self._stuck_us
        else:
            mm = self.echo_mm()
            if mm is None:
                us = LOST_ECHO_US
            else:
                c = speed_of_sound(self.world.get("temperature_c"))
                us = int(round(2.0 * mm / c * 1000.0 + self.rng.gauss(0.0, 3.0)))
            self._stuck_us = us
        return -1 if us > timeout_us else us


def frame(mm: int) -> bytes:
    h, lo = (mm >> 8) & 0xFF, mm & 0xFF
    return bytes([0xFF, h, lo, (0xFF + h + lo) & 0xFF])


class UltrasonicUart(_Echoes):
    name = "ultrasonic_uart"
    FRAME_S = 0.1
    RX_FRAMES = 64

    def __init__(self, world, uart: str, mode: str = "auto"):
        super().__init__(world)
        if mode not in ("auto", "triggered"):
            raise ValueError(f"ultrasonic_uart mode must be 'auto' or 'triggered', not {mode!r}")
        self.uart = uart
        self.mode = mode
        self.clock = time.monotonic
        self._queue = bytearray()
        self._last = self.clock()
        self._stuck_frame: bytes | None = None

    def _frame(self) -> bytes:
        if self.world.fault(self.name, "stuck") and self._stuck_frame is not None:
            return self._stuck_frame
        mm = self.echo_mm()
        f = frame(0 if mm is None else max(1, min(0xFFFF, int(round(mm + self.rng.gauss(0.0, 0.7))))))
        self._stuck_frame = f
        return f

    def _advance(self) -> None:
        now = self.clock()
        if self.mode == "auto":
            n = int((now - self._last) / self.FRAME_S)
            if n > 0:
                self._last += n * self.FRAME_S
                if not self._absent():
                    for _ in range(min(n, self.RX_FRAMES)):
                        self._queue += self._frame()
                    del self._queue[: max(0, len(self._queue) - 4 * self.RX_FRAMES)]

    def uart_write(self, data: bytes) -> None:
        self._advance()
        if self.mode == "triggered" and not self._absent():
            for b in data:
                if b == 0x55:
                    self._queue += self._frame()

    def uart_read(self, n: int) -> bytes:
        self._advance()
        out = bytes(self._queue[:n])
        del self._queue[:n]
        return out


@register("ultrasonic")
def _ultrasonic(world, spec, board):
    return UltrasonicPing(world, trigger=int(spec["trigger"]), echo=int(spec["echo"]))


@register("ultrasonic_uart")
def _ultrasonic_uart(world, spec, board):
    return UltrasonicUart(world, uart=spec["bus"], mode=spec.get("mode", "auto"))
