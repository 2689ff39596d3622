"""Running MicroPython on the host: where things are, the unix port, CPython/MicroPython parity, pinned deps.

- `paths`: the repository, firmware, board files, build folder and the unix-port binary;
- `unix_port`: run a script on the unix port (`run`, `run_json`) at a board's heap;
- `parity`: run the same firmware code on CPython and on the unix port;
- `deps`: fetch the pinned MicroPython-only libraries (umqtt.simple) into build/;
- `firmware_module(name)`: import a pure firmware module (`lanterne.<name>`) on CPython.

The bottom of the host tools: it imports nothing else of `host_tools`.
"""

from __future__ import annotations

import importlib
import sys

from host_tools.runtime.paths import FIRMWARE


def firmware_module(name: str):
    """Import a pure firmware module (lanterne.<name>) on CPython: the same file the board runs."""
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))
    return importlib.import_module(f"lanterne.{name}")
