"""JSON-style values -> codec readings (docs/payload.md, "Readings"): for the host, tests and the CLI.

`from_values(dict)` turns field names, floats and flag names into the integer
reading `lanterne.codec` encodes, and names the field of the first bad value. It
allocates and pulls in float formatting; a board whose drivers produce integers
never imports this module (it would cost about 3 KB of heap).
"""

from lanterne.codec import (
    AGE,
    AGE_MAX,
    DISTANCE,
    FILL,
    HUMIDITY,
    ILLUMINANCE,
    LAMP,
    EXT_FIRST,
    LAMP_FAULT,
    N_FIELDS,
    PRESSURE,
    SEQ,
    STATUS,
    STATUS_NAMES,
    TEMPERATURE,
    VOLTAGE,
    new_reading,
)

# name -> (slot, scale to resolution units, low, high, unit) for plain numeric fields.
_NUMERIC = {
    "temperature": (TEMPERATURE, 10, -40, 85, "degC"),
    "humidity": (HUMIDITY, 2, 0, 100, "%"),
    "pressure": (PRESSURE, 10, 300, 1100, "hPa"),
    "illuminance": (ILLUMINANCE, 1000, 0, 120000, "lx"),
    "fill": (FILL, 1, 0, 100, "%"),
    "distance": (DISTANCE, 1, 0, 16383, "mm"),
    "lamp": (LAMP, 1, 0, 100, "%"),
    "voltage": (VOLTAGE, 1000, 0, 60, "V"),
    "age": (AGE, 1, 0, AGE_MAX, "s"),
    "pm1": (EXT_FIRST, 1, 0, 1000, "ug/m3"),
    "pm2_5": (EXT_FIRST + 1, 1, 0, 1000, "ug/m3"),
    "pm10": (EXT_FIRST + 2, 1, 0, 1000, "ug/m3"),
    "laeq": (EXT_FIRST + 3, 10, 0, 140, "dB"),
    "lamax": (EXT_FIRST + 4, 10, 0, 140, "dB"),
    "energy": (EXT_FIRST + 5, 1, 0, 67108863, "Wh"),
    "burning_hours": (EXT_FIRST + 6, 100, 0, 167772.15, "h"),
}
FIELD_NAMES = (
    "temperature",
    "humidity",
    "pressure",
    "illuminance",
    "fill",
    "distance",
    "lamp",
    "lamp_fault",
    "voltage",
    "status",
    "seq",
    "age",
    "pm1",
    "pm2_5",
    "pm10",
    "laeq",
    "lamax",
    "energy",
    "burning_hours",
)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _round(x):
    return int(x + 0.5) if x >= 0 else -int(-x + 0.5)


def from_values(values, out=None):
    """Integer reading from a dict of JSON values (field names and units of docs/payload.md).

    Raises ValueError naming the field for an unknown name, a wrong type or a value
    out of range. Absent keys (or null) are absent fields.
    """
    if not isinstance(values, dict):
        raise ValueError("a reading is a JSON object, got %s" % type(values).__name__)
    r = out if out is not None else new_reading()
    for i in range(N_FIELDS):
        r[i] = None
    for name in values:
        if name not in FIELD_NAMES:
            raise ValueError("unknown field %r (known: %s)" % (name, ", ".join(FIELD_NAMES)))
    for name in FIELD_NAMES:  # a fixed order, so every port reports the same first error
        spec = _NUMERIC.get(name)
        v = values.get(name)
        if spec is None or v is None:
            continue
        slot, scale, low, high, unit = spec
        if not _is_number(v):
            raise ValueError("%s: expected a number in %s, got %r" % (name, unit, v))
        if not low <= v <= high:
            raise ValueError("%s: %r %s is out of range %s..%s" % (name, v, unit, low, high))
        r[slot] = v if scale == 1 and isinstance(v, int) else _round(v * scale)
    fault = values.get("lamp_fault")
    if fault is not None:
        if not isinstance(fault, bool):
            raise ValueError("lamp_fault: expected true or false, got %r" % (fault,))
        if r[LAMP] is None:
            raise ValueError("lamp_fault is sent with the lamp level: add \"lamp\"")
        r[LAMP_FAULT] = 1 if fault else 0
    elif r[LAMP] is not None:
        r[LAMP_FAULT] = 0
    status = values.get("status")
    if status is not None:
        if not isinstance(status, (list, tuple)):
            raise ValueError("status: expected a list of flag names, got %r" % (status,))
        flags = 0
        for flag in status:
            if flag not in STATUS_NAMES:
                raise ValueError("status: unknown flag %r (known: %s)" % (flag, ", ".join(STATUS_NAMES)))
            flags |= 1 << STATUS_NAMES.index(flag)
        r[STATUS] = flags
    seq = values.get("seq")
    if seq is not None:
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= 0xFFFFFFFF:
            raise ValueError("seq: expected an integer 0..4294967295, got %r" % (seq,))
        r[SEQ] = seq
    for i in range(N_FIELDS):
        if r[i] is not None:
            return r
    raise ValueError("a reading needs at least one field (known: %s)" % ", ".join(FIELD_NAMES))
