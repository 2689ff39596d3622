# The slot state, the ROMFS partition's two slots, the trusted keys, atomic files.
#
# The ROMFS partition holds two library slots, A in its first half and B in its second. The
# esp32 port mounts only the partition's start at /rom at boot, so the boot selector unmounts
# it and mounts the chosen slot as `VfsRom(memoryview(partition)[off:off + size])`.
#
# The state is one JSON blob under one NVS key (ESP-IDF writes a key atomically: a power cut
# leaves the old value or the new one), or a file written by rename where there is no NVS:
#   {"v": 1,
#    "active": 0,                 the slot that runs when no trial is on
#    "slots": [S or null, S or null]    S = {"n": counter, "len": bytes, "sha": hex, "ver": text}
#                                 a slot is described only once it holds a complete, verified
#                                 image; the non-active one is the rollback target
#    "trial": null or {"slot": s, "boots": k}   a new release on trial, booted k times
#    "crash": null or "why"       the last run's failure, written just before it reset
#    "unhealthy": n               boots in a row that ended in a crash or a watchdog reset
#    "safe": null or "why"        safe mode: no release runs, only MQTT and updates
#    "failed": counter or 0       the last release that failed its trial here
#    "event": null or {...}       the last rollback, reported in the status until the next update
#   }
import hashlib
import json
import os

NVS_NAMESPACE = "lanterne"
NVS_KEY = "ota"
STATE_FILE = "ota/state.json"  # where there is no NVS (ports without esp32.NVS)
ROMFS_MAGIC = b"\xd2\xcd\x31"


def write_atomic(path, data):
    # Written beside, then renamed over the old file: littlefs and POSIX replace it in one
    # step, so a power cut leaves the old file or the new one. FAT cannot rename over a file.
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.rename(tmp, path)
    except OSError:
        try:
            os.remove(path)
        except OSError:
            pass
        os.rename(tmp, path)


def ensure_dir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def fresh():
    return {"v": 1, "active": 0, "slots": [None, None], "trial": None, "crash": None, "unhealthy": 0,
            "safe": None, "failed": 0, "event": None}  # fmt: skip


class Store:
    """The state blob: NVS when the port has it, else a file (same JSON)."""

    def __init__(self):
        self.nvs = None
        try:
            import esp32

            self.nvs = esp32.NVS(NVS_NAMESPACE)
        except (ImportError, AttributeError, OSError):
            pass

    def load(self):
        raw = None
        if self.nvs is not None:
            buf = bytearray(1024)
            try:
                raw = bytes(buf[: self.nvs.get_blob(NVS_KEY, buf)])
            except OSError:  # ESP_ERR_NVS_NOT_FOUND
                return None
        else:
            try:
                with open(STATE_FILE, "rb") as f:
                    raw = f.read()
            except OSError:
                return None
        try:
            st = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(st, dict) or st.get("v") != 1:
            return None
        for k, v in fresh().items():
            st.setdefault(k, v)
        return st

    def save(self, st):
        data = json.dumps(st).encode()
        if self.nvs is not None:
            self.nvs.set_blob(NVS_KEY, data)
            self.nvs.commit()
        else:
            ensure_dir("ota")
            write_atomic(STATE_FILE, data)

    def erase(self):
        if self.nvs is not None:
            try:
                self.nvs.erase_key(NVS_KEY)
                self.nvs.commit()
            except OSError:
                pass
        else:
            remove(STATE_FILE)


def load_keys(path="ota/keys.json"):
    """The trusted public keys (32 bytes each); [] when none are installed."""
    try:
        with open(path) as f:
            doc = json.loads(f.read())
        return [bytes.fromhex(k) for k in doc.get("keys", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        return []


def save_keys(keys, path="ota/keys.json"):
    ensure_dir("ota")
    write_atomic(path, json.dumps({"keys": [bytes(k).hex() for k in keys]}).encode())


def hexs(b):
    return "".join("%02x" % x for x in b)


class Rom:
    """The ROMFS partition (`vfs.rom_ioctl(2, 0)`: an esp32.Partition that is also a buffer of the
    mapped flash) and its two slots. Raises OSError when the firmware has no ROMFS partition."""

    def __init__(self):
        import vfs

        part = vfs.rom_ioctl(2, 0)
        if isinstance(part, int):
            raise OSError(-part)
        self.part = part
        self.block = part.ioctl(5, 0)
        self.blocks = part.ioctl(4, 0)
        self.slot_blocks = self.blocks // 2
        self.slot_bytes = self.slot_blocks * self.block
        self.mv = memoryview(part)

    def offset(self, slot):
        return slot * self.slot_bytes

    def view(self, slot, start=0, end=None):
        off = self.offset(slot)
        return self.mv[off + start : off + (self.slot_bytes if end is None else end)]

    def image_len(self, slot):
        """Length of the ROMFS image in `slot` from its header, or 0 when there is none."""
        v = self.view(slot, 0, 16)
        if bytes(v[:3]) != ROMFS_MAGIC:
            return 0
        n = 0
        for i in range(3, 16):
            b = v[i]
            n = (n << 7) | (b & 0x7F)
            if not b & 0x80:
                total = i + 1 + n
                return total if total <= self.slot_bytes else 0
        return 0

    def sha(self, slot, length):
        h = hashlib.sha256()
        off = 0
        while off < length:  # a block at a time: no copy of the image on the heap
            n = min(self.block, length - off)
            h.update(self.view(slot, off, off + n))
            off += n
        return h.digest()

    def range_sha(self, slot, start, length):
        return hashlib.sha256(self.view(slot, start, start + length)).digest()

    def erase(self, slot, i):
        self.part.ioctl(6, slot * self.slot_blocks + i)

    def write(self, slot, i, buf, offset=0):
        # After erase(): the extended block protocol programs the bytes as they are.
        self.part.writeblocks(slot * self.slot_blocks + i, buf, offset)

    def mount(self, slot):
        import vfs

        vfs.mount(vfs.VfsRom(self.view(slot)), "/rom")


def describe(st, slot):
    s = st["slots"][slot]
    return "slot %s: %s (release %d)" % ("AB"[slot], s["ver"], s["n"]) if s else "slot %s: empty" % "AB"[slot]


def running_slot(st):
    t = st.get("trial")
    return t["slot"] if t else st["active"]


def boot_info(st=None):
    """For the application, at start: from the slot state `st` (as the boot selector left it; None:
    read it). When the OTA seam (lanterne/ota.py) is needed (an update to resume, a release or a
    MicroPython image on trial, a rollback or a crash streak to report): {"pending": True, "slot",
    "release", "version", "trial", "fw_trial", "image", "event", "unhealthy"}. Otherwise the
    status's "ota" field itself, all that a board that is not updating keeps: {"slot", "release"},
    and "image" (the MicroPython image an update put there). The boot selector hands it to the
    application through main.py (boot.select); an application started otherwise asks here."""
    if st is None:
        st = Store().load()
    try:
        os.stat("ota/job.json")
        job = True
    except OSError:
        job = False
    info = {"slot": None, "release": None}
    if job:
        info.update({"pending": True, "version": None})
    elif st:
        t = st.get("trial")
        slot = t["slot"] if t else st.get("active", 0)
        s = (st.get("slots") or [None, None])[slot]
        info = {"slot": "AB"[slot], "release": s["n"] if s else None}
        fw = st.get("fw")  # the MicroPython image an update put there, confirmed
        if fw:
            info["image"] = {"label": fw.get("label"), "trial": False, "release": fw["n"], "version": fw["ver"]}
        fw_trial = st.get("fw_trial")  # a MicroPython image on trial (second tier)
        if t or fw_trial or st.get("event") or st.get("unhealthy"):
            info.update({"pending": True, "version": s["ver"] if s else None, "trial": bool(t), "fw_trial": fw_trial,
                         "event": st.get("event"), "unhealthy": st.get("unhealthy", 0)})  # fmt: skip
    return info
