"""A virtual ESP32 board: the MicroPython unix port behind a pty, rebooted like the real thing.

`VirtualBoard` owns one pty (its serial port, optionally symlinked at a path
such as /tmp/ttyLANTERNE0), one flash folder, one simulated world, and at any
time at most one interpreter process: `micropython -X heapsize=N rom/_board.py`.
It copies bytes between the pty and the interpreter, turning a Ctrl-C byte into
a KeyboardInterrupt while user code runs (the ESP32 raises it from its UART
interrupt, between two bytecodes: see `_interrupt`) and `\\n` into `\\r\\n` as
the ESP32's cooked stdout does.

Reboots: the interpreter exits with EXIT_SOFT_* after printing `MPY: soft
reboot` and is started again with the REPL mode it was in; `machine.reset()`,
the watchdog, a crash and `hard_reset()` start a fresh interpreter with the
matching `machine.reset_cause()`; `power_cut()` SIGKILLs it at once and leaves
the flash folder exactly as it was, until `power_on()`.

`host_tools.emulator.supervisor.Emulator` runs any number of them on one asyncio loop.

One cohesive module over 500 lines: a board's life cycle (power, boots, REPL modes,
watchdog, ROM download mode, console) is one state machine, and its heap budget is
computed where the interpreter is started.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import termios
import threading
import time
import tty
from pathlib import Path

from host_tools import boards as boards_mod
from host_tools.emulator import ROM, frozen
from host_tools.emulator.devices.parts import Parts
from host_tools.emulator.flash_tmpfs import FlashMountError, TmpfsFlash
from host_tools.emulator.hal import HalServer, follow_link
from host_tools.emulator.netsim import NtpServer
from host_tools.emulator.sleep import DeepSleep
from host_tools.emulator.world import World
from host_tools.runtime.paths import BUILD, micropython_binary

EXIT_SOFT_FRIENDLY = 80
EXIT_SOFT_RAW = 81
# How long a Ctrl-C waits for the interpreter to take it from its Ctrl-C channel before it is
# sent as SIGINT after all (see VirtualBoard._interrupt).
INTERRUPT_GRACE_S = 1.0

# Boot kind -> machine.reset_cause(), as the ESP32 port maps ESP-IDF's reset reasons:
# power-on/brown-out -> PWRON_RESET, EN pin -> HARD_RESET, machine.reset()/panic -> SOFT_RESET.
RESET_CAUSE = {"power": 1, "hard": 2, "wdt": 3, "deepsleep": 4, "software": 5, "panic": 5}
ROM_BOOT_LINES = {
    "power": "rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
    "hard": "rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
    "software": "rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
    "wdt": "rst:0x7 (TG0WDT_SYS_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
    "deepsleep": "rst:0x5 (DEEPSLEEP_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
    "panic": "rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
}

# The unix port here is a 64-bit build: every heap object is bigger than on the ESP32 (GC
# blocks of 32 bytes instead of 16, 8-byte pointers); bytecode and strings are not. The board's
# heap is multiplied by the measured ratio of the smallest heap the same firmware runs in on this
# port to the smallest it runs in on a 32-bit build (docs/emulator.md, "Heap"). The ratio depends
# on what the heap holds: with the firmware's bytecode in the heap (modules imported from the
# filesystem) it is HEAP_SCALE; with the bytecode in the ROMFS partition the heap holds objects
# only and the ratio is HEAP_SCALE_ROMFS. LANTERNE_HEAP_SCALE overrides both (1.0 for a 32-bit
# micropython given in LANTERNE_MICROPYTHON). Measured 2026-12-07 on a quiet machine
# (`python -m host_tools.bench.heap_scale`, 32- and 64-bit builds of one source): ROMFS 105 KB
# against 69 KB, 1.52; filesystem 163 KB against 123 KB, 1.325. (1.65 and 1.40 before: measured
# on the firmware of 2026-11, they gave every board ~8 % more heap than the 32-bit build says.)
HEAP_SCALE = float(os.environ.get("LANTERNE_HEAP_SCALE", "1.325"))
HEAP_SCALE_ROMFS = float(os.environ.get("LANTERNE_HEAP_SCALE", "1.52"))

# Heap the ROM itself (shims + REPL) takes beyond a bare interpreter; added to the board's
# heap size so the firmware sees what it would see on the board. Measured once per process.
_BARE_ALLOC = 2464
_overhead_cache: dict[str, int] = {}


def rom_heap_overhead() -> int:
    digest = hashlib.sha256()
    for p in sorted(ROM.glob("*.py")):
        digest.update(p.read_bytes())
    digest.update(frozen.digest().encode())  # the image's frozen package: its buffer and names are the ROM's
    binary = Path(micropython_binary())
    digest.update(f"{binary.resolve()}:{binary.stat().st_size}".encode())
    key = digest.hexdigest()[:16]
    if key in _overhead_cache:
        return _overhead_cache[key]
    cache = BUILD / f"rom-overhead-{key}"
    if cache.exists():
        _overhead_cache[key] = int(cache.read_text())
        return _overhead_cache[key]
    # Boot the ROM once on an empty flash with a big heap and read what it allocated.
    with tempfile.TemporaryDirectory() as tmp:
        # the flash folder inside the temp dir, so the files kept beside it go with it; on a loop
        # of its own in a thread of its own, so a caller already inside an asyncio loop may ask
        result: list = []
        thread = threading.Thread(target=lambda: result.append(asyncio.run(_booted_alloc(Path(tmp) / "flash"))))
        thread.start()
        thread.join()
        if not result:
            raise RuntimeError("the virtual board's ROM did not boot to measure its heap overhead")
        alloc = result[0]
    overhead = max(0, alloc - _BARE_ALLOC) + 1024  # + slack for fragmentation of the ROM's blocks
    _overhead_cache[key] = overhead
    with contextlib.suppress(OSError):
        BUILD.mkdir(parents=True, exist_ok=True)
        cache.write_text(str(overhead))
    return overhead


async def _booted_alloc(flash: Path) -> int:
    """Boot the ROM once on an empty flash with a big heap: what it allocated."""
    hal = HalServer()
    await hal.start()
    board_file = boards_mod.load("esp32-devkitc")
    # 512 KB beside the ROMFS partition's buffer (pinned at the start of the heap, not counted)
    heap = 512 * 1024 + romfs_heap(board_file.romfs_bytes or 0)
    board = VirtualBoard(board_file, flash, hal, heap_override=heap)
    try:
        await board.start(power_on=True)
        await asyncio.wait_for(board.booted_event.wait(), 30)
        return board.booted_alloc
    finally:
        await board.close()
        await hal.stop()


def romfs_heap(size: int) -> int:
    """Heap rom/_romfs.py's partition buffer of `size` bytes takes on this port (measured: the
    instance and its bytearray take 4 GC blocks beside the data)."""
    block = 32  # 64-bit GC block; on a 32-bit port (16) this overstates by a few bytes
    return 4 * block + (size + block - 1) // block * block


class VirtualBoard:
    def __init__(
        self,
        board: boards_mod.Board,
        flash_dir: str | Path,
        hal: HalServer,
        *,
        port_path: str | Path | None = None,
        world: World | None = None,
        serial: str | None = None,
        heap_override: int | None = None,
        board_heap: int | None = None,
        console_limit: int = 1 << 20,
        log_path: str | Path | None = None,
        flash_image: str | Path | None = None,
        blank: bool = False,
        radio: str | None = None,
        flash_tmpfs: bool = False,
    ):
        self.board = board
        self.flash = Path(flash_dir).resolve()
        self.flash.mkdir(parents=True, exist_ok=True)
        self.hal = hal
        self.port_path = Path(port_path) if port_path else None
        self.world = world or World()
        self.parts = Parts(board.data, self.world)
        for part in self.parts.parts:  # parts with state of their own (a modem's NVM) keep it beside the flash
            attach = getattr(part, "attach_board", None)
            if attach is not None:
                attach(self.flash, radio)
        self.token = hashlib.sha256(os.urandom(16)).hexdigest()[:16]
        self.serial = serial or hashlib.sha256(str(self.flash).encode()).hexdigest()[:12]
        self.heap_override = heap_override
        self.board_heap = board_heap  # ESP32 heap bytes instead of the board file's heap_bytes
        self.romfs: tuple[Path, int, int] | None = None  # (file, offset, size) of the ROMFS partition
        self._heap_scale = HEAP_SCALE  # the running interpreter's (see heap_scale)
        self.run_dir = Path(tempfile.mkdtemp(prefix="lanterne-board-"))
        self.nvs_dir = self.flash.parent / (self.flash.name + ".nvs")
        self.nvs_dir.mkdir(exist_ok=True)
        self.console = collections.deque()
        self._console_len = 0
        self._console_limit = console_limit
        self._console_total = 0
        self.log_path = Path(log_path) if log_path else None
        self.proc: asyncio.subprocess.Process | None = None
        self.powered = False
        self.executing = False
        self.boots = 0
        self.boot_kind = "power"
        self.booted_alloc: int | None = None
        self.booted_free: int | None = None
        self.booted_event = asyncio.Event()
        self.reset_log: list[str] = []
        self.listening: dict[tuple[str, int], int] = {}  # (board ip, port) -> loopback port on the host
        self.dropped_input = 0
        self._pending_reset: tuple[str, int] | None = None
        self.sleep = DeepSleep(self)  # the RTC domain: memory, clock, wake sources; deep sleeps (sleep.py)
        self._started_at = time.monotonic()  # when the running interpreter started
        self._wdt_timeout: float | None = None
        self._wdt_deadline: float | None = None
        self._wdt_timer: asyncio.TimerHandle | None = None  # one timer at the deadline (not a poll)
        self._tasks: list[asyncio.Task] = []
        self._master = self._slave = None
        self._closing = False
        self.ntp: NtpServer | None = None  # the board's simulated time server (netsim.py)
        self.requests: collections.deque | None = None  # (time, HAL request line), when watched
        self._changed = asyncio.Event()  # set (and replaced) whenever the board prints
        self._intr_writer: asyncio.StreamWriter | None = None  # the interpreter's Ctrl-C channel
        self._intr_sent = 0  # Ctrl-Cs written on it, and answered (KeyboardInterrupt raised)
        self._intr_taken = 0
        self.interrupt_signals = 0  # Ctrl-Cs that went as SIGINT after all (no channel, or not taken)
        # The raw SPI flash (bootloader, partition table, MicroPython) beside the folder, when
        # the board is emulated from the ROM up: `blank` makes a factory-fresh, erased chip that
        # needs `lanterne flash` before MicroPython runs. Without it the board comes with
        # MicroPython already flashed (the usual case for firmware tests).
        self.rom = None
        self.running_app: str | None = None
        self.download_mode = False
        image = Path(flash_image) if flash_image else self.flash.parent / (self.flash.name + ".flash.bin")
        if blank or flash_image or image.exists():
            from host_tools.emulator.rombootloader import RomBootloader, SimulatedFlash

            size = int(board.data.get("flash", {}).get("size_mb", 4)) * 1024 * 1024
            if blank and image.exists():
                image.unlink()
            self.spi_flash = SimulatedFlash(image, size)
            mac = "24:0a:c4:" + ":".join(self.serial[i : i + 2] for i in range(6, 12, 2))
            self.rom = RomBootloader(self.spi_flash, mac=mac, download=False, on_exit=self._rom_exit)
            self.rom.pending_output()
        # flash_tmpfs: the folder backed by a tmpfs of the partition's size, so a write past it
        # fails with ENOSPC (flash_tmpfs.py); FlashMountError, nothing mounted, where the host refuses.
        self.tmpfs: TmpfsFlash | None = None
        if flash_tmpfs:
            tmpfs = TmpfsFlash(self.flash, self.fs_bytes())
            try:
                tmpfs.mount()
            except FlashMountError:
                shutil.rmtree(self.run_dir, ignore_errors=True)
                raise
            self.tmpfs = tmpfs

    def fs_bytes(self) -> int:
        """The board's filesystem partition (board file: flash.fs_bytes)."""
        return int(self.board.data.get("flash", {}).get("fs_bytes", 2 * 1024 * 1024))

    # -- lifecycle ----------------------------------------------------------------
    async def start(self, power_on: bool = True) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        attrs = termios.tcgetattr(self._slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        fl = fcntl.fcntl(self._master, fcntl.F_GETFL)
        fcntl.fcntl(self._master, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        self.pty_name = os.ttyname(self._slave)
        if self.port_path:
            with contextlib.suppress(FileNotFoundError):
                self.port_path.unlink()
            self.port_path.symlink_to(self.pty_name)
        loop = asyncio.get_running_loop()
        loop.add_reader(self._master, self._on_serial_input)
        self.hal.register(self.token, self)
        follow_link(self.world, self.run_dir)
        self.ntp = await NtpServer(self.world).start()
        if power_on:
            await self.power_on()

    async def close(self) -> None:
        self._closing = True
        self.sleep.cancel()
        if self._wdt_timer is not None:
            self._wdt_timer.cancel()
        for t in self._tasks:
            t.cancel()
        await self._kill()
        self.hal.unregister(self.token)
        for part in self.parts.parts:
            detach = getattr(part, "detach_board", None)
            if detach is not None:
                detach()
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            os.close(self._slave)
            self._master = None
        if self.port_path and self.port_path.is_symlink():
            self.port_path.unlink()
        if self.ntp is not None:
            self.ntp.close()
        if self.tmpfs is not None:
            self.tmpfs.unmount()  # what the board wrote goes back to the folder underneath
        shutil.rmtree(self.run_dir, ignore_errors=True)

    async def power_on(self) -> None:
        if self.powered:
            return
        self.powered = True
        self._boot("power")

    def _boot(self, kind: str) -> None:
        """What the ESP32 does after a reset: its ROM checks the flash, then MicroPython runs."""
        if self.rom is not None:
            check = self.spi_flash.boot_check()
            if not check.ok:
                line = ROM_BOOT_LINES.get(kind, ROM_BOOT_LINES["power"])
                # The log ends with the failure itself, in the words the chip prints: once.
                log = "\r\n".join(check.log or (check.message,))
                self._emit(f"\r\n{line}\r\n{log}\r\n".encode())
                self.boot_kind = "no-firmware"
                self.reset_log.append("no-firmware")
                return
            self._wipe_erased_filesystem(check)
            self.running_app = check.app_label  # what the bootloader chose (otadata, rollback)
            parts = [p for p in getattr(check, "partitions", ()) if getattr(p, "label", "") == "romfs"]
            self.romfs = (self.spi_flash.path, parts[0].offset, parts[0].size) if parts else None
        else:
            self.romfs = self._romfs_file()
        self._start_interpreter(kind)

    def _romfs_file(self) -> tuple[Path, int, int] | None:
        # A board emulated without its raw SPI flash keeps the ROMFS partition (board file:
        # flash.romfs_bytes) in a file beside the folder; a new one is erased flash.
        size = self.board.romfs_bytes
        if not size:
            return None
        path = boards_mod.romfs_path(self.flash)
        if not path.exists() or path.stat().st_size != size:
            old = path.read_bytes()[:size] if path.exists() else b""
            path.write_bytes(old + b"\xff" * (size - len(old)))
        return path, 0, size

    def _wipe_erased_filesystem(self, check) -> None:
        # The files live in the flash's "vfs" partition: an erased partition (erase-flash) means
        # MicroPython formats an empty filesystem at its next boot.
        for p in getattr(check, "partitions", ()):
            if getattr(p, "label", "") == "vfs" and self.spi_flash.is_erased(p.offset, min(p.size, 65536)):
                if any(self.flash.iterdir()):
                    shutil.rmtree(self.flash)
                    self.flash.mkdir()
                    self._emit(b"Filesystem erased: formatting littlefs\r\n")
                # mark the partition used so the next boots keep the files
                self.spi_flash.write(p.offset, b"littlefs")

    async def enter_download(self) -> None:
        """Hold BOOT and press EN: the ROM serial bootloader waits for esptool."""
        if self.rom is None:
            raise RuntimeError("this virtual board was started without a flash image (use --blank or --image)")
        await self._kill()
        self._wdt_timeout = self._wdt_deadline = None
        self.powered = True
        self.download_mode = True
        self.rom.reset(download=True)
        self._emit(self.rom.pending_output())

    def _rom_exit(self, why: str) -> None:
        # esptool asked the ROM to leave the loader (FLASH_END with reboot/run).
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.hard_reset("power")))

    async def power_cut(self) -> None:
        """The supply drops now: the interpreter dies mid-instruction (or the sleep ends); the flash
        stays as it is, RTC memory and the RTC clock are lost."""
        self.powered = False
        self._wdt_timeout = self._wdt_deadline = None
        self.sleep.cancel()
        self.sleep.lose()
        await self._kill()

    async def hard_reset(self, kind: str = "hard") -> None:
        """The EN (reset) line: a fresh interpreter, machine.reset_cause() per `kind`."""
        self.powered = True
        self.sleep.cancel()
        await self._kill()
        self._wdt_timeout = self._wdt_deadline = None
        if self.download_mode:
            self.download_mode = False
            self.rom.reset(download=False)
            self.rom.pending_output()
        self._boot(kind)

    async def _kill(self) -> None:
        proc = self.proc
        self.proc = None
        self._pending_reset = None  # a reset or sleep the dying interpreter asked for is moot
        self.executing = False
        self._radio_off()
        if proc and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def heap_bytes(self) -> int:
        if self.heap_override:
            return self.heap_override
        heap = self.board.heap_bytes if self.board_heap is None else self.board_heap
        return int(heap * self.heap_scale()) + rom_heap_overhead() + self._tls_allowance() + self._romfs_pinned()

    def heap_scale(self) -> float:
        """HEAP_SCALE_ROMFS when the running interpreter's firmware runs from a valid ROMFS image,
        else HEAP_SCALE (read from the partition as each interpreter starts)."""
        return self._heap_scale

    def _romfs_valid(self) -> bool:
        # A valid image at the start of either half: Lanterne keeps two library slots in the
        # partition (docs/ota.md), and the firmware runs from whichever one its boot selects.
        from mpremote.romfs import VfsRomWriter

        if not self.romfs:
            return False
        path, offset, size = self.romfs
        try:
            with open(path, "rb") as f:
                for at in (0, size // 2):
                    f.seek(offset + at)
                    if f.read(3) == VfsRomWriter.ROMFS_HEADER:
                        return True
        except OSError:
            pass
        return False

    def rom_shortfall(self) -> int:
        """Bytes by which the ROM took more of the heap at its last boot than `rom_heap_overhead()`
        gave this board for it (0: the firmware had the whole heap its board file says). A heap
        floor that fails with a shortfall failed on the emulator's accounting, not the firmware."""
        if self.booted_alloc is None:
            return 0
        return max(0, self.booted_alloc - _BARE_ALLOC - rom_heap_overhead())

    def esp32_heap(self, alloc: int) -> int:
        """A `gc.mem_alloc()` the firmware reported on this board, in ESP32-equivalent bytes."""
        return int((alloc - self._romfs_pinned() - rom_heap_overhead()) / self.heap_scale())

    def _romfs_pinned(self) -> int:
        # The ROMFS partition is mapped flash on the chip, a buffer at the start of the heap here
        # (rom/_romfs.py): the heap grows by exactly what that buffer takes.
        return romfs_heap(self.romfs[2]) if self.romfs else 0

    def _tls_allowance(self) -> int:
        # On the ESP32, mbedtls allocates its TLS session from the IDF heap, beside the
        # MicroPython heap; the unix port takes it from the GC heap. A board configured for
        # mqtts:// gets the board file's idf_heap_bytes on top (mbedtls buffers are bytes:
        # no 64-bit scaling). Measured: a session peaks at ~15 KB in the GC heap here. The broker
        # is config.json's, or its last known good's when config.json has none (firmware config.py).
        for name in ("config.json", "config.lkg.json"):
            try:
                cfg = json.loads((self.flash / name).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(cfg, dict) and str(cfg.get("broker", "")).startswith("mqtt"):
                return int(self.board.data.get("idf_heap_bytes", 65536)) if cfg["broker"].startswith("mqtts://") else 0
        return 0

    def _start_interpreter(self, kind: str) -> None:
        self._radio_off()
        self.boot_kind = kind
        self.boots += 1
        self._heap_scale = HEAP_SCALE_ROMFS if self._romfs_valid() else HEAP_SCALE
        self.booted_event.clear()
        self._started_at = time.monotonic()
        self.reset_log.append(kind)
        if kind in ROM_BOOT_LINES:
            self._emit(("\r\n" + ROM_BOOT_LINES[kind] + "\r\n").encode())
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "MICROPYPATH": str(ROM),
            "LANTERNE_HAL_PORT": str(self.hal.port),
            "LANTERNE_BOARD_TOKEN": self.token,
            "LANTERNE_FLASH": str(self.flash),
            "LANTERNE_FS_BYTES": str(self.fs_bytes()),
            "LANTERNE_FLASH_TMPFS": "1" if self.tmpfs is not None else "",
            "LANTERNE_RUN_DIR": str(self.run_dir),
            "LANTERNE_NVS": str(self.nvs_dir),
            "LANTERNE_BOOT": kind,
            "LANTERNE_RESET_CAUSE": str(RESET_CAUSE.get(kind, self._last_cause())),
            "LANTERNE_SERIAL": self.serial,
            "LANTERNE_NTP_PORT": str(self.ntp.port if self.ntp else 0),
            **self.sleep.env(kind),  # RTC memory and clock (kept or lost by this reset), wake reason
        }
        if self.romfs:
            env["LANTERNE_ROMFS"] = str(self.romfs[0])
            env["LANTERNE_ROMFS_OFFSET"] = str(self.romfs[1])
            env["LANTERNE_ROMFS_BYTES"] = str(self.romfs[2])
            # the Lanterne image (the one with a ROMFS partition) freezes the OTA package
            env["LANTERNE_FROZEN_IMAGE"] = str(frozen.image())
            env["LANTERNE_FROZEN_MODULES"] = " ".join(frozen.modules())
        if self.rom is not None:  # the raw SPI flash, for esp32.Partition (rom/esp32.py)
            env["LANTERNE_SPI_FLASH"] = str(self.spi_flash.path)
            env["LANTERNE_RUNNING_APP"] = self.running_app or ""
        self._tasks = [t for t in self._tasks if not t.done()]  # (a soak's board boots hundreds of times)
        self._tasks.append(asyncio.create_task(self._run_interpreter(env)))

    def _last_cause(self) -> int:
        for kind in reversed(self.reset_log):
            if kind in RESET_CAUSE:
                return RESET_CAUSE[kind]
        return 1

    async def _run_interpreter(self, env: dict[str, str]) -> None:
        proc = await asyncio.create_subprocess_exec(
            micropython_binary(),
            "-X",
            f"heapsize={self.heap_bytes()}",
            str(ROM / "_board.py"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.proc = proc
        while True:
            chunk = await proc.stdout.read(4096)
            if not chunk:
                break
            self._emit(chunk.replace(b"\n", b"\r\n"))
        code = await proc.wait()
        if self.proc is not proc or self._closing:
            return  # killed on purpose (power cut, hard reset, close)
        self.proc = None
        self.executing = False
        if self._pending_reset:
            kind, arg = self._pending_reset
            self._pending_reset = None
            if kind == "deepsleep":
                self.sleep.start(arg, awake_s=time.monotonic() - self._started_at)  # boots again on waking
            else:
                self._boot(kind)
        elif code == EXIT_SOFT_FRIENDLY:
            self._start_interpreter("soft-friendly")
        elif code == EXIT_SOFT_RAW:
            self._start_interpreter("soft-raw")
        elif code == 0:
            return
        else:
            # The interpreter died (abort, fatal error): the ESP32 panics and reboots.
            self._emit(b"\r\nGuru Meditation Error: interpreter exited with status %d. Rebooting...\r\n" % code)
            self._boot("panic")

    # -- serial port ------------------------------------------------------------
    def _emit(self, data: bytes) -> None:
        self.console.append(data)
        self._console_len += len(data)
        self._console_total += len(data)
        while self._console_len > self._console_limit and len(self.console) > 1:
            self._console_len -= len(self.console.popleft())
        if self.log_path:
            with open(self.log_path, "ab") as f:
                f.write(data)
        if self._master is not None:
            try:
                os.write(self._master, data)
            except (BlockingIOError, OSError):
                pass  # nobody reading the port: bytes are lost, as on a UART with no listener
        self._notify()

    def _notify(self):
        # Wake every wait_for() on this output, then start a new generation for the next.
        self._changed.set()
        self._changed = asyncio.Event()

    def _on_serial_input(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, OSError):
            return
        if data:
            self._inject(data)

    def _inject(self, data: bytes) -> None:
        if self.download_mode:
            out = self.rom.feed(data)
            if out:
                self._emit(out)
            return
        # Ctrl-C while user code runs: KeyboardInterrupt (SIGINT), the byte itself is consumed.
        # Otherwise it is an ordinary byte for the REPL, as on the ESP32.
        if b"\x03" in data and self.executing and self.proc is not None:
            before, _, after = data.partition(b"\x03")
            self._to_interpreter(before)
            self.executing = False
            self._interrupt()
            self._to_interpreter(after)
        else:
            self._to_interpreter(data)

    def _interrupt(self) -> None:
        """A Ctrl-C while user code runs: KeyboardInterrupt at the interpreter's next bytecode.

        Not SIGINT first: this unix port (threads, no GIL) raises KeyboardInterrupt from inside
        its signal handler, in whatever C code runs. Out of the garbage collector, that leaves
        the heap locked for good: the next allocation fails ("MemoryError: memory allocation
        failed, heap is locked") and the board reboots. So the byte goes on the interpreter's
        Ctrl-C channel; the ROM raises KeyboardInterrupt itself where user code calls it (HAL
        requests, select.poll, sleeps: rom/_hal.py) and answers. Code that reaches none of those
        within INTERRUPT_GRACE_S (a long pure computation, a long system call) gets the signal."""
        proc = self.proc
        writer = self._intr_writer
        if writer is None or writer.is_closing():
            self._signal_interrupt(proc)
            return
        writer.write(b"\x03")
        self._intr_sent += 1
        asyncio.get_running_loop().call_later(
            INTERRUPT_GRACE_S, self._interrupt_not_taken, proc, writer, self._intr_sent
        )

    def _interrupt_not_taken(self, proc, writer, sent: int) -> None:
        if self.proc is proc and self._intr_writer is writer and self._intr_taken < sent:
            self._signal_interrupt(proc)

    def _signal_interrupt(self, proc) -> None:
        if proc is None or proc.returncode is not None:
            return
        self.interrupt_signals += 1
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)

    def _to_interpreter(self, data: bytes) -> None:
        if not data:
            return
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            # Between two interpreters (a reset, a reboot) nothing reads the UART: like the
            # ESP32, whose UART is not set up yet while the ROM and bootloader run, the bytes
            # are lost. (Buffering them would hand a tool's Ctrl-C to the next boot as a
            # plain byte that main.py never reads.)
            self.dropped_input += len(data)
            return
        proc.stdin.write(data)

    def console_bytes(self) -> bytes:
        return b"".join(self.console)

    # -- HAL hooks ----------------------------------------------------------------
    def on_hal_connected(self) -> None:
        pass

    def on_interrupt_channel(self, writer, closed=None) -> None:
        # The interpreter opened its Ctrl-C channel (at boot), or it closed (writer None).
        if writer is not None:
            self._intr_writer = writer
            self._intr_sent = self._intr_taken = 0
        elif self._intr_writer is closed:
            self._intr_writer = None

    def on_interrupt_taken(self, n: int) -> None:
        self._intr_taken += n

    def on_listen(self, ip: str | None, port: int, host_port: int) -> None:
        # A listening socket of the firmware (its setup page): reachable from the host over loopback.
        for key in [k for k, v in self.listening.items() if v == host_port]:
            del self.listening[key]
        if ip is not None:
            self.listening[(ip, port)] = host_port

    def _radio_off(self) -> None:
        # The interpreter is gone (reset, power cut): its access point and sockets with it, and its
        # PWM outputs (the ESP32's LEDC stops at reset: a lamp's 0-10 V input falls to 0 V).
        self.listening.clear()
        self.world.set_access_point(None)
        self.parts.release_pwm()

    def on_booted(self, alloc: int, free: int) -> None:
        self.booted_alloc, self.booted_free = alloc, free
        self.sleep.booted(self.proc.pid if self.proc else None)
        self.booted_event.set()

    def on_reset_request(self, kind: str, arg: int) -> None:
        # machine.reset() or machine.deepsleep(ms): the CPU stops at once (what it printed is in
        # the pipe already); a deep sleep then runs on the host (sleep.py) until a wake source
        # boots the board again with DEEPSLEEP_RESET.
        self._pending_reset = ("deepsleep" if kind == "deepsleep" else "software", arg)
        self._wdt_timeout = self._wdt_deadline = None  # a chip reset stops the watchdog
        proc = self.proc
        if kind == "deepsleep":
            self.sleep.requested(proc.pid if proc else None)
        if proc and proc.returncode is None:
            self._end_for_reset(proc)

    def wake_from_sleep(self) -> None:
        """A wake source fired (sleep.py): the chip boots again from its ROM."""
        if self.powered and not self._closing and self.proc is None:
            self._boot("deepsleep")

    def _end_for_reset(self, proc) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    def on_watchdog(self, timeout_ms: int | None) -> None:
        if timeout_ms is not None:
            self._wdt_timeout = timeout_ms / 1000.0
        if self._wdt_timeout is not None:
            self._wdt_deadline = time.monotonic() + self._wdt_timeout
            if self._wdt_timer is None:  # a feed only moves the deadline: the timer finds it moved when it fires
                self._wdt_timer = asyncio.get_running_loop().call_later(self._wdt_timeout, self._watchdog_due)

    def _watchdog_due(self) -> None:
        # One timer per armed watchdog instead of a 50 ms poll per board (a fleet's supervisor woke
        # 20 times a second for each board): when it fires before the deadline (the board fed it
        # meanwhile) it waits for the new deadline; at the deadline the chip resets.
        self._wdt_timer = None
        deadline = self._wdt_deadline
        if deadline is None or self._closing:
            return  # (disarmed: a reset, a power cut)
        left = deadline - time.monotonic()
        if left > 0:
            self._wdt_timer = asyncio.get_running_loop().call_later(left, self._watchdog_due)
        elif self.powered:
            self._wdt_deadline = self._wdt_timeout = None
            self._tasks.append(asyncio.ensure_future(self.hard_reset("wdt")))
