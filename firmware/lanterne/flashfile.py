# Lanterne flash files: a small file (config, command counter, field changes) replaced whole.
# Its own module, loaded for as long as the board runs: the modules that use it at boot only
# (config, field) are dropped once the app is built.
import os


def bump_counter(path):
    """The number in `path` plus one, written back (0 when missing or unreadable): the boot count."""
    n = 0
    try:
        with open(path) as f:
            n = int(f.read())
    except (OSError, ValueError):
        pass
    n += 1
    try:
        with open(path, "w") as f:
            f.write(str(n))
    except OSError:
        pass
    return n


def write_atomic(path, text):
    """Write `text` to `path` through path.tmp renamed over it: a power cut leaves the old file or the new.

    Renaming over is atomic on littlefs and on POSIX; removing the old file first would open a
    window where a cut leaves neither. Only a filesystem whose rename refuses an existing target
    (FAT) gets the old file removed first; a reader then falls back on path.tmp, which is whole."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
    except OSError:
        try:
            os.remove(tmp)  # a half-written tmp (flash full): gone, so it never stands in for path
        except OSError:
            pass
        raise
    try:
        os.rename(tmp, path)
    except OSError:
        try:
            os.remove(path)
        except OSError:
            pass
        os.rename(tmp, path)
