"""Sound-level meter on an I2S MEMS microphone: IEC 61672-1 A-weighting, LAeq, LAFmax/LAFmin, LA10/LA90.

    meter = SoundLevelMeter(48000, sensitivity_dbfs=-26.0)   # INMP441: -26 dBFS at 94 dB SPL, 1 kHz
    buf = meter.buffer(1024)                                 # array('i'): 32-bit I2S words
    n = i2s.readinto(buf)                                    # machine.I2S(..., bits=32, format=MONO)
    meter.process(buf, n // 4)                               # no allocation; keeps up in real time
    meter.report()                                           # once per interval: laeq, lamax, lamin, la10, la90 (dB)

The signal path, all in integers (the per-block code allocates nothing, and runs as
`@micropython.viper` machine code where the port has the native emitter, else as
the pure-Python `_process_py`, which gives bit-identical results: every value is kept
within 32 bits, so 32- and 64-bit ports agree):

1. Samples: the top 16 bits of each 32-bit I2S word (the INMP441 sends 24 bits,
   MSB first, in a 32-bit slot) or 16-bit words; scaled by 2**4 inside the filter.
2. A-weighting (IEC 61672-1:2013, Annex E: poles at 20.598997, 107.65265,
   737.86223 and 12194.217 Hz, four zeros at 0 Hz), as six first-order sections,
   because every pole of the analog A-weighting is real:
   - four high-pass sections (1 - z^-1) / (1 - p z^-1) for 20.6 Hz (twice),
     107.7 Hz and 737.9 Hz: the bilinear transform with the pole pre-warped
     (p = (2 fs - w') / (2 fs + w'), w' = 2 fs tan(w / 2 fs)), so each pole sits
     exactly where the standard puts it;
   - two low-pass sections for the double pole at 12194 Hz, which at 16 kHz
     sampling lies above the Nyquist frequency, where the bilinear transform
     cannot follow it: the pole is mapped by the matched z-transform
     (p = exp(-w / fs)) and a zero q is placed so that the digital magnitude
     equals the analog one (the whole A-weighting, including the small error of the
     high-pass part) at DC and at 0.33 fs ("magnitude-matched" first-order
     sections, after M. Vicanek, "Matched One-Pole Digital Shelving Filters" /
     "Matched Second Order Digital Filters", 2016). The response then stays within
     0.45 dB of the standard's design goal from 10 Hz to 0.4 fs at every usual rate
     (8 to 48 kHz), well inside the Class 1 tolerances (tests/test_sound_level.py).
   Each section is computed in fixed point (9-bit coefficients, Q shifts per
   section) with error feedback: the remainder of every rounding is carried to the
   next sample, so a section has no dead band and no DC bias. The gain at 1 kHz is
   computed from the quantised coefficients at start-up and goes into the
   calibration, so 1 kHz reads exactly what the calibration says.
3. Energy: the A-weighted sample (rounded to 16-bit units, clamped at 1.41 x full
   scale so its square fits 31 bits) is squared and summed over sub-blocks of
   ~4 ms (fs // 250 samples).
4. Per sub-block, in a block floating point (mantissa in [2**29, 2**30), exponent):
   the interval's energy sum (LAeq), the F (fast, 125 ms) exponential time
   weighting, its maximum and minimum (LAFmax, LAFmin), and a histogram of the
   F-weighted level in 0.1 dB bins (0 .. 140 dB) for the percentile levels LA10 and
   LA90 (the level exceeded 10 % / 90 % of the time).

Calibration: a full-scale sine (peak = 2**15 in 16-bit units) is 0 dBFS; the
microphone's sensitivity says what 94 dB SPL reads (INMP441: -26 dBFS), so
L = dBFS - sensitivity + 94 + offset_db; `offset_db` is the per-device correction
from a field calibration with a reference calibrator (set by command).

Faults (`fault` bits, see lanterne.sensors): FAULT_MISSING when an interval's samples
never moved (digital silence: no clock, no microphone, data line stuck), FAULT_RANGE
when more than 0.1 % of the samples were at full scale (clipping: the figures then
read low), FAULT_TIMEOUT when more than 1 % of the interval's samples were lost (the
reader fell behind the I2S driver's buffer: `lost` counts them).
"""

import math
from array import array

try:
    import micropython
    from micropython import const
except ImportError:  # CPython: the pure-Python path, same integers
    micropython = None

    def const(x):
        return x


# IEC 61672-1:2013, E.2 / E.3: the A-weighting's pole frequencies (Hz).
_F1 = 20.598997
_F2 = 107.65265
_F3 = 737.86223
_F4 = 12194.217
_MATCH_AT = 0.33  # where the low-pass sections match the analog magnitude, x fs
_TAU_FAST = 0.125  # s, time weighting F
_HIST_BINS = const(1401)  # 0.0 .. 140.0 dB in 0.1 dB; 16-bit counts, halved all together when one fills
_SCALE_BITS = const(4)  # fraction bits of the filter's fixed point below one 16-bit LSB
_COEF_BITS = const(9)  # coefficients in [2**8, 2**9) before their shift
_CLAMP = const(46340)  # |y| at most this: y * y < 2**31
_BIAS = const(0x20000000)  # signed state is stored + _BIAS (32-bit loads are unsigned on 64-bit ports)
_M_LOW = const(0x20000000)  # block floating point: mantissa in [_M_LOW, _M_HIGH)
_M_HIGH = const(0x40000000)

# State array layout (array('i')); signed entries are stored + _BIAS.
_S_FMT = const(0)  # 16 or 32: bits per sample word
_S_XP = const(1)  # previous scaled input (signed)
_S_V1 = const(2)  # high-pass states 1..4 (signed)
_S_Y1 = const(6)  # low-pass states 1..2 (signed)
_S_R1 = const(8)  # remainders of the six sections (>= 0)
_S_C1 = const(14)  # high-pass coefficients c = 1 - p, scaled by 2**Q
_S_Q1 = const(18)  # their shifts
_S_LP = const(22)  # low-pass p, g, h (scaled by 2**_S_LPQ)
_S_LPQ = const(25)
_S_SUBN = const(26)  # samples per sub-block
_S_LEFT = const(27)  # samples left in the current sub-block
_S_HI = const(28)  # sub-block energy: sum(y*y >> 15), sum(y*y & 0x7fff)
_S_LO = const(29)
_S_ALPHA = const(30)  # exp(-sub-block / tau), Q15
_S_BETA = const(31)  # (1 - alpha) / N: mantissa Q15 in [2**14, 2**15), exponent (signed)
_S_INVN = const(33)  # 1 / N: mantissa, exponent (signed)
_S_W = const(35)  # F-weighted mean square: mantissa, exponent (signed)
_S_MAX = const(37)
_S_MIN = const(39)
_S_SUM = const(41)  # the interval's energy sum
_S_NSUB = const(43)  # sub-blocks in the interval
_S_INMAX = const(44)  # largest and smallest input sample (signed)
_S_INMIN = const(45)
_S_CLIP = const(46)  # samples at full scale
_S_HOFF = const(47)  # histogram offset: 10 x calibration (0.1 dB units), Q18, + half a bin (signed)
_S_FIRST = const(48)  # 1 until the first sub-block set the time weighting
_S_LOG = const(49)  # 256 entries: log2(1 + i/256) in Q10
_S_LEN = const(307)  # + a scratch pair at the end


def _q(value, bits=_COEF_BITS):
    """(integer, shift) with integer / 2**shift ~ value and integer in [2**(bits-1), 2**bits)."""
    shift = 0
    while value * (1 << shift) < (1 << (bits - 1)):
        shift += 1
    return int(value * (1 << shift) + 0.5), shift


def _bf(value):
    """A positive float as (mantissa in [2**14, 2**15), exponent): value ~ m * 2**e / 2**15."""
    e = 0
    while value >= 1.0:
        value /= 2.0
        e += 1
    while value < 0.5:
        value *= 2.0
        e -= 1
    m = int(value * 32768 + 0.5)
    if m >= 32768:
        m >>= 1
        e += 1
    return m, e


class SoundLevelMeter:
    def __init__(self, sample_rate, sensitivity_dbfs=-26.0, offset_db=0.0, bits=32, native=True):
        if not 8000 <= sample_rate <= 96000:
            raise ValueError("sample rate must be 8000..96000 Hz")
        if bits not in (16, 32):
            raise ValueError("bits must be 16 or 32")
        self.sample_rate = sample_rate
        self.bits = bits
        self.st = array("i", bytearray(4 * _S_LEN))
        self.hist = array("H", bytearray(2 * _HIST_BINS))
        self.gain_1k = 1.0
        self.fault = 0
        self.errors = 0
        self.lost = 0  # samples the reader could not fetch in time (set by the reader)
        self.laeq = self.lamax = self.lamin = self.la10 = self.la90 = None
        self.seconds = 0.0
        self._process = _process_py
        if native and _process_viper is not None:
            self._process = _process_viper
        self._design()
        self.calibrate(sensitivity_dbfs, offset_db)
        self.reset()

    # -- design (floats, once) ----------------------------------------------------
    def _design(self):
        fs = self.sample_rate
        st = self.st
        st[_S_FMT] = self.bits
        for k in range(_S_XP, _S_R1):  # the filter at rest (signed, stored + _BIAS)
            st[k] = _BIAS
        st[_S_W + 1] = _BIAS
        ps = []
        for i, fc in enumerate((_F1, _F1, _F2, _F3)):
            w = 2.0 * fs * math.tan(math.pi * fc / fs)  # pre-warped
            p = (2.0 * fs - w) / (2.0 * fs + w)
            c, q = _q(1.0 - p)
            st[_S_C1 + i] = c
            st[_S_Q1 + i] = q
            ps.append(1.0 - c / (1 << q))
        # Low-pass: matched pole, zero chosen so |H| matches the analog A-weighting at fm.
        p = math.exp(-2.0 * math.pi * _F4 / fs)
        fm = _MATCH_AT * fs
        wm = 2.0 * math.pi * _MATCH_AT
        hp_digital = 1.0
        for pk in ps:  # the high-pass part as quantised, normalised to 1 at Nyquist like the analog's at infinity
            hp_digital *= _mag_hp(pk, wm) * (1.0 + pk) / 2.0
        hp_analog = fm**4 / ((fm * fm + _F1 * _F1) * math.sqrt((fm * fm + _F2 * _F2) * (fm * fm + _F3 * _F3)))
        # |H| wanted of both sections together = |H|**2 of one (the analog 1 / (1 + (f/_F4)**2) is
        # the magnitude of the double pole), corrected for what the high-pass part misses.
        m2 = hp_analog / hp_digital / (1.0 + (fm / _F4) ** 2)
        # One section g (1 + q z^-1) / (1 - p z^-1) with g = (1 - p) / (1 + q) (unity at DC):
        # |1 + q e^-jw|**2 / (1 + q)**2 = r  ->  (1 - r) q**2 + 2 (cos w - r) q + (1 - r) = 0.
        r = m2 * (1.0 - 2.0 * p * math.cos(wm) + p * p) / (1.0 - p) ** 2
        cw = math.cos(wm)
        a = 1.0 - r
        b = 2.0 * (cw - r)
        if abs(a) < 1e-12:
            q = -a / b
        else:
            d = math.sqrt(max(0.0, b * b - 4.0 * a * a))
            q1 = (-b + d) / (2.0 * a)
            q2 = (-b - d) / (2.0 * a)
            q = q1 if abs(q1) < abs(q2) else q2
        g = (1.0 - p) / (1.0 + q)
        # One shift for p, g, h: the largest fills _COEF_BITS.
        big = max(p, g, abs(g * q))
        _, lq = _q(big)
        st[_S_LP] = int(p * (1 << lq) + 0.5)
        st[_S_LP + 1] = int(g * (1 << lq) + 0.5)
        st[_S_LP + 2] = int(math.floor(g * q * (1 << lq) + 0.5)) + _BIAS
        st[_S_LPQ] = lq
        self.gain_1k = self.response(1000.0)
        n = fs // 250
        st[_S_SUBN] = n
        alpha = math.exp(-n / (fs * _TAU_FAST))
        st[_S_ALPHA] = int(alpha * 32768 + 0.5)
        alpha = st[_S_ALPHA] / 32768.0
        bm, be = _bf((1.0 - alpha) / n)
        st[_S_BETA] = bm
        st[_S_BETA + 1] = be + _BIAS
        im, ie = _bf(1.0 / n)
        st[_S_INVN] = im
        st[_S_INVN + 1] = ie + _BIAS
        for i in range(256):
            st[_S_LOG + i] = int(math.log(1.0 + i / 256.0) / math.log(2.0) * 1024 + 0.5)

    def response(self, f):
        """|H(f)| of the fixed-point filter as quantised (before calibration), for tests and the design."""
        st = self.st
        w = 2.0 * math.pi * f / self.sample_rate
        h = 1.0
        for i in range(4):
            h *= _mag_hp(1.0 - st[_S_C1 + i] / (1 << st[_S_Q1 + i]), w)
        s = 1 << st[_S_LPQ]
        p, g, hh = st[_S_LP] / s, st[_S_LP + 1] / s, (st[_S_LP + 2] - _BIAS) / s
        re = g + hh * math.cos(w)
        im = -hh * math.sin(w)
        dre = 1.0 - p * math.cos(w)
        dim = p * math.sin(w)
        lp = math.sqrt((re * re + im * im) / (dre * dre + dim * dim))
        return h * lp * lp

    def calibrate(self, sensitivity_dbfs, offset_db=0.0):
        """Microphone sensitivity (dBFS at 94 dB SPL, 1 kHz) and the per-device offset (dB)."""
        if not -80.0 <= sensitivity_dbfs <= 0.0:
            raise ValueError("sensitivity must be -80..0 dBFS")
        if not -20.0 <= offset_db <= 20.0:
            raise ValueError("offset must be -20..20 dB")
        self.sensitivity_dbfs = sensitivity_dbfs
        self.offset_db = offset_db
        # L = 10 log10(mean square / full-scale sine's) - 20 log10(gain at 1 kHz) - sensitivity + 94 + offset
        self.cal_db = -10.0 * math.log10(32768.0 * 32768.0 / 2.0) - 20.0 * math.log10(self.gain_1k)
        self.cal_db += 94.0 - sensitivity_dbfs + offset_db
        self.st[_S_HOFF] = int(math.floor(self.cal_db * 10.0 * 262144.0 + 131072.5)) + _BIAS

    def buffer(self, samples):
        """A sample buffer for `samples` words of this meter's width (I2S readinto target)."""
        return array("i" if self.bits == 32 else "h", bytearray(samples * self.bits // 8))

    # -- per block ---------------------------------------------------------------
    def reset(self):
        """Start a new interval (the filter keeps its state: no settling gap)."""
        st = self.st
        st[_S_LEFT] = st[_S_SUBN]
        st[_S_HI] = st[_S_LO] = 0
        for k in (_S_MAX, _S_SUM):
            st[k] = 0
            st[k + 1] = _BIAS
        st[_S_MIN] = _M_HIGH  # above any mantissa: the first level replaces it
        st[_S_MIN + 1] = _BIAS + 1000
        st[_S_NSUB] = 0
        st[_S_INMAX] = _BIAS - 32768
        st[_S_INMIN] = _BIAS + 32767
        st[_S_CLIP] = 0
        if st[_S_W] == 0:
            st[_S_FIRST] = 1
        for i in range(_HIST_BINS):
            self.hist[i] = 0
        self.lost = 0

    def process(self, buf, n):
        """Feed `n` samples of `buf` (array from `buffer()`): integers only, no allocation."""
        self._process(buf, n, self.st, self.hist)

    # -- per interval (floats: allocates, once per report) -----------------------
    def _level(self, k):
        st = self.st
        m = st[k]
        if m <= 0 or m >= _M_HIGH:
            return None
        return self.cal_db + 10.0 * math.log10(m) + (st[k + 1] - _BIAS) * 3.010299956639812

    def report(self, reset=True):
        """Compute the interval's figures (dB, or None without data) into attributes; start a new interval."""
        st = self.st
        nsub = st[_S_NSUB]
        n = nsub * st[_S_SUBN]
        self.seconds = n / self.sample_rate
        self.fault = 0
        if n == 0:
            self.laeq = self.lamax = self.lamin = self.la10 = self.la90 = None
        else:
            total = self._level(_S_SUM)
            self.laeq = None if total is None else total - 10.0 * math.log10(n)
            self.lamax = self._level(_S_MAX)
            self.lamin = self._level(_S_MIN)
            self.la10 = self._percentile(0.10, nsub)
            self.la90 = self._percentile(0.90, nsub)
            if st[_S_INMAX] == st[_S_INMIN]:
                self.fault |= 0x01  # FAULT_MISSING: digital silence
            if st[_S_CLIP] * 1000 > n:
                self.fault |= 0x08  # FAULT_RANGE: clipping
        if self.lost * 100 > n:
            self.fault |= 0x10  # FAULT_TIMEOUT: more than 1 % of the interval's samples lost
        if self.fault:
            self.errors += 1
        if reset:
            self.reset()
        return self.laeq

    def _percentile(self, exceeded, total):
        # The level exceeded `exceeded` of the time: walk down from the loudest bin.
        hist = self.hist
        total = 0
        for i in range(_HIST_BINS):
            total += hist[i]  # not the sub-block count: the bins may have been halved
        want = exceeded * total
        seen = 0
        for i in range(_HIST_BINS - 1, -1, -1):
            seen += hist[i]
            if seen > want:
                return i / 10.0
        return 0.0

    def figures(self):
        """The last report as a dict of dB values rounded to 0.01 (host tools, tests)."""
        out = {}
        for k in ("laeq", "lamax", "lamin", "la10", "la90"):
            v = getattr(self, k)
            out[k] = None if v is None else int(v * 100.0 + (0.5 if v >= 0 else -0.5)) / 100.0
        return out


class Microphone:
    """An I2S microphone feeding a SoundLevelMeter: call `service()` every few ms (an asyncio task).

    Reads the blocks the clock says have arrived since the last call, so `i2s.readinto`
    (blocking on the ESP32 until a block is complete) returns at once; more than the I2S
    driver's buffer (`ibuf_bytes`) behind means samples were overwritten: they are counted
    in `meter.lost` (FAULT_TIMEOUT in the next report) and reading starts afresh.
    """

    def __init__(self, i2s, meter, block=512, ibuf_bytes=16384):
        import time

        self._time = time
        self.i2s = i2s
        self.meter = meter
        self.block = block
        self.buf = meter.buffer(block)
        self.max_blocks = max(1, ibuf_bytes // (block * meter.bits // 8))
        self.blocks = 0  # read since the start
        self._t0 = None  # the clock starts at the first service()
        self._done = 0  # samples accounted for since _t0

    def service(self):
        """Read and process what has arrived; returns the number of blocks processed."""
        t = self._time
        rate = self.meter.sample_rate
        if self._t0 is None:
            self._t0 = t.ticks_ms()
            return 0
        elapsed = t.ticks_diff(t.ticks_ms(), self._t0)
        while elapsed >= 1000 and self._done >= rate:  # rebase each second: small ints on the ESP32
            self._t0 = t.ticks_add(self._t0, 1000)
            self._done -= rate
            elapsed -= 1000
        due = elapsed * rate // 1000 - self._done
        n = due // self.block
        if n > self.max_blocks:  # the driver's buffer overflowed: those samples are gone
            lost = (n - self.max_blocks) * self.block
            self.meter.lost += lost
            self._done += lost
            n = self.max_blocks
        buf = self.buf
        for _ in range(n):
            got = self.i2s.readinto(buf)
            self.meter.process(buf, got * 8 // self.meter.bits)
            self._done += self.block
            self.blocks += 1
        return n


def _mag_hp(p, w):
    # |(1 - e^-jw) / (1 - p e^-jw)|
    num = 2.0 - 2.0 * math.cos(w)
    den = 1.0 - 2.0 * p * math.cos(w) + p * p
    return math.sqrt(num / den)


# -- the per-block kernel, twice: pure Python, and viper where the port has it -------------
# Both read and write the same state array (signed entries + _BIAS) and histogram, and do
# the same integer operations in the same order; tests/test_sound_level.py checks they agree
# bit for bit. Keep them in step.


def _process_py(buf, n, st, hist):
    fmt = st[_S_FMT]
    xp = st[_S_XP] - _BIAS
    v1 = st[_S_V1] - _BIAS
    v2 = st[_S_V1 + 1] - _BIAS
    v3 = st[_S_V1 + 2] - _BIAS
    v4 = st[_S_V1 + 3] - _BIAS
    y1 = st[_S_Y1] - _BIAS
    y2 = st[_S_Y1 + 1] - _BIAS
    r1 = st[_S_R1]
    r2 = st[_S_R1 + 1]
    r3 = st[_S_R1 + 2]
    r4 = st[_S_R1 + 3]
    r5 = st[_S_R1 + 4]
    r6 = st[_S_R1 + 5]
    c1 = st[_S_C1]
    c2 = st[_S_C1 + 1]
    c3 = st[_S_C1 + 2]
    c4 = st[_S_C1 + 3]
    q1 = st[_S_Q1]
    q2 = st[_S_Q1 + 1]
    q3 = st[_S_Q1 + 2]
    q4 = st[_S_Q1 + 3]
    m1 = (1 << q1) - 1
    m2 = (1 << q2) - 1
    m3 = (1 << q3) - 1
    m4 = (1 << q4) - 1
    lp = st[_S_LP]
    lg = st[_S_LP + 1]
    lh = st[_S_LP + 2] - _BIAS
    lq = st[_S_LPQ]
    lm = (1 << lq) - 1
    left = st[_S_LEFT]
    hi = st[_S_HI]
    lo = st[_S_LO]
    inmax = st[_S_INMAX] - _BIAS
    inmin = st[_S_INMIN] - _BIAS
    clip = st[_S_CLIP]
    i = 0
    while i < n:
        if fmt == 32:
            s = buf[i] >> 16
        else:
            s = buf[i]
        i += 1
        if s > inmax:
            inmax = s
        if s < inmin:
            inmin = s
        if s >= 32767 or s <= -32767:
            clip += 1
        x = s << 4
        a = c1 * v1 + r1
        r1 = a & m1
        t = v1 + x - xp - (a >> q1)
        xp = x
        a = c2 * v2 + r2
        r2 = a & m2
        u = v2 + t - v1 - (a >> q2)
        v1 = t
        a = c3 * v3 + r3
        r3 = a & m3
        t = v3 + u - v2 - (a >> q3)
        v2 = u
        a = c4 * v4 + r4
        r4 = a & m4
        u = v4 + t - v3 - (a >> q4)
        v3 = t
        a = lp * y1 + lg * u + lh * v4 + r5
        r5 = a & lm
        t = a >> lq
        v4 = u
        a = lp * y2 + lg * t + lh * y1 + r6
        r6 = a & lm
        y1 = t
        y2 = a >> lq
        y = (y2 + 8) >> 4
        if y > _CLAMP:
            y = _CLAMP
        elif y < -_CLAMP:
            y = -_CLAMP
        e = y * y
        hi += e >> 15
        lo += e & 0x7FFF
        left -= 1
        if left == 0:
            st[_S_HI] = hi
            st[_S_LO] = lo
            _subblock_py(st, hist)
            hi = 0
            lo = 0
            left = st[_S_SUBN]
    st[_S_XP] = xp + _BIAS
    st[_S_V1] = v1 + _BIAS
    st[_S_V1 + 1] = v2 + _BIAS
    st[_S_V1 + 2] = v3 + _BIAS
    st[_S_V1 + 3] = v4 + _BIAS
    st[_S_Y1] = y1 + _BIAS
    st[_S_Y1 + 1] = y2 + _BIAS
    st[_S_R1] = r1
    st[_S_R1 + 1] = r2
    st[_S_R1 + 2] = r3
    st[_S_R1 + 3] = r4
    st[_S_R1 + 4] = r5
    st[_S_R1 + 5] = r6
    st[_S_LEFT] = left
    st[_S_HI] = hi
    st[_S_LO] = lo
    st[_S_INMAX] = inmax + _BIAS
    st[_S_INMIN] = inmin + _BIAS
    st[_S_CLIP] = clip


def _norm_py(st, k, x):
    # st[k], st[k + 1] = st[k] * 2**x, normalised (0 <= st[k] < 2**31).
    m = st[k]
    if m == 0:
        st[k] = 0
        st[k + 1] = _BIAS
        return
    while m >= _M_HIGH:
        m >>= 1
        x += 1
    while m < _M_LOW:
        m <<= 1
        x -= 1
    st[k] = m
    st[k + 1] = x + _BIAS


def _mul_py(st, k, bm, be, out):
    # st[out] = st[k] * (bm * 2**be / 2**15), bm < 2**15.
    m = st[k]
    x = st[k + 1] - _BIAS
    st[out] = (m >> 15) * bm + (((m & 0x7FFF) * bm) >> 15)
    _norm_py(st, out, x + be)


def _add_py(st, k, am, ax):
    # st[k] += am * 2**ax (both normalised or zero).
    bm = st[k]
    bx = st[k + 1] - _BIAS
    if am == 0:
        return
    if bm == 0:
        st[k] = am
        st[k + 1] = ax + _BIAS
        return
    if ax >= bx:
        d = ax - bx
        m = am + (bm >> d) if d < 31 else am
        x = ax
    else:
        d = bx - ax
        m = bm + (am >> d) if d < 31 else bm
        x = bx
    st[k] = m
    _norm_py(st, k, x)


_T = const(_S_LEN - 2)  # the scratch pair


def _subblock_py(st, hist):
    hi = st[_S_HI]
    lo = st[_S_LO]
    # Sub-block energy sum = hi * 2**15 + lo, normalised into the scratch pair.
    if hi < 32768:
        st[_T] = (hi << 15) + lo
        _norm_py(st, _T, 0)
    else:
        x = 15
        while hi < _M_LOW:
            hi <<= 1
            x -= 1
        st[_T] = hi + (lo >> x)
        _norm_py(st, _T, x)
    em = st[_T]
    ex = st[_T + 1] - _BIAS
    _add_py(st, _S_SUM, em, ex)
    st[_S_NSUB] += 1
    if st[_S_FIRST]:
        st[_S_FIRST] = 0
        _mul_py(st, _T, st[_S_INVN], st[_S_INVN + 1] - _BIAS, _S_W)
    else:
        _mul_py(st, _S_W, st[_S_ALPHA], 0, _S_W)
        _mul_py(st, _T, st[_S_BETA], st[_S_BETA + 1] - _BIAS, _T)
        _add_py(st, _S_W, st[_T], st[_T + 1] - _BIAS)
    wm = st[_S_W]
    wx = st[_S_W + 1]
    if wm > 0 and (st[_S_MAX] == 0 or wx > st[_S_MAX + 1] or (wx == st[_S_MAX + 1] and wm > st[_S_MAX])):
        st[_S_MAX] = wm
        st[_S_MAX + 1] = wx
    if wm == 0 or (st[_S_MIN] != 0 and (wx < st[_S_MIN + 1] or (wx == st[_S_MIN + 1] and wm < st[_S_MIN]))):
        st[_S_MIN] = wm
        st[_S_MIN + 1] = wx
    if wm > 0:
        # 0.1 dB bin: 100 log10(W) + 10 cal = log2(W) * 30.103 + 10 cal; log2 in Q10, the factor
        # 30.103 * 2**18 / 1024 = 7706.4 in Q18.
        lg = (wx - _BIAS + 29) * 1024 + st[_S_LOG + ((wm >> 21) & 255)]
        b = (lg * 7706 + st[_S_HOFF] - _BIAS) >> 18
    else:
        b = 0
    if b < 0:
        b = 0
    elif b >= _HIST_BINS:
        b = _HIST_BINS - 1
    c = hist[b] + 1
    if c > 0xFFFF:  # a count would overflow 16 bits: halve them all (the percentiles stay)
        for i in range(_HIST_BINS):
            hist[i] >>= 1
        c = hist[b] + 1
    hist[b] = c


_process_viper = None
if micropython is not None:
    try:
        from lanterne.sensors._sound_level_viper import process as _process_viper
    except (ImportError, SyntaxError, ValueError, NotImplementedError):  # a port without the native emitter
        _process_viper = None
