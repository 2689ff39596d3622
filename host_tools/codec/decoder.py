"""Decode Lanterne payload frames (formats v2 and v3, docs/payload.md) into JSON-ready dicts.

An independent implementation of the wire format (the encoder is
firmware/lanterne/codec.py, the network-server formatter is formatter.js): any
input either decodes to readings whose every value is within the documented
ranges, or raises `PayloadError` saying what is wrong and at which byte.

Two framings: `decode(frame)` reads an MQTT frame, whose byte 0 is the format
version; `decode(payload, fport=102)` reads a LoRaWAN payload, whose version is
its FPort minus FPORT_BASE. Version 3 is version 2 plus extension fields
(EXT_FIELDS: particulate matter, sound levels, lamp energy and burning hours) and a 16-bit status mask.
"""

from __future__ import annotations

FORMAT_VERSION = 2
FORMAT_V3 = 3
VERSIONS = (FORMAT_VERSION, FORMAT_V3)
FPORT_BASE = 100  # LoRaWAN: format version v travels on FPort FPORT_BASE + v
FPORT = FPORT_BASE + FORMAT_VERSION
FPORT_V3 = FPORT_BASE + FORMAT_V3
MAX_FRAME = 1024
# 12-bit presence + a 1-bit field + end bit = 14 bits, then at least 4 check bits: 3 bytes,
# and the version byte over MQTT.
MIN_PAYLOAD = 3
MIN_CHECK_BITS, MAX_CHECK_BITS = 4, 11
AGE_MAX = 1 << 24
AGE_CODE_MAX = 1216  # the age code of AGE_MAX
MAX_EG_ZEROS = 26  # no valid delta needs more; bounds the work on hostile input
STANDARD_SET = 0x7DF  # every field but distance: reading 0's one-bit presence code
CLOCK_UNSYNCED = 0x200  # status bit 9: reading 0's two-bit status code
K_AGE_FIRST, K_AGE_STEP, K_AGE = 2, 7, 2

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
    "pm_fault",  # v3: bits 10..12; 13..15 reserved
    "sound_fault",
    "pm_humid",
)
V2_FLAG_BITS, V3_FLAG_BITS = 10, 16
V3_RESERVED = 0xE000

# v3 extension fields, by id: (JSON name, absolute width, largest code, delta order, scale).
# The value is code / scale. Presence: 8-bit groups, id 0 the first bit (docs/payload.md).
EXT_FIELDS = (
    ("pm1", 10, 1000, 2, 1),
    ("pm2_5", 10, 1000, 2, 1),
    ("pm10", 10, 1000, 2, 1),
    ("laeq", 11, 1400, 3, 10),
    ("lamax", 11, 1400, 3, 10),
    ("energy", 26, 67108863, 3, 1),  # Wh, the lamp's cumulative counter
    ("burning_hours", 24, 16777215, 3, 100),  # h, the lamp's cumulative burning time
)

# round(2**(j / 19) * 65536): illuminance code c >= 1 stands for 2**((c - 1) / 19) mlx.
LUX_STEP = (
    65536, 67971, 70496, 73116, 75832, 78650, 81572, 84603, 87746, 91007,
    94388, 97895, 101532, 105305, 109217, 113275, 117484, 121849, 126376,
)
CRC_NIBBLE = (
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50A5, 0x60C6, 0x70E7,
    0x8108, 0x9129, 0xA14A, 0xB16B, 0xC18C, 0xD1AD, 0xE1CE, 0xF1EF,
)

# Wire order of the presence bitmap: (name, bitmap flag, absolute width, largest valid code, delta order).
FIELDS = (
    ("temperature", 0x400, 11, 1250, 2),
    ("humidity", 0x200, 8, 200, 1),
    ("pressure", 0x100, 13, 8000, 2),
    ("illuminance", 0x080, 9, 511, 2),
    ("fill", 0x040, 7, 100, 0),
    ("distance", 0x020, 14, 16383, 3),
    ("lamp", 0x010, 8, 201, 0),
    ("voltage", 0x008, 11, 1050, 1),
)
P_STATUS, P_SEQ, P_AGE = 0x004, 0x002, 0x001


class PayloadError(ValueError):
    """A frame that is not a valid v2/v3 payload; `byte` is the 0-based offset of the problem
    in the bytes given (None when the FPort is at fault)."""

    def __init__(self, message: str, byte: int | None = None):
        self.byte = byte
        self.reason = message
        super().__init__(message if byte is None else f"byte {byte}: {message}")


def crc16(data: bytes | bytearray, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), continuing from `crc`."""
    for b in data:
        crc = ((crc << 4) & 0xFFFF) ^ CRC_NIBBLE[((crc >> 12) ^ (b >> 4)) & 15]
        crc = ((crc << 4) & 0xFFFF) ^ CRC_NIBBLE[((crc >> 12) ^ b) & 15]
    return crc


def lux(code: int) -> float:
    """Illuminance in lx for a 9-bit code, rounded to 1 microlux with integer arithmetic."""
    if code == 0:
        return 0.0
    e, j = divmod(code - 1, 19)
    microlux = (LUX_STEP[j] * (1 << e) * 1000 + 32768) >> 16
    return microlux / 1e6


def age_seconds(code: int) -> int:
    if code < 128:
        return code
    return (64 + (code & 63)) << ((code >> 6) - 1)


def _field_value(name: str, code: int):
    if name == "temperature":
        return (code - 400) / 10
    if name == "humidity":
        return code / 2
    if name == "pressure":
        return (code + 3000) / 10
    if name == "illuminance":
        return lux(code)
    if name == "voltage":
        mv = code * 10 if code < 500 else 5000 + (code - 500) * 100
        return mv / 1000
    return code  # fill %, distance mm


def _label(what) -> str:
    """What is being read, for an error message: a string, or a tuple of words joined only when
    an error needs them (building the strings for every field cost more than reading the bits)."""
    return what if isinstance(what, str) else " ".join(what)


class _Bits:
    """Reads a frame MSB first. The frame is held as one integer, so a field of n bits is one
    shift and mask, and an Exp-Golomb prefix's zeros are counted with `bit_length` (the
    back-office bridge decodes tens of thousands of readings a second with this)."""

    def __init__(self, data: bytes, start: int):
        self.data = data
        self.total = len(data) * 8
        self.pos = start  # after the version byte, if the frame has one
        self.value = int.from_bytes(data, "big")

    def where(self) -> int:
        return self.pos // 8

    def read(self, n: int, what) -> int:
        end = self.pos + n
        if end > self.total:
            what = _label(what)
            missing = end - self.total
            raise PayloadError(
                f"truncated: the frame ends inside {what} ({len(self.data)} bytes, {what} needs "
                f"{missing} more bit{'' if missing == 1 else 's'})",
                byte=min(self.pos // 8, len(self.data) - 1),
            )
        self.pos = end
        return (self.value >> (self.total - end)) & ((1 << n) - 1)

    def exp_golomb(self, k: int, what) -> int:
        pos, total = self.pos, self.total
        left = total - pos
        rest = self.value & ((1 << left) - 1)  # the bits not read yet
        zeros = left - rest.bit_length()  # zero bits before the next 1
        if zeros > MAX_EG_ZEROS:
            raise PayloadError(f"malformed {_label(what)}: more than {MAX_EG_ZEROS} leading zero bits", byte=pos >> 3)
        n = zeros + k  # bits after the 1
        end = pos + zeros + 1 + n
        if end <= total:  # the 1 and the n bits after it, in one shift
            self.pos = end
            return (rest >> (total - end)) - (1 << k)
        if zeros == left:  # nothing but zeros to the end of the frame
            self.pos = total
            self.read(1, what)
        self.pos = pos + zeros + 1
        return ((1 << n) | self.read(n, what)) - (1 << k)

    def signed(self, k: int, what) -> int:
        z = self.exp_golomb(k, what)
        return z >> 1 if z % 2 == 0 else -((z + 1) >> 1)


def decode(data: bytes | bytearray | memoryview, fport: int | None = None) -> dict:
    """Decode one frame into {"version": 2 or 3, "readings": [{field: value, ...}, ...]}.

    `fport` None: an MQTT frame, byte 0 the format version. An int: a LoRaWAN
    payload received on that FPort, which carries the version. Values are in
    the units of docs/payload.md (degC, %, hPa, lx, mm, V, s); absent fields are
    left out. Raises PayloadError for anything that is not a complete, intact v2
    or v3 frame.
    """
    return _decode(data, fport, True)[0]


def _unsupported(version: int) -> str:
    why = (
        "version 1 was a pre-release format that no board sends"
        if version == 1
        else "not a Lanterne payload, or one from newer firmware"
    )
    return f"this decoder reads versions {FORMAT_VERSION} and {FORMAT_V3} — {why}"


def _decode(data, fport: int | None, verify: bool) -> tuple[dict, int]:
    """decode(), also returning the number of check bits; verify=False skips comparing them
    (for measuring how often random input passes everything but the check)."""
    data = bytes(data)
    n = len(data)
    if fport is None:
        if n == 0:
            raise PayloadError(f"empty payload: a frame starts with the format version byte 0x{FORMAT_VERSION:02x}", byte=0)
        if data[0] not in VERSIONS:
            raise PayloadError(f"unsupported format version {data[0]} (0x{data[0]:02x}): {_unsupported(data[0])}", byte=0)
        version = data[0]
        start, prefix, shortest = 8, b"", MIN_PAYLOAD + 1
    else:
        if isinstance(fport, bool) or not isinstance(fport, int) or not FPORT_BASE < fport < FPORT_BASE + 100:
            raise PayloadError(
                f"FPort {fport} is not a Lanterne payload port: format version v travels on FPort "
                f"{FPORT_BASE} + v (this decoder reads versions {FORMAT_VERSION} and {FORMAT_V3}, FPorts {FPORT} and {FPORT_V3})"
            )
        version = fport - FPORT_BASE
        if version not in VERSIONS:
            raise PayloadError(f"FPort {fport}: unsupported format version {version}: {_unsupported(version)}")
        if n == 0:
            raise PayloadError(f"empty payload on FPort {fport}", byte=0)
        start, prefix, shortest = 0, bytes((version,)), MIN_PAYLOAD
    if n > MAX_FRAME:
        raise PayloadError(f"oversized: {n} bytes, a frame is at most {MAX_FRAME} bytes", byte=MAX_FRAME)
    if n < shortest:
        raise PayloadError(f"truncated: {n} bytes, the shortest frame is {shortest} bytes", byte=n - 1)
    bits = _Bits(data, start)
    readings = []
    state = _FrameState(version == FORMAT_V3)
    while True:
        readings.append(_read_reading(bits, len(readings), state))
        if not bits.read(1, "the end-of-readings bit"):
            break
    check_bits = bits.total - bits.pos
    if check_bits < MIN_CHECK_BITS:
        raise PayloadError(
            f"truncated: {check_bits} bits left for the check field after the last reading, "
            f"it needs {MIN_CHECK_BITS} to {MAX_CHECK_BITS}",
            byte=n - 1,
        )
    if check_bits > MAX_CHECK_BITS:
        expected = (bits.pos + MIN_CHECK_BITS + 7) // 8
        extra = n - expected
        raise PayloadError(
            f"oversized: {extra} unexpected byte{'' if extra == 1 else 's'} after the end of the frame "
            f"(it ends after byte {expected - 1})",
            byte=expected,
        )
    if verify:
        sent = int.from_bytes(data[-2:], "big") & ((1 << check_bits) - 1)
        zeroed = bytearray(data)
        tail = int.from_bytes(zeroed[-2:], "big") & ~((1 << check_bits) - 1)
        zeroed[-2:] = tail.to_bytes(2, "big")
        computed = crc16(zeroed, crc16(prefix)) >> (16 - check_bits)
        if sent != computed:
            raise PayloadError(
                f"check field mismatch (got 0x{sent:x}, computed 0x{computed:x} over {check_bits} bits): "
                "the frame is corrupted or not a Lanterne payload",
                byte=n - 1 - (check_bits > 8),
            )
    return {"version": version, "readings": readings}, check_bits


class _FrameState:
    def __init__(self, v3: bool = False):
        self.v3 = v3
        self.ext = 0
        self.mask = 0
        self.base: dict[str, int] = {}
        self.seq = None
        self.seq_at = 0
        self.ages: list[int] = []


EXT_GROUP_BITS = 8


def _read_ext_presence(bits: _Bits, label: str) -> int:
    """v3 extension presence: 0, or 1 then 8-bit groups each followed by a more-groups bit.
    Returns the bitmap of group 0 (id 0 = 0x80); ids beyond the known ones are refused."""
    at = bits.where()
    if not bits.read(1, f"{label} extension presence"):
        return 0
    ext = bits.read(EXT_GROUP_BITS, f"{label} extension presence")
    known = (0xFF << (EXT_GROUP_BITS - len(EXT_FIELDS))) & 0xFF
    if ext & ~known:
        first = next(i for i in range(EXT_GROUP_BITS) if ext & (0x80 >> i) and not known & (0x80 >> i))
        raise PayloadError(
            f"{label} extension field {first} is unknown to this decoder (it knows 0..{len(EXT_FIELDS) - 1}): "
            "newer firmware? update the decoder", byte=at)
    if bits.read(1, f"{label} extension presence"):
        raise PayloadError(
            f"{label} extension fields beyond id {EXT_GROUP_BITS - 1} are unknown to this decoder: "
            "newer firmware? update the decoder", byte=at)
    if ext == 0:
        raise PayloadError(f"{label} extension presence is not canonical (an empty group)", byte=at)
    return ext


def _read_reading(bits: _Bits, index: int, st: _FrameState) -> dict:
    label = f"reading {index}"
    start = bits.where()
    ext = 0
    if index == 0:
        if bits.read(1, (label, "presence")):
            mask = STANDARD_SET
        else:
            mask = bits.read(11, (label, "presence bitmap"))
            if mask == STANDARD_SET or (mask == 0 and not st.v3):
                what = "empty" if mask == 0 else "not canonical (the standard set has a 1-bit code)"
                raise PayloadError(f"{label} presence bitmap is {what}", byte=start)
        if st.v3:
            ext = _read_ext_presence(bits, label)
            if mask == 0 and ext == 0:
                raise PayloadError(f"{label} presence bitmap is empty", byte=start)
        st.mask, st.ext = mask, ext
    elif bits.read(1, (label, "presence flag")):
        mask = bits.read(11, (label, "presence bitmap"))
        if st.v3:
            ext = _read_ext_presence(bits, label)
        if (mask == 0 and ext == 0) or (mask == st.mask and ext == st.ext):
            raise PayloadError(
                f"{label} presence bitmap is {'empty' if mask == 0 and ext == 0 else 'not canonical'}", byte=start
            )
    else:
        mask, ext = st.mask, st.ext
    out: dict = {}
    for name, flag, width, top, k in FIELDS:
        if not mask & flag:
            continue
        at = bits.pos >> 3
        if index and st.mask & flag:
            delta = bits.signed(k, (label, name, "delta"))
            code = st.base[name] + delta
            if not 0 <= code <= top:
                raise PayloadError(f"{label} {name}: delta {delta:+d} leads to code {code}, outside 0..{top}", byte=at)
        else:
            code = bits.read(width, (label, name))
            if code > top:
                raise PayloadError(f"{label} {name}: code {code} is outside 0..{top}", byte=at)
            if index == 0:
                st.base[name] = code
        if name == "lamp":
            out["lamp"] = code >> 1
            out["lamp_fault"] = bool(code & 1)
        else:
            out[name] = _field_value(name, code)
    for i, (name, width, top, k, scale) in enumerate(EXT_FIELDS):
        flag = 0x80 >> i
        if not ext & flag:
            continue
        at = bits.pos >> 3
        if index and st.ext & flag:
            delta = bits.signed(k, (label, name, "delta"))
            code = st.base[name] + delta
            if not 0 <= code <= top:
                raise PayloadError(f"{label} {name}: delta {delta:+d} leads to code {code}, outside 0..{top}", byte=at)
        else:
            code = bits.read(width, (label, name))
            if code > top:
                raise PayloadError(f"{label} {name}: code {code} is outside 0..{top}", byte=at)
            if index == 0:
                st.base[name] = code
        out[name] = code if scale == 1 else code / scale
    nflags = V3_FLAG_BITS if st.v3 else V2_FLAG_BITS
    if mask & P_STATUS:
        at = bits.pos >> 3
        if index == 0:
            flags = 0
            if bits.read(1, (label, "status")):
                flags = CLOCK_UNSYNCED
                if bits.read(1, (label, "status")):
                    flags = bits.read(nflags, (label, "status flags"))
                    if flags == 0 or flags == CLOCK_UNSYNCED:
                        raise PayloadError(f"{label} status flags are not canonical (they have a shorter code)", byte=at)
            st.base["status"] = flags
        else:
            ref = st.base["status"] if st.mask & P_STATUS else 0
            flags = ref
            if bits.read(1, (label, "status")):
                flags = bits.read(nflags, (label, "status flags"))
                if flags == ref:
                    raise PayloadError(
                        f"{label} status flags are not canonical (long form repeats the reference)", byte=at
                    )
        if flags & V3_RESERVED:
            raise PayloadError(f"{label} status flags: reserved bit set (0x{flags:04x})", byte=at)
        out["status"] = [STATUS_NAMES[i] for i in range(nflags) if flags >> i & 1]
    if mask & P_SEQ:
        if st.seq is None:
            seq = bits.read(16, (label, "seq"))
        else:
            delta = bits.signed(0, (label, "seq delta"))
            if not -32768 <= delta <= 32767:
                raise PayloadError(f"{label} seq: delta {delta:+d} is outside -32768..32767", byte=bits.where())
            seq = (st.seq + index - st.seq_at + delta) & 0xFFFF
        st.seq, st.seq_at = seq, index
        out["seq"] = seq
    if mask & P_AGE:
        at = bits.pos >> 3
        if not st.ages:
            code = bits.exp_golomb(K_AGE_FIRST, (label, "age"))
            if code > AGE_CODE_MAX:
                raise PayloadError(f"{label} age: code {code} is beyond the largest age (code {AGE_CODE_MAX})", byte=at)
            age = age_seconds(code)
        else:
            pred = st.ages[-1]
            if len(st.ages) > 1:
                pred = min(max(2 * pred - st.ages[-2], 0), AGE_MAX)
            delta = bits.signed(K_AGE_STEP if len(st.ages) == 1 else K_AGE, (label, "age delta"))
            age = pred + delta
            if not 0 <= age <= AGE_MAX:
                raise PayloadError(f"{label} age: delta {delta:+d} leads to {age} s, outside 0..{AGE_MAX}", byte=at)
        st.ages.append(age)
        out["age"] = age
    return out
