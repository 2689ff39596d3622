# Lanterne reading records: how one sampled reading is kept in the store until it is sent.
# Fixed layout (28 bytes, little-endian), packed into a reused buffer: the sample loop does
# not allocate. A reading with extension fields (PM, sound levels: codec v3) is kept as a
# version 2 record: the same 28 bytes (byte 0 = 2, presence bits 9..13 for the extension
# fields) followed by five u16: PM1, PM2.5, PM10 (ug/m3), LAeq, LAmax (0.1 dB): 38 bytes.
# Readings without them stay version 1 records, byte for byte as before. At uplink time records become codec readings again, with the sequence
# number from the store and the age measured then (docs/store.md, "Records").
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
_RECORD_LEN_V1 = const(28)
_X = const(12)  # codec.EXT_FIRST: the extension fields' slots
RECORD_LEN = const(38)  # the largest record
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

    def pack(self, r, t_sample, boot, synced):
        # r: a codec reading (list of ints / None). Returns a view of self.buf (reused).
        mask = 0
        bit = 1
        for slot in _SLOTS:
            if r[slot] is not None:
                mask |= bit
            bit <<= 1
        ext = codec.needs_v3(r)
        if ext:
            for slot in range(codec.EXT_FIRST, codec.N_FIELDS):
                if r[slot] is not None:
                    mask |= bit
                bit <<= 1
            struct.pack_into(
                _FMT_EXT, self.buf, _RECORD_LEN_V1,
                r[_X] or 0, r[_X + 1] or 0, r[_X + 2] or 0, r[_X + 3] or 0, r[_X + 4] or 0,
            )
        struct.pack_into(
            _FMT,
            self.buf,
            0,
            _RECORD_V2 if ext else RECORD_VERSION,
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
        return self.buf if ext else self._v1


def unpack(record, r, seq, now, boot, synced):
    """Fill codec reading `r` from a stored record; SEQ from the store, AGE measured now.

    The age is known when the reading was taken in this run of the firmware, or when the
    clock was synced both then and now; otherwise AGE is absent and the reading carries the
    clock_unsynced status flag. Raises ValueError for a record of another version/length.
    """
    n = len(record)
    version = record[0] if n else -1
    if not ((version == RECORD_VERSION and n == _RECORD_LEN_V1) or (version == _RECORD_V2 and n == RECORD_LEN)):
        raise ValueError("record: version %d, %d bytes" % (version, n))
    v = struct.unpack_from(_FMT, record, 0)
    mask = v[1]
    bit = 1
    for i in range(len(_SLOTS)):
        r[_SLOTS[i]] = v[2 + i if i < 7 else 3 + i] if mask & bit else None
        bit <<= 1
    r[codec.LAMP_FAULT] = v[9] if mask & 0x40 else None
    if version == _RECORD_V2:
        e = struct.unpack_from(_FMT_EXT, record, _RECORD_LEN_V1)
        for i in range(codec.N_EXT):
            r[codec.EXT_FIRST + i] = e[i] if mask & bit else None
            bit <<= 1
    else:
        for i in range(codec.EXT_FIRST, codec.N_FIELDS):
            r[i] = None
    r[codec.SEQ] = seq
    t, rec_boot, flags = v[12], v[13], v[14]
    if rec_boot == (boot & 0xFFFF) or (synced and flags & CLOCK_SYNCED):
        age = now - t
        r[codec.AGE] = age if age > 0 else 0
    else:
        r[codec.AGE] = None
        r[codec.STATUS] = (r[codec.STATUS] or 0) | (1 << 9)  # clock_unsynced
    return r
