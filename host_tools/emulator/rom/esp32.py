# Virtual ESP32: the `esp32` module (what the firmware needs of it).
import json
import os
import _hal

HEAP_DATA = 1
HEAP_EXEC = 2
WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True


def mcu_temperature():
    return int(_hal.call("MCUTEMP"))


def raw_temperature():
    return mcu_temperature() * 9 // 5 + 32


# Deep-sleep wake sources (only the RTC GPIOs can wake the ESP32 from deep sleep): the emulator
# watches them while the board sleeps (host_tools/emulator/sleep.py). machine.wake_reason() then
# says which fired: machine.EXT0_WAKE (= PIN_WAKE), EXT1_WAKE or TIMER_WAKE.
_RTC_GPIOS = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39)


def _wake_pin(pin):
    n = pin if isinstance(pin, int) else getattr(pin, "_id", -1)
    if n not in _RTC_GPIOS:
        raise ValueError("invalid pin for wake")
    return n


def wake_on_ext0(pin, level):
    # pin None: ext0 off; level WAKEUP_ANY_HIGH (True, 1) or WAKEUP_ALL_LOW (False, 0)
    if pin is None:
        _hal.call("WAKE ext0 -")
        return
    _hal.call("WAKE ext0 %d %d" % (_wake_pin(pin), 1 if level else 0))


def wake_on_ext1(pins, level):
    # pins None or (): ext1 off; level WAKEUP_ANY_HIGH (any pin high) or WAKEUP_ALL_LOW (all low)
    mask = 0
    for p in pins or ():
        mask |= 1 << _wake_pin(p)
    _hal.call("WAKE ext1 %d %d" % (mask, 1 if level else 0))


def idf_heap_info(capabilities):
    import gc

    free = gc.mem_free()
    return [(free + gc.mem_alloc(), free, free, free)]


class NVS:
    # Non-volatile storage: a separate flash partition on the ESP32, kept beside the flash
    # folder by the emulator (it survives reboots and power cuts, not an erase).
    def __init__(self, namespace):
        self._ns = namespace
        self._path = (os.getenv("LANTERNE_NVS") or "") + "/" + namespace + ".json"
        self._pending = None

    def _load(self):
        if self._pending is None:
            try:
                with _hal.posix().open(self._path, "r") as f:
                    self._pending = json.loads(f.read())
            except (OSError, ValueError):
                self._pending = {}
        return self._pending

    def set_i32(self, key, value):
        self._load()[key] = int(value)

    def get_i32(self, key):
        d = self._load()
        if key not in d:
            raise OSError(-4354)  # ESP_ERR_NVS_NOT_FOUND
        return d[key]

    def set_blob(self, key, value):
        self._load()[key] = bytes(value).hex()

    def get_blob(self, key, buffer):
        d = self._load()
        if key not in d:
            raise OSError(-4354)
        data = bytes.fromhex(d[key])
        buffer[: len(data)] = data
        return len(data)

    def erase_key(self, key):
        d = self._load()
        if key not in d:
            raise OSError(-4354)
        del d[key]

    def commit(self):
        tmp = self._path + ".tmp"
        with _hal.posix().open(tmp, "w") as f:
            f.write(json.dumps(self._load()))
        _hal.posix().rename(tmp, self._path)
