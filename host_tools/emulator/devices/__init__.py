"""Simulated parts wired to the virtual board's buses.

Every simulated part reads the world (a `World`, see `host_tools.emulator.world`)
and behaves on its bus like the datasheet says. The emulator's HAL server calls:

- I2C parts (`I2CDevice`): `write(data)` for a write transaction and
  `read(n)` for a read transaction, addressed to `self.address` on their bus.
  Raise `Nack` for a NACK (missing device, injected fault); the firmware then
  sees `OSError(errno.ENODEV)` as on the ESP32 port.
- Pin-level parts (ultrasonic trigger/echo, relay feedback ...) implement the
  hooks they need (`time_pulse_us`, `pin_read`, `uart_write`/`uart_read`).

Models are plain CPython, deterministic given the world and a seeded RNG, so a
test can also drive them directly (e.g. through an adafruit_bme280 bus adapter).
"""

from __future__ import annotations


class Nack(OSError):
    """The part did not acknowledge its address (absent, unpowered or fault-injected)."""


class I2CDevice:
    """Base for simulated I2C parts. Subclasses hold a register file and react to writes."""

    #: 7-bit address on the bus
    address: int = 0
    #: short name used in world fault keys, e.g. "bme280"
    name: str = "i2c"

    def __init__(self, world, address: int | None = None):
        self.world = world
        if address is not None:
            self.address = address

    def present(self) -> bool:
        """False when the world says this part is missing or NACKing."""
        return not self.world.fault(self.name, "missing") and not self.world.fault(self.name, "nack")

    def write(self, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def read(self, n: int) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError
