"""What goes on a board's flash, and two ways to put it there.

`image_files(board, config)` maps every path on the board's filesystem to its
bytes: boot.py, main.py, the application package under /lib/lanterne, the
pinned MicroPython libraries (umqtt.simple) under /lib, board.json and
config.json. `stage()` writes that tree into a folder; `copy_to_flash()` drops
it straight into a virtual board's flash folder (fleets, benchmarks), and
`mpremote_copy()` sends it with unmodified mpremote over the serial port, the
way a technician does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from host_tools import boards
from host_tools.paths import FIRMWARE, MPYLIB


class DeployError(RuntimeError):
    pass


def firmware_files() -> dict[str, bytes]:
    files = {
        "boot.py": (FIRMWARE / "boot.py").read_bytes(),
        "main.py": (FIRMWARE / "main.py").read_bytes(),
    }
    for p in sorted((FIRMWARE / "lanterne").rglob("*.py")):
        files["lib/" + p.relative_to(FIRMWARE).as_posix()] = p.read_bytes()
    for p in sorted((FIRMWARE / "lib").rglob("*.py")):  # compatibility modules (ussl)
        files["lib/" + p.relative_to(FIRMWARE / "lib").as_posix()] = p.read_bytes()
    if not MPYLIB.exists():
        raise DeployError(f"{MPYLIB} is missing: run `make deps` (python -m host_tools.deps fetch)")
    for p in sorted(MPYLIB.rglob("*.py")):
        files["lib/" + p.relative_to(MPYLIB).as_posix()] = p.read_bytes()
    return files


_CROSS = None


def mpy_compile(source: bytes, name: str) -> bytes:
    """Compile a module to .mpy with mpy-cross (1.29, mpy v6.3), as the board's MicroPython loads it.

    Compiling on the host keeps the compiler's peak RAM off the board: at 100 KB of heap the
    application does not fit if the board has to compile it from source. One compile path
    with provisioning (`provision.MpyCross`, cached by source hash).
    """
    global _CROSS
    from host_tools.boardlink import ProvisionError
    from host_tools.provision import MpyCross

    try:
        if _CROSS is None:
            _CROSS = MpyCross()
        return _CROSS.compile(source, name)
    except ProvisionError as exc:
        raise DeployError(str(exc)) from None


def compiled(files: dict[str, bytes]) -> dict[str, bytes]:
    """Library modules (lib/**.py) as .mpy; boot.py, main.py and data files unchanged."""
    out = {}
    for rel, data in files.items():
        if rel.startswith("lib/") and rel.endswith(".py"):
            out[rel[:-3] + ".mpy"] = mpy_compile(data, rel[4:])
        else:
            out[rel] = data
    return out


def image_files(board: boards.Board, config: dict | None, *, mpy: bool = True) -> dict[str, bytes]:
    files = compiled(firmware_files()) if mpy else firmware_files()
    files["board.json"] = json.dumps(board.data, indent=1).encode()
    if config is not None:
        files["config.json"] = json.dumps(config, indent=1).encode()
    return files


def stage(board: boards.Board, config: dict | None, dest: str | Path, *, mpy: bool = True, romfs: bool = False) -> Path:
    """Write the board's files under `dest`, as they go on its filesystem. With `romfs`, the
    compiled library goes instead into a ROMFS image beside it, `romfs_path(dest)`, for
    `mpremote romfs deploy`."""
    dest = Path(dest)
    files = image_files(board, config, mpy=mpy)
    if romfs:
        rom, files = split_romfs(files)
        romfs_path(dest).parent.mkdir(parents=True, exist_ok=True)
        romfs_path(dest).write_bytes(romfs_image(rom))
    _write_tree(files, dest)
    return dest


def _write_tree(files: dict[str, bytes], dest: Path) -> None:
    for rel, data in files.items():
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)


def romfs_path(stage_dir: str | Path) -> Path:
    return Path(str(stage_dir) + ".romfs")


ROMFS_DIR = "lib/"  # what goes into the ROMFS partition (as /rom/lib/...): the compiled library


def romfs_image(files: dict[str, bytes]) -> bytes:
    """A VfsRom image (MicroPython's ROMFS format, written with mpremote's writer) of `files`.

    Keys are paths inside the image ("lib/lanterne/app.mpy"); the result is what
    `mpremote romfs build` makes of the same tree, byte for byte deterministic (sorted).
    """
    from mpremote.romfs import VfsRomWriter

    tree: dict = {}
    for rel, data in files.items():
        node = tree
        *dirs, name = rel.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[name] = data
    writer = VfsRomWriter()

    def add(node: dict) -> None:
        for name in sorted(node):
            if isinstance(node[name], dict):
                writer.opendir(name)
                add(node[name])
                writer.closedir()
            else:
                writer.mkfile(name, node[name])

    add(tree)
    return writer.finalise()


def split_romfs(files: dict[str, bytes]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(what goes into the ROMFS image, what goes onto the filesystem): .mpy modules in ROM
    run in place; boot.py, main.py and the data files stay on the read-write filesystem."""
    rom = {rel: data for rel, data in files.items() if rel.startswith(ROMFS_DIR) and rel.endswith(".mpy")}
    return rom, {rel: data for rel, data in files.items() if rel not in rom}


def copy_to_flash(
    board: boards.Board, config: dict | None, flash_dir: str | Path, *, mpy: bool = True, romfs: bool = True
) -> None:
    """Put the firmware on a virtual board's flash as the factory would program it: with a ROMFS
    partition the compiled library goes into it (in place, no heap), the rest onto the filesystem;
    without one (or romfs=False), everything onto the filesystem under /lib."""
    flash_dir = Path(flash_dir)
    size = board.romfs_bytes
    if not (romfs and mpy and size):
        if size and romfs_path(flash_dir).exists():  # an image left there would be mounted: erase it
            romfs_path(flash_dir).write_bytes(b"\xff" * size)
        stage(board, config, flash_dir, mpy=mpy)
        return
    rom, fs = split_romfs(image_files(board, config, mpy=True))
    image = romfs_image(rom)
    if len(image) > size:
        raise DeployError(f"the ROMFS image is {len(image)} bytes: more than the board's {size}-byte partition")
    _write_tree(fs, flash_dir)
    # beside the folder, where the virtual board keeps the partition: the image, then erased flash
    romfs_path(flash_dir).write_bytes(image + b"\xff" * (size - len(image)))
    for rel in rom:  # copies an earlier /lib layout left
        for old in (flash_dir / rel, flash_dir / (rel[:-4] + ".py")):
            old.unlink(missing_ok=True)


def mpremote_copy(port: str, stage_dir: str | Path, *, reset: bool = True, timeout: float = 120) -> str:
    """Copy a staged tree to the board with the mpremote CLI, in one chained invocation; its
    ROMFS image first (`mpremote romfs deploy`) when the stage has one."""
    stage_dir = Path(stage_dir)
    args = [sys.executable, "-m", "mpremote", "connect", port]
    if romfs_path(stage_dir).exists():
        args += ["romfs", "deploy", str(romfs_path(stage_dir)), "+"]
    for p in sorted(stage_dir.iterdir()):
        if p.is_dir():
            args += ["fs", "cp", "-r", str(p), ":", "+"]
        else:
            args += ["fs", "cp", str(p), ":" + p.name, "+"]
    args += ["reset"] if reset else ["soft-reset"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise DeployError(f"mpremote failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def clean_flash(flash_dir: str | Path) -> None:
    flash = Path(flash_dir)
    if flash.exists():
        shutil.rmtree(flash)
    flash.mkdir(parents=True)
