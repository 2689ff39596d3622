"""Simulated push button (the board file's `setup_button`): the world's `button` held down or not.

Wired as on the ESP32 boards Lanterne supports: the button pulls the GPIO to ground against a
pull-up (the DevKitC's BOOT button on GPIO0, the ESP32-POE's BUT1 on GPIO34), so the input
reads 0 while it is held and 1 otherwise.
"""

from __future__ import annotations


class Button:
    name = "button"

    def __init__(self, world, pin: int):
        self.world = world
        self.pins_in = [pin]

    def pin_read(self, pin: int) -> int:
        return 0 if self.world.get("button") else 1
