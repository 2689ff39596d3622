# Virtual ESP32: the ROMFS partition (MicroPython built with MICROPY_VFS_ROM and a partition
# table with a "romfs" data partition, as ports/esp32/partitions-4MiB-romfs.csv).
#
# On the chip the partition is flash mapped into the address space: .mpy bytecode, strings and
# bytes constants imported from /rom run in place and take no heap. Here the partition is read
# into one buffer allocated first thing at boot, so it sits at the start of the heap, contiguous,
# for the life of the interpreter; the emulator makes the heap that much bigger (see
# VirtualBoard.heap_bytes), so the firmware has the heap it would have on the board.
# VfsRom over that buffer imports in place exactly as it does over mapped flash.
#
# `vfs.rom_ioctl(2, 0)` gives the partition as esp32.Partition does on a ROMFS build: a buffer
# (the mapped flash) with ioctl / readblocks / writeblocks; erase and write reach the board's
# flash file, so `mpremote romfs deploy` (and `lanterne provision`) work unmodified.
import gc
import os

_PATH = os.getenv("LANTERNE_ROMFS") or ""
_OFFSET = int(os.getenv("LANTERNE_ROMFS_OFFSET") or "0")
SIZE = int(os.getenv("LANTERNE_ROMFS_BYTES") or "0")
BLOCK = 4096
MAGIC = b"\xd2\xcd\x31"
EINVAL = 22


class Partition(bytearray):
    def ioctl(self, op, arg):
        # 1 init, 2 deinit, 3 sync, 4 block count, 5 block size, 6 erase block (as esp32_partition.c)
        if op in (1, 2, 3):
            return 0
        if op == 4:
            return SIZE // BLOCK
        if op == 5:
            return BLOCK
        if op == 6:
            self._program(arg * BLOCK, None, BLOCK, erase=True)
            return 0
        return None

    def readblocks(self, block, buf, offset=0):
        at = block * BLOCK + offset
        if at < 0 or at + len(buf) > SIZE:
            raise OSError(EINVAL)
        buf[:] = memoryview(self)[at : at + len(buf)]

    def writeblocks(self, block, buf, offset=None):
        # esp32_partition.c: without an offset the blocks written are erased first; with one
        # (the extended block protocol) the bytes are programmed as they are.
        if offset is None:
            for b in range(block, block + (len(buf) + BLOCK - 1) // BLOCK):
                self._program(b * BLOCK, None, BLOCK, erase=True)
            offset = 0
        self._program(block * BLOCK + offset, buf, len(buf))

    def _program(self, at, data, n, erase=False):
        # NOR flash: erase sets every bit; a write can only clear bits (new = old & data). Done in
        # place, without a copy: on the chip esp_partition_write takes none of the MicroPython
        # heap, so the flash model must not either.
        if at < 0 or at + n > SIZE:
            raise OSError(EINVAL)
        if erase:
            for i in range(at, at + n):
                self[i] = 0xFF
        else:
            for i in range(n):
                self[at + i] &= data[i]
        import _hal  # the flash file is on the host: after boot "/" is the board's filesystem

        with _hal.posix().open(_PATH, "r+b") as f:
            f.seek(_OFFSET + at)
            f.write(memoryview(self)[at : at + n])


gc.collect()
_before = gc.mem_alloc()
mapped = Partition(SIZE) if SIZE else None
pinned = gc.mem_alloc() - _before  # heap the buffer takes: not the firmware's
if mapped is not None:
    try:
        with open(_PATH, "rb") as f:
            f.seek(_OFFSET)
            f.readinto(mapped)
    except OSError:
        _e = b"\xff" * BLOCK  # never written: an erased partition
        for _at in range(0, SIZE, BLOCK):
            mapped[_at : _at + BLOCK] = _e


def mount(sys_path):
    """At boot, as mp_vfs_mount_romfs_protected(): mount a valid image at /rom; else nothing."""
    if mapped is None or mapped[:3] != MAGIC:
        return False
    import vfs

    try:
        vfs.mount(vfs.VfsRom(mapped), "/rom")
    except OSError:
        return False
    sys_path.append("/rom")
    sys_path.append("/rom/lib")
    return True


def rom_ioctl(op, *args):
    # MP_VFS_ROM_IOCTL_GET_NUMBER_OF_SEGMENTS (1) and _GET_SEGMENT (2): all the ESP32 port answers.
    if op == 1:
        return 1 if mapped is not None else 0
    if op == 2 and mapped is not None and (args[0] if args else 0) == 0:
        return mapped
    return -EINVAL
