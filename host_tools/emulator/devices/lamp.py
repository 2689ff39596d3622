"""Simulated street lamp on a 0-10 V dimming interface, with the current-sense ADC of the board.

The PWM duty is the control voltage (duty x 10 V). The LED driver is a "dim-to-off"
one: below 0.5 V it is off, from 1 V up it delivers duty x `lamp_load_w` (clamped at
10 % below 1 V). The current is sensed on the LED supply (`lamp_v`, default 48 V)
through the board's shunt (`current_ohms`) and amplifier (`current_gain`): the ADC
pin sees I x ohms x gain, plus ~1 mV of noise. `lamp_failed` in the world: no
current whatever the duty.

Faults (world.inject("lamp", kind)): "stuck" -> the current-sense reading freezes.
"""

from __future__ import annotations

import random

from host_tools.emulator.devices.parts import register


class LampLoad:
    name = "lamp"
    fault_kinds = ("stuck",)  # a failed lamp is the world's `lamp_failed`, not a bus fault

    def __init__(self, world, pwm: int, current_adc: int | None = None, current_ohms: float = 0.1,
                 current_gain: float = 20.0, lamp_v: float = 48.0):  # fmt: skip
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

    def pwm_changed(self, pin: int, freq: int, duty_u16: int | None) -> None:
        self.duty_u16 = duty_u16

    @property
    def control_v(self) -> float:
        return 0.0 if not self.duty_u16 else self.duty_u16 / 65535 * 10.0

    def light_fraction(self) -> float:
        """Share of full light the lamp gives now (0 when off or failed)."""
        v = self.control_v
        if v < 0.5 or self.world.get("lamp_failed"):
            return 0.0
        return max(0.1, min(1.0, v / 10.0))

    def current_a(self) -> float:
        return self.world.get("lamp_load_w") * self.light_fraction() / self.lamp_v

    def adc_read_uv(self, pin: int) -> int:
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
        lamp_v=float(spec.get("lamp_v", 48.0)),
    )
