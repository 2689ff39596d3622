"""Simulated particulate-matter sensors: Plantower PMS5003/PMS7003 and Nova SDS011 (UART), Sensirion SPS30 (I2C).

Each speaks its datasheet's wire protocol (see the firmware drivers in
firmware/lanterne/sensors/ for the references) and reads the world's
`pm1_ugm3`, `pm25_ugm3` and `pm10_ugm3` (what a reference instrument would say), with
the world's relative noise. Optical sensors over-read in humid air: with
`pm_kappa` > 0 the values are multiplied by the kappa-Koehler growth factor at the
world's `humidity_pct` (the law the firmware's optional correction inverts).

Timing follows the host clock: an awake PMS5003 in active mode sends a frame every
second; in passive mode it answers each read command; asleep, it sends nothing
(and the SDS011 still answers commands, as the real one does).

Faults (world.inject(<type>, kind), <type> = "pms5003", "sds011" or "sps30"):
"missing"/"nack" -> no byte at all (I2C: NACK); "checksum" -> every frame's check
word (CRC) is wrong; "frame" -> the part answers with another sensor's frames
(a PMS5003 sending SDS011 frames and the reverse; the SPS30 answers with words of
the wrong length); "fan" -> the fan stopped: no air moves, so the values freeze
(the SPS30 also raises its fan-failure status bit); "stuck" -> the same frame over
and over whatever the world.
"""

from __future__ import annotations

import random
import time

from host_tools.emulator.devices import I2CDevice, Nack
from host_tools.emulator.devices.parts import register


def growth(world) -> float:
    kappa = float(world.get("pm_kappa"))
    rh = min(98.0, max(0.0, float(world.get("humidity_pct"))))
    if kappa <= 0 or rh <= 0:
        return 1.0
    aw = rh / 100.0
    return 1.0 + (kappa / 1.65) / (1.0 / aw - 1.0)


class _PmModel:
    """What the optics see, per measurement: (pm1, pm2.5, pm10) ug/m3 as floats, and particle counts."""

    name = "pm"
    fault_kinds = ("missing", "nack", "stuck", "checksum", "frame", "fan")

    def __init__(self, world):
        self.world = world
        self.rng = random.Random(world.rng.random())
        self.awake = True
        self._frozen = None

    def values(self):
        w = self.world
        if w.fault(self.name, "fan"):
            if self._frozen is None:
                self._frozen = self._fresh()
            return self._frozen
        self._frozen = None
        return self._fresh()

    def _fresh(self):
        w = self.world
        g = growth(w)
        pm = [max(0.0, w.noisy(w.get(k)) * g) for k in ("pm1_ugm3", "pm25_ugm3", "pm10_ugm3")]
        # particles > 0.3 um in 0.1 L: roughly 60 per ug/m3 of PM1 in urban air, Poisson-ish
        counts = [max(0, int(self.rng.gauss(v, v**0.5 + 1))) for v in (pm[0] * 60 + 40, pm[0] * 18 + 10, pm[1] * 3 + 2)]
        return pm, counts

    def absent(self) -> bool:
        return self.world.fault(self.name, "missing") or self.world.fault(self.name, "nack")


# -- Plantower ----------------------------------------------------------------------------


def pms_frame(pm, counts, bad=False) -> bytes:
    counts = (list(counts) + [0] * 6)[:6]
    words = [round(v) for v in pm] + [round(v) for v in pm] + counts + [0x9700]  # 12 data words + reserved
    body = bytes([0x42, 0x4D, 0, 28]) + b"".join(min(65535, int(x)).to_bytes(2, "big") for x in words)
    check = (sum(body) + (0x5A if bad else 0)) & 0xFFFF
    return body + check.to_bytes(2, "big")


def sds_frame(pm25, pm10, cmd=0xC0, data=None, bad=False) -> bytes:
    if data is None:
        a, b = min(9999, round(pm25 * 10)), min(9999, round(pm10 * 10))
        data = bytes([a & 0xFF, a >> 8, b & 0xFF, b >> 8, 0xA1, 0x60])
    cs = (sum(data) + (0x33 if bad else 0)) & 0xFF
    return bytes([0xAA, cmd]) + data + bytes([cs, 0xAB])


class PMS5003(_PmModel):
    name = "pms5003"

    def __init__(self, world, uart: str, name: str = "pms5003"):
        super().__init__(world)
        self.name = name
        self.uart = uart
        self.active = True  # power-on default: active mode
        self.rx = bytearray()
        self.next_at = time.monotonic() + 1.0
        self._last_frame = None
        self.commands: list[str] = []

    def _frame(self) -> bytes:
        w = self.world
        if w.fault(self.name, "stuck") and self._last_frame is not None:
            return self._last_frame
        pm, counts = self.values()
        if w.fault(self.name, "frame"):
            f = sds_frame(pm[1], pm[2])
        else:
            f = pms_frame(pm, counts + [0, 0, 0], bad=w.fault(self.name, "checksum"))
        self._last_frame = f
        return f

    def uart_write(self, data: bytes) -> None:
        if self.absent():
            return
        i = 0
        while i + 7 <= len(data):
            if data[i] != 0x42 or data[i + 1] != 0x4D:
                i += 1
                continue
            cmd, value = data[i + 2], (data[i + 3] << 8) | data[i + 4]
            lrc = (data[i + 5] << 8) | data[i + 6]
            i += 7
            if lrc != sum(data[i - 7 : i - 2]) & 0xFFFF:
                continue  # a command with a bad LRC is ignored
            self.commands.append(f"{cmd:02x}{value:04x}")
            if cmd == 0xE4:
                self.awake = bool(value)
                self.next_at = time.monotonic() + 1.0
            elif cmd == 0xE1:
                self.active = bool(value)
                self.rx += bytes([0x42, 0x4D, 0, 4, cmd, value & 0xFF]) + ((0x42 + 0x4D + 4 + cmd + (value & 0xFF)) & 0xFFFF).to_bytes(2, "big")
            elif cmd == 0xE2 and self.awake and not self.active:
                self.rx += self._frame()

    def uart_read(self, n: int) -> bytes:
        if self.absent():
            return b""
        now = time.monotonic()
        if self.awake and self.active:
            while now >= self.next_at:
                self.rx += self._frame()
                self.next_at += 1.0
            del self.rx[: max(0, len(self.rx) - 256)]  # the UART's receive buffer keeps the last 256 bytes
        out = bytes(self.rx[:n])
        del self.rx[:n]
        return out


class SDS011(_PmModel):
    name = "sds011"

    def __init__(self, world, uart: str):
        super().__init__(world)
        self.uart = uart
        self.query_mode = False
        self.period_min = 0
        self.rx = bytearray()
        self.next_at = time.monotonic() + 1.0
        self._last_frame = None
        self.commands: list[str] = []

    def _frame(self) -> bytes:
        w = self.world
        if w.fault(self.name, "stuck") and self._last_frame is not None:
            return self._last_frame
        pm, counts = self.values()
        if w.fault(self.name, "frame"):
            f = pms_frame(pm, counts + [0, 0, 0])
        else:
            f = sds_frame(pm[1], pm[2], bad=w.fault(self.name, "checksum"))
        self._last_frame = f
        return f

    def uart_write(self, data: bytes) -> None:
        if self.absent():
            return
        i = 0
        while i + 19 <= len(data):
            if data[i] != 0xAA or data[i + 1] != 0xB4 or data[i + 18] != 0xAB:
                i += 1
                continue
            c = data[i : i + 19]
            i += 19
            if sum(c[2:17]) & 0xFF != c[17]:
                continue
            cmd, set_, value = c[2], c[3], c[4]
            self.commands.append(f"{cmd:02x}{set_:02x}{value:02x}")
            if cmd == 4:
                if self.awake:
                    self.rx += self._frame()
                continue
            if cmd == 2 and set_:
                self.query_mode = bool(value)
            elif cmd == 6 and set_:
                self.awake = bool(value)
                self.next_at = time.monotonic() + 1.0
            elif cmd == 8 and set_:
                self.period_min = value
            state = {2: self.query_mode, 6: self.awake, 8: self.period_min}.get(cmd, 0)
            self.rx += sds_frame(0, 0, cmd=0xC5, data=bytes([cmd, set_, int(state), 0, 0xA1, 0x60]))

    def uart_read(self, n: int) -> bytes:
        if self.absent():
            return b""
        now = time.monotonic()
        if self.awake and not self.query_mode:
            while now >= self.next_at:
                self.rx += self._frame()
                self.next_at += 1.0
            del self.rx[: max(0, len(self.rx) - 256)]
        out = bytes(self.rx[:n])
        del self.rx[:n]
        return out


def sensirion_crc(two: bytes) -> int:
    crc = 0xFF
    for b in two:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class SPS30(_PmModel, I2CDevice):
    name = "sps30"
    address = 0x69

    def __init__(self, world, address: int = 0x69):
        _PmModel.__init__(self, world)
        I2CDevice.__init__(self, world, address)
        self.awake = False
        self.measuring = False
        self.started = 0.0
        self.read_at = 0.0
        self.pointer = 0
        self._last = None

    def present(self) -> bool:
        return not self.absent()

    def write(self, data: bytes) -> None:
        if len(data) < 2:
            return
        ptr = (data[0] << 8) | data[1]
        if ptr == 0x1103:
            if not self.awake:
                self.awake = True
                raise Nack(5, "EIO")  # the first wake-up only wakes the interface
            return
        if not self.awake:
            raise Nack(5, "EIO")
        self.pointer = ptr
        if ptr == 0x0010:
            if len(data) != 5 or sensirion_crc(data[2:4]) != data[4] or data[2] != 0x05:
                raise Nack(5, "EIO")
            self.measuring = True
            self.started = self.read_at = time.monotonic()
        elif ptr == 0x0104:
            self.measuring = False
        elif ptr == 0x1001:
            self.awake = self.measuring = False

    def _words(self, *words) -> bytes:
        out = b""
        bad = self.world.fault(self.name, "checksum")
        for w in words:
            two = int(w).to_bytes(2, "big")
            out += two + bytes([sensirion_crc(two) ^ (0x5A if bad else 0)])
        return out

    def read(self, n: int) -> bytes:
        ptr = self.pointer
        now = time.monotonic()
        if ptr == 0x0202:
            return self._words(1 if self.measuring and now - self.read_at >= 1.0 else 0)
        if ptr == 0x0300:
            self.read_at = now
            if self.world.fault(self.name, "stuck") and self._last is not None:
                return self._last
            pm, counts = self.values()
            v = [round(pm[0]), round(pm[1]), round((pm[1] + pm[2]) / 2), round(pm[2])]
            v += [counts[0] // 10, counts[0] // 12, counts[1] // 10, counts[2], counts[2], 450]
            out = self._words(*[min(65535, x) for x in v])
            if self.world.fault(self.name, "frame"):
                out = out[:-3]
            self._last = out
            return out
        if ptr == 0xD206:
            fan = 1 << 4 if self.world.fault(self.name, "fan") else 0
            return self._words(0, fan)
        return bytes(n)


@register("pms5003")
def _pms5003(world, spec, board):
    return PMS5003(world, spec["bus"])


@register("pms7003")
def _pms7003(world, spec, board):
    return PMS5003(world, spec["bus"], name="pms7003")


@register("sds011")
def _sds011(world, spec, board):
    return SDS011(world, spec["bus"])


@register("sps30")
def _sps30(world, spec, board):
    return SPS30(world, int(spec.get("address", 0x69)))
