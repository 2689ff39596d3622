"""Flashing: unmodified esptool (CLI and library) against the virtual ESP32 ROM bootloader on a pty.

What a technician checks: esptool sees an ESP32-D0WD-V3 with 4 MB flash, writes the
MicroPython image and verifies it, the board then boots MicroPython v1.29.0; a corrupted
transfer is reported as a failure, never as success; an erased board does not boot; a
wrong chip or a wrong port is one clear line with a hint.
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import subprocess
import sys
import threading

import pytest
from conftest import lanterne

from host_tools.boards import esp32_image
from host_tools.cli import CommandError
from host_tools.cli import flash as flash_command
from host_tools.emulator import firmware_image
from host_tools.emulator import rombootloader as rb
from host_tools.emulator.control import ControlServer, VirtualControl
from host_tools.fleet.flash import FlashError, flash
from host_tools.runtime import unix_port
from host_tools.runtime.paths import BOARDS

IMAGE = firmware_image.build_micropython_image("v1.29.0")


@pytest.fixture
def firmware(tmp_path):
    path = tmp_path / firmware_image.micropython_image_name("v1.29.0")
    path.write_bytes(IMAGE)
    return path


class VirtualEsp32:
    """A ROM bootloader on a pty, with its flash: what `lanterne emulate` will serve in download mode."""

    def __init__(self, folder, chip="esp32", download=True):
        self.flash = rb.SimulatedFlash(folder / "flash.bin")
        self.rom = rb.RomBootloader(self.flash, chip=chip, download=download)
        self.port, self._stop = rb.serve_on_pty(self.rom)
        self.control = VirtualControl(
            enter_download=lambda: self.rom.reset(download=True), reset=lambda: self.rom.reset(download=False)
        )

    def esptool(self, *args, stub=False):
        cmd = [
            sys.executable,
            "-m",
            "esptool",
            "--port",
            self.port,
            "--before",
            "no-reset",
            "--after",
            "no-reset",
        ]
        r = subprocess.run(
            [*cmd, *([] if stub else ["--no-stub"]), *args], capture_output=True, text=True, timeout=60
        )
        return r.returncode, r.stdout + r.stderr

    def close(self):
        self._stop()
        self.flash.close()


@pytest.fixture
def board(tmp_path):
    b = VirtualEsp32(tmp_path)
    yield b
    b.close()


# ---- the ROM protocol, byte-exact ---------------------------------------------------------


def slip(op, data=b"", checksum=0):
    packet = struct.pack("<BBHI", 0, op, len(data), checksum) + data
    return b"\xc0" + packet.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


def replies(out):
    return [f.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb") for f in out.split(b"\xc0") if f]


def test_rom_protocol_bytes(tmp_path):
    with rb.SimulatedFlash(tmp_path / "f.bin") as f:
        rom = rb.RomBootloader(f)
        assert b"waiting for download" in rom.pending_output()
        # SYNC: answered 8 times with a non-zero value (a stub would answer 0), status OK.
        sync = replies(rom.feed(b"noise" + slip(0x08, rb.SYNC_PAYLOAD)))
        assert sync == [bytes.fromhex("0108040007122055") + bytes(4)] * 8
        # READ_REG of the chip-detect register: ESP32 magic in the value field.
        (reg,) = replies(rom.feed(slip(0x0A, struct.pack("<I", 0x40001000))))
        assert struct.unpack("<BBHI", reg[:8]) == (1, 0x0A, 4, 0x00F01D83) and reg[8:] == bytes(4)
        # Stub-only commands (erase flash, read flash) are refused as the ROM does: status 1, error 0x05.
        for op in (0xD0, 0xD2, 0x14):
            (r,) = replies(rom.feed(slip(op)))
            assert r[1] == op and r[8:] == b"\x01\x05\x00\x00"
        # FLASH_DATA with a wrong checksum -> 0x07; MD5 comes back as 32 hex digits.
        rom.feed(slip(0x0B, struct.pack("<6I", 0, 4 * esp32_image.MiB, 0x10000, 0x1000, 0x100, 0xFFFF)))
        (begin,) = replies(rom.feed(slip(0x02, struct.pack("<IIII", 0x1000, 1, 0x400, 0x1000))))
        assert begin[8:] == bytes(4)
        block = b"\x5a" * 0x400
        header = struct.pack("<IIII", len(block), 0, 0, 0)
        (bad,) = replies(rom.feed(slip(0x03, header + block, checksum=0x00)))
        assert bad[8:] == b"\x01\x07\x00\x00"
        (good,) = replies(rom.feed(slip(0x03, header + block, checksum=esp32_image.xor_checksum(block))))
        assert good[8:] == bytes(4)
        (md5,) = replies(rom.feed(slip(0x13, struct.pack("<IIII", 0x1000, 0x400, 0, 0))))
        assert md5[8:40] == hashlib.md5(block).hexdigest().encode() and md5[40:] == bytes(4)
        # Leaving download mode: the chip runs its app and answers nothing more.
        rom.feed(slip(0x04, struct.pack("<I", 1)))
        assert rom.exit_request == "run" and rom.feed(slip(0x08, rb.SYNC_PAYLOAD)) == b""


def test_simulated_flash_is_nor_flash(tmp_path):
    with rb.SimulatedFlash(tmp_path / "f.bin", size_bytes=esp32_image.MiB) as f:
        assert f.is_erased(0, f.size)
        f.write(0x2000, b"\x0f\xf0")
        f.write(0x2000, b"\xff\x00")  # programming only clears bits
        assert f.read(0x2000, 2) == b"\x0f\x00"
        f.erase_sector(0x2001)
        assert f.is_erased(0x2000, 0x1000)
        with pytest.raises(rb.FlashError):
            f.read(esp32_image.MiB - 1, 2)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda f: f.erase_sector(0x10000),
            "esp_image: image at 0x10000 has invalid magic byte (nothing flashed here?)",
        ),
        (lambda f: f.write(0x8005, b"\x00"), "flash_parts: Incorrect MD5 checksum"),
        (lambda f: f.erase_sector(0x8000), "boot: No bootable app partitions in the partition table"),
        (lambda f: f.write(0x2000, b"\x00\x00\x00\x00"), "csum err:"),
        (lambda f: f.write(0x100000, b"\x00\x00\x00\x00"), "esp_image: Checksum failed."),
    ],
    ids=[
        "app-erased",
        "partition-table-md5",
        "partition-table-erased",
        "bootloader-checksum",
        "app-checksum",
    ],
)
def test_boot_check_says_what_an_esp32_prints(tmp_path, damage, message):
    with rb.SimulatedFlash(tmp_path / "f.bin") as f:
        f.program(0x1000, IMAGE)
        assert f.boot_check().ok
        damage(f)
        check = f.boot_check()
    assert not check.ok and check.message.startswith(message)
    assert any(message in line for line in check.log)


# ---- the image ------------------------------------------------------------------------------


def test_generated_image_is_a_genuine_micropython_bin(tmp_path):
    check = esp32_image.check_flash_image(IMAGE, 0x1000)
    assert (check.ok, check.project, check.version, check.app_offset) == (
        True,
        "micropython",
        "v1.29.0",
        0x10000,
    )
    assert [p.label for p in check.partitions] == ["nvs", "phy_init", "factory", "vfs"]
    (tmp_path / "app.bin").write_bytes(IMAGE[0xF000:])
    r = subprocess.run(
        [sys.executable, "-m", "esptool", "image-info", str(tmp_path / "app.bin")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for line in ("Project name: micropython", "App version: v1.29.0", "Chip ID: 0 (ESP32)", "(valid)"):
        assert line in r.stdout
    assert "invalid" not in r.stdout


# ---- unmodified esptool CLI ------------------------------------------------------------------


def test_esptool_detects_the_virtual_esp32(board):
    rc, out = board.esptool("flash-id")
    assert rc == 0, out
    assert "Chip type:          ESP32-D0WD-V3 (revision v3.0)" in out
    assert "Crystal frequency:  40MHz" in out
    assert "MAC:                24:0a:c4:12:34:56" in out
    assert "Detected flash size: 4MB" in out


def test_esptool_writes_and_verifies_micropython_then_it_boots(board, firmware):
    before = board.flash.boot_check()
    assert not before.ok and before.message == "invalid header: 0xffffffff"
    rc, out = board.esptool("write-flash", "0x1000", str(firmware))
    assert rc == 0, out
    assert "Hash of data verified." in out
    rc, out = board.esptool("verify-flash", "0x1000", str(firmware))
    assert rc == 0 and "Verification successful (digest matched)." in out, out
    assert board.flash.md5(0x1000, len(IMAGE)) == hashlib.md5(IMAGE).hexdigest()
    check = board.flash.boot_check()
    assert (check.ok, check.project, check.version) == (True, "micropython", "v1.29.0")
    assert check.log[-1] == "entry 0x40080654"
    # Erasing stub-less goes through FLASH_BEGIN (erase-region); erase-flash is stub-only.
    rc, out = board.esptool("erase-flash")
    assert rc != 0 and "ROM does not support function erase_flash" in out
    rc, out = board.esptool("erase-region", "0x0", "0x400000")
    assert rc == 0, out
    erased = board.flash.boot_check()
    assert not erased.ok and erased.message == "invalid header: 0xffffffff"


def test_esptool_with_its_stub_fails_fast_and_says_why(board):
    rc, out = board.esptool("flash-id", stub=True)
    assert rc != 0 and "Failed to start stub flasher" in out
    assert board.rom.exit_request == "ram"


@pytest.mark.parametrize(
    ("flips", "expected"),
    [(1, "result was 0107: Checksum error"), (2, "MD5 of file does not match data in flash!")],
    ids=["bit-flip-caught-by-checksum", "double-flip-caught-only-by-md5"],
)
def test_esptool_reports_a_corrupted_transfer(board, firmware, flips, expected):
    # Block 100 is at 0x1000 + 100 KiB: inside the app's first segment.
    board.rom.inject_transfer_fault(block=100, flips=flips)
    rc, out = board.esptool("write-flash", "0x1000", str(firmware))
    assert rc != 0, out
    assert expected in out
    assert "Hash of data verified" not in out
    check = board.flash.boot_check()
    assert not check.ok and "partition 'factory'" in check.reason
    if flips == 2:  # the image's own XOR checksum passes too: the bootloader's SHA-256 check catches it
        assert check.message == "esp_image: Image hash failed - image is corrupt"


# ---- host_tools.fleet.flash (esptool as a library) and `lanterne flash` -------------------------------


def test_flash_library_writes_verifies_and_resets(tmp_path, firmware):
    b = VirtualEsp32(tmp_path, download=False)  # running its app: flash() must enter download mode
    seen = []
    try:
        report = flash(
            b.port, firmware, "esp32-devkitc", progress=lambda *e: seen.append(e), virtual_control=b.control
        )
    finally:
        b.close()
    assert report.chip == "ESP32-D0WD-V3 (revision v3.0)" and report.flash_size == "4MB"
    assert (report.project, report.version, report.offset) == ("micropython", "v1.29.0", 0x1000)
    assert report.md5 == hashlib.md5(IMAGE).hexdigest() and report.erased and report.compressed
    stages = [s for s, *_ in seen]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == [
        "connect",
        "erase",
        "write",
        "verify",
    ]
    assert seen[-1] == ("verify", len(IMAGE), len(IMAGE))
    assert not b.rom.in_download_mode  # reset afterwards
    with rb.SimulatedFlash(tmp_path / "flash.bin") as f:
        assert f.boot_check().version == "v1.29.0"


def test_two_boards_flashed_in_parallel_keep_their_own_reports(tmp_path, firmware):
    pair = [VirtualEsp32(tmp_path / name) for name in ("a", "b")]
    pair[1].rom.inject_transfer_fault(block=5)  # only board b has a bad line
    results = {}

    def run(b, key):
        try:
            results[key] = flash(b.port, firmware, "esp32-devkitc", virtual_control=b.control)
        except FlashError as exc:
            results[key] = exc

    threads = [threading.Thread(target=run, args=(b, key)) for b, key in zip(pair, "ab", strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for b in pair:
        b.close()
    assert results["a"].md5 == hashlib.md5(IMAGE).hexdigest()
    assert (
        "Hash of data verified." in results["a"].esptool_log
        and "bad checksum" not in results["a"].esptool_log
    )
    assert isinstance(results["b"], FlashError) and "bad checksum" in str(results["b"])


def test_flash_library_reports_corruption_not_success(board, firmware):
    board.rom.inject_transfer_fault(block=7, flips=2)  # the XOR checksum passes; inflating does not
    with pytest.raises(FlashError) as err:
        flash(board.port, firmware, "esp32-devkitc", virtual_control=board.control)
    assert str(err.value).startswith("transfer corrupted:") and "NOT flashed" in err.value.hint
    assert not board.flash.boot_check().ok


def test_wrong_chip_is_a_clear_error(tmp_path, firmware):
    b = VirtualEsp32(tmp_path, chip="esp32s3")
    try:
        with pytest.raises(FlashError) as err:
            flash(b.port, firmware, "esp32-devkitc", virtual_control=b.control)
    finally:
        b.close()
    assert (
        str(err.value)
        == f"chip mismatch: {b.port} has an ESP32-S3, but board file esp32-devkitc.json says 'esp32'"
    )
    assert "--board" in err.value.hint
    bad_board = tmp_path / "s3.json"
    bad_board.write_text((BOARDS / "esp32-devkitc.json").read_text().replace('"esp32"', '"esp32s3"'))
    with pytest.raises(FlashError, match="field 'chip': unsupported chip 'esp32s3'"):
        flash("/dev/null", firmware, bad_board)


def test_errors_a_person_can_act_on(tmp_path, firmware):
    b = VirtualEsp32(tmp_path, download=False)
    nothing = VirtualControl(enter_download=lambda: None, reset=lambda: None)
    try:
        with pytest.raises(FlashError, match="did not answer as an ESP32 ROM bootloader"):
            flash(b.port, firmware, "esp32-devkitc", virtual_control=nothing, connect_attempts=1)
        with pytest.raises(FlashError, match="generated image for the virtual ESP32"):
            flash(b.port, firmware, "esp32-devkitc")  # a real board must not get the filler image
        with pytest.raises(FlashError, match="no firmware given"):
            flash(b.port, None, "esp32-devkitc")
    finally:
        b.close()
    with pytest.raises(FlashError, match=f"no serial port {tmp_path}/ttyNone"):
        flash(str(tmp_path / "ttyNone"), firmware, "esp32-devkitc", virtual_control=nothing)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 4096)
    with pytest.raises(FlashError, match="not a bootable ESP32 firmware image.*no bootloader at 0x1000"):
        flash("/dev/null", junk, "esp32-devkitc")
    older = tmp_path / "old.bin"
    older.write_bytes(firmware_image.build_micropython_image("v1.28.0"))
    with pytest.raises(
        FlashError, match="is MicroPython v1.28.0 but board esp32-devkitc runs MicroPython 1.29"
    ):
        flash("/dev/null", older, "esp32-devkitc")


def test_lanterne_flash_names_a_missing_port_before_the_firmware(tmp_path):
    # As provision and verify do: the port is the first thing a technician gets wrong.
    gone = tmp_path / "ttyUSB9"
    for extra in ([], ["--firmware", tmp_path / "nosuch.bin"], ["--firmware", tmp_path]):
        r = lanterne("flash", "--port", gone, "--board", "esp32-devkitc", *extra)
        assert r.returncode == 1
        first, hint = r.stderr.splitlines()[:2]
        assert first == f"lanterne flash: error: no serial port {gone}", r.stderr
        assert hint.startswith("  hint: check the cable and the path") and "firmware" not in r.stderr
    for verb in ("provision", "verify"):  # the same words
        r = lanterne(verb, "--port", gone, *(["--device", "lamp-1", "--board", "esp32-devkitc"] if verb == "provision" else []),
                     cwd=tmp_path)
        assert f"lanterne {verb}: error: no serial port {gone}" in r.stderr, r.stderr


class FakeEmulatorControl(ControlServer):
    """The control ops `lanterne emulate` will grow: download (hold BOOT + EN) and reset."""

    def __init__(self, rom, path):
        super().__init__(handle=None, path=path)
        self.rom, self.ops = rom, []

    def dispatch(self, req):
        self.ops.append(req["op"])
        self.rom.reset(download=req["op"] == "download")
        return {"ok": True}


def test_lanterne_flash_command_on_a_virtual_board(tmp_path, capsys):
    port = tmp_path / "ttyV0"
    with rb.SimulatedFlash(tmp_path / "flash.bin") as f:
        rom = rb.RomBootloader(f, download=False)
        _, stop = rb.serve_on_pty(rom, link=port)
        control = FakeEmulatorControl(rom, f"{port}.ctl")
        control.start()
        parser = argparse.ArgumentParser()
        flash_command.configure(parser)
        try:
            rc = flash_command.run(parser.parse_args(["--port", str(port), "--board", "esp32-devkitc"]))
            rom.inject_transfer_fault(block=3, times=None)
            with pytest.raises(CommandError) as err:
                flash_command.run(
                    parser.parse_args(["--port", str(port), "--board", "esp32-devkitc", "--no-compress"])
                )
        finally:
            control.stop()
            stop()
        out = capsys.readouterr().out
        assert rc == 0
        # The generated image carries the virtual board's own MicroPython version, as its banner says it.
        assert f"flashed micropython {unix_port.version()} (1607232 bytes) at 0x1000" in out and "verified (MD5" in out
        assert control.ops == ["download", "reset", "download", "reset"]
        assert str(err.value) == "transfer corrupted: block 3 arrived with a bad checksum on every retry"
        assert not f.boot_check().ok  # the second, failed flash left a board that does not boot


def test_romfs_image_has_the_documented_partition_table():
    # boards/partitions-romfs.csv (what a real Lanterne build uses) and the generated image agree.
    from host_tools.runtime.paths import REPO

    rows = []
    for line in (REPO / "boards" / "partitions-romfs.csv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, kind, sub, offset, size = (f.strip() for f in line.split(",")[:5])
            rows.append((name, {"app": 0, "data": 1}[kind], int(offset, 16), int(size, 16)))
    check = esp32_image.check_flash_image(firmware_image.build_micropython_image("v1.29.0", romfs_bytes=393216), 0x1000)
    assert check.ok
    assert [(p.label, p.type, p.offset, p.size) for p in check.partitions] == rows
    romfs = [p for p in check.partitions if p.label == "romfs"][0]
    assert romfs.subtype == 0x8F and romfs.offset + romfs.size == 0x200000
