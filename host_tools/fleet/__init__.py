"""What a technician or installer does to a board: flash, build its image, provision, verify.

- `flash`: MicroPython onto the chip with esptool (ROM bootloader);
- `deploy`: what goes on a board's flash: firmware files, .mpy (mpy-cross), the ROMFS image;
- `boardlink`: a raw-REPL session with one board (mpremote as a library);
- `config`: the device config, validated with the firmware's own schema;
- `provision`, `first_status`, `fleet_csv`: one board, its first status, a fleet from a CSV;
- `verify`: read a board back and compare it with the registry;
- `registry`: the fleet registry (devices, boards, secrets), shared with the back office;
- `broker_files`: Mosquitto password/ACL files and config from the registry.

Every error a person can act on is a `ProvisionError`: one line, a hint, the field at fault.
"""

from __future__ import annotations

import os

# What `no serial port PORT` is followed by, wherever a command needs a board.
PORT_HINT = "check the cable and the path (ls /dev/ttyUSB* /dev/ttyACM*; a virtual board: lanterne emulate --port PATH)"


def missing_port(port: str) -> bool:
    """True when `port` names no device on this host (a pyserial URL such as rfc2217://... is not checked)."""
    return "://" not in port and not os.path.exists(port)


class ProvisionError(RuntimeError):
    """An error a person can act on: `str()` is one line, `hint` says what to do."""

    def __init__(self, message: str, hint: str | None = None, field: str | None = None):
        super().__init__(message)
        self.hint = hint
        self.field = field
