"""Virtual ESP32 ROM serial bootloader (download mode) over a simulated SPI flash, for unmodified esptool.

Three parts, each usable alone:

- `SimulatedFlash`: a file-backed raw NOR flash image (erased = 0xFF, programming only
  clears bits, 4 KiB sectors / 64 KiB blocks) and `boot_check()`, which reads it the way
  the ESP32 ROM and the ESP-IDF 2nd-stage bootloader do (bootloader at 0x1000, partition
  table at 0x8000, factory/ota app image and its `esp_app_desc_t`).
- `RomBootloader`: the ESP32 ROM download protocol, stub-less, as a byte pipe:
  `feed(bytes received on the serial port) -> bytes to send back`, no I/O of its own.
  See docs/flashing.md for what it answers and what it refuses, as the real ROM does.
- `serve_on_pty(bootloader)`: a pty served by a thread, for esptool in tests.

The image format it checks is `host_tools.boards.esp32_image`; the MicroPython image it
boots in CI, `host_tools.emulator.firmware_image`. One cohesive module over 500 lines: the
ROM's download protocol, command by command.

Protocol facts come from Espressif's "Serial Protocol" documentation and from what
esptool 5.x sends and expects (esptool/loader.py, targets/esp32.py); image and partition
formats and error messages from ESP-IDF (esp_image_format.c, esp_flash_partitions.c).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import pty
import select
import struct
import threading
import tty
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from host_tools.boards.esp32_image import (
    BLOCK_SIZE,
    SECTOR_SIZE,
    BootCheck,
    MiB,
    boot_check,
    xor_checksum,
)

# Printed on every ESP32 (rev 1 and later) ROM boot.
ROM_BANNER = "ets Jun  8 2016 00:22:57"


# ----------------------------------------------------------------------------------------
# Simulated SPI NOR flash
# ----------------------------------------------------------------------------------------


class FlashError(ValueError):
    """An access outside the flash chip, or an erase not aligned to a sector."""


class SimulatedFlash:
    """A raw SPI NOR flash chip kept in a file (created erased, i.e. all 0xFF).

    Like real NOR flash, `write` can only clear bits (new = old & data): writing over
    data that was not erased first corrupts it, as it would on the chip.
    """

    def __init__(self, path: str | os.PathLike, size_bytes: int = 4 * MiB):
        if size_bytes <= 0 or size_bytes % BLOCK_SIZE:
            raise ValueError(f"flash size must be a positive multiple of 64 KiB, got {size_bytes}")
        self.path = Path(path)
        self.size = size_bytes
        if self.path.exists():
            actual = self.path.stat().st_size
            if actual != size_bytes:
                raise ValueError(f"{self.path}: flash image is {actual} bytes, expected {size_bytes}")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "wb") as f:
                chunk = b"\xff" * BLOCK_SIZE
                for _ in range(size_bytes // BLOCK_SIZE):
                    f.write(chunk)
            os.replace(tmp, self.path)
        self._file = open(self.path, "r+b")  # kept open for the mmap's lifetime
        self._map = mmap.mmap(self._file.fileno(), size_bytes)

    def close(self) -> None:
        if self._map is not None:
            self._map.flush()
            self._map.close()
            self._file.close()
            self._map = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FlashError(f"flash access 0x{offset:x}+0x{length:x} outside the {self.size // MiB} MB chip")

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return self._map[offset : offset + length]

    def write(self, offset: int, data: bytes) -> None:
        """Program `data` at `offset`: bits can only go from 1 to 0 (erase first)."""
        self._check(offset, len(data))
        if not data:
            return
        old = int.from_bytes(self._map[offset : offset + len(data)], "little")
        new = int.from_bytes(data, "little")
        self._map[offset : offset + len(data)] = (old & new).to_bytes(len(data), "little")

    def erase(self, offset: int, length: int) -> None:
        """Erase whole 4 KiB sectors covering [offset, offset+length); `offset` must be sector-aligned."""
        if offset % SECTOR_SIZE:
            raise FlashError(f"erase at 0x{offset:x} is not aligned to a 4 KiB sector")
        end = -(-(offset + length) // SECTOR_SIZE) * SECTOR_SIZE
        self._check(offset, end - offset)
        self._map[offset:end] = b"\xff" * (end - offset)

    def erase_sector(self, offset: int) -> None:
        self.erase(offset - offset % SECTOR_SIZE, SECTOR_SIZE)

    def erase_block(self, offset: int) -> None:
        self.erase(offset - offset % BLOCK_SIZE, BLOCK_SIZE)

    def erase_all(self) -> None:
        self.erase(0, self.size)

    def program(self, offset: int, data: bytes) -> None:
        """Erase the sectors `data` spans, then write it (what esptool's write-flash achieves)."""
        start = offset - offset % SECTOR_SIZE
        self.erase(start, offset + len(data) - start)
        self.write(offset, data)

    def md5(self, offset: int, length: int) -> str:
        return hashlib.md5(self.read(offset, length)).hexdigest()

    def is_erased(self, offset: int, length: int) -> bool:
        return self.read(offset, length).count(0xFF) == length

    def boot_check(self) -> BootCheck:
        """What the ESP32 ROM and the 2nd-stage bootloader find at power-on (and what the
        bootloader writes: the otadata state of an image on trial, a rollback)."""
        return boot_check(self.read, self.size, self.program)


# ----------------------------------------------------------------------------------------
# The ROM download protocol
# ----------------------------------------------------------------------------------------

# Command opcodes (Espressif "Serial Protocol").
FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
MEM_BEGIN, MEM_END, MEM_DATA = 0x05, 0x06, 0x07
SYNC, WRITE_REG, READ_REG = 0x08, 0x09, 0x0A
SPI_SET_PARAMS, SPI_ATTACH, READ_FLASH_SLOW, CHANGE_BAUDRATE = 0x0B, 0x0D, 0x0E, 0x0F
FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END = 0x10, 0x11, 0x12
SPI_FLASH_MD5, GET_SECURITY_INFO = 0x13, 0x14

# ROM loader error codes, sent as the second status byte after a failure flag of 1.
ERR_INVALID_MESSAGE = 0x05  # "Received message is invalid" (parameters or length field)
ERR_FAILED = 0x06  # "Failed to act on received message"
ERR_BAD_CRC = 0x07  # "Invalid CRC in message" (the 8-bit data checksum)
ERR_FLASH_WRITE = 0x08  # "flash write error" (read-back after write differs)
ERR_FLASH_READ = 0x09  # "flash read error"
ERR_READ_LENGTH = 0x0A  # "flash read length error"
ERR_DEFLATE = 0x0B  # "Deflate error"
ERR_DEFLATE_ADLER32 = 0x0C  # the deflate stream's Adler-32 does not match what was inflated

SYNC_PAYLOAD = b"\x07\x07\x12\x20" + b"\x55" * 32

# ESP32 register addresses esptool reads (esptool/targets/esp32.py).
CHIP_DETECT_MAGIC_REG = 0x40001000
ESP32_MAGIC = 0x00F01D83
EFUSE_BASE = 0x3FF5A000
APB_CTL_DATE = 0x3FF6607C
UART_CLKDIV_REG = 0x3FF40014
UART_DATE_REG = 0x60000078
GPIO_STRAP_REG = 0x3FF44038
RTCCALICFG1 = 0x3FF5F06C
SPI_BASE = 0x3FF42000  # SPI1, wired to the flash chip
SPI_CMD, SPI_ADDR, SPI_USR, SPI_USR1, SPI_USR2 = 0x00, 0x04, 0x1C, 0x20, 0x24
SPI_MOSI_DLEN, SPI_MISO_DLEN, SPI_W0 = 0x28, 0x2C, 0x80
SPI_CMD_USR = 1 << 18

# Chip identities: esptool tells the ESP32 by the magic word at 0x40001000 and the
# ESP32-S3 by GET_SECURITY_INFO's chip id. Only the ESP32 is modelled in full; the
# ESP32-S3 answers detection only, so host tools can be tested against a wrong chip.
CHIPS = ("esp32", "esp32s3")
ESP32S3_CHIP_ID = 9

RAM_CODE_REFUSED = (
    b"\r\nvirtual ESP32: cannot run code loaded into RAM at MEM_END (esptool's flasher stub);"
    b" use esptool --no-stub. Reset the board to continue.\r\n"
)
DEFAULT_MAC = "24:0a:c4:12:34:56"  # Espressif OUI
CRYSTAL_HZ = 40_000_000


@dataclass
class TransferFault:
    """Corrupt a FLASH_DATA / FLASH_DEFL_DATA block as it arrives (noise on the serial line).

    flips=1 flips one bit: the ROM's XOR checksum catches it and answers "Invalid CRC".
    flips=2 flips the same bit in two bytes: the checksum still matches and the ROM
    writes the wrong data; an uncompressed write is then caught only by the MD5 verify,
    a compressed one by the deflate stream's Adler-32 at its last block.
    """

    block: int
    flips: int = 1
    times: int | None = None  # None: every time the block arrives (retries included)
    hits: int = 0


@dataclass
class _Transfer:
    kind: str  # "flash", "defl", "mem"
    offset: int
    size: int
    blocks: int
    block_size: int
    next_seq: int = 0
    written: int = 0
    inflater: object = None
    inflate_error: int = 0


def _crc8_maxim(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


class RomBootloader:
    """The ESP32 ROM serial download protocol over a `SimulatedFlash`: a pure byte pipe.

    `feed(data)` takes the bytes the host wrote to the serial port and returns the
    bytes the chip sends back. While `in_download_mode` is False (the chip runs its app)
    it answers nothing. `reset(download=...)` is a reset with the BOOT pin held or not;
    what the ROM prints then comes out of the next `feed()` or `pending_output()`.
    After FLASH_END / MEM_END asking to leave the loader, `exit_request` says why
    ("run", "reboot" or "ram") and `on_exit(why)` is called. Thread-safe: `reset()` may
    come from a control thread while another thread feeds the serial bytes.
    """

    def __init__(
        self,
        flash: SimulatedFlash,
        chip: str = "esp32",
        mac: str | bytes = DEFAULT_MAC,
        download: bool = True,
        on_exit: Callable[[str], None] | None = None,
        flash_id: tuple[int, int] = (0xC8, 0x40),  # GigaDevice GD25Q-series, as on many WROOM-32
    ):
        if chip not in CHIPS:
            raise ValueError(f"unsupported chip {chip!r} (supported: {', '.join(CHIPS)})")
        self.flash = flash
        self.chip = chip
        self.mac = bytes.fromhex(mac.replace(":", "")) if isinstance(mac, str) else bytes(mac)
        if len(self.mac) != 6:
            raise ValueError(f"a MAC address has 6 bytes, got {mac!r}")
        self.on_exit = on_exit
        self._jedec = (flash_id[0], flash_id[1], self.flash.size.bit_length() - 1)
        self.faults: list[TransferFault] = []
        self.stats = {"commands": 0, "blocks": 0, "checksum_errors": 0, "bytes_written": 0}
        self._rx = bytearray()
        self._out = bytearray()
        self._lock = threading.RLock()
        self._status = [0x00, 0x00, 0x00]  # flash status registers 1..3 (kept across resets)
        self.in_download_mode = False
        self.exit_request: str | None = None
        self.reset(download=download)

    # -- public seam ---------------------------------------------------------------------

    def reset(self, download: bool = True, reason: str = "0x1 (POWERON_RESET)") -> None:
        """Reset the chip; with `download` (BOOT held low) the ROM waits for esptool.

        The ROM's output is queued for `feed()` / `pending_output()`: in download mode its
        banner and "waiting for download"; otherwise the ROM/bootloader log of booting the
        flash (`flash.boot_check().log`), after which the caller starts the app if
        `boot_check().ok` (the real ROM repeats a failure line forever; it is printed once).
        """
        with self._lock:
            self._reset(download, reason)

    def _reset(self, download: bool, reason: str) -> None:
        self._rx.clear()
        self._transfer: _Transfer | None = None
        self._ram: dict[int, bytes] = {}
        self._attached = False
        self._chip_size = 2 * MiB  # the ROM's default until SPI_SET_PARAMS
        self._baud = 115200
        self._last_value = 0
        self._write_enabled = False
        self._spi = {SPI_USR: 0x80000040, SPI_USR2: 0x70000005}
        self.in_download_mode = download
        self.exit_request = None
        if download:
            text = f"{ROM_BANNER}\r\n\r\nrst:{reason},boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\nwaiting for download\r\n"
        else:
            check = self.flash.boot_check()
            lines = [ROM_BANNER, "", f"rst:{reason},boot:0x13 (SPI_FAST_FLASH_BOOT)", *check.log]
            text = "\r\n".join(lines) + "\r\n"
        self._out += text.encode()

    def feed(self, data: bytes) -> bytes:
        """Bytes received on the serial port -> bytes the chip sends back (no I/O)."""
        with self._lock:
            if self.in_download_mode:
                self._rx += data
                self._process()
            return self.pending_output()

    def pending_output(self) -> bytes:
        """What the chip printed since the last call (after a reset, for instance)."""
        with self._lock:
            out = bytes(self._out)
            self._out.clear()
            return out

    def inject_transfer_fault(self, block: int, flips: int = 1, times: int | None = None) -> TransferFault:
        if flips not in (1, 2):
            raise ValueError("flips is 1 (caught by the checksum) or 2 (caught only by MD5)")
        fault = TransferFault(block, flips, times)
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    # -- SLIP framing --------------------------------------------------------------------

    def _process(self) -> None:
        while True:
            start = self._rx.find(0xC0)
            if start < 0:
                self._rx.clear()  # bytes outside a frame are line noise to the ROM
                return
            end = self._rx.find(0xC0, start + 1)
            if end < 0:
                del self._rx[:start]
                return
            frame = bytes(self._rx[start + 1 : end])
            if not frame:  # "C0 C0": the second delimiter opens the next frame
                del self._rx[:end]
                continue
            del self._rx[: end + 1]
            if not self.in_download_mode:
                self._rx.clear()
                return
            # Undo SLIP escaping (a malformed escape shows up later as a bad checksum or length).
            self._handle(frame.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb"))

    def _send(self, op: int, body: bytes = b"", value: int | None = None) -> None:
        value = self._last_value if value is None else value
        packet = struct.pack("<BBHI", 1, op, len(body), value) + body
        self._out += b"\xc0" + packet.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"

    def _ok(self, op: int, payload: bytes = b"", value: int | None = None) -> None:
        self._send(op, payload + b"\x00\x00\x00\x00", value)

    def _error(self, op: int, code: int) -> None:
        self._send(op, bytes([1, code, 0, 0]))

    # -- commands ------------------------------------------------------------------------

    def _handle(self, packet: bytes) -> None:
        if len(packet) < 8 or packet[0] != 0x00:
            return  # not a request: the ROM ignores it
        _, op, size, checksum = struct.unpack_from("<BBHI", packet)
        data = packet[8:]
        self.stats["commands"] += 1
        if len(data) != size:
            self._error(op, ERR_INVALID_MESSAGE)
            return
        handler, lengths = self._HANDLERS.get(op, (None, None))
        if op == GET_SECURITY_INFO and self.chip == "esp32s3":
            handler, lengths = RomBootloader._security_info, (0,)
        if handler is None or (lengths is not None and len(data) not in lengths):
            self._error(op, ERR_INVALID_MESSAGE)  # stub-only or unknown command, or bad parameters
            return
        handler(self, op, data, checksum)

    def _sync(self, op, data, checksum):
        if data != SYNC_PAYLOAD:
            return  # not a sync pattern: the ROM's autobaud does not lock, no answer
        self._baud = 115200  # a pty has no baud rate: the UART follows the host's sync rate
        for _ in range(8):  # the ROM answers a SYNC several times; esptool reads 8 replies
            self._ok(op, value=0x55201207)

    def _security_info(self, op, data, checksum):
        flags, crypt_cnt, key_purposes = 0, 0, bytes(7)
        self._ok(op, struct.pack("<IB7sII", flags, crypt_cnt, key_purposes, ESP32S3_CHIP_ID, 0))

    def _read_reg(self, op, data, checksum):
        self._last_value = self._register(struct.unpack("<I", data)[0])
        self._ok(op)

    def _write_reg(self, op, data, checksum):
        for i in range(0, len(data), 16):
            addr, value, mask, _delay_us = struct.unpack_from("<IIII", data, i)
            old = self._register(addr)
            self._write_register(addr, (old & ~mask) | (value & mask))
        self._ok(op)

    def _spi_set_params(self, op, data, checksum):
        _fl_id, total, _block, _sector, _page, _status_mask = struct.unpack("<6I", data)
        self._chip_size = total
        self._ok(op)

    def _spi_attach(self, op, data, checksum):
        self._attached = True
        self._ok(op)

    def _change_baudrate(self, op, data, checksum):
        baud = struct.unpack_from("<I", data)[0]
        if baud <= 0:
            self._error(op, ERR_INVALID_MESSAGE)
            return
        self._ok(op)  # answered at the old rate, then the UART switches (a pty has no rate)
        self._baud = baud

    def _in_chip(self, offset: int, length: int) -> bool:
        return 0 <= offset and offset + length <= min(self._chip_size, self.flash.size)

    def _flash_begin(self, op, data, checksum):
        erase_size, blocks, block_size, offset = struct.unpack_from("<IIII", data)
        if offset % SECTOR_SIZE or not self._in_chip(offset, erase_size) or block_size == 0:
            self._error(op, ERR_FAILED)
            return
        if erase_size:
            self.flash.erase(offset, erase_size)  # the ROM erases the whole region up front
        kind = "defl" if op == FLASH_DEFL_BEGIN else "flash"
        self._transfer = _Transfer(kind, offset, erase_size, blocks, block_size)
        if kind == "defl":
            self._transfer.inflater = zlib.decompressobj()
        self._ok(op)

    def _block(self, op, data, checksum, kind) -> bytes | None:
        """Common checks of a *_DATA command; returns the payload or None after answering an error."""
        t = self._transfer
        if t is None or t.kind != kind or len(data) < 16:
            self._error(op, ERR_FAILED if t is None or t.kind != kind else ERR_INVALID_MESSAGE)
            return None
        length, seq, _, _ = struct.unpack_from("<IIII", data)
        payload = data[16:]
        if length != len(payload):
            self._error(op, ERR_INVALID_MESSAGE)
            return None
        payload = self._apply_faults(seq, payload)
        if xor_checksum(payload) != checksum & 0xFF:
            self.stats["checksum_errors"] += 1
            self._error(op, ERR_BAD_CRC)
            return None
        if seq != t.next_seq:
            self._error(op, ERR_INVALID_MESSAGE)
            return None
        return payload

    def _block_done(self, op: int) -> None:
        """A block was written: the next one is expected (a failed block may be sent again)."""
        self._transfer.next_seq += 1
        self.stats["blocks"] += 1
        self._ok(op)

    def _apply_faults(self, seq: int, payload: bytes) -> bytes:
        for fault in self.faults:
            if (
                fault.block != seq
                or (fault.times is not None and fault.hits >= fault.times)
                or len(payload) < 2
            ):
                continue
            fault.hits += 1
            corrupted = bytearray(payload)
            corrupted[len(corrupted) // 3] ^= 0x10
            if fault.flips == 2:
                corrupted[len(corrupted) // 3 + 1] ^= 0x10
            return bytes(corrupted)
        return payload

    def _program(self, op: int, offset: int, payload: bytes) -> bool:
        if not self._in_chip(offset, len(payload)):
            self._error(op, ERR_FAILED)
            return False
        self.flash.write(offset, payload)
        if self.flash.read(offset, len(payload)) != payload:  # the ROM reads back what it wrote
            self._error(op, ERR_FLASH_WRITE)
            return False
        self.stats["bytes_written"] += len(payload)
        return True

    def _flash_data(self, op, data, checksum):
        payload = self._block(op, data, checksum, "flash")
        if payload is None:
            return
        t = self._transfer
        if self._program(op, t.offset + t.next_seq * t.block_size, payload):
            self._block_done(op)

    def _flash_defl_data(self, op, data, checksum):
        payload = self._block(op, data, checksum, "defl")
        if payload is None:
            return
        t = self._transfer
        if t.inflate_error:
            self._error(op, t.inflate_error)  # the inflater's state is lost: the transfer must restart
            return
        try:
            out = t.inflater.decompress(payload)
        except zlib.error as exc:
            t.inflate_error = ERR_DEFLATE_ADLER32 if "incorrect data check" in str(exc) else ERR_DEFLATE
            self._error(op, t.inflate_error)
            return
        if self._program(op, t.offset + t.written, out):
            t.written += len(out)
            self._block_done(op)

    def _flash_end(self, op, data, checksum):
        stay_in_loader = struct.unpack("<I", data)[0]
        self._transfer = None
        self._ok(op)
        # 0 = reboot, 1 = "run user code": either way the ROM leaves the loader.
        self._leave("run" if stay_in_loader else "reboot")

    def _mem_begin(self, op, data, checksum):
        size, blocks, block_size, offset = struct.unpack("<IIII", data)
        self._transfer = _Transfer("mem", offset, size, blocks, block_size)
        self._ok(op)

    def _mem_data(self, op, data, checksum):
        payload = self._block(op, data, checksum, "mem")
        if payload is None:
            return
        t = self._transfer
        self._ram[t.offset + t.next_seq * t.block_size] = payload
        self._block_done(op)

    def _mem_end(self, op, data, checksum):
        no_jump, entry = struct.unpack("<II", data)
        self._transfer = None
        self._ok(op)
        if not no_jump:
            # The ROM jumps to the uploaded code. Xtensa code cannot run here (esptool's
            # flasher stub would answer "OHAI"): say so on the console rather than leave
            # esptool waiting forever, and stop answering until the next reset.
            self._out += RAM_CODE_REFUSED
            self._leave("ram")

    def _leave(self, why: str) -> None:
        self.in_download_mode = False
        self.exit_request = why
        if self.on_exit is not None:
            self.on_exit(why)

    def _spi_flash_md5(self, op, data, checksum):
        addr, size, _, _ = struct.unpack("<IIII", data)
        if not self._in_chip(addr, size):
            self._error(op, ERR_FLASH_READ)
            return
        self._ok(op, self.flash.md5(addr, size).encode("ascii"))  # the ROM answers 32 hex digits

    def _read_flash_slow(self, op, data, checksum):
        addr, size = struct.unpack("<II", data)
        if size > 64:
            self._error(op, ERR_READ_LENGTH)
            return
        if not self._in_chip(addr, size):
            self._error(op, ERR_FLASH_READ)
            return
        self._ok(op, self.flash.read(addr, size).ljust(64, b"\0"))  # always a 64-byte buffer

    # op -> (handler, accepted payload lengths or None for any: the handler checks)
    _HANDLERS = {
        SYNC: (_sync, None),
        READ_REG: (_read_reg, (4,)),
        WRITE_REG: (_write_reg, (16, 32)),  # esptool may add a second write as a delay
        SPI_SET_PARAMS: (_spi_set_params, (24,)),
        SPI_ATTACH: (_spi_attach, (8,)),  # the ESP32 ROM takes the pin word plus a 4-byte "legacy" word
        CHANGE_BAUDRATE: (_change_baudrate, (8,)),
        FLASH_BEGIN: (_flash_begin, (16, 20)),
        FLASH_DATA: (_flash_data, None),
        FLASH_END: (_flash_end, (4,)),
        FLASH_DEFL_BEGIN: (_flash_begin, (16, 20)),
        FLASH_DEFL_DATA: (_flash_defl_data, None),
        FLASH_DEFL_END: (_flash_end, (4,)),
        MEM_BEGIN: (_mem_begin, (16,)),
        MEM_DATA: (_mem_data, None),
        MEM_END: (_mem_end, (8,)),
        SPI_FLASH_MD5: (_spi_flash_md5, (16,)),
        READ_FLASH_SLOW: (_read_flash_slow, (8,)),
    }

    # -- registers: eFuses, chip identity, and the SPI controller wired to the flash ------

    def _efuse_words(self) -> list[int]:
        m = self.mac
        crc = _crc8_maxim(m[::-1])  # espefuse checks this CRC, esptool does not
        return [
            0x00000000,  # write/read-disable bits, FLASH_CRYPT_CNT = 0 (no flash encryption)
            m[2] << 24 | m[3] << 16 | m[4] << 8 | m[5],  # MAC, low 4 bytes
            crc << 16 | m[0] << 8 | m[1],  # MAC CRC, MAC high 2 bytes
            1 << 15 | 1 << 13 | 1 << 9,  # rev bit 0, 240 MHz rated, package D0WD, dual core, BT
            0x0B << 8 | 50,  # ADC Vref calibration, CK8M frequency
            1 << 20,  # rev bit 1, SPI pads from defaults, minor revision 0
            0x00000000,  # coding scheme None, no secure boot (ABS_DONE_0/1 clear)
        ]

    def _register(self, addr: int) -> int:
        if SPI_BASE <= addr < SPI_BASE + 0x100:
            return self._spi.get(addr - SPI_BASE, 0)
        if addr == CHIP_DETECT_MAGIC_REG:
            return ESP32_MAGIC if self.chip == "esp32" else 0
        if EFUSE_BASE <= addr < EFUSE_BASE + 0x80 and addr % 4 == 0:
            words = self._efuse_words()
            index = (addr - EFUSE_BASE) // 4
            return words[index] if index < len(words) else 0
        if addr == APB_CTL_DATE:
            return 0x16042000 | 1 << 31  # rev bit 2: chip revision v3.0 (ESP32-D0WD-V3)
        if addr == UART_CLKDIV_REG:
            return round(CRYSTAL_HZ / self._baud) & 0xFFFFF
        if addr == RTCCALICFG1:
            return 2048 << 7  # with CK8M = 50: the ROM's crystal estimate is 40 MHz
        if addr == GPIO_STRAP_REG:
            return 0x03 if self.in_download_mode else 0x13
        if addr == UART_DATE_REG:
            return 0x15122500
        return self._spi.get(addr, 0)  # other memory: what was written, else 0

    def _write_register(self, addr: int, value: int) -> None:
        if SPI_BASE <= addr < SPI_BASE + 0x100:
            reg = addr - SPI_BASE
            self._spi[reg] = value
            if reg == SPI_CMD and value & SPI_CMD_USR:
                self._spi_user_command()
                self._spi[SPI_CMD] = value & ~SPI_CMD_USR  # done at once
            return
        if addr not in (UART_DATE_REG,):
            self._spi[addr] = value

    def _spi_user_command(self) -> None:
        """Run the SPI "user" command esptool composed in SPI1's registers against the flash."""
        usr, usr1, usr2 = self._spi.get(SPI_USR, 0), self._spi.get(SPI_USR1, 0), self._spi.get(SPI_USR2, 0)
        command = usr2 & 0xFF
        read_bits = self._spi.get(SPI_MISO_DLEN, 0) + 1 if usr & (1 << 28) else 0
        mosi = b""
        if usr & (1 << 27):
            n = (self._spi.get(SPI_MOSI_DLEN, 0) + 8) // 8
            words = (self._spi.get(SPI_W0 + 4 * i, 0) for i in range((n + 3) // 4))
            mosi = b"".join(struct.pack("<I", w) for w in words)[:n]
        address = None
        if usr & (1 << 30):
            bits = (usr1 >> 26) + 1
            address = self._spi.get(SPI_ADDR, 0) >> (32 - bits)
        reply = self._flash_chip(command, address, mosi, (read_bits + 7) // 8)
        if reply:
            reply = reply.ljust(4 * ((len(reply) + 3) // 4), b"\0")
            for i in range(0, len(reply), 4):
                old = self._spi.get(SPI_W0 + i, 0).to_bytes(4, "little")
                valid = min(4, (read_bits + 7) // 8 - i)
                word = reply[i : i + valid] + old[valid:]
                self._spi[SPI_W0 + i] = int.from_bytes(word, "little")

    def _sfdp(self) -> bytes:
        table = bytearray(b"\xff" * 0x100)
        table[0:8] = b"SFDP" + bytes([0x06, 0x01, 0x01, 0xFF])  # JESD216B, 2 parameter headers
        table[8:16] = bytes([0x00, 0x06, 0x01, 16, 0x30, 0x00, 0x00, 0xFF])  # basic flash parameters
        table[16:24] = bytes([self._jedec[0], 0x00, 0x01, 3, 0x90, 0x00, 0x00, 0xFF])  # vendor table
        bfpt = bytearray(b"\xff" * 64)
        struct.pack_into("<I", bfpt, 4, self.flash.size * 8 - 1)  # density in bits, minus one
        table[0x30:0x70] = bfpt
        return bytes(table)

    def _flash_chip(self, command: int, address: int | None, mosi: bytes, read_len: int) -> bytes:
        if command == 0x9F:  # RDID: manufacturer, memory type, capacity (2^n bytes)
            return bytes(self._jedec)[:read_len]
        if command == 0x5A and address is not None:  # RDSFDP
            return self._sfdp()[address : address + read_len].ljust(read_len, b"\xff")
        if command in (0x05, 0x35, 0x15):  # RDSR, RDSR2, RDSR3
            return bytes([self._status[(0x05, 0x35, 0x15).index(command)]]) * max(read_len, 1)
        if command in (0x06, 0x50):  # WREN, volatile-SR write enable
            self._write_enabled = True
        elif command == 0x04:  # WRDI
            self._write_enabled = False
        elif command in (0x01, 0x31, 0x11) and self._write_enabled:  # WRSR, WRSR2, WRSR3
            first = (0x01, 0x31, 0x11).index(command)
            for i, value in enumerate(mosi[: 3 - first]):
                self._status[first + i] = value
            self._write_enabled = False
        elif command == 0x03 and address is not None:  # READ
            end = min(address + read_len, self.flash.size)
            return self.flash.read(address, max(0, end - address)).ljust(read_len, b"\xff")
        # 0x66/0x99 (reset), 0xB9/0xAB (power down/up) and others: accepted, nothing to model.
        return b""


# ----------------------------------------------------------------------------------------
# A pty served by a thread, for esptool in tests
# ----------------------------------------------------------------------------------------


def serve_on_pty(
    bootloader: RomBootloader, link: str | os.PathLike | None = None
) -> tuple[str, Callable[[], None]]:
    """Serve `bootloader` on a new pty; returns (the pty's path, stop()).

    With `link`, that path is made a symlink to the pty (as `lanterne emulate --port`).
    """
    master, slave = pty.openpty()
    tty.setraw(slave)  # no echo, no newline translation: a serial port
    path = os.ttyname(slave)
    if link is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.symlink(path, link)
    stopping = threading.Event()

    def send(out: bytes) -> None:
        view = memoryview(out)
        while view and not stopping.is_set():
            _, writable, _ = select.select([], [master], [], 0.05)
            if writable:
                view = view[os.write(master, view) :]

    def loop() -> None:
        while not stopping.is_set():
            readable, _, _ = select.select([master], [], [], 0.02)
            if readable:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    return
                out = bootloader.feed(data)
            else:
                out = bootloader.pending_output()  # e.g. after a reset from another thread
            if out:
                send(out)

    thread = threading.Thread(target=loop, name=f"rom-pty {path}", daemon=True)
    thread.start()

    def stop() -> None:
        stopping.set()
        thread.join(timeout=2)
        for fd in (master, slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        if link is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)

    return path, stop
