"""Flash MicroPython onto an ESP32 with esptool used as a library: detect, check, erase, write, verify.

`flash(port, firmware_path, board, progress=...)` talks to the chip's ROM bootloader
(stub-less: the same path CI runs against the virtual ROM in
host_tools/emulator/rombootloader.py), checks the chip against the board file, erases
the whole flash, writes the image at the board's offset, verifies it by MD5 and resets
the board. Every failure is a `FlashError` with a one-line message and a hint.

Real boards are put in download mode by esptool's usual DTR/RTS pulse. A virtual board
(`lanterne emulate`) has no modem lines: pass `virtual_control`, an object with
`enter_download()`, `reset()` and `default_firmware(board)` (the image to write when none is
given): `host_tools.emulator.control.VirtualControl.for_port(port)` builds one from the
board's `PORT.ctl`. Flashing itself knows nothing of the emulator.
"""

from __future__ import annotations

import errno
import hashlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host_tools import boards
from host_tools.boards import esp32_image
from host_tools.fleet import PORT_HINT, missing_port

# progress(stage, done, total): stage is "connect", "erase", "write", "verify" or "reset".
Progress = Callable[[str, int, int], None]

ROM_BAUD = 115200
REAL_BOARD_BAUD = 460800  # what MicroPython's ESP32 instructions use; the ESP32 ROM can switch to it


class FlashError(Exception):
    """A flashing failure a person can act on: `str(exc)` is one line, `hint` says what to do."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class FlashReport:
    port: str
    chip: str  # "ESP32-D0WD-V3 (revision v3.0)"
    mac: str
    flash_size: str  # "4MB", from the flash chip's JEDEC id
    firmware: Path
    project: str | None  # from the image's esp_app_desc_t: "micropython"
    version: str | None  # "v1.29.0"
    offset: int
    size: int
    md5: str  # of the written bytes, equal on host and flash
    erased: bool
    compressed: bool
    virtual: bool
    seconds: float
    write_seconds: float
    esptool_log: str


# ---- esptool's output: captured per call (thread), progress relayed -----------------------

_sinks = threading.local()
_install_lock = threading.Lock()
_router = None


def _router_class():
    from esp_pylib.logger import EspLogBase

    class ThreadRouter(EspLogBase):
        """Installed once as esptool's logger: sends output to the calling thread's sink."""

        def __init__(self, fallback):
            self.fallback = fallback

        def _sink(self):
            return getattr(_sinks, "sink", None)

        def _emit(self, name, *args, **kwargs):
            sink = self._sink()
            if sink is None:
                return getattr(self.fallback, name)(*args, **kwargs)
            sink.write(" ".join(str(a) for a in args))
            return None

        def print(self, *args, **kwargs):
            self._emit("print", *args, **kwargs)

        def err(self, *args, suggestion=None):
            self._emit("err", *args)

        def warn(self, *args, suggestion=None):
            self._emit("warn", *args)

        def note(self, *args):
            self._emit("note", *args)

        def hint(self, *args):
            self._emit("hint", *args)

        def debug(self, *args):
            self._emit("debug", *args)

        def error(self, message, suggestion=None):  # esptool's older names
            self._emit("err", message)

        def warning(self, message, suggestion=None):
            self._emit("warn", message)

        def stage(self, finish=False):
            if self._sink() is None:
                self.fallback.stage(finish)

        def set_verbosity(self, mode):
            if self._sink() is None:
                self.fallback.set_verbosity(mode)

        def progress_bar(self, cur_iter, total_iters, prefix="", suffix="", bar_length=30):
            sink = self._sink()
            if sink is None:
                return self.fallback.progress_bar(cur_iter, total_iters, prefix, suffix, bar_length)
            sink.progress(cur_iter, total_iters)
            return None

    return ThreadRouter


class _Sink:
    def __init__(self, progress: Progress | None):
        self.lines: list[str] = []
        self.stage = "write"
        self._progress = progress

    def write(self, text: str) -> None:
        self.lines.append(re.sub(r"\[/?[a-z ]+\]", "", text))  # drop rich markup

    def progress(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(self.stage, done, total)

    def report(self, stage: str, done: int, total: int) -> None:
        self.stage = stage
        self.progress(done, total)

    @property
    def text(self) -> str:
        return "\n".join(line for line in self.lines if line.strip())


def _capture(sink: _Sink | None) -> None:
    global _router
    import esptool  # noqa: F401 - installs esptool's own logger first
    from esp_pylib.logger import EspLog

    with _install_lock:
        if _router is None or EspLog.instance is not _router:
            _router = _router_class()(EspLog.instance)
            EspLog.instance = _router
    _sinks.sink = sink


# ---- checks before touching the board ------------------------------------------------------


def _load_board(board: Any) -> boards.Board | None:
    if board is None or isinstance(board, boards.Board):
        return board
    try:
        return boards.load(board)
    except boards.BoardError as exc:
        raise FlashError(str(exc), hint="`lanterne boards` lists the supported boards") from None


def _firmware(firmware_path, board: boards.Board | None, virtual_control) -> tuple[Path, bytes]:
    if firmware_path is None:
        if virtual_control is None:
            raise FlashError(
                "no firmware given",
                hint="download the ESP32_GENERIC .bin from https://micropython.org/download/ESP32_GENERIC/ "
                "and pass --firmware FILE",
            )
        path = virtual_control.default_firmware(board)
        return path, path.read_bytes()
    path = Path(firmware_path)
    try:
        return path, path.read_bytes()
    except FileNotFoundError:
        raise FlashError(
            f"firmware file {path} not found", hint="check the path given to --firmware"
        ) from None
    except IsADirectoryError:
        raise FlashError(f"{path} is a folder, not a firmware file", hint="pass the .bin file") from None


def _check_firmware(
    path: Path, data: bytes, offset: int, flash_bytes: int, board, virtual, force
) -> esp32_image.BootCheck:
    if offset + len(data) > flash_bytes:
        raise FlashError(
            f"{path.name} ({len(data)} bytes) at 0x{offset:x} does not fit the {flash_bytes // esp32_image.MiB} MB flash",
            hint="use the firmware built for this board's flash size",
        )
    check = esp32_image.check_flash_image(data, offset, flash_bytes)
    if not check.ok:
        raise FlashError(
            f"{path.name} is not a bootable ESP32 firmware image for offset 0x{offset:x}: {check.reason}",
            hint="use the .bin from micropython.org for ESP32 boards (bootloader + partition table + app, "
            "written at 0x1000), not an .app-bin or .elf",
        )
    wanted = board.data.get("micropython") if board else None
    if wanted and not force and check.project == "micropython" and check.version:
        have = check.version.lstrip("v").split("-")[0]
        if not (have == wanted or have.startswith(wanted + ".")):
            raise FlashError(
                f"{path.name} is MicroPython {check.version} but board {board.name} runs MicroPython {wanted}",
                hint=f"use a MicroPython {wanted}.x firmware (the app is compiled for it), or --force",
            )
    if not virtual and esp32_image.SIMULATED_MARKER in data:
        raise FlashError(
            f"{path.name} is the generated image for the virtual ESP32 (its code is filler): a real chip would not run it",
            hint="flash MicroPython from https://micropython.org/download/ESP32_GENERIC/",
        )
    return check


# ---- esptool errors -> what a person can do ----------------------------------------------


def _explain(exc: BaseException, port: str, virtual: bool) -> FlashError:
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOTTY, errno.EINVAL):
        return FlashError(
            f"cannot pulse DTR/RTS on {port} to put the board in download mode",
            hint="this port has no modem-control lines: hold BOOT, press EN, release BOOT, then use --no-reset",
        )
    if "Could not open" in text or "doesn't exist" in text or isinstance(exc, FileNotFoundError):
        return FlashError(
            f"cannot open serial port {port}",
            hint="check the port name (ls /dev/ttyUSB* /dev/ttyACM*) and that no other program (mpremote, screen) "
            "holds it" + ("; is `lanterne emulate --port PORT` running?" if virtual else ""),
        )
    if "Failed to connect" in text or "No serial data received" in text or "Wrong boot mode" in text:
        if virtual:
            return FlashError(
                f"the virtual board on {port} did not answer as an ESP32 ROM bootloader",
                hint="its download mode did not start: restart `lanterne emulate` for this port",
            )
        return FlashError(
            f"no ESP32 ROM bootloader answered on {port} (board not in download mode?)",
            hint="hold BOOT, press and release EN, release BOOT, then retry; check the cable carries data",
        )
    if "Failed to start stub flasher" in text:
        return FlashError(
            f"the board on {port} did not run esptool's flasher stub", hint="flash with the stub-less path"
        )
    code = re.search(r"result was 01(0[5-9a-f])", text, re.IGNORECASE)
    if code and code.group(1).lower() in ("07", "08", "0b", "0c"):
        seq = re.search(r"after seq (\d+)", text)
        block = f"block {seq.group(1)}" if seq else "a block"
        what = {
            "07": f"{block} arrived with a bad checksum on every retry",
            "08": f"the chip read back different data after writing {block}",
            "0b": "the compressed firmware did not inflate on the chip",
            "0c": "the firmware inflated on the chip fails its Adler-32 check",
        }[code.group(1).lower()]
        return FlashError(
            f"transfer corrupted: {what}",
            hint="the board is NOT flashed: use a shorter or better USB cable or a lower --baud, then flash again",
        )
    if "MD5 of file does not match" in text or "Verification failed" in text or "Digest mismatch" in text:
        return FlashError(
            "verification failed: the flash does not hold the firmware that was sent (MD5 mismatch)",
            hint="the board is NOT flashed: flash again; if it keeps failing, use another cable or board",
        )
    if "Write failed, the written flash region is empty" in text:
        return FlashError(
            "write failed: the flash region is still empty after writing",
            hint="the flash may be write-protected; try `esptool write-flash-status --non-volatile 0`",
        )
    return FlashError(f"esptool: {text.splitlines()[0] if text else type(exc).__name__}")


# ---- the operation --------------------------------------------------------------------------


def flash(
    port: str,
    firmware_path: str | Path | None = None,
    board: str | boards.Board | None = None,
    progress: Progress | None = None,
    virtual_control=None,
    *,
    erase: bool = True,
    compress: bool = True,
    baud: int | None = None,
    reset_lines: bool = True,
    force: bool = False,
    connect_attempts: int | None = None,
) -> FlashReport:
    """Flash `firmware_path` (default: the generated image, virtual boards only) onto the board on `port`.

    `board` (name, path or Board) gives the expected chip, the write offset
    (`flash.app_offset`) and the flash size; without it: an ESP32 at 0x1000.
    With `virtual_control`, its enter_download()/reset() replace esptool's DTR/RTS
    pulses (esptool runs with no-reset before and after). `reset_lines=False` is for a
    real board already put in download mode by hand.
    """
    import serial
    from esptool import cmds
    from esptool.util import FatalError

    start = time.monotonic()
    if missing_port(port):  # first: nothing about the firmware matters without a board to write it to
        raise FlashError(f"no serial port {port}", hint=PORT_HINT)
    board_obj = _load_board(board)
    virtual = virtual_control is not None
    chip_wanted = board_obj.data["chip"] if board_obj else "esp32"
    flash_spec = board_obj.data.get("flash", {}) if board_obj else {}
    offset = int(flash_spec.get("app_offset", esp32_image.BOOTLOADER_OFFSET))
    flash_bytes = int(flash_spec.get("size_mb", 4)) * esp32_image.MiB
    path, data = _firmware(firmware_path, board_obj, virtual_control)
    check = _check_firmware(path, data, offset, flash_bytes, board_obj, virtual, force)
    data += b"\xff" * (-len(data) % 4)  # esptool pads to a word; the MD5 covers the padded bytes

    sink = _Sink(progress)
    _capture(sink)
    esp = None
    entered = False
    try:
        sink.report("connect", 0, 1)
        if virtual:
            try:
                virtual_control.enter_download()
            except ConnectionError as exc:  # the virtual board's control socket: gone, or no download mode
                raise FlashError(str(exc), hint=getattr(exc, "hint", None)) from None
            entered = True
        before = "default-reset" if (reset_lines and not virtual) else "no-reset"
        try:
            esp = cmds.connect_esp(
                port=port,
                chip="auto",
                initial_baud=ROM_BAUD,
                before=before,
                connect_attempts=connect_attempts or (3 if virtual else 7),
            )
        except (FatalError, OSError, serial.SerialException) as exc:
            raise _explain(exc, port, virtual) from None
        sink.report("connect", 1, 1)

        detected = esp.CHIP_NAME.lower().replace("-", "")
        if detected != chip_wanted.lower().replace("-", ""):
            where = f"board file {board_obj.path.name} says" if board_obj else "Lanterne expects"
            raise FlashError(
                f"chip mismatch: {port} has an {esp.CHIP_NAME}, but {where} '{chip_wanted}'",
                hint="pick the --board that matches this hardware, or check you have the right port",
            )
        try:
            chip = esp.get_chip_description()
            mac = ":".join(f"{b:02x}" for b in esp.read_mac())
            if not virtual and (baud or REAL_BOARD_BAUD) > ROM_BAUD:
                esp.change_baud(baud or REAL_BOARD_BAUD)
            cmds.attach_flash(esp)
            detected_size = cmds.detect_flash_size(esp) or "4MB"
            from esptool.util import flash_size_bytes

            if flash_size_bytes(detected_size) < offset + len(data):
                raise FlashError(
                    f"the board's flash is {detected_size}, too small for {path.name}",
                    hint="use a firmware for this flash size, or check the --board",
                )
            if erase:
                size = flash_size_bytes(detected_size)
                sink.report("erase", 0, size)
                cmds.erase_region(esp, 0, size)  # stub-less: FLASH_BEGIN erases the region
                sink.report("erase", size, size)
            sink.report("write", 0, len(data))
            write_start = time.monotonic()
            cmds.write_flash(
                esp, [(offset, data)], compress=compress, no_compress=not compress, no_progress=False
            )
            write_seconds = time.monotonic() - write_start
            sink.report("verify", 0, len(data))
            expected = hashlib.md5(data).hexdigest()
            actual = esp.flash_md5sum(offset, len(data))
            if actual != expected:
                raise FlashError(
                    f"verification failed: flash MD5 {actual} != firmware MD5 {expected}",
                    hint="the board is NOT flashed: flash again; if it keeps failing, use another cable or board",
                )
            sink.report("verify", len(data), len(data))
        except (FatalError, OSError, serial.SerialException) as exc:
            raise _explain(exc, port, virtual) from None
        return FlashReport(
            port=port,
            chip=chip,
            mac=mac,
            flash_size=detected_size,
            firmware=path,
            project=check.project,
            version=check.version,
            offset=offset,
            size=len(data),
            md5=expected,
            erased=erase,
            compressed=compress,
            virtual=virtual,
            seconds=time.monotonic() - start,
            write_seconds=write_seconds,
            esptool_log=sink.text,
        )
    finally:
        try:
            _leave_board(esp, virtual_control if entered else None, reset_lines and not virtual)
        finally:
            _sinks.sink = None


def _leave_board(esp, virtual_control, pulse_reset: bool) -> None:
    """Reset the board out of download mode and close the port, whatever happened before.

    Errors here are not reported: the outcome of the flashing is already decided, and a
    failure to reset is visible to the person as a board that does not start.
    """
    import contextlib

    if esp is not None:
        with contextlib.suppress(Exception):
            if pulse_reset:
                esp.hard_reset()
        with contextlib.suppress(Exception):
            esp._port.close()
    if virtual_control is not None:
        with contextlib.suppress(Exception):
            virtual_control.reset()
