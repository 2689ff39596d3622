# Updating the MicroPython image itself (second tier, docs/ota.md): the next OTA app partition is
# the target (ESP-IDF's A/B app update: otadata + ota_0/ota_1, on the Lanterne image's OTA
# variant), written block by block by the same updater as a library slot, then handed to the
# bootloader with set_boot(). The new image boots on trial (the bootloader's PENDING_VERIFY): the
# application confirms it with mark_app_valid_cancel_rollback() once healthy; a reset before that
# and the bootloader boots the previous image again, which reports the rollback.
import hashlib
import struct

IMAGE_MAGIC = 0xE9


def image_length(part):
    """Length of the ESP32 app image at the start of `part` (esp_image_format.h: header, segments,
    padding to 16 with the checksum byte, the appended SHA-256), or 0 when there is none."""
    head = bytearray(24)
    part.readblocks(0, head)
    if head[0] != IMAGE_MAGIC or head[1] > 16:
        return 0
    at = 24
    seg = bytearray(8)
    for _ in range(head[1]):
        part.readblocks(0, seg, at)
        at += 8 + struct.unpack("<II", seg)[1]
    at += 1 + (-(at + 1)) % 16
    if head[23] == 1:
        at += 32
    return at


def app_version(part):
    """The version of the image in `part`, from its esp_app_desc_t (first segment), or None."""
    buf = bytearray(48)
    try:
        part.readblocks(0, buf, 32)
    except OSError:
        return None
    if struct.unpack("<I", buf[:4])[0] != 0xABCD5432:
        return None
    return bytes(buf[16:48]).split(b"\0")[0].decode()


class _Base:
    """The running image as the delta's base: slices read from flash on demand."""

    def __init__(self, part, length):
        self.part = part
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, s):
        out = bytearray(s.stop - s.start)
        self.part.readblocks(0, out, s.start)
        return out


class AppTarget:
    """The next OTA app partition, with the interface of a library slot (lanterne_ota.state.Rom)."""

    def __init__(self):
        import esp32

        self.running = esp32.Partition(esp32.Partition.RUNNING)
        self.next = self.running.get_next_update()
        self.block = 4096
        self.slot_bytes = self.next.info()[3]
        self.running_len = image_length(self.running)

    def label(self):
        return self.next.info()[4]

    def base(self):
        return _Base(self.running, self.running_len)

    def running_sha(self):
        return self._sha(self.running, self.running_len)

    def image_len(self, slot):
        return image_length(self.next)

    def _sha(self, part, length):
        h = hashlib.sha256()
        buf = bytearray(1024)
        at = 0
        while at < length:
            n = min(1024, length - at)
            mv = memoryview(buf)[:n]
            part.readblocks(0, mv, at)
            h.update(mv)
            at += n
        return h.digest()

    def sha(self, slot, length):
        return self._sha(self.next, length)

    def range_sha(self, slot, start, length):
        h = hashlib.sha256()
        buf = bytearray(1024)
        at = 0
        while at < length:
            n = min(1024, length - at)
            mv = memoryview(buf)[:n]
            self.next.readblocks(0, mv, start + at)
            h.update(mv)
            at += n
        return h.digest()

    def erase(self, slot, i):
        self.next.ioctl(6, i)

    def write(self, slot, i, buf, offset=0):
        self.next.writeblocks(i, buf, offset)

    def activate(self):
        self.next.set_boot()


def running_label():
    import esp32

    return esp32.Partition(esp32.Partition.RUNNING).info()[4]


def confirm(st, store):
    """The new image is healthy: tell the bootloader, record it. Returns a line."""
    import esp32

    esp32.Partition.mark_app_valid_cancel_rollback()
    t = st["fw_trial"]
    st["fw"] = {"n": t["n"], "ver": t["ver"], "label": t["label"]}
    st["fw_trial"] = None
    store.save(st)  # committed: then the release's trusted keys, then its manifest dropped
    from lanterne_ota.boot import finish_commit

    finish_commit(st)
    return "MicroPython image %s confirmed in %s" % (t["ver"], t["label"])
