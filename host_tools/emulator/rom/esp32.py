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


def wake_on_ext0(pin, level):
    pass


def wake_on_ext1(pins, level):
    pass


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
