"""Simulated supply-voltage sense: `supply_v` through the board's divider onto an ESP32 ADC pin.

The ADC pin sees supply_v / divider with ~2 mV of noise, like an ESP32 ADC1 input
(the HAL's ADC shim clips at the attenuation's full scale).

Faults (world.inject("supply", kind)): "missing"/"nack" -> the pin reads 0 V (divider
open); "stuck" -> the same reading over and over.
"""

from __future__ import annotations

import random

from host_tools.emulator.devices.parts import register

NOISE_UV = 2000.0


class SupplySense:
    name = "supply"

    def __init__(self, world, adc: int, divider: float):
        self.world = world
        self.adc = adc
        self.adc_pins = [adc]
        self.divider = float(divider)
        self.rng = random.Random(world.rng.random())
        self._last: int | None = None

    def adc_read_uv(self, pin: int) -> int:
        w = self.world
        if w.fault(self.name, "missing") or w.fault(self.name, "nack"):
            return 0
        if w.fault(self.name, "stuck") and self._last is not None:
            return self._last
        uv = max(0, int(w.noisy(w.get("supply_v")) / self.divider * 1e6 + self.rng.gauss(0.0, NOISE_UV)))
        self._last = uv
        return uv


@register("supply")
def _supply(world, spec, board):
    return SupplySense(world, adc=int(spec["adc"]), divider=spec.get("divider", 1.0))
