"""A genuine-format MicroPython ESP32 firmware image for the virtual ESP32, generated and cached in build/.

No real MicroPython binary is available offline: the code bytes are deterministic filler,
the structure is real (2nd-stage bootloader, partition table, app with its esp_app_desc_t),
so esptool, `lanterne flash` and the virtual ROM treat it as micropython.org's .bin. Every
image carries `SIMULATED_MARKER`, so host tools refuse to write it to a real chip.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
from pathlib import Path

from host_tools.boards.esp32_image import (
    APP_DESC_MAGIC,
    BOOTLOADER_DESC_MAGIC,
    BOOTLOADER_OFFSET,
    PARTITION_TABLE_OFFSET,
    SIMULATED_MARKER,
    partition_table,
    write_image,
)
from host_tools.runtime.paths import BUILD

MICROPYTHON_PARTITIONS = (
    ("nvs", 1, 0x02, 0x9000, 0x6000),
    ("phy_init", 1, 0x01, 0xF000, 0x1000),
    ("factory", 0, 0x00, 0x10000, 0x1F0000),
    ("vfs", 1, 0x81, 0x200000, 0x200000),
)
# The Lanterne build (ESP32_GENERIC with MICROPY_VFS_ROM and boards/partitions-romfs.csv): the
# app partition gives the ROMFS partition its room, just below the filesystem.
ROMFS_BOARD = "ESP32_GENERIC_ROMFS"


def romfs_partitions(romfs_bytes: int) -> tuple:
    vfs = MICROPYTHON_PARTITIONS[3]
    factory = MICROPYTHON_PARTITIONS[2]
    return MICROPYTHON_PARTITIONS[:2] + (
        ("factory", 0, 0x00, factory[3], factory[4] - romfs_bytes),
        ("romfs", 1, 0x8F, vfs[3] - romfs_bytes, romfs_bytes),
        vfs,
    )


def ota_partitions(romfs_bytes: int) -> tuple:
    """The Lanterne build's OTA variant (boards/micropython/LANTERNE_ESP32/partitions-ota-romfs.csv):
    otadata, two 1.5 MiB app slots, the ROMFS partition, the filesystem in what is left of 4 MiB."""
    romfs_at = 0x10000 + 2 * 0x180000
    return (
        ("nvs", 1, 0x02, 0x9000, 0x4000),
        ("otadata", 1, 0x00, 0xD000, 0x2000),
        ("phy_init", 1, 0x01, 0xF000, 0x1000),
        ("ota_0", 0, 0x10, 0x10000, 0x180000),
        ("ota_1", 0, 0x11, 0x190000, 0x180000),
        ("romfs", 1, 0x8F, romfs_at, romfs_bytes),
        ("vfs", 1, 0x81, romfs_at + romfs_bytes, 0x400000 - romfs_at - romfs_bytes),
    )


IDF_VERSION = "v5.4.1"
BUILD_DATE = ("Jan 10 2026", "12:00:00")


def _filler(seed: str, length: int) -> bytes:
    return random.Random(seed).randbytes(length)




def _bootloader(idf_version: str) -> bytes:
    desc = struct.pack(
        "<B3sI32s24s16s",
        BOOTLOADER_DESC_MAGIC,
        bytes(3),
        1,
        idf_version.encode(),
        b"Jan 10 2026 12:00:00",
        bytes(16),
    )
    dram = desc + _filler("bootloader-dram", 7104 - len(desc))
    return write_image(
        [
            (0x3FFF0030, dram),
            (0x40078000, _filler("bootloader-iram0", 15376)),
            (0x40080400, _filler("bootloader-iram1", 3868)),
        ],
        entry=0x40080654,
    )




def _app(version: str, board: str, idf_version: str, code_seed: str | None = None) -> bytes:
    date, time = BUILD_DATE
    elf_sha = hashlib.sha256(f"micropython {version} {board}".encode()).digest()
    desc = struct.pack(
        "<II8s32s32s16s16s32s32sHHB3s72s",
        APP_DESC_MAGIC, 0, bytes(8), version.encode(), b"micropython", time.encode(), date.encode(),
        idf_version.encode(), elf_sha, 0, 99, 16, bytes(3), bytes(72),
    )  # fmt: skip
    banner = f"MicroPython {version} on 2026-01-10; Generic ESP32 module with ESP32\0".encode()
    rodata = desc + banner + SIMULATED_MARKER + b"\0"
    seed = code_seed or version  # images built from the same code differ only in their descriptor
    drom = rodata + _filler(f"{seed}-drom", 0x2B5A0 - len(rodata))
    # Layout of an ESP-IDF app as esptool elf2image writes it: DROM first (with the app
    # descriptor), RAM segments filling up to the 64 KiB boundary where IROM's data must
    # start (flash offset = vaddr mod 64 KiB), then IROM, then the rest of IRAM.
    segments = [
        (0x3F400020, drom),
        (0x3FFBDB60, _filler(f"{seed}-dram", 0x4A70)),
        (0x40080000, _filler(f"{seed}-iram0", 0xFFD8)),
        (0x400D0020, _filler(f"{seed}-irom", 0x12C4F8)),
        (0x4008FFD8, _filler(f"{seed}-iram1", 0xD0F8)),
    ]
    return write_image(segments, entry=0x40081F3C)


def micropython_image_name(version: str = "v1.29.0", board: str = "ESP32_GENERIC", romfs_bytes: int = 0, ota: bool = False) -> str:
    if romfs_bytes:
        board = f"{ROMFS_BOARD}{romfs_bytes // 1024}K" + ("-OTA" if ota else "")
    return f"{board}-20260110-{version}.bin"  # micropython.org's naming: BOARD-DATE-VERSION.bin


def build_micropython_image(version: str = "v1.29.0", board: str = "ESP32_GENERIC", romfs_bytes: int = 0,
                            ota: bool = False, code_seed: str | None = None) -> bytes:
    """A MicroPython ESP32 firmware .bin as micropython.org ships it (written at 0x1000).

    Offset 0: 2nd-stage bootloader; +0x7000: partition table (0x8000 absolute);
    +0xF000: the app (0x10000 absolute) with an esp_app_desc_t saying project
    "micropython" and `version`. Cached in build/ under micropython.org's file name.
    With `romfs_bytes`, the Lanterne build: a "romfs" partition of that size below "vfs"; with
    `ota` too, its OTA variant (otadata, ota_0, ota_1). `code_seed`: the code bytes of another
    version (an image rebuilt with only its version changed), for firmware-update tests.
    """
    path = BUILD / "firmware" / micropython_image_name(version, board, romfs_bytes, ota)
    if code_seed:
        path = path.with_name(path.stem + f"-code-{code_seed}.bin")
    parts = (ota_partitions(romfs_bytes) if ota else romfs_partitions(romfs_bytes)) if romfs_bytes else MICROPYTHON_PARTITIONS
    image = bytearray(_bootloader(IDF_VERSION).ljust(PARTITION_TABLE_OFFSET - BOOTLOADER_OFFSET, b"\xff"))
    image += partition_table(parts).ljust(0x10000 - PARTITION_TABLE_OFFSET, b"\xff")
    image += _app(version, board, IDF_VERSION, code_seed)
    # Building takes ~20 ms: rebuild every time, rewrite the cached file only if it differs.
    if not path.exists() or path.read_bytes() != image:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_bytes(image)
        os.replace(tmp, path)
    return bytes(image)


def micropython_image_path(version: str = "v1.29.0", board: str = "ESP32_GENERIC", romfs_bytes: int = 0,
                           ota: bool = False, code_seed: str | None = None) -> Path:
    """The cached image file (built on first use)."""
    build_micropython_image(version, board, romfs_bytes, ota, code_seed)
    path = BUILD / "firmware" / micropython_image_name(version, board, romfs_bytes, ota)
    return path.with_name(path.stem + f"-code-{code_seed}.bin") if code_seed else path


