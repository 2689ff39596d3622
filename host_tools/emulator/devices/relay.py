"""Simulated bollard on a relay: the position input follows the relay after `travel_ms`; presence from the world.

Relay output 1 drives the bollard up; the position input reads 1 once it is up
(the up limit switch), 0 once down; it keeps the old level while travelling. The
presence input (loop detector) is the world's `presence`.

Faults (world.inject("relay", kind)): "stuck" -> the bollard is jammed: the position
input never changes; "missing"/"nack" -> the position switch is disconnected and
reads 0.
"""

from __future__ import annotations

import time

from host_tools.emulator.devices.parts import register


class BollardRelay:
    name = "relay"

    def __init__(self, world, pin: int, position_pin: int | None, presence_pin: int | None, travel_ms: int):
        self.world = world
        self.pin = pin
        self.position_pin = position_pin
        self.presence_pin = presence_pin
        self.travel_s = travel_ms / 1000.0
        self.pins_out = [pin]
        self.pins_in = [p for p in (position_pin, presence_pin) if p is not None]
        self.clock = time.monotonic
        self.position = 0  # 1 up, 0 down (starts down)
        self.moves = 0
        self._target = 0
        self._since = self.clock()

    def _advance(self) -> None:
        if self._target != self.position and self.clock() - self._since >= self.travel_s:
            if not self.world.fault(self.name, "stuck"):
                self.position = self._target
                self.moves += 1

    def pin_write(self, pin: int, level: int) -> None:
        self._advance()
        if pin == self.pin and level != self._target:
            self._target = level
            self._since = self.clock()  # reversing mid-travel: the full travel again (conservative)

    def move_by_hand(self, position: int) -> None:
        """A maintenance key moves the bollard at once, whatever the relay says (tests)."""
        self.position = self._target = 1 if position else 0
        self._since = self.clock()

    def next_change(self) -> float | None:
        """When the position input changes by itself (monotonic seconds): the end of the travel under
        way; None while the bollard stands still (or is jammed), so the HAL's interrupt watch sleeps."""
        self._advance()
        if self._target == self.position or self.world.fault(self.name, "stuck"):
            return None
        return self._since + self.travel_s

    def pin_read(self, pin: int) -> int:
        self._advance()
        if pin == self.presence_pin:
            return 1 if self.world.get("presence") else 0
        if self.world.fault(self.name, "missing") or self.world.fault(self.name, "nack"):
            return 0
        return self.position


@register("relay")
def _relay(world, spec, board):
    return BollardRelay(
        world,
        pin=int(spec["pin"]),
        position_pin=spec.get("position_pin"),
        presence_pin=spec.get("presence_pin"),
        travel_ms=int(spec.get("travel_ms", 3000)),
    )
