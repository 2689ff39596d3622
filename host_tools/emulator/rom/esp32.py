# Virtual ESP32: the `esp32` module (what the firmware needs of it).
import json
import os
import _hal

HEAP_DATA = 1
HEAP_EXEC = 2
WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True


def mcu_temperature():
    return int(_hal.call("MCUTEMP"))


def raw_temperature():
    return mcu_temperature() * 9 // 5 + 32


# Deep-sleep wake sources (only the RTC GPIOs can wake the ESP32 from deep sleep): the emulator
# watches them while the board sleeps (host_tools/emulator/sleep.py). machine.wake_reason() then
# says which fired: machine.EXT0_WAKE (= PIN_WAKE), EXT1_WAKE or TIMER_WAKE.
_RTC_GPIOS = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39)


def _wake_pin(pin):
    n = pin if isinstance(pin, int) else getattr(pin, "_id", -1)
    if n not in _RTC_GPIOS:
        raise ValueError("invalid pin for wake")
    return n


def wake_on_ext0(pin, level):
    # pin None: ext0 off; level WAKEUP_ANY_HIGH (True, 1) or WAKEUP_ALL_LOW (False, 0)
    if pin is None:
        _hal.call("WAKE ext0 -")
        return
    _hal.call("WAKE ext0 %d %d" % (_wake_pin(pin), 1 if level else 0))


def wake_on_ext1(pins, level):
    # pins None or (): ext1 off; level WAKEUP_ANY_HIGH (any pin high) or WAKEUP_ALL_LOW (all low)
    mask = 0
    for p in pins or ():
        mask |= 1 << _wake_pin(p)
    _hal.call("WAKE ext1 %d %d" % (mask, 1 if level else 0))


def idf_heap_info(capabilities):
    import gc

    free = gc.mem_free()
    return [(free + gc.mem_alloc(), free, free, free)]


class NVS:
    # Non-volatile storage: a separate flash partition on the ESP32, kept beside the flash
    # folder by the emulator (it survives reboots and power cuts, not an erase).
    def __init__(self, namespace):
        self._ns = namespace
        self._path = (os.getenv("LANTERNE_NVS") or "") + "/" + namespace + ".json"
        self._pending = None

    def _load(self):
        if self._pending is None:
            try:
                with _hal.posix().open(self._path, "r") as f:
                    self._pending = json.loads(f.read())
            except (OSError, ValueError):
                self._pending = {}
        return self._pending

    def set_i32(self, key, value):
        self._load()[key] = int(value)

    def get_i32(self, key):
        d = self._load()
        if key not in d:
            raise OSError(-4354)  # ESP_ERR_NVS_NOT_FOUND
        return d[key]

    def set_blob(self, key, value):
        self._load()[key] = bytes(value).hex()

    def get_blob(self, key, buffer):
        d = self._load()
        if key not in d:
            raise OSError(-4354)
        data = bytes.fromhex(d[key])
        buffer[: len(data)] = data
        return len(data)

    def erase_key(self, key):
        d = self._load()
        if key not in d:
            raise OSError(-4354)
        del d[key]

    def commit(self):
        tmp = self._path + ".tmp"
        with _hal.posix().open(tmp, "w") as f:
            f.write(json.dumps(self._load()))
        _hal.posix().rename(tmp, self._path)


# -- Partition: the raw SPI flash of a board emulated from its flash image ------------------------
# As esp32_partition.c on the ESP32 port: find / info / readblocks / writeblocks (4 KiB blocks,
# erase before a plain write, extended protocol with an offset) / ioctl, and the OTA calls over
# otadata (set_boot, get_next_update, mark_app_valid_cancel_rollback) as ESP-IDF's esp_ota_ops.c
# does them (host_tools/boards/otadata.py has the format and the bootloader's side). Only on a
# board started from its raw flash (`lanterne emulate --blank`, a flash image).
_FLASH = os.getenv("LANTERNE_SPI_FLASH") or ""
_RUNNING = os.getenv("LANTERNE_RUNNING_APP") or ""
_table = None


_file = []


def _flash_file():
    if not _file:
        _file.append(_hal.posix().open(_FLASH, "r+b"))
    return _file[0]


def _flash_io(offset, data=None, length=0):
    # One open file for the interpreter's life (the chip's flash is always there); each write is
    # flushed, so a power cut (SIGKILL) keeps what was written.
    f = _flash_file()
    f.seek(offset)
    if data is None:
        return f.read(length)
    f.write(data)
    f.flush()


_ERASED = b"\xff" * 256  # erased flash, written piece by piece: an erase on the chip takes no heap
_SCRATCH = bytearray(256)  # a write's old bytes, ANDed with the new ones piece by piece


def _erase_range(offset, n):
    # Erase `n` bytes (a multiple of 256) without a sector-sized buffer: the ESP32's flash erase
    # is a call into the ROM, and the board's heap must not pay 4 KB that the chip does not.
    f = _flash_file()
    f.seek(offset)
    for _ in range(n // 256):
        f.write(_ERASED)
    f.flush()


def _partitions():
    global _table
    if _table is None:
        import struct

        # Entry by entry through one small buffer: ESP-IDF reads the table at start-up, outside
        # the MicroPython heap, so reading it here must not need a 3 KB block of the board's heap.
        entry = bytearray(32)
        f = _flash_file()
        table = []
        for at in range(0x8000, 0x8C00, 32):
            f.seek(at)
            f.readinto(entry)
            magic, ptype, sub, off, size, label, _flags = struct.unpack_from("<HBBII16sI", entry, 0)
            if magic != 0x50AA:
                break
            table.append((ptype, sub, off, size, label.split(b"\0")[0].decode()))
        _table = table
    return _table


def _otadata_crc(seq):
    import binascii
    import struct

    return binascii.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF


def _otadata():
    """[(seq, state) or None, same], and the otadata partition's offset."""
    import struct

    part = [p for p in _partitions() if p[0] == 1 and p[1] == 0x00]
    if not part:
        raise OSError(-0x1102)  # ESP_ERR_NOT_FOUND: no otadata partition
    base = part[0][2]
    out = []
    for i in (0, 1):
        seq, _label, state, crc = struct.unpack("<I20sII", _flash_io(base + i * 0x1000, length=32))
        out.append((seq, state) if seq != 0xFFFFFFFF and crc == _otadata_crc(seq) else None)
    return out, base


def _write_otadata(base, sector, seq, state):
    import struct

    _erase_range(base + sector * 0x1000, 0x1000)  # the sector erased ...
    _flash_io(base + sector * 0x1000, struct.pack("<I20sII", seq, b"\xff" * 20, state, _otadata_crc(seq)))


def _ota_apps():
    return sorted([p for p in _partitions() if p[0] == 0 and 0x10 <= p[1] < 0x20], key=lambda p: p[1])


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id, block_size=4096):
        if not _FLASH:
            raise OSError(2)  # this virtual board has no raw flash to hold partitions
        self.bs = block_size
        if id == Partition.RUNNING or id == Partition.BOOT:
            label = _RUNNING
            if id == Partition.BOOT:
                entries, _ = _otadata()
                valid = [e for e in entries if e is not None and e[1] not in (3, 4)]
                apps = _ota_apps()
                if valid and apps:
                    label = apps[(max(valid)[0] - 1) % len(apps)][4]
            found = [p for p in _partitions() if p[4] == label]
        elif isinstance(id, tuple):
            found = [id]
        else:
            found = [p for p in _partitions() if p[4] == id and p[0] == 0] or [p for p in _partitions() if p[4] == id]
        if not found:
            raise OSError(2)
        self.p = found[0]

    @staticmethod
    def find(type=0, subtype=0xFF, label=None, block_size=4096):
        return [Partition(p, block_size) for p in _partitions()
                if p[0] == type and (subtype == 0xFF or p[1] == subtype) and (label is None or p[4] == label)]

    def info(self):
        ptype, sub, off, size, label = self.p
        return (ptype, sub, off, size, label, False)

    def __repr__(self):
        return "<Partition type=%u, subtype=%u, address=%u, size=%u, label=%s, encrypted=0>" % self.p

    def _at(self, block, offset, n):
        at = block * self.bs + offset
        if at < 0 or at + n > self.p[3]:
            raise OSError(22)
        return self.p[2] + at

    def readblocks(self, block, buf, offset=0):
        f = _flash_file()  # straight into the caller's buffer, as the chip does: no heap
        f.seek(self._at(block, offset, len(buf)))
        if f.readinto(buf) != len(buf):
            raise OSError(5)

    def writeblocks(self, block, buf, offset=None):
        if offset is None:  # a plain write erases the blocks first
            _erase_range(self._at(block, 0, len(buf)), (len(buf) + 4095) // 4096 * 4096)
            offset = 0
        at = self._at(block, offset, len(buf))
        f = _flash_file()
        done = 0
        while done < len(buf):  # NOR flash: a write only clears bits (through a small scratch buffer)
            k = min(256, len(buf) - done)
            mv = memoryview(_SCRATCH)[:k]
            f.seek(at + done)
            f.readinto(mv)
            for j in range(k):
                mv[j] &= buf[done + j]
            f.seek(at + done)
            f.write(mv)
            done += k
        f.flush()

    def ioctl(self, op, arg):
        if op in (1, 2, 3):
            return 0
        if op == 4:
            return self.p[3] // self.bs
        if op == 5:
            return self.bs
        if op == 6:
            _erase_range(self._at(arg, 0, 4096), 4096)
            return 0
        return None

    def get_next_update(self):
        apps = _ota_apps()
        if not apps:
            raise OSError(-0x1102)
        labels = [p[4] for p in apps]
        i = labels.index(self.p[4]) if self.p[4] in labels else -1
        return Partition(apps[(i + 1) % len(apps)])

    def set_boot(self):
        # esp_ota_set_boot_partition(): a new entry, state NEW (rollback on), in the other sector.
        apps = _ota_apps()
        if self.p not in apps:
            raise OSError(-0x1103)  # ESP_ERR_OTA_PARTITION_CONFLICT
        n, i = len(apps), apps.index(self.p)
        entries, base = _otadata()
        valid = [k for k in (0, 1) if entries[k] is not None]
        if valid:
            k = max(valid, key=lambda k: entries[k][0])
            seq = entries[k][0] + 1
            while (seq - 1) % n != i:
                seq += 1
            _write_otadata(base, (k + 1) % 2, seq, 0)
        else:
            _write_otadata(base, 0, i + 1, 0)

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        # esp_ota_mark_app_valid_cancel_rollback(): the running image's entry becomes VALID.
        entries, base = _otadata()
        valid = [k for k in (0, 1) if entries[k] is not None]
        if not valid:
            return
        k = max(valid, key=lambda k: entries[k][0])
        if entries[k][1] == 1:  # PENDING_VERIFY
            _write_otadata(base, k, entries[k][0], 2)
