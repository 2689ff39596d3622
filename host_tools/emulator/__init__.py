"""The virtual board: the MicroPython unix port on a pty, HAL shims, a simulated world, fault injection."""

from pathlib import Path

# The emulator's own module path: the MicroPython side of the virtual board and its HAL shims.
ROM = Path(__file__).resolve().parent / "rom"
