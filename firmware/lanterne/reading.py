# Lanterne reading records: how one sampled reading is kept in the store until it is sent.
# Fixed layout (28 bytes, little-endian), packed into a reused buffer: the sample loop does
# not allocate. At uplink time records become codec readings again, with the sequence
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
RECORD_LEN = const(28)
_FMT = "<BHhBHIBHBBHHIHB"
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

    def pack(self, r, t_sample, boot, synced):
        # r: a codec reading (list of ints / None). Returns self.buf (reused).
        mask = 0
        bit = 1
        for slot in _SLOTS:
            if r[slot] is not None:
                mask |= bit
            bit <<= 1
        struct.pack_into(
            _FMT,
            self.buf,
            0,
            RECORD_VERSION,
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
        return self.buf


def unpack(record, r, seq, now, boot, synced):
    """Fill codec reading `r` from a stored record; SEQ from the store, AGE measured now.

    The age is known when the reading was taken in this run of the firmware, or when the
    clock was synced both then and now; otherwise AGE is absent and the reading carries the
    clock_unsynced status flag. Raises ValueError for a record of another version/length.
    """
    if len(record) != RECORD_LEN or record[0] != RECORD_VERSION:
        raise ValueError("record: version %d, %d bytes" % (record[0] if record else -1, len(record)))
    v = struct.unpack_from(_FMT, record, 0)
    mask = v[1]
    bit = 1
    for i in range(len(_SLOTS)):
        r[_SLOTS[i]] = v[2 + i if i < 7 else 3 + i] if mask & bit else None
        bit <<= 1
    r[codec.LAMP_FAULT] = v[9] if mask & 0x40 else None
    r[codec.SEQ] = seq
    t, rec_boot, flags = v[12], v[13], v[14]
    if rec_boot == (boot & 0xFFFF) or (synced and flags & CLOCK_SYNCED):
        age = now - t
        r[codec.AGE] = age if age > 0 else 0
    else:
        r[codec.AGE] = None
        r[codec.STATUS] = (r[codec.STATUS] or 0) | (1 << 9)  # clock_unsynced
    return r
