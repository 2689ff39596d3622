# Virtual ESP32: the `os` module user code sees. The unix port's own, plus os.uname() as the
# ESP32 port answers it (the same version facts as the REPL banner). Anything not copied here
# is looked up on the real one.
from os import *  # noqa: F403
import os as _os

VERSION = "1.29.0-preview"
BUILD_DATE = "2026-07-05"
MACHINE = "Generic ESP32 module with ESP32"


class _UnameResult(tuple):
    # The ESP32 port returns an attribute tuple: indexable, with named fields, printed as below.
    sysname = property(lambda self: self[0])
    nodename = property(lambda self: self[1])
    release = property(lambda self: self[2])
    version = property(lambda self: self[3])
    machine = property(lambda self: self[4])

    def __repr__(self):
        return "(sysname=%r, nodename=%r, release=%r, version=%r, machine=%r)" % tuple(self)

    __str__ = __repr__


_UNAME = _UnameResult(("esp32", "esp32", VERSION, "v%s on %s" % (VERSION, BUILD_DATE), MACHINE))


def uname():
    return _UNAME


def __getattr__(name, _real=_os):
    return getattr(_real, name)


del _os
__name__ = "os"
del __file__
