"""Simulated street lamp on a 0-10 V dimming interface, with the current-sense ADC of the board.

The PWM duty is the control voltage (duty x 10 V). The LED driver is a "dim-to-off" one: below
0.5 V it is off, from 1 V up it gives duty x full light (clamped at 10 % below 1 V), and draws
`lamp_load_w` x the world's `lamp_curve` at that level (input power against light level, linear
between its points, as the firmware's config field of the same syntax; docs/energy.md). The
current is sensed on the rail the lamp is fed from: `lamp_v` of the board file (the LED supply)
or, without it, the world's `supply_v` (the supply the board's own sensor measures). The ADC pin
sees I x `current_ohms` x `current_gain`, plus ~1 mV of noise. `lamp_failed` in the world: no
current whatever the duty.

Faults (world.inject("lamp", kind)): "stuck" -> the current-sense reading freezes; "dead_module"
-> half the LED modules are dark: half the power (and the light); "failing_driver" -> the driver
draws 60 % more than it should.

A reference meter a test reads (`energy_wh()`): the integral of the power this model draws,
over the host's clock, whatever the firmware measures. The power is re-read at every event the
model sees (a PWM change, an ADC read, a world quantity set); a fault takes effect at the next
one (the firmware reads the current every 2 s). A board that loses power or resets stops
driving its PWM: the lamp goes dark (board.py releases the outputs).
"""

from __future__ import annotations

import random
import threading
import time

from host_tools.emulator.devices.parts import register

DEAD_MODULE_SHARE = 0.5  # a luminaire of two LED modules with one dark
FAILING_DRIVER_FACTOR = 1.6


def parse_curve(text: str) -> list[tuple[float, float]]:
    """'10:15 50:53 100:100' -> [(0.10, 0.15), ...] (level, power) as fractions."""
    out = []
    for item in text.split():
        level, power = item.split(":")
        out.append((int(level) / 100, int(power) / 100))
    return out


def curve_fraction(curve: list[tuple[float, float]], x: float) -> float:
    """Input power (fraction of rated) at light level `x` (fraction), linear between the points."""
    if x <= 0:
        return 0.0
    l0 = p0 = 0.0
    for level, power in curve:
        if x <= level:
            return power if level == l0 else p0 + (power - p0) * (x - l0) / (level - l0)
        l0, p0 = level, power
    return p0


class LampLoad:
    name = "lamp"
    fault_kinds = ("stuck", "dead_module", "failing_driver")  # a failed lamp is the world's `lamp_failed`

    def __init__(self, world, pwm: int, current_adc: int | None = None, current_ohms: float = 0.1,
                 current_gain: float = 20.0, lamp_v: float | None = None, clock=time.monotonic):  # fmt: skip
        self.world = world
        self.pwm = pwm
        self.pwm_pins = [pwm]
        self.adc_pins = [current_adc] if current_adc is not None else []
        self.current_ohms = current_ohms
        self.current_gain = current_gain
        self.lamp_v = lamp_v
        self.duty_u16: int | None = None
        self.rng = random.Random(world.rng.random())
        self._last: int | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._ws = 0.0  # reference meter: watt-seconds drawn so far
        self._w = 0.0  # the power drawn since _t
        self._t = clock()
        world.subscribe(lambda what, values: self._advance())

    # -- the reference meter ----------------------------------------------------------
    def _advance(self) -> None:
        with self._lock:
            now = self._clock()
            self._ws += self._w * (now - self._t)
            self._t = now
            self._w = self.power_w()

    def energy_wh(self) -> float:
        """Watt-hours this lamp has drawn since the model was built (the simulated truth)."""
        self._advance()
        return self._ws / 3600.0

    # -- the physics --------------------------------------------------------------------
    def pwm_changed(self, pin: int, freq: int, duty_u16: int | None) -> None:
        self._advance()
        self.duty_u16 = duty_u16
        self._advance()

    @property
    def control_v(self) -> float:
        return 0.0 if not self.duty_u16 else self.duty_u16 / 65535 * 10.0

    def light_fraction(self) -> float:
        """Share of full light the driver is asked for now (0 when off or failed)."""
        v = self.control_v
        if v < 0.5 or self.world.get("lamp_failed"):
            return 0.0
        return max(0.1, min(1.0, v / 10.0))

    def power_w(self) -> float:
        """Input power the lamp draws now, W."""
        w = self.world
        p = w.get("lamp_load_w") * curve_fraction(parse_curve(w.get("lamp_curve")), self.light_fraction())
        if w.fault(self.name, "dead_module"):
            p *= DEAD_MODULE_SHARE
        if w.fault(self.name, "failing_driver"):
            p *= FAILING_DRIVER_FACTOR
        return p

    def rail_v(self) -> float:
        """The voltage of the rail the lamp is fed from (and its current sensed on)."""
        return self.lamp_v if self.lamp_v else self.world.get("supply_v")

    def current_a(self) -> float:
        v = self.rail_v()
        return self.power_w() / v if v > 0 else 0.0

    def adc_read_uv(self, pin: int) -> int:
        self._advance()
        if self.world.fault(self.name, "stuck") and self._last is not None:
            return self._last
        uv = self.current_a() * self.current_ohms * self.current_gain * 1e6 + self.rng.gauss(0.0, 1000.0)
        self._last = max(0, int(uv))
        return self._last


@register("lamp")
def _lamp(world, spec, board):
    return LampLoad(
        world,
        pwm=int(spec["pwm"]),
        current_adc=spec.get("current_adc"),
        current_ohms=float(spec.get("current_ohms", 0.1)),
        current_gain=float(spec.get("current_gain", 20.0)),
        lamp_v=float(spec["lamp_v"]) if spec.get("lamp_v") else None,
    )
