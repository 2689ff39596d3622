"""`lanterne flash --port PORT [--firmware micropython.bin] [--board BOARD]`: flash MicroPython with esptool.

Detects the chip and checks it against the board file, erases the flash, writes the
firmware at the board's offset and verifies it by MD5, then resets the board. A port
served by `lanterne emulate` (it has a `PORT.ctl` control socket) is put in download mode
and reset through that socket; a real board through esptool's DTR/RTS pulses.
"""

from __future__ import annotations

import sys

from host_tools.cli import CommandError


def configure(p):
    p.add_argument(
        "--port",
        required=True,
        metavar="PORT",
        help="serial port of the board (/dev/ttyUSB0, or a virtual board's path)",
    )
    p.add_argument(
        "--firmware",
        metavar="FILE",
        help="MicroPython .bin for ESP32 (written at the board's offset); "
        "default for a virtual board: the generated image for the board's MicroPython version",
    )
    p.add_argument(
        "--board", metavar="BOARD", help="board name or board file: expected chip, offset, flash size"
    )
    p.add_argument("--baud", type=int, metavar="N", help="transfer rate for a real board (default 460800)")
    p.add_argument(
        "--no-erase",
        action="store_true",
        help="keep the rest of the flash (files, NVS); erase only what is written",
    )
    p.add_argument("--no-compress", action="store_true", help="send the image uncompressed")
    p.add_argument(
        "--no-reset",
        action="store_true",
        help="the board is already in download mode (BOOT held, EN pressed): do not pulse DTR/RTS",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="flash even if the firmware's MicroPython version differs from the board's",
    )


class _Bar:
    """One progress line per stage, redrawn in place on a terminal."""

    LABELS = {"connect": "connecting", "erase": "erasing", "write": "writing", "verify": "verifying"}

    def __init__(self, stream):
        self.stream = stream
        self.tty = stream.isatty()
        self.stage = None
        self.last = -1

    def __call__(self, stage: str, done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        if stage != self.stage:
            if self.stage is not None and self.tty:
                self.stream.write("\n")
            self.stage, self.last = stage, -1
            if not self.tty:
                self.stream.write(f"{self.LABELS.get(stage, stage)}...\n")
        if self.tty and pct != self.last:
            filled = pct * 30 // 100
            self.stream.write(f"\r{self.LABELS.get(stage, stage):<10} [{'#' * filled:<30}] {pct:3d}%")
        self.last = pct
        self.stream.flush()

    def close(self) -> None:
        if self.stage is not None and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def run(args) -> int:
    from host_tools.emulator.control import VirtualControl
    from host_tools.fleet.flash import FlashError, flash

    bar = _Bar(sys.stderr)
    try:
        control = VirtualControl.for_port(args.port)
        report = flash(
            args.port,
            args.firmware,
            args.board,
            progress=bar,
            virtual_control=control,
            erase=not args.no_erase,
            compress=not args.no_compress,
            baud=args.baud,
            reset_lines=not args.no_reset,
            force=args.force,
        )
    except FlashError as exc:
        bar.close()
        raise CommandError(str(exc), hint=exc.hint) from None
    bar.close()
    what = f"{report.project} {report.version}" if report.project else report.firmware.name
    print(f"{report.chip} on {report.port} (MAC {report.mac}, {report.flash_size} flash)")
    print(
        f"flashed {what} ({report.size} bytes) at 0x{report.offset:x} in {report.seconds:.1f} s, "
        f"verified (MD5 {report.md5}){', flash erased first' if report.erased else ''}"
    )
    print("board reset" + (" (virtual board)" if report.virtual else ""))
    return 0
