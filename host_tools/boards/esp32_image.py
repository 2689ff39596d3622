"""The ESP32's flash image format, as its ROM and ESP-IDF's 2nd-stage bootloader read it.

`check_flash_image(data, offset)` says whether a firmware .bin written at `offset` on an
erased flash would boot, and what it is (project, version, partitions), with the line a real
ESP32 prints when it would not; `boot_check(read, size)` does the same on any flash reader.
`write_image` and `partition_table` write the same formats. Facts from ESP-IDF
(esp_image_format.c, esp_flash_partitions.c, esp_app_format.h).

Shared by `lanterne flash` (what it refuses to write) and the virtual ESP32 (what it boots).
"""

from __future__ import annotations

import functools
import hashlib
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass

MiB = 1024 * 1024
SECTOR_SIZE = 0x1000
BLOCK_SIZE = 0x10000
BOOTLOADER_OFFSET = 0x1000
PARTITION_TABLE_OFFSET = 0x8000
PARTITION_TABLE_MAX = 0xC00
IMAGE_MAGIC = 0xE9
APP_DESC_MAGIC = 0xABCD5432
BOOTLOADER_DESC_MAGIC = 0x50
CHECKSUM_SEED = 0xEF
MAX_SEGMENTS = 16
MMU_PAGE = 0x10000

# In every generated image, so host tools can refuse to write it to a real ESP32
# (its code bytes are filler: a real chip would crash-loop).
SIMULATED_MARKER = b"lanterne: generated image for the virtual ESP32, not executable on a real chip"
FLASH_MODE_DIO = 2
FLASH_4MB_40M = 0x20


@dataclass(frozen=True)
class Partition:
    label: str
    type: int  # 0 app, 1 data
    subtype: int
    offset: int
    size: int


@dataclass(frozen=True)
class BootCheck:
    """The outcome of booting a flash image, as the ROM and the 2nd-stage bootloader see it.

    `message` is the line a real ESP32 prints about the failure (without the ESP-IDF
    "E (time) " prefix); `log` is the console output after the "rst:" line, with
    MicroPython's bootloader log level (errors and the ROM's own lines only).
    """

    ok: bool
    project: str | None = None
    version: str | None = None
    idf_version: str | None = None
    app_offset: int | None = None
    app_size: int | None = None
    app_label: str | None = None
    reason: str | None = None
    message: str | None = None
    partitions: tuple[Partition, ...] = ()
    log: tuple[str, ...] = ()


class _ImageError(Exception):
    def __init__(self, message: str, reason: str, checksums: tuple[int, int] | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.checksums = checksums  # (calculated, stored) when the XOR checksum failed


@dataclass
class _Image:
    offset: int
    flash_mode: int
    flash_size_freq: int
    entry: int
    chip_id: int
    hash_appended: bool
    segments: list[tuple[int, int, int]]  # (load address, flash offset of data, length)
    length: int  # header + segments + checksum padding (+ SHA-256 when appended)


def xor_checksum(data: bytes, state: int = CHECKSUM_SEED) -> int:
    """The ROM's 8-bit checksum: `state` XOR every byte (fast: XOR 64-bit words, then fold)."""
    pad = (-len(data)) % 8
    words = memoryview(bytes(data) + b"\0" * pad).cast("Q")
    x = functools.reduce(operator.xor, words, 0)
    for shift in (32, 16, 8):
        x ^= x >> shift
    return (state ^ x) & 0xFF


def _is_mapped(addr: int) -> bool:
    """Flash-cache mapped (IROM/DROM) address on the ESP32: its data is not loaded but mapped."""
    return 0x400D0000 <= addr < 0x40400000 or 0x3F400000 <= addr < 0x3F800000


def _read_image(read: Callable[[int, int], bytes], offset: int, limit: int, verify_hash: bool) -> _Image:
    """Parse and verify an ESP32 image at `offset` (at most `limit` bytes), as esp_image_format.c does."""
    header = read(offset, 24)
    magic, count, flash_mode, size_freq, entry = struct.unpack_from("<BBBBI", header)
    if magic != IMAGE_MAGIC:
        raise _ImageError(
            f"esp_image: image at 0x{offset:x} has invalid magic byte (nothing flashed here?)",
            f"no image at 0x{offset:x} (first byte 0x{magic:02x}, expected 0xe9)",
        )
    chip_id = struct.unpack_from("<H", header, 12)[0]
    if chip_id != 0:
        raise _ImageError(
            f"boot_comm: mismatch chip ID, expected 0, found {chip_id}",
            f"the image at 0x{offset:x} is for another chip (chip id {chip_id}, the ESP32 is 0)",
        )
    if count > MAX_SEGMENTS:
        raise _ImageError(
            f"esp_image: image at 0x{offset:x} segment count {count} exceeds max {MAX_SEGMENTS}",
            f"corrupt image header at 0x{offset:x} ({count} segments)",
        )
    hash_appended = header[23] == 1
    pos = offset + 24
    segments = []
    checksum = CHECKSUM_SEED
    for index in range(count):
        if pos + 8 - offset > limit:
            raise _ImageError(
                f"esp_image: image at 0x{offset:x} is truncated", "image runs past its partition"
            )
        load, length = struct.unpack("<II", read(pos, 8))
        data_at = pos + 8
        if length % 4 or length >= 16 * MiB:
            raise _ImageError(
                f"esp_image: invalid segment length 0x{length:x}", f"corrupt segment {index} at 0x{pos:x}"
            )
        if _is_mapped(load) and data_at % MMU_PAGE != load % MMU_PAGE:
            raise _ImageError(
                f"esp_image: Segment {index} load address 0x{load:08x}, doesn't match data 0x{data_at:08x}",
                f"segment {index} is not aligned to its 64 KiB flash mapping",
            )
        if data_at + length - offset > limit:
            raise _ImageError(
                f"esp_image: Image length {data_at + length - offset} doesn't fit in partition length {limit}",
                "image runs past its partition",
            )
        checksum = xor_checksum(read(data_at, length), checksum)
        segments.append((load, data_at, length))
        pos = data_at + length
    unpadded = pos - offset
    padded = (unpadded + 1 + 15) & ~15
    stored = read(offset + padded - 1, 1)[0]
    if stored != checksum:
        raise _ImageError(
            f"esp_image: Checksum failed. Calculated 0x{checksum:x} read 0x{stored:x}",
            f"image at 0x{offset:x} is corrupt (checksum)",
            (checksum, stored),
        )
    length = padded + (32 if hash_appended else 0)
    if length > limit:
        raise _ImageError(
            f"esp_image: Image length {length} doesn't fit in partition length {limit}",
            "image runs past its partition",
        )
    if hash_appended and verify_hash:
        digest = hashlib.sha256(read(offset, padded)).digest()
        if digest != read(offset + padded, 32):
            raise _ImageError(
                "esp_image: Image hash failed - image is corrupt",
                f"image at 0x{offset:x} is corrupt (SHA-256)",
            )
    return _Image(offset, flash_mode, size_freq, entry, chip_id, hash_appended, segments, length)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def _parse_partitions(table: bytes) -> tuple[Partition, ...]:
    """Verify a partition table as esp_partition_table_verify() does; raise _ImageError."""
    parts = []
    for index in range(len(table) // 32):
        entry = table[index * 32 : index * 32 + 32]
        magic = struct.unpack_from("<H", entry)[0]
        if magic == 0x50AA:
            ptype, subtype, offset, size = struct.unpack_from("<BBII", entry, 2)
            parts.append(Partition(_cstr(entry[12:28]), ptype, subtype, offset, size))
        elif magic == 0xEBEB:
            if hashlib.md5(table[: index * 32]).digest() != entry[16:32]:
                raise _ImageError("flash_parts: Incorrect MD5 checksum", "partition table is corrupt (MD5)")
        elif magic == 0xFFFF and entry[2] == 0xFF and entry[3] == 0xFF:
            return tuple(parts)
        else:
            raise _ImageError(
                f"flash_parts: partition {index} invalid magic number 0x{magic:x}",
                "no valid partition table at 0x8000" if index == 0 else "partition table is corrupt",
            )
    raise _ImageError(
        "flash_parts: partition table has no terminating entry, not valid", "partition table is corrupt"
    )


def _app_descriptor(read: Callable[[int, int], bytes], image: _Image) -> dict | None:
    if not image.segments or not _is_mapped(image.segments[0][0]):
        return None
    desc = read(image.segments[0][1], 256)
    if struct.unpack_from("<I", desc)[0] != APP_DESC_MAGIC:
        return None
    return {"version": _cstr(desc[16:48]), "project": _cstr(desc[48:80]), "idf_version": _cstr(desc[112:144])}


_FLASH_MODES = {0: "QIO", 1: "QOUT", 2: "DIO", 3: "DOUT"}


def boot_check(read: Callable[[int, int], bytes], flash_size: int, write_sector=None) -> BootCheck:
    """`write_sector(offset, data)`: erase and program a 4 KiB sector (the bootloader's otadata
    updates on a board with OTA app partitions, `host_tools.boards.otadata`); None: look only."""
    log: list[str] = []
    clock = iter(range(29, 10_000, 7))

    def fail(message, reason, partitions=(), more=()):
        log.append(
            message
            if not message.startswith(("esp_image", "flash_parts", "boot"))
            else f"E ({next(clock)}) {message}"
        )
        log.extend(f"E ({next(clock)}) {line}" for line in more)
        return BootCheck(
            ok=False, reason=reason, message=message, partitions=tuple(partitions), log=tuple(log)
        )

    # 1. The ROM loads the 2nd-stage bootloader from 0x1000 (it checks magic and checksum only).
    first_word = struct.unpack("<I", read(BOOTLOADER_OFFSET, 4))[0]
    if first_word & 0xFF != IMAGE_MAGIC:
        why = "flash is erased" if first_word == 0xFFFFFFFF else "no bootloader image there"
        return fail(f"invalid header: 0x{first_word:08x}", f"no bootloader at 0x1000 ({why})")
    try:
        boot = _read_image(
            read, BOOTLOADER_OFFSET, PARTITION_TABLE_OFFSET - BOOTLOADER_OFFSET, verify_hash=False
        )
    except _ImageError as exc:
        if exc.checksums:
            calc, stored = exc.checksums
            return fail(
                f"csum err:0x{calc:02x}!=0x{stored:02x}", "bootloader at 0x1000 is corrupt (checksum)"
            )
        return fail("ets_main.c 371", f"bootloader at 0x1000 is corrupt ({exc.reason})")
    log.append("configsip: 0, SPIWP:0xee")
    log.append("clk_drv:0x00,q_drv:0x00,d_drv:0x00,cs0_drv:0x00,hd_drv:0x00,wp_drv:0x00")
    log.append(f"mode:{_FLASH_MODES.get(boot.flash_mode, 'DIO')}, clock div:2")
    log.extend(f"load:0x{load:08x},len:{length}" for load, _, length in boot.segments)
    log.append(f"entry 0x{boot.entry:08x}")

    # 2. The bootloader verifies the partition table at 0x8000.
    try:
        partitions = _parse_partitions(read(PARTITION_TABLE_OFFSET, PARTITION_TABLE_MAX))
    except _ImageError as exc:
        return fail(
            exc.message,
            exc.reason,
            more=("boot: Failed to verify partition table", "boot: load partition table error!"),
        )
    for p in partitions:
        if p.offset + p.size > flash_size:
            return fail(
                f"flash_parts: partition {partitions.index(p)} invalid - offset 0x{p.offset:x} size 0x{p.size:x} "
                f"exceeds flash chip size 0x{flash_size:x}",
                f"partition {p.label!r} does not fit the {flash_size // MiB} MB flash",
                partitions,
                ("boot: Failed to verify partition table", "boot: load partition table error!"),
            )

    # 3. It boots the app otadata selects (with rollback), else the factory app, else ota_0.
    from host_tools.boards import otadata

    app, ota_log = otadata.select(read, write_sector, partitions)
    log.extend(ota_log)
    if app is None:
        return fail(
            "boot: No bootable app partitions in the partition table",
            "the partition table has no app partition",
            partitions,
        )
    slot = "Factory app partition" if app.subtype == 0 else f"OTA app partition slot {app.subtype - 0x10}"
    try:
        image = _read_image(read, app.offset, app.size, verify_hash=True)
    except _ImageError as exc:
        return fail(
            exc.message,
            f"{exc.reason} (partition {app.label!r})",
            partitions,
            (f"boot: {slot} is not bootable", "boot: No bootable app partitions in the partition table"),
        )
    desc = _app_descriptor(read, image) or {}
    return BootCheck(
        ok=True,
        project=desc.get("project"),
        version=desc.get("version"),
        idf_version=desc.get("idf_version"),
        app_offset=app.offset,
        app_size=image.length,
        app_label=app.label,
        partitions=partitions,
        log=tuple(log),
    )


def check_flash_image(data: bytes, offset: int = BOOTLOADER_OFFSET, flash_size: int = 4 * MiB) -> BootCheck:
    """`boot_check()` of an erased flash with `data` written at `offset` (e.g. a firmware .bin at 0x1000)."""

    def read(at: int, length: int) -> bytes:
        out = bytearray(b"\xff" * length)
        lo, hi = max(at, offset), min(at + length, offset + len(data))
        if lo < hi:
            out[lo - at : hi - at] = data[lo - offset : hi - offset]
        return bytes(out)

    return boot_check(read, flash_size)


def write_image(segments: list[tuple[int, bytes]], entry: int) -> bytes:
    """An ESP32 image: header, extended header (SHA-256 appended), segments, checksum, hash."""
    out = bytearray(struct.pack("<BBBBI", IMAGE_MAGIC, len(segments), FLASH_MODE_DIO, FLASH_4MB_40M, entry))
    # wp pin 0xEE (disabled), drive strengths 0, chip id 0 (ESP32), min rev 0,
    # min/max full revision v0.0 - v3.99, reserved, hash appended.
    out += struct.pack("<BBBBHBHH4sB", 0xEE, 0, 0, 0, 0, 0, 0, 399, bytes(4), 1)
    checksum = CHECKSUM_SEED
    for load, data in segments:
        if len(data) % 4:
            raise ValueError("segment lengths are multiples of 4")
        out += struct.pack("<II", load, len(data)) + data
        checksum = xor_checksum(data, checksum)
    out += b"\0" * ((-(len(out) + 1)) % 16) + bytes([checksum])
    out += hashlib.sha256(out).digest()
    return bytes(out)


def partition_table(rows) -> bytes:
    table = bytearray()
    for label, ptype, subtype, offset, size in rows:
        table += struct.pack("<HBBII16sI", 0x50AA, ptype, subtype, offset, size, label.encode(), 0)
    table += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(table).digest()
    return bytes(table.ljust(PARTITION_TABLE_MAX, b"\xff"))


def app_image(data: bytes) -> tuple[bytes, dict]:
    """(the app image, its descriptor) of a firmware file: an app image (ESP-IDF's micropython.bin),
    or a whole flash image written at 0x1000 (micropython.org's .bin: bootloader, partition table,
    the app at 0x10000). Raises ValueError when it holds no checked app image."""
    # (flash address the file starts at, flash address of the app): an app image is at 0x10000.
    for file_at, app_at in ((0x10000, 0x10000), (BOOTLOADER_OFFSET, 0x10000)):
        start = app_at - file_at
        if len(data) <= start or data[start] != IMAGE_MAGIC:
            continue

        def read(off: int, length: int, file_at=file_at) -> bytes:
            return data[off - file_at : off - file_at + length].ljust(length, b"\xff")

        try:
            image = _read_image(read, app_at, len(data) - start, verify_hash=True)
        except _ImageError:
            continue
        desc = _app_descriptor(read, image)
        if desc:
            return data[start : start + image.length], desc
    raise ValueError("no app image with an app descriptor at its start or at 0xF000 (is it an ESP32 firmware file?)")
