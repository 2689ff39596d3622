# Virtual ESP32: the `time` module user code sees. The unix port's own, except that the board's
# clock (time(), time_ns(), gmtime(), localtime() without an argument) also counts the time the
# board spent in deep sleep while the world clock ran faster than the host's (world quantity
# sleep_speedup, host_tools/emulator/sleep.py): on the ESP32 the RTC keeps counting through deep
# sleep. ticks_ms() and friends start again at each boot, as the ESP32's do.
from time import *  # noqa: F403
import time as _t
import os as _os

_AHEAD = float(_os.getenv("LANTERNE_CLOCK_AHEAD") or "0")
_AHEAD_NS = int(_AHEAD * 1000000000)


def time():
    return _t.time() + _AHEAD


def time_ns():
    return _t.time_ns() + _AHEAD_NS


def gmtime(secs=None):
    return _t.gmtime(time() if secs is None else secs)


def localtime(secs=None):
    return _t.localtime(time() if secs is None else secs)


def __getattr__(name, _real=_t):
    return getattr(_real, name)


del _os
__name__ = "time"
del __file__
