# Virtual ESP32: the `sys` module user code sees. The unix port's own, except what an ESP32
# says differently: sys.platform is "esp32". Anything not copied here is looked up on the real one.
from sys import *  # noqa: F403 (the same objects: sys.path, sys.modules, stdout ...)
import sys as _sys

platform = "esp32"


def __getattr__(name, _real=_sys):
    return getattr(_real, name)


del _sys
__name__ = "sys"  # so it prints as <module 'sys'>
del __file__
