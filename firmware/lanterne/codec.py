"""Compact payload codec, formats v2 and v3 (docs/payload.md): readings bit-packed into a preallocated frame.

One module for the board, the unix port and CPython. A reading is a list of
N_FIELDS integers in resolution units (None = absent), indexed by the field
constants below. `Encoder.encode()` packs a run of readings into one frame: the
first reading absolute, later ones as deltas against it, as many whole readings
as the byte budget allows. After the first call it allocates nothing: integers
only (no floats), `const()` constants, one bytearray reused for every frame.

Two framings of the same bit stream: over MQTT (and any byte transport) byte 0 is
the format version; over LoRaWAN the version travels in the FPort (FPORT) and the
payload is the bit stream alone (`Encoder(lorawan=True)`), one byte shorter.
The JSON/float converter lives apart, in `lanterne.codec_values`, so a board that
only encodes integers does not load it.

Format v3 is v2 plus extension fields (particulate matter, sound levels, and the
fields added after them the same way: docs/payload.md, "Extension fields") and six
more status flags. A frame is written in the lowest version that carries it: a run
whose first reading needs no extension field and no v3 flag is a v2 frame, byte for
byte what earlier firmware sent, and stops before the first reading that needs v3;
otherwise the frame is v3. After `encode()`, `encoder.version` says which (over
LoRaWAN: send on FPort FPORT_BASE + version).
"""

try:
    from micropython import const
except ImportError:  # CPython: same source, constants are plain ints

    def const(value):
        return value


FORMAT_VERSION = const(2)
FORMAT_V3 = const(3)  # v2 + extension fields + 16 status bits
# LoRaWAN: format version v travels on FPort FPORT_BASE + v (the payload has no version byte).
FPORT_BASE = const(100)
FPORT = const(102)  # FPORT_BASE + FORMAT_VERSION
FPORT_V3 = const(103)
# Largest frame any decoder accepts; EU868 LoRaWAN tops out at 242, MQTT may use more.
MAX_FRAME = const(1024)

# Index of each field in an integer reading, and its unit (see docs/payload.md, "Readings").
TEMPERATURE = const(0)  # 0.1 degC, -400..850
HUMIDITY = const(1)  # 0.5 %RH, 0..200
PRESSURE = const(2)  # 0.1 hPa, 3000..11000
ILLUMINANCE = const(3)  # millilux, 0..120_000_000
FILL = const(4)  # %, 0..100
DISTANCE = const(5)  # mm, 0..16383 (raw fill-sensor distance)
LAMP = const(6)  # %, 0..100
LAMP_FAULT = const(7)  # 0 or 1, sent together with LAMP
VOLTAGE = const(8)  # mV, 0..60000
STATUS = const(9)  # flag bits, STATUS_NAMES[i] is bit i
SEQ = const(10)  # reading counter; its low 16 bits are sent (keep it < 2**30 on 32-bit ports: small int)
AGE = const(11)  # s between sampling and sending, 0..AGE_MAX
# Extension fields (v3): extension id i is reading slot EXT_FIRST + i:
#   0 PM1, 1 PM2.5, 2 PM10: ug/m3, 0..1000 (particulate matter < 1, 2.5, 10 um)
#   3 LAeq: 0.1 dB, 0..1400: A-weighted equivalent level over the sampling period
#   4 LAmax: 0.1 dB, 0..1400: A-weighted maximum, time weighting F
#   5 lamp energy: Wh, 0..67_108_863 (26 bits), the lamp's cumulative counter (saturates there)
#   6 lamp burning time: 0.01 h, 0..16_777_215 (24 bits), cumulative
# (no named constants: every global here costs every board RAM; codec_values names them)
N_FIELDS = const(19)
EXT_FIRST = const(12)
N_EXT = const(7)

# Status flag bits: one fault bit per sensor, then device conditions.
STATUS_NAMES = (
    "temperature_fault",
    "humidity_fault",
    "pressure_fault",
    "illuminance_fault",
    "fill_fault",
    "voltage_fault",
    "tamper",
    "buffer_overflow",
    "config_error",
    "clock_unsynced",
    "pm_fault",  # v3 from here on
    "sound_fault",
    "pm_humid",
)
_V2_FLAGS = const(0x3FF)
_V3_FLAGS = const(0x1FFF)  # bits 13..15 are reserved: never set
AGE_MAX = const(16777216)  # 2**24 s, about 194 days; older readings are sent as this age

# Presence bitmap (11 bits, temperature first on the wire).
_P_TEMPERATURE = const(0x400)
_P_HUMIDITY = const(0x200)
_P_PRESSURE = const(0x100)
_P_ILLUMINANCE = const(0x80)
_P_FILL = const(0x40)
_P_DISTANCE = const(0x20)
_P_LAMP = const(0x10)
_P_VOLTAGE = const(0x08)
_P_STATUS = const(0x04)
_P_SEQ = const(0x02)
_P_AGE = const(0x01)
# The standard full set, every field but the raw distance: reading 0 says it with one bit.
_STANDARD = const(0x7DF)
_CLOCK_UNSYNCED = const(0x200)  # status bit 9: the one flag with a 2-bit code in reading 0

# Extension fields, by id (docs/payload.md, "Extension fields"): absolute width, largest
# code, delta order. Presence: id 0 is the first bit of the first 8-bit group.
_EXT_WIDTH = (10, 10, 10, 11, 11, 26, 24)
_EXT_MAX = (1000, 1000, 1000, 1400, 1400, 67108863, 16777215)
_EXT_K = (2, 2, 2, 3, 3, 3, 3)

# Exp-Golomb order of each delta (chosen for slowly varying assets, see docs/payload.md).
_K_TEMPERATURE = const(2)
_K_HUMIDITY = const(1)
_K_PRESSURE = const(2)
_K_ILLUMINANCE = const(2)
_K_FILL = const(0)
_K_DISTANCE = const(3)
_K_LAMP = const(0)
_K_VOLTAGE = const(1)
_K_SEQ = const(0)
_K_AGE_FIRST = const(2)  # the frame's first age (a code, see age_code)
_K_AGE_STEP = const(7)  # its second age, against the first: about one sampling period
_K_AGE = const(2)  # later ages, against the trend of the previous two

_MIN_CHECK_BITS = const(4)
# A reading never takes more than ~34 bytes (v2; 62 in v3 with every delta at its worst), so
# writing one past the budget stays inside the buffer; it is then rolled back.
_SLACK = const(80)

# Illuminance: code 0 is 0 lx, code c >= 1 stands for 2**((c - 1) / 19) mlx (19 steps per
# octave: at most 1.84 % away from the true value, 1 mlx .. 120 315 lx in 9 bits).
# _LUX_SPLIT[j] = round(2**((j + 0.5) / 19) * 65536): the boundaries between steps of one
# octave, in 16-bit fixed point; integers, so every port rounds the same way.
_LUX_SPLIT = (
    66742, 69222, 71794, 74462, 77228, 80098, 83074, 86160, 89362, 92682,
    96126, 99697, 103401, 107243, 111228, 115360, 119647, 124092, 128703,
)
# CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), one nibble at a time: a 16-entry table
# instead of 256 keeps RAM low.
_CRC_NIBBLE = (
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50A5, 0x60C6, 0x70E7,
    0x8108, 0x9129, 0xA14A, 0xB16B, 0xC18C, 0xD1AD, 0xE1CE, 0xF1EF,
)


def _clamp(v, low, high):
    return low if v < low else (high if v > high else v)


def _bitlen(v):
    n = 0
    while v >= 256:
        v >>= 8
        n += 8
    while v:
        v >>= 1
        n += 1
    return n


def _zigzag(d):
    return d << 1 if d >= 0 else ((-d) << 1) - 1


def lux_code(mlx):
    """9-bit illuminance code for `mlx` millilux (0 stays exactly 0; saturates at 120 315 lx)."""
    if mlx <= 0:
        return 0
    e = _bitlen(mlx) - 1
    m = mlx << (16 - e) if e <= 16 else mlx >> (e - 16)  # mantissa in [2**16, 2**17)
    j = 0
    while j < 19 and _LUX_SPLIT[j] <= m:
        j += 1
    c = e * 19 + j + 1
    return 511 if c > 511 else c


def voltage_code(mv):
    """11-bit supply-voltage code: 10 mV steps below 5 V (codes 0..499), 100 mV steps up to 60 V."""
    mv = _clamp(mv, 0, 60000)
    if mv < 4995:
        return (mv + 5) // 10
    return 500 + (mv - 4950) // 100


def age_code(s):
    """Age code: exact below 128 s, then 64 steps per octave (within 0.8 %), up to AGE_MAX."""
    s = _clamp(s, 0, AGE_MAX)
    if s < 128:
        return s
    e = _bitlen(s) - 7
    m = (s + (1 << (e - 1))) >> e  # rounded to 7 significant bits
    if m == 128:
        m = 64
        e += 1
    return (e << 6) + m


def age_value(code):
    """Seconds that an age code stands for (inverse of `age_code`)."""
    if code < 128:
        return code
    return (64 + (code & 63)) << ((code >> 6) - 1)


def crc16(buf, length, crc=0xFFFF):
    """CRC-16/CCITT-FALSE of buf[0:length], continuing from `crc` (0xFFFF: from the start)."""
    for i in range(length):
        b = buf[i]
        crc = ((crc << 4) & 0xFFFF) ^ _CRC_NIBBLE[((crc >> 12) ^ (b >> 4)) & 15]
        crc = ((crc << 4) & 0xFFFF) ^ _CRC_NIBBLE[((crc >> 12) ^ b) & 15]
    return crc


# The CRC after the version byte alone: where a LoRaWAN frame's check starts.
_CRC_VERSION = crc16(bytes((FORMAT_VERSION,)), 1)
_CRC_V3 = crc16(bytes((FORMAT_V3,)), 1)


def needs_v3(r):
    """True when reading `r` has an extension field or a v3 status flag."""
    for i in range(EXT_FIRST, N_FIELDS):
        if r[i] is not None:
            return True
    st = r[STATUS]
    return st is not None and st & ~_V2_FLAGS != 0


def new_reading():
    """An empty reading: every field absent. Reuse it; set fields to ints in resolution units."""
    return [None] * N_FIELDS


class Encoder:
    """Packs readings into frames in one preallocated buffer.

    After `n = encoder.encode(readings, start, count, budget)`, the frame is
    `encoder.buf[:encoder.length]` and holds readings[start:start + n]; n == 0
    means the first reading alone does not fit in `budget` bytes. With
    `lorawan=True` the frame has no version byte and goes out on FPort FPORT;
    otherwise byte 0 is FORMAT_VERSION. `budget` counts the bytes sent either way.
    """

    def __init__(self, capacity=242, lorawan=False):
        if capacity < 3 or capacity > MAX_FRAME:
            raise ValueError("frame capacity must be 3..%d bytes" % MAX_FRAME)
        self.capacity = capacity
        # False: byte 0 is the format version (MQTT). True: no version byte, the frame goes
        # out on LoRaWAN FPort FPORT. A plain attribute: flip it between calls if needed.
        self.lorawan = lorawan
        self.buf = bytearray(capacity + _SLACK)
        self.length = 0
        self.count = 0
        self.version = FORMAT_VERSION  # of the last frame: 2 or 3 (FPort FPORT_BASE + version)
        self._v3 = False
        self._ext = 0  # extension presence (8 bits, id 0 first) of the first reading
        self._pos = 0
        self._acc = 0
        self._nacc = 0
        self._base = [0] * N_FIELDS  # wire codes of the frame's first reading
        self._mask = 0  # presence bitmap of the first reading
        self._seq = 0
        self._seq_at = -1
        self._age1 = 0
        self._age2 = 0
        self._ages = 0

    def frame(self):
        """The last frame as bytes (allocates; for the host and tests)."""
        return bytes(self.buf[: self.length])

    # -- bit writer: MSB first, whole bytes go straight into the buffer --------------

    def _put(self, value, n):  # n <= 16 keeps the accumulator a small int on 32-bit ports
        acc = (self._acc << n) | value
        nacc = self._nacc + n
        while nacc >= 8:
            nacc -= 8
            self.buf[self._pos] = (acc >> nacc) & 0xFF
            self._pos += 1
        self._acc = acc & ((1 << nacc) - 1)
        self._nacc = nacc

    def _bits(self, value, n):
        while n > 16:
            n -= 16
            self._put((value >> n) & 0xFFFF, 16)
        self._put(value & ((1 << n) - 1), n)

    def _eg(self, v, k):
        # Exp-Golomb of order k: (bitlen(w) - k - 1) zeros, then w = v + 2**k in binary.
        w = v + (1 << k)
        n = _bitlen(w)
        self._bits(w, n + n - k - 1)

    def _field(self, slot, code, width, k, index, flag):
        if index and self._mask & flag:
            self._eg(_zigzag(code - self._base[slot]), k)
        else:
            self._bits(code, width)
            if not index:
                self._base[slot] = code

    def _ext_presence(self, ext):
        # v3: 0 = no extension field; 1, then 8-bit groups (id 0 first), each followed by 1 if
        # another group follows. One group holds ids 0..7.
        if not ext:
            self._put(0, 1)
        else:
            self._put(1, 1)
            self._put(ext, 8)
            self._put(0, 1)

    # -- frames ----------------------------------------------------------------------

    def encode(self, readings, start=0, count=-1, budget=0):
        """Encode readings[start:start + count] (count -1: to the end) into at most
        `budget` bytes (0: the capacity); return how many whole readings were packed."""
        if budget <= 0 or budget > self.capacity:
            budget = self.capacity
        end = len(readings) if count < 0 else start + count
        if end > len(readings):
            end = len(readings)
        limit = budget * 8 - 1 - _MIN_CHECK_BITS  # room left for the end bit and the check
        self._pos = 0
        self._acc = 0
        self._nacc = 0
        self._seq_at = -1
        self._ages = 0
        self.length = 0
        self.count = 0
        v3 = start < end and needs_v3(readings[start])
        self._v3 = v3
        self.version = FORMAT_V3 if v3 else FORMAT_VERSION
        if not self.lorawan:
            self._put(self.version, 8)
        n = 0
        i = start
        while i < end:
            if not v3 and n and needs_v3(readings[i]):
                break  # a v2 frame ends before the first reading that needs v3
            pos = self._pos
            acc = self._acc
            nacc = self._nacc
            if n:
                self._put(1, 1)  # another reading follows
            self._reading(readings[i], n)
            if self._pos * 8 + self._nacc > limit:
                self._pos = pos
                self._acc = acc
                self._nacc = nacc
                break
            n += 1
            i += 1
        if n == 0:
            return 0
        self._put(0, 1)  # end of readings
        k = (8 - self._nacc) & 7
        if k < _MIN_CHECK_BITS:
            k += 8
        self._bits(0, k)
        length = self._pos
        # The check covers the version in both framings: over LoRaWAN, the FPort's.
        crc0 = 0xFFFF
        if self.lorawan:
            crc0 = _CRC_V3 if v3 else _CRC_VERSION
        check = crc16(self.buf, length, crc0) >> (16 - k)
        self.buf[length - 1] |= check & 0xFF
        if k > 8:
            self.buf[length - 2] |= check >> 8
        self.length = length
        self.count = n
        return n

    def _reading(self, r, index):
        mask = 0
        if r[TEMPERATURE] is not None:
            mask |= _P_TEMPERATURE
        if r[HUMIDITY] is not None:
            mask |= _P_HUMIDITY
        if r[PRESSURE] is not None:
            mask |= _P_PRESSURE
        if r[ILLUMINANCE] is not None:
            mask |= _P_ILLUMINANCE
        if r[FILL] is not None:
            mask |= _P_FILL
        if r[DISTANCE] is not None:
            mask |= _P_DISTANCE
        if r[LAMP] is not None:
            mask |= _P_LAMP
        if r[VOLTAGE] is not None:
            mask |= _P_VOLTAGE
        if r[STATUS] is not None:
            mask |= _P_STATUS
        if r[SEQ] is not None:
            mask |= _P_SEQ
        if r[AGE] is not None:
            mask |= _P_AGE
        ext = 0
        v3 = self._v3
        if v3:
            bit = 0x80
            for i in range(EXT_FIRST, N_FIELDS):
                if r[i] is not None:
                    ext |= bit
                bit >>= 1
        if not mask and not ext:
            raise ValueError("reading has no fields")
        if not index:
            self._mask = mask
            self._ext = ext
            if mask == _STANDARD:
                self._put(1, 1)
            else:
                self._put(mask, 12)  # 0, then the 11-bit bitmap
            if v3:
                self._ext_presence(ext)
        elif mask == self._mask and ext == self._ext:
            self._put(0, 1)  # same fields as the first reading
        else:
            self._put(1, 1)
            self._put(mask, 11)
            if v3:
                self._ext_presence(ext)
        if mask & _P_TEMPERATURE:
            self._field(TEMPERATURE, _clamp(r[TEMPERATURE], -400, 850) + 400, 11, _K_TEMPERATURE, index, _P_TEMPERATURE)
        if mask & _P_HUMIDITY:
            self._field(HUMIDITY, _clamp(r[HUMIDITY], 0, 200), 8, _K_HUMIDITY, index, _P_HUMIDITY)
        if mask & _P_PRESSURE:
            self._field(PRESSURE, _clamp(r[PRESSURE], 3000, 11000) - 3000, 13, _K_PRESSURE, index, _P_PRESSURE)
        if mask & _P_ILLUMINANCE:
            self._field(ILLUMINANCE, lux_code(r[ILLUMINANCE]), 9, _K_ILLUMINANCE, index, _P_ILLUMINANCE)
        if mask & _P_FILL:
            self._field(FILL, _clamp(r[FILL], 0, 100), 7, _K_FILL, index, _P_FILL)
        if mask & _P_DISTANCE:
            self._field(DISTANCE, _clamp(r[DISTANCE], 0, 16383), 14, _K_DISTANCE, index, _P_DISTANCE)
        if mask & _P_LAMP:
            code = _clamp(r[LAMP], 0, 100) << 1
            if r[LAMP_FAULT]:
                code |= 1
            self._field(LAMP, code, 8, _K_LAMP, index, _P_LAMP)
        if mask & _P_VOLTAGE:
            self._field(VOLTAGE, voltage_code(r[VOLTAGE]), 11, _K_VOLTAGE, index, _P_VOLTAGE)
        if ext:
            bit = 0x80
            for i in range(N_EXT):
                if ext & bit:
                    slot = EXT_FIRST + i
                    code = _clamp(r[slot], 0, _EXT_MAX[i])
                    if index and self._ext & bit:
                        self._eg(_zigzag(code - self._base[slot]), _EXT_K[i])
                    else:
                        self._bits(code, _EXT_WIDTH[i])
                        if not index:
                            self._base[slot] = code
                bit >>= 1
        if mask & _P_STATUS:
            flags = r[STATUS] & (_V3_FLAGS if v3 else _V2_FLAGS)
            if not index:
                self._base[STATUS] = flags
                if not flags:
                    self._put(0, 1)
                elif flags == _CLOCK_UNSYNCED:
                    self._put(2, 2)
                elif v3:
                    self._put(3, 2)  # 11, then the 16-bit mask
                    self._put(flags, 16)
                else:
                    self._put(0xC00 | flags, 12)  # 11, then the 10-bit mask
            else:
                ref = self._base[STATUS] if self._mask & _P_STATUS else 0
                if flags == ref:
                    self._put(0, 1)
                elif v3:
                    self._put(1, 1)
                    self._put(flags, 16)
                else:
                    self._put(0x400 | flags, 11)  # 1, then the 10-bit mask
        if mask & _P_SEQ:
            s = r[SEQ] & 0xFFFF
            if self._seq_at < 0:
                self._put(s, 16)
            else:
                d = (s - self._seq - index + self._seq_at) & 0xFFFF
                if d >= 32768:
                    d -= 65536
                self._eg(_zigzag(d), _K_SEQ)
            self._seq = s
            self._seq_at = index
        if mask & _P_AGE:
            a = _clamp(r[AGE], 0, AGE_MAX)
            if not self._ages:
                code = age_code(a)
                self._eg(code, _K_AGE_FIRST)
                a = age_value(code)  # later readings are coded against what the host will see
            elif self._ages == 1:
                self._eg(_zigzag(a - self._age1), _K_AGE_STEP)
            else:
                pred = _clamp(self._age1 + self._age1 - self._age2, 0, AGE_MAX)
                self._eg(_zigzag(a - pred), _K_AGE)
            self._age2 = self._age1
            self._age1 = a
            self._ages += 1
