"""The sound-level meter's per-block kernel as viper machine code (see lanterne.sensors.sound_level).

Imported only where the port has the native emitter. The same integer operations,
in the same order, as `sound_level._process_py` and `_subblock_py`: the state layout
constants below must match sound_level's (tests/test_sound_level.py checks the two
kernels agree bit for bit). 32-bit loads through ptr32 are unsigned on 64-bit ports,
so every signed quantity is stored + _BIAS and every value stays below 2**31.
"""

import micropython
from micropython import const

_BIAS = const(0x20000000)
_M_LOW = const(0x20000000)
_CLAMP = const(46340)
_HIST_BINS = const(1401)
_S_FMT = const(0)
_S_XP = const(1)
_S_V1 = const(2)
_S_Y1 = const(6)
_S_R1 = const(8)
_S_C1 = const(14)
_S_Q1 = const(18)
_S_LP = const(22)
_S_LPQ = const(25)
_S_SUBN = const(26)
_S_LEFT = const(27)
_S_HI = const(28)
_S_LO = const(29)
_S_ALPHA = const(30)
_S_BETA = const(31)
_S_INVN = const(33)
_S_W = const(35)
_S_MAX = const(37)
_S_MIN = const(39)
_S_SUM = const(41)
_S_NSUB = const(43)
_S_INMAX = const(44)
_S_INMIN = const(45)
_S_CLIP = const(46)
_S_HOFF = const(47)
_S_FIRST = const(48)
_S_LOG = const(49)
_T = const(305)


@micropython.viper
def _norm(st, k: int, x: int):
    # st[k], st[k + 1] = st[k] * 2**x, normalised (0 <= st[k] < 2**31). The mantissa goes
    # through the array, never as an argument: above 2**30 it would be a long int on the ESP32.
    p = ptr32(st)
    m = p[k]
    if m == 0:
        p[k] = 0
        p[k + 1] = _BIAS
        return
    while m >> 30:  # m >= 2**30 (a constant that large is not a small int for mpy-cross)
        m >>= 1
        x += 1
    while m < _M_LOW:
        m <<= 1
        x -= 1
    p[k] = m
    p[k + 1] = x + _BIAS


@micropython.viper
def _mul(st, k: int, coef: int, out: int):
    # st[out] = st[k] * (mantissa * 2**exponent / 2**15), coef = index of (mantissa, exponent + _BIAS) or
    # -1 for alpha (exponent 0).
    p = ptr32(st)
    if coef < 0:
        bm = p[_S_ALPHA]
        be = 0
    else:
        bm = p[coef]
        be = p[coef + 1] - _BIAS
    m = p[k]
    x = p[k + 1] - _BIAS
    p[out] = (m >> 15) * bm + (((m & 0x7FFF) * bm) >> 15)
    _norm(st, out, x + be)


@micropython.viper
def _add(st, k: int, src: int):
    # st[k] += st[src] (both normalised or zero).
    p = ptr32(st)
    am = p[src]
    ax = p[src + 1] - _BIAS
    bm = p[k]
    bx = p[k + 1] - _BIAS
    if am == 0:
        return
    if bm == 0:
        p[k] = am
        p[k + 1] = ax + _BIAS
        return
    if ax >= bx:
        d = ax - bx
        m = am
        if d < 31:
            m = am + (bm >> d)
        x = ax
    else:
        d = bx - ax
        m = bm
        if d < 31:
            m = bm + (am >> d)
        x = bx
    p[k] = m
    _norm(st, k, x)


@micropython.viper
def _subblock(st, hist):
    p = ptr32(st)
    h = ptr16(hist)
    hi = p[_S_HI]
    lo = p[_S_LO]
    if hi < 32768:
        p[_T] = (hi << 15) + lo
        _norm(st, _T, 0)
    else:
        x = 15
        while hi < _M_LOW:
            hi <<= 1
            x -= 1
        p[_T] = hi + (lo >> x)
        _norm(st, _T, x)
    _add(st, _S_SUM, _T)
    p[_S_NSUB] = p[_S_NSUB] + 1
    if p[_S_FIRST]:
        p[_S_FIRST] = 0
        _mul(st, _T, _S_INVN, _S_W)
    else:
        _mul(st, _S_W, -1, _S_W)
        _mul(st, _T, _S_BETA, _T)
        _add(st, _S_W, _T)
    wm = p[_S_W]
    wx = p[_S_W + 1]
    if wm > 0 and (p[_S_MAX] == 0 or wx > p[_S_MAX + 1] or (wx == p[_S_MAX + 1] and wm > p[_S_MAX])):
        p[_S_MAX] = wm
        p[_S_MAX + 1] = wx
    if wm == 0 or (p[_S_MIN] != 0 and (wx < p[_S_MIN + 1] or (wx == p[_S_MIN + 1] and wm < p[_S_MIN]))):
        p[_S_MIN] = wm
        p[_S_MIN + 1] = wx
    b = 0
    if wm > 0:
        lg = (wx - _BIAS + 29) * 1024 + p[_S_LOG + ((wm >> 21) & 255)]
        b = (lg * 7706 + p[_S_HOFF] - _BIAS) >> 18
    if b < 0:
        b = 0
    elif b >= _HIST_BINS:
        b = _HIST_BINS - 1
    c = h[b] + 1
    if c > 0xFFFF:  # a count would overflow 16 bits: halve them all (the percentiles stay)
        i = 0
        while i < _HIST_BINS:
            h[i] = h[i] >> 1
            i += 1
        c = h[b] + 1
    h[b] = c


@micropython.viper
def process(buf, n: int, st, hist):
    p = ptr32(st)
    b32 = ptr32(buf)
    b16 = ptr16(buf)
    fmt = p[_S_FMT]
    xp = p[_S_XP] - _BIAS
    v1 = p[_S_V1] - _BIAS
    v2 = p[_S_V1 + 1] - _BIAS
    v3 = p[_S_V1 + 2] - _BIAS
    v4 = p[_S_V1 + 3] - _BIAS
    y1 = p[_S_Y1] - _BIAS
    y2 = p[_S_Y1 + 1] - _BIAS
    r1 = p[_S_R1]
    r2 = p[_S_R1 + 1]
    r3 = p[_S_R1 + 2]
    r4 = p[_S_R1 + 3]
    r5 = p[_S_R1 + 4]
    r6 = p[_S_R1 + 5]
    c1 = p[_S_C1]
    c2 = p[_S_C1 + 1]
    c3 = p[_S_C1 + 2]
    c4 = p[_S_C1 + 3]
    q1 = p[_S_Q1]
    q2 = p[_S_Q1 + 1]
    q3 = p[_S_Q1 + 2]
    q4 = p[_S_Q1 + 3]
    m1 = (1 << q1) - 1
    m2 = (1 << q2) - 1
    m3 = (1 << q3) - 1
    m4 = (1 << q4) - 1
    lp = p[_S_LP]
    lg = p[_S_LP + 1]
    lh = p[_S_LP + 2] - _BIAS
    lq = p[_S_LPQ]
    lm = (1 << lq) - 1
    left = p[_S_LEFT]
    hi = p[_S_HI]
    lo = p[_S_LO]
    inmax = p[_S_INMAX] - _BIAS
    inmin = p[_S_INMIN] - _BIAS
    clip = p[_S_CLIP]
    i = 0
    while i < n:
        if fmt == 32:
            s = (b32[i] >> 16) & 0xFFFF
        else:
            s = b16[i]
        if s >= 32768:
            s -= 65536
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
            p[_S_HI] = hi
            p[_S_LO] = lo
            _subblock(st, hist)
            hi = 0
            lo = 0
            left = p[_S_SUBN]
    p[_S_XP] = xp + _BIAS
    p[_S_V1] = v1 + _BIAS
    p[_S_V1 + 1] = v2 + _BIAS
    p[_S_V1 + 2] = v3 + _BIAS
    p[_S_V1 + 3] = v4 + _BIAS
    p[_S_Y1] = y1 + _BIAS
    p[_S_Y1 + 1] = y2 + _BIAS
    p[_S_R1] = r1
    p[_S_R1 + 1] = r2
    p[_S_R1 + 2] = r3
    p[_S_R1 + 3] = r4
    p[_S_R1 + 4] = r5
    p[_S_R1 + 5] = r6
    p[_S_LEFT] = left
    p[_S_HI] = hi
    p[_S_LO] = lo
    p[_S_INMAX] = inmax + _BIAS
    p[_S_INMIN] = inmin + _BIAS
    p[_S_CLIP] = clip
