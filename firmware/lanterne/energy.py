"""Lamp energy meter: watt-hours and burning hours of a street lamp, never going backwards.

    meter = EnergyMeter(lamp, supply, lamp_v=0.0, rated_w=40.0, curve=config.parse_curve(cfg["lamp_curve"]))
    meter.tick()          # after each lamp.check() (every ~2 s): integrates the power since the last tick
    wh, ch = meter.report()   # before a value leaves the board: saves, returns Wh and 0.01 h
    meter.status()        # the status message's "energy" object

Power, the first that applies (docs/energy.md):
1. "metered": the lamp's current sense (`lamp.current_ma`) x the voltage of the rail it is
   sensed on: the board file's `lamp_v` when the board does not measure that rail, else the
   board's supply sensor (`supply.millivolts`);
2. "rated": the rated input power x the dimming curve at the level driven now (`lamp.output`,
   ramps included); the curve (`config.parse_curve`) gives input power against light level,
   linear between its points, because an LED driver is not linear;
3. "none": neither: burning hours only.
Burning means, with a current sense, drawing at least the lamp's fault current (a dead lamp does
not burn, a driver stuck on burns while off, and its energy counts), else driven on. Integer arithmetic only (centiwatts x milliseconds), in slices of at
most a second so no product leaves the small-int range of a 32-bit port.

Persistence, "energy.dat": two 24-byte slots written in turn, each with a sequence number and a
CRC-16; at start the valid slot with the higher sequence wins, so a write torn by a power cut
costs the previous save, never the counters. A save happens at most every SAVE_MS while the lamp
burns (none by day: nothing changed), and before any value is reported: a reading or a status
never says more than the flash holds, so after a cut the counters restart from at least every
value ever sent. A cut loses at most the energy since the last save: SAVE_MS plus one tick, one
minute. Flash wear: docs/energy.md.

Faults (metered, with a rated power): once the lamp is steady, a measured power below
`low_pct` % of what the curve expects at the driven level for JUDGE checks in a row raises
FAULT_POWER_LOW (a dead LED module), above `high_pct` % FAULT_POWER_HIGH (a failing driver), in
the lamp's own fault word, so the status and the readings' lamp_fault carry them; JUDGE good
checks clear them.
"""

import struct
import time

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x



from lanterne.codec import crc16

FILE = "energy.dat"
_WH = const(360_000_000)  # centiwatt-milliseconds in one watt-hour
_SLICE_MS = const(1000)  # integrate in slices: centiwatts (< 2 kW) x 1000 ms stays below 2**30
SAVE_MS = const(58_000)  # + one 2 s tick: a power cut loses at most a minute
JUDGE = const(3)  # consecutive checks before a power fault is raised or cleared
_REC = const(24)
_FMT = "<BBIIIIHH"  # magic, version, seq, Wh, cW*ms, burning s, burning ms, spare; then the CRC
_MAGIC = const(0x45)
_VERSION = const(1)
_LOW = const(0x4000)  # lanterne.actuators.FAULT_POWER_LOW
_HIGH = const(0x8000)  # lanterne.actuators.FAULT_POWER_HIGH
_FAILED = const(0x400)  # lanterne.actuators.FAULT_LAMP_FAILED


def curve_permille(curve, output):
    """Input power (permille of rated) at light `output` (permille), linear between the curve's points."""
    if output <= 0:
        return 0
    l0 = p0 = 0
    for level, power in curve:
        if output <= level:
            if level == l0:
                return power
            return p0 + (power - p0) * (output - l0) // (level - l0)
        l0, p0 = level, power
    return p0


class EnergyMeter:
    def __init__(self, lamp, supply=None, *, lamp_v=0.0, rated_w=0.0, curve=((1000, 1000),), low_pct=70,
                 high_pct=130, path=FILE, now_ms=None):
        self.lamp = lamp
        self.supply = supply
        self.lamp_mv = int(lamp_v * 1000 + 0.5)
        self.rated_cw = int(rated_w * 100 + 0.5)
        self.curve = curve
        self.low_pct = low_pct
        self.high_pct = high_pct
        self.path = path
        self.metered = lamp.current_adc is not None
        self.source = "metered" if self.metered else ("rated" if self.rated_cw else "none")
        self.seq = self.wh = self.acc = self.burn_s = self.burn_ms = 0  # acc: cW*ms towards the next Wh
        self.power_cw = 0  # at the last tick
        self.error = None  # why the counters could not be saved (status fault, until a save works)
        self.lost = None  # why the counters restarted from 0 at this start (status fault until a reboot)
        self._dirty = False
        self._bad = 0  # consecutive checks that disagree with the power faults raised
        self._buf = bytearray(_REC)
        # the counters: the valid slot of energy.dat with the higher sequence number
        try:
            with open(path, "rb") as f:
                data = f.read(2 * _REC)
        except OSError:
            data = b""  # never saved: a new lamp
        best = None
        for o in (0, _REC):
            if len(data) >= o + _REC and data[o] == _MAGIC and data[o + 1] == _VERSION:
                if crc16(memoryview(data)[o:], _REC - 2) == data[o + _REC - 2] | (data[o + _REC - 1] << 8):
                    v = struct.unpack_from(_FMT, data, o)
                    if best is None or v[2] > best[2]:
                        best = v
        if best is not None:
            self.seq, self.wh, self.acc, self.burn_s, self.burn_ms = best[2:7]
        elif any(data):  # not merely a first save cut short (its empty slot 0): damaged
            self.lost = "energy: %s unreadable, counters restarted from 0" % path
        self.saved = (self.wh, self.burn_s // 36)  # (Wh, 0.01 h) on flash: all that is ever reported
        self._t = self._saved_at = time.ticks_ms() if now_ms is None else now_ms

    def save(self, now_ms=None):
        """Write the counters to the next slot (if they changed). Never raises: a failure is in `error`."""
        if not self._dirty:
            return
        b = self._buf
        seq = self.seq + 1  # taken only once written: a failed write is retried in the same slot,
        # and the other slot, the last good one, is never the next overwritten
        struct.pack_into(_FMT, b, 0, _MAGIC, _VERSION, seq, self.wh, self.acc, self.burn_s, self.burn_ms, 0)
        c = crc16(b, _REC - 2)
        b[_REC - 2] = c & 0xFF
        b[_REC - 1] = c >> 8
        try:
            try:
                f = open(self.path, "r+b")
            except OSError:
                f = open(self.path, "wb")  # the first save: slot 0 stays empty until the next
                f.write(bytes(_REC))
            try:
                f.seek((seq & 1) * _REC)
                f.write(b)
            finally:
                f.close()  # the commit on littlefs
            self.seq = seq
            self.saved = (self.wh, self.burn_s // 36)
            self._dirty = False
            self.error = None
        except OSError as e:
            self.error = "energy: could not save the counters (%r)" % (e,)
        self._saved_at = time.ticks_ms() if now_ms is None else now_ms

    def report(self, now_ms=None):
        """(Wh, 0.01 h) as saved now (as last saved, if this save failed): what a reading or a status may say."""
        self.save(now_ms)
        return self.saved

    # -- integration -----------------------------------------------------------------
    def _expected_cw(self):
        return self.rated_cw * curve_permille(self.curve, self.lamp.output) // 1000

    def tick(self, now_ms=None):
        """Add the energy and burning time since the last tick; judge the power; save when due."""
        now = time.ticks_ms() if now_ms is None else now_ms
        dt = time.ticks_diff(now, self._t)
        self._t = now
        lamp = self.lamp
        ma = lamp.current_ma
        mv = 0
        if self.metered and ma >= 0:
            mv = self.lamp_mv or (self.supply.millivolts if self.supply is not None else 0)
        measured = mv > 0
        if measured:
            # what the sense reads; while off, only a current the lamp would be faulted for
            p = ma * mv // 10000 if lamp.output or ma > lamp.fault_ma else 0
            burning = ma >= lamp.fault_ma
        else:
            p = self._expected_cw() if lamp.output else 0
            burning = lamp.output > 0
        avg = (self.power_cw + p) // 2
        self.power_cw = p
        if dt > 0 and (avg or burning):
            self._dirty = True
            while dt > 0:
                step = dt if dt < _SLICE_MS else _SLICE_MS
                dt -= step
                acc = self.acc + avg * step
                if acc >= _WH:
                    self.wh += acc // _WH
                    acc %= _WH
                self.acc = acc
                if burning:
                    ms = self.burn_ms + step
                    if ms >= 1000:
                        self.burn_s += ms // 1000
                        ms %= 1000
                    self.burn_ms = ms
        if measured and lamp.output:
            self._judge(p, now)
        if self._dirty and time.ticks_diff(now, self._saved_at) >= SAVE_MS:
            self.save(now)

    def _judge(self, p, now):
        lamp = self.lamp
        if not self.rated_cw or lamp.ramping or time.ticks_diff(now, lamp._steady_since) < lamp.settle_ms:
            return
        expected = self._expected_cw()
        if expected <= 0:
            return
        pct = p * 100 // expected
        fault = lamp.fault & (_LOW | _HIGH)
        want = 0
        if not lamp.fault & _FAILED:
            if pct < self.low_pct:
                want = _LOW
            elif pct > self.high_pct:
                want = _HIGH
        if want == fault:
            self._bad = 0
            return
        self._bad += 1
        if self._bad >= JUDGE:
            self._bad = 0
            lamp.fault = (lamp.fault & ~(_LOW | _HIGH)) | want

    # -- the status ------------------------------------------------------------------
    def status(self):
        wh, ch = self.report()
        return {
            "wh": wh + (0 if self._dirty else self.acc // 360_000 / 1000),  # Wh, to the mWh: what the flash holds
            "burning_h": ch / 100,
            "power_w": self.power_cw / 100,
            "source": self.source,
            "rated_w": self.rated_cw / 100 if self.rated_cw else None,
        }
