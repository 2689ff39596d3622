# Lanterne boot.py: runs first at every boot. Kept thin and rarely changed: it hands the choice
# of the library slot (A or B in the ROMFS partition: trial, rollback, hash check) to the boot
# selector on the filesystem (lib/lanterne_ota/boot), with /rom unmounted first so that no
# module of a slot runs before its hash is checked. The application starts in main.py.
import gc
import sys

try:
    import vfs

    vfs.umount("/rom")  # MicroPython mounted the partition's start (slot A) at /rom
except (ImportError, OSError, AttributeError):
    pass
try:
    from lanterne_ota.boot import select

    select()
except Exception as e:  # the selector itself failed: run slot A, as MicroPython would have
    sys.print_exception(e)
    try:
        vfs.mount(vfs.VfsRom(vfs.rom_ioctl(2, 0)), "/rom")
    except Exception:
        pass
# boot.py and main.py share their globals: drop every reference, so the selector's code leaves
# the heap before the application starts (when it was loaded from /lib; frozen code stays).
select = e = None
for _m in [m for m in sys.modules if m.startswith("lanterne_ota")]:
    if getattr(sys.modules[_m], "__file__", "").startswith("/lib/"):
        del sys.modules[_m]
_m = None
gc.collect()
