# Lanterne config: load and validate config.json; defaults in code, site values on the board.
# One schema for the board and the host (this module runs on MicroPython and CPython).
# A bad or missing file never stops the board: load() returns what it can use plus the list
# of errors, each naming the file and field, and the app reports them in its status.
# One bad write never unprovisions a board: every config.json that validates (and names its
# device) is kept as config.lkg.json, the last known good, and what a broken config.json
# lacks or gets wrong comes from there, identity and secrets included. With neither, the
# board has no broker: it stays offline rather than try one it was never given.
from lanterne.config_fields import (  # noqa: F401 (the schema's names, as config.X too)
    CONFIG_FILE,
    DEFAULT_CURVE,
    LKG_FILE,
    SCHEMA,
    _read,
    check,
    field_value,
    file_data,
    parse_curve,
    write,
)


def defaults():
    return {k: v[1] for k, v in SCHEMA.items()}


def validate(data, source=CONFIG_FILE, base=None):
    """Return (config, list of error strings). Missing and bad fields keep their value in `base` (the defaults)."""
    cfg = dict(base) if base else defaults()
    errors = []
    if not isinstance(data, dict):
        return cfg, ["%s: must be a JSON object" % source]
    # Sorted: dict order differs between MicroPython and CPython, the error list must not.
    # (MicroPython's json takes a number as a key, {"device": "x", 2: 3}: named, never sorted with text.)
    for key in data:
        if not isinstance(key, str):
            errors.append("%s: field %r: a field name must be text" % (source, key))
    for key in sorted(k for k in data if isinstance(k, str)):
        if key not in SCHEMA:
            errors.append("%s: field '%s': unknown field" % (source, key))
    for key in sorted(SCHEMA):
        if key not in data:
            continue
        value, why = field_value(key, data[key])
        if why:
            errors.append("%s: field '%s': %s" % (source, key, why))
            continue
        cfg[key] = value
    if cfg["bin_full_mm"] >= cfg["bin_empty_mm"] and ("bin_full_mm" in data or "bin_empty_mm" in data):
        errors.append("%s: field 'bin_full_mm': must be less than bin_empty_mm" % source)
        good = base or defaults()
        cfg["bin_full_mm"], cfg["bin_empty_mm"] = good["bin_full_mm"], good["bin_empty_mm"]
    return cfg, errors


def _usable(data, errors):
    # A config to run on and keep: every field valid, and it names its device.
    return not errors and isinstance(data, dict) and "device" in data


def load(path=CONFIG_FILE, lkg=LKG_FILE):
    """Read and validate config.json, falling back on the last known good: (config, errors). Never raises.

    A valid config.json (naming its device) is used as it is and refreshed into `lkg`. Otherwise
    each field config.json lacks or gets wrong takes its last-known-good value (all of them when
    the file is missing or not JSON); without a last known good, the defaults: no broker."""
    text, data, why = _read(path)
    if why is None:
        cfg, errors = validate(data, path)
        if _usable(data, errors):
            try:
                if _read(lkg)[0] != text:
                    from lanterne.flashfile import write_atomic

                    write_atomic(lkg, text)
            except OSError as e:
                errors.append("%s: could not keep a last-known-good copy (%r)" % (lkg, e))
            return cfg, errors
        if isinstance(data, dict) and "device" not in data:
            errors.append("%s: field 'device': missing" % path)
    text = None
    base = None
    _, ldata, lwhy = _read(lkg)
    if lwhy is None:
        base, lerrors = validate(ldata, lkg)
        if not _usable(ldata, lerrors):
            base, lwhy = None, "not valid (%s)" % ("; ".join(lerrors) or "no device")
    ldata = None
    if why is None:
        if base is None:
            return cfg, errors
        cfg = validate(data, path, base)[0]
        errors.append("%s: running on %s (last known good) for the fields above" % (path, lkg))
        return cfg, errors
    if base is not None:
        return base, ["%s: %s, running on %s (last known good)" % (path, why, lkg)]
    return defaults(), ["%s: %s, and %s is %s: not provisioned, no broker to connect to" % (path, why, lkg, lwhy)]


def save(data, path=CONFIG_FILE, lkg=LKG_FILE):
    """Write `data` as config.json atomically; kept as the last known good too when it is usable. Raises OSError."""
    write(data, _usable(data, validate(data, path)[1]), path, lkg)
