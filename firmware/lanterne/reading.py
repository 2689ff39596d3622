# Lanterne reading records: how one sampled reading is kept in the store until it is sent.
# Fixed layout (28 bytes, little-endian), packed into a reused buffer: the sample loop does
# not allocate. A reading with extension fields (codec v3) adds them after those 28 bytes:
#   version 2 (PM, sound levels only, as firmware before the lamp energy fields wrote it):
#     byte 0 = 2, presence bits 9..13 for extension ids 0..4, then five u16: PM1, PM2.5, PM10
#     (ug/m3), LAeq, LAmax (0.1 dB), present or not: 38 bytes;
#   version 3 (any extension field, the lamp's energy and burning time among them): byte 0 = 3,
#     presence bits 9..15 for extension ids 0..6, then only the present extension fields, in id
#     order: ids 0..4 as u16, id 5 (energy, Wh) and id 6 (burning time, 0.01 h) as u32:
#     28 + 8 bytes for a lamp's reading, 46 at most.
# Readings without extension fields stay version 1 records, byte for byte as before, and a
# PM/sound reading stays a version 2 record; every version is read back. At uplink time records
# become codec readings again, with the sequence number from the store and the age measured then
# (docs/store.md, "Records").
#
#   0  u8   record version (1)        15 u8   lamp level %
#   1  u16  presence (codec slots)    16 u8   lamp fault 0/1
#   3  i16  temperature 0.1 degC      17 u16  supply mV
#   5  u8   humidity 0.5 %            19 u16  status flags (codec STATUS bits)
#   6  u16  pressure 0.1 hPa          21 u32  sampled at: board clock, seconds
#   8  u32  illuminance mlx           25 u16  boot number (which run of the firmware)
#   12 u8   fill %                    27 u8   bit 0: the clock was synced when sampled
#   13 u16  raw distance mm
import struct

from lanterne import codec

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


RECORD_VERSION = const(1)
_RECORD_V2 = const(2)
_RECORD_V3 = const(3)
_RECORD_LEN_V1 = const(28)
_RECORD_LEN_V2 = const(38)
_X = const(12)  # codec.EXT_FIRST: the extension fields' slots
_N_SHORT = const(5)  # extension ids 0..4 are u16 in a record; the later ones (lamp counters) u32
RECORD_LEN = const(46)  # the largest record
_FMT = "<BHhBHIBHBBHHIHB"
_FMT_EXT = "<HHHHH"
_SLOTS = (
    codec.TEMPERATURE,
    codec.HUMIDITY,
    codec.PRESSURE,
    codec.ILLUMINANCE,
    codec.FILL,
    codec.DISTANCE,
    codec.LAMP,
    codec.VOLTAGE,
    codec.STATUS,
)
CLOCK_SYNCED = const(1)


class RecordPacker:
    def __init__(self):
        self.buf = bytearray(RECORD_LEN)
        self._v1 = memoryview(self.buf)[:_RECORD_LEN_V1]
        self._views = {}  # record length -> a view of buf that long (made once per length)

    def pack(self, r, t_sample, boot, synced):
        # r: a codec reading (list of ints / None). Returns a view of self.buf (reused).
        mask = 0
        bit = 1
        for slot in _SLOTS:
            if r[slot] is not None:
                mask |= bit
            bit <<= 1
        version = RECORD_VERSION
        n = _RECORD_LEN_V1
        if codec.needs_v3(r):
            version = _RECORD_V2
            for slot in range(_X + _N_SHORT, codec.N_FIELDS):
                if r[slot] is not None:
                    version = _RECORD_V3
        if version == _RECORD_V2:
            for slot in range(_X, _X + _N_SHORT):
                if r[slot] is not None:
                    mask |= bit
                bit <<= 1
            struct.pack_into(
                _FMT_EXT, self.buf, _RECORD_LEN_V1,
                r[_X] or 0, r[_X + 1] or 0, r[_X + 2] or 0, r[_X + 3] or 0, r[_X + 4] or 0,
            )
            n = _RECORD_LEN_V2
        elif version == _RECORD_V3:
            for slot in range(_X, codec.N_FIELDS):
                v = r[slot]
                if v is not None:
                    mask |= bit
                    if slot < _X + _N_SHORT:
                        struct.pack_into("<H", self.buf, n, v)
                        n += 2
                    else:
                        struct.pack_into("<I", self.buf, n, v)
                        n += 4
                bit <<= 1
        struct.pack_into(
            _FMT,
            self.buf,
            0,
            version,
            mask,
            r[codec.TEMPERATURE] or 0,
            r[codec.HUMIDITY] or 0,
            r[codec.PRESSURE] or 0,
            r[codec.ILLUMINANCE] or 0,
            r[codec.FILL] or 0,
            r[codec.DISTANCE] or 0,
            r[codec.LAMP] or 0,
            1 if r[codec.LAMP_FAULT] else 0,
            r[codec.VOLTAGE] or 0,
            r[codec.STATUS] or 0,
            t_sample & 0xFFFFFFFF,
            boot & 0xFFFF,
            CLOCK_SYNCED if synced else 0,
        )
        if n == _RECORD_LEN_V1:
            return self._v1
        view = self._views.get(n)
        if view is None:
            view = self._views[n] = memoryview(self.buf)[:n]
        return view


def unpack(record, r, seq, now, boot, synced):
    """Fill codec reading `r` from a stored record; SEQ from the store, AGE measured now.

    The age is known when the reading was taken in this run of the firmware, or when the
    clock was synced both then and now; otherwise AGE is absent and the reading carries the
    clock_unsynced status flag. Raises ValueError for a record of another version/length.
    """
    n = len(record)
    version = record[0] if n else -1
    if not ((version == RECORD_VERSION and n == _RECORD_LEN_V1) or (version == _RECORD_V2 and n == _RECORD_LEN_V2)
            or (version == _RECORD_V3 and n >= _RECORD_LEN_V1)):
        raise ValueError("record: version %d, %d bytes" % (version, n))
    v = struct.unpack_from(_FMT, record, 0)
    mask = v[1]
    bit = 1
    for i in range(len(_SLOTS)):
        r[_SLOTS[i]] = v[2 + i if i < 7 else 3 + i] if mask & bit else None
        bit <<= 1
    r[codec.LAMP_FAULT] = v[9] if mask & 0x40 else None
    for i in range(codec.EXT_FIRST, codec.N_FIELDS):
        r[i] = None
    if version == _RECORD_V2:
        e = struct.unpack_from(_FMT_EXT, record, _RECORD_LEN_V1)
        for i in range(_N_SHORT):
            r[codec.EXT_FIRST + i] = e[i] if mask & bit else None
            bit <<= 1
    elif version == _RECORD_V3:
        o = _RECORD_LEN_V1
        for i in range(codec.N_EXT):
            if mask & bit:
                w = 2 if i < _N_SHORT else 4
                if o + w > n:
                    break
                r[codec.EXT_FIRST + i] = struct.unpack_from("<H" if w == 2 else "<I", record, o)[0]
                o += w
            bit <<= 1
        if o != n or bit != 0x10000:  # too short, or bytes left over
            raise ValueError("record: version %d, %d bytes" % (version, n))
    r[codec.SEQ] = seq
    t, rec_boot, flags = v[12], v[13], v[14]
    if rec_boot == (boot & 0xFFFF) or (synced and flags & CLOCK_SYNCED):
        age = now - t
        r[codec.AGE] = age if age > 0 else 0
    else:
        r[codec.AGE] = None
        r[codec.STATUS] = (r[codec.STATUS] or 0) | (1 << 9)  # clock_unsynced
    return r
