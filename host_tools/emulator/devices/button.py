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

    def next_change(self) -> None:
        return None  # it changes with the world only (the HAL's interrupt watch hears of that)


class AlarmSwitch:
    """The board file's `alarm` switch (a bin's lid or tilt switch): the world's `alarm` on or off.

    It drives its GPIO to the board file's `active` level ("high": to 3.3 V against a pull-down,
    "low": to ground against a pull-up) while the world's `alarm` is on, the other level otherwise.
    Firmware on a battery arms it as the ext0 deep-sleep wake source (host_tools/emulator/sleep.py)."""

    name = "alarm"

    def __init__(self, world, pin: int, active: str = "high"):
        self.world = world
        self.pins_in = [pin]
        self.active = 1 if active == "high" else 0

    def pin_read(self, pin: int) -> int:
        return self.active if self.world.get("alarm") else 1 - self.active

    def next_change(self) -> None:
        return None  # it changes with the world only
