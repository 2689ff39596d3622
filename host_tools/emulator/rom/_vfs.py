# Virtual ESP32: the `vfs` module as a ROMFS-enabled ESP32 build has it: the built-in module
# plus rom_ioctl (installed as sys.modules["vfs"] by the ROM).
from vfs import *  # noqa: F403
from _romfs import rom_ioctl  # noqa: F401
