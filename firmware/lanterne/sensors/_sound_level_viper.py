"""The sound-level meter's per-block kernel as viper machine code (see lanterne.sensors.sound_level).

Imported only where the port has the native emitter. The same integer operations,
in the same order, as `sound_level._process_py` and `_subblock_py`: the state layout
constants below must match sound_level's (tests/test_sound_level.py checks the two
kernels agree bit for bit). 32-bit loads through ptr32 are unsigned on 64-bit ports,
so every signed quantity is stored + BIAS and every value stays below 2**31.
"""

import micropython
from micropython import const

BIAS = const(0x20000000)
M_LOW = const(0x20000000)
M_HIGH = const(0x40000000)
CLAMP = const(46340)
HIST_BINS = const(1501)
S_FMT = const(0)
S_XP = const(1)
S_V1 = const(2)
S_Y1 = const(6)
S_R1 = const(8)
S_C1 = const(14)
S_Q1 = const(18)
S_LP = const(22)
S_LPQ = const(25)
S_SUBN = const(26)
S_LEFT = const(27)
S_HI = const(28)
S_LO = const(29)
S_ALPHA = const(30)
S_BETA = const(31)
S_INVN = const(33)
S_W = const(35)
S_MAX = const(37)
S_MIN = const(39)
S_SUM = const(41)
S_NSUB = const(43)
S_INMAX = const(44)
S_INMIN = const(45)
S_CLIP = const(46)
S_HOFF = const(47)
S_FIRST = const(48)
S_LOG = const(49)
_T = const(305)


@micropython.viper
def _norm(st, k: int, x: int):
    # st[k], st[k + 1] = st[k] * 2**x, normalised (0 <= st[k] < 2**31). The mantissa goes
    # through the array, never as an argument: above 2**30 it would be a long int on the ESP32.
    p = ptr32(st)
    m = p[k]
    if m == 0:
        p[k] = 0
        p[k + 1] = BIAS
        return
    while m >= M_HIGH:
        m >>= 1
        x += 1
    while m < M_LOW:
        m <<= 1
        x -= 1
    p[k] = m
    p[k + 1] = x + BIAS


@micropython.viper
def _mul(st, k: int, coef: int, out: int):
    # st[out] = st[k] * (mantissa * 2**exponent / 2**15), coef = index of (mantissa, exponent + BIAS) or
    # -1 for alpha (exponent 0).
    p = ptr32(st)
    if coef < 0:
        bm = p[S_ALPHA]
        be = 0
    else:
        bm = p[coef]
        be = p[coef + 1] - BIAS
    m = p[k]
    x = p[k + 1] - BIAS
    p[out] = (m >> 15) * bm + (((m & 0x7FFF) * bm) >> 15)
    _norm(st, out, x + be)


@micropython.viper
def _add(st, k: int, src: int):
    # st[k] += st[src] (both normalised or zero).
    p = ptr32(st)
    am = p[src]
    ax = p[src + 1] - BIAS
    bm = p[k]
    bx = p[k + 1] - BIAS
    if am == 0:
        return
    if bm == 0:
        p[k] = am
        p[k + 1] = ax + BIAS
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
    h = ptr32(hist)
    hi = p[S_HI]
    lo = p[S_LO]
    if hi < 32768:
        p[_T] = (hi << 15) + lo
        _norm(st, _T, 0)
    else:
        x = 15
        while hi < M_LOW:
            hi <<= 1
            x -= 1
        p[_T] = hi + (lo >> x)
        _norm(st, _T, x)
    _add(st, S_SUM, _T)
    p[S_NSUB] = p[S_NSUB] + 1
    if p[S_FIRST]:
        p[S_FIRST] = 0
        _mul(st, _T, S_INVN, S_W)
    else:
        _mul(st, S_W, -1, S_W)
        _mul(st, _T, S_BETA, _T)
        _add(st, S_W, _T)
    wm = p[S_W]
    wx = p[S_W + 1]
    if wm > 0 and (p[S_MAX] == 0 or wx > p[S_MAX + 1] or (wx == p[S_MAX + 1] and wm > p[S_MAX])):
        p[S_MAX] = wm
        p[S_MAX + 1] = wx
    if wm == 0 or (p[S_MIN] != 0 and (wx < p[S_MIN + 1] or (wx == p[S_MIN + 1] and wm < p[S_MIN]))):
        p[S_MIN] = wm
        p[S_MIN + 1] = wx
    b = 0
    if wm > 0:
        lg = (wx - BIAS + 29) * 1024 + p[S_LOG + ((wm >> 21) & 255)]
        b = (lg * 7706 + p[S_HOFF] - BIAS) >> 18
    if b < 0:
        b = 0
    elif b >= HIST_BINS:
        b = HIST_BINS - 1
    h[b] = h[b] + 1


@micropython.viper
def process(buf, n: int, st, hist):
    p = ptr32(st)
    b32 = ptr32(buf)
    b16 = ptr16(buf)
    fmt = p[S_FMT]
    xp = p[S_XP] - BIAS
    v1 = p[S_V1] - BIAS
    v2 = p[S_V1 + 1] - BIAS
    v3 = p[S_V1 + 2] - BIAS
    v4 = p[S_V1 + 3] - BIAS
    y1 = p[S_Y1] - BIAS
    y2 = p[S_Y1 + 1] - BIAS
    r1 = p[S_R1]
    r2 = p[S_R1 + 1]
    r3 = p[S_R1 + 2]
    r4 = p[S_R1 + 3]
    r5 = p[S_R1 + 4]
    r6 = p[S_R1 + 5]
    c1 = p[S_C1]
    c2 = p[S_C1 + 1]
    c3 = p[S_C1 + 2]
    c4 = p[S_C1 + 3]
    q1 = p[S_Q1]
    q2 = p[S_Q1 + 1]
    q3 = p[S_Q1 + 2]
    q4 = p[S_Q1 + 3]
    m1 = (1 << q1) - 1
    m2 = (1 << q2) - 1
    m3 = (1 << q3) - 1
    m4 = (1 << q4) - 1
    lp = p[S_LP]
    lg = p[S_LP + 1]
    lh = p[S_LP + 2] - BIAS
    lq = p[S_LPQ]
    lm = (1 << lq) - 1
    left = p[S_LEFT]
    hi = p[S_HI]
    lo = p[S_LO]
    inmax = p[S_INMAX] - BIAS
    inmin = p[S_INMIN] - BIAS
    clip = p[S_CLIP]
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
        if y > CLAMP:
            y = CLAMP
        elif y < -CLAMP:
            y = -CLAMP
        e = y * y
        hi += e >> 15
        lo += e & 0x7FFF
        left -= 1
        if left == 0:
            p[S_HI] = hi
            p[S_LO] = lo
            _subblock(st, hist)
            hi = 0
            lo = 0
            left = p[S_SUBN]
    p[S_XP] = xp + BIAS
    p[S_V1] = v1 + BIAS
    p[S_V1 + 1] = v2 + BIAS
    p[S_V1 + 2] = v3 + BIAS
    p[S_V1 + 3] = v4 + BIAS
    p[S_Y1] = y1 + BIAS
    p[S_Y1 + 1] = y2 + BIAS
    p[S_R1] = r1
    p[S_R1 + 1] = r2
    p[S_R1 + 2] = r3
    p[S_R1 + 3] = r4
    p[S_R1 + 4] = r5
    p[S_R1 + 5] = r6
    p[S_LEFT] = left
    p[S_HI] = hi
    p[S_LO] = lo
    p[S_INMAX] = inmax + BIAS
    p[S_INMIN] = inmin + BIAS
    p[S_CLIP] = clip
