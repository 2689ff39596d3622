"""The ESP32's otadata: which OTA app partition boots, and the bootloader's rollback.

ESP-IDF keeps two `esp_ota_select_entry_t` (32 bytes: ota_seq u32, seq_label[20], ota_state u32,
crc u32 = CRC-32 of ota_seq) in the first bytes of the two 4 KiB sectors of the "otadata"
partition. The valid entry (ota_seq not 0xFFFFFFFF, crc right) with the highest ota_seq wins and
selects app ota_((ota_seq - 1) mod n). With the bootloader's app rollback
(CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE, on in MicroPython's sdkconfig.base):
  - `esp_ota_set_boot_partition()` writes a new entry, state NEW, in the other sector;
  - the bootloader turns NEW into PENDING_VERIFY and boots it;
  - the new image confirms itself (`esp_ota_mark_app_valid_cancel_rollback()`: state VALID);
  - a reset while it is still PENDING_VERIFY: the bootloader marks it ABORTED and boots the
    previous image (the other valid entry; none: the factory app, or ota_0).
Entries in state INVALID or ABORTED never boot. With both sectors erased (a freshly flashed
board) the factory app boots, or ota_0 when there is none.

What the virtual ESP32's bootloader does (`select()`), and what its `esp32.Partition`
(rom/esp32.py) writes; modelled on ESP-IDF's bootloader_utility.c and esp_ota_ops.c.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

ENTRY = struct.Struct("<I20sII")
SECTOR = 0x1000
NEW, PENDING_VERIFY, VALID, INVALID, ABORTED = 0, 1, 2, 3, 4
UNDEFINED = 0xFFFFFFFF
STATE_NAMES = {NEW: "new", PENDING_VERIFY: "pending_verify", VALID: "valid", INVALID: "invalid", ABORTED: "aborted",
               UNDEFINED: "undefined"}  # fmt: skip
OTADATA_SUBTYPE = 0x00  # data partition subtype "ota"
OTA_APP_SUBTYPE = 0x10  # ota_0; ota_i = 0x10 + i


def crc(seq: int) -> int:
    return zlib.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF


def entry(seq: int, state: int) -> bytes:
    return ENTRY.pack(seq, b"\xff" * 20, state, crc(seq))


def parse(raw: bytes) -> dict | None:
    """An entry (seq, state), or None when it is not valid (erased, or its crc is wrong)."""
    seq, _label, state, c = ENTRY.unpack(raw[: ENTRY.size])
    if seq == 0xFFFFFFFF or c != crc(seq):
        return None
    return {"seq": seq, "state": state}


def entries(read: Callable[[int, int], bytes], otadata) -> list[dict | None]:
    return [parse(read(otadata.offset + i * SECTOR, ENTRY.size)) for i in (0, 1)]


def active(es: list[dict | None]) -> int | None:
    valid = [i for i, e in enumerate(es) if e is not None]
    return max(valid, key=lambda i: es[i]["seq"]) if valid else None


def select(read, write_sector: Callable[[int, bytes], None] | None, partitions, rollback: bool = True):
    """(app partition to boot, log lines), the bootloader's way; `write_sector(offset, data)` erases
    and programs an otadata sector (the state changes of a boot), None for a read-only look."""
    apps = sorted((p for p in partitions if p.type == 0 and OTA_APP_SUBTYPE <= p.subtype < OTA_APP_SUBTYPE + 16),
                  key=lambda p: p.subtype)  # fmt: skip
    factory = next((p for p in partitions if p.type == 0 and p.subtype == 0x00), None)
    otadata = next((p for p in partitions if p.type == 1 and p.subtype == OTADATA_SUBTYPE), None)
    default = factory or (apps[0] if apps else None)
    if otadata is None or not apps:
        return default, []
    log = []
    es = entries(read, otadata)
    usable = [e if e is not None and e["state"] not in (INVALID, ABORTED) else None for e in es]
    a = active(usable)
    if a is None:
        return default, log
    e = es[a]
    if rollback and e["state"] == PENDING_VERIFY:
        # Booted once and never confirmed: abort it and go back to the previous image.
        if write_sector:
            write_sector(otadata.offset + a * SECTOR, entry(e["seq"], ABORTED))
        log.append(f"W (31) boot: ota_{(e['seq'] - 1) % len(apps)} was not confirmed: rollback")
        usable[a] = None
        a = active(usable)
        if a is None:
            return default, log
        e = es[a]
    elif rollback and e["state"] == NEW:
        if write_sector:
            write_sector(otadata.offset + a * SECTOR, entry(e["seq"], PENDING_VERIFY))
    return apps[(e["seq"] - 1) % len(apps)], log
