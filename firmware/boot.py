# Lanterne boot.py: runs first at every boot. Kept thin and rarely changed: it hands the choice
# of the library slot (A or B in the ROMFS partition: trial, rollback, hash check) to the boot
# selector (lanterne_ota.boot, frozen into the Lanterne image, else on /lib), with /rom unmounted
# first so that no module of a slot runs before its hash is checked. The application starts in
# main.py, which hands it what the selector found (`_ota`: which slot and release run, whether an
# update, a trial or a rollback is on). All of it in a function: boot.py and main.py share their
# globals, and nothing of the selector may stay on the heap while the application runs (frozen
# code neither: its bytecode is in flash, but each imported module's dict and functions are
# objects in RAM).


def _boot():
    import sys

    try:
        import vfs

        vfs.umount("/rom")  # MicroPython mounted the partition's start (slot A) at /rom
    except (ImportError, OSError, AttributeError):
        pass
    info = None
    try:
        from lanterne_ota.boot import select

        info = select()
    except Exception as e:  # the selector itself failed: run slot A, as MicroPython would have
        sys.print_exception(e)
        try:
            vfs.mount(vfs.VfsRom(vfs.rom_ioctl(2, 0)), "/rom")
        except Exception:
            pass
    select = None
    for m in [m for m in sys.modules if m.split(".")[0] == "lanterne_ota"]:
        del sys.modules[m]
    return info


_ota = _boot()
del _boot
__import__("gc").collect()
