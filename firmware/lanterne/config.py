# Lanterne config: load and validate config.json; defaults in code, site values on the board.
# One schema for the board and the host (this module runs on MicroPython and CPython).
# A bad or missing file never stops the board: load() returns safe defaults plus the list
# of errors, each naming the file and field, and the app reports them in its status.
import json

CONFIG_FILE = "config.json"

# field -> (type, default, check). check(value) returns None when fine, else why it is wrong.
# Secrets (passwords, keys) have no default: without them the board runs offline-safe.


def _range(lo, hi):
    return lambda v: None if lo <= v <= hi else "must be between %s and %s" % (lo, hi)


def _choice(*options):
    return lambda v: None if v in options else "must be one of " + ", ".join(options)


def _ident(v):
    if not v or len(v) > 64:
        return "must be 1..64 characters"
    for c in v:
        if not (c.isalpha() or c.isdigit() or c in "-_."):
            return "may only hold letters, digits, '-', '_' and '.'"
    return None


def _pm_period(v):
    if v != 0 and not 40 <= v <= 86400:
        return "must be 0 (fan always on) or 40..86400 s (30 s warm-up + 10 s measurement)"
    return None


def _url(v):
    if not (v.startswith("mqtt://") or v.startswith("mqtts://")):
        return "must start with mqtt:// or mqtts://"
    return None


SCHEMA = {
    "device": (str, "unprovisioned", _ident),
    "site": (str, "default", _ident),
    "broker": (str, "mqtt://127.0.0.1:1883", _url),
    "mqtt_user": (str, "", None),
    "mqtt_password": (str, "", None),
    "ca_cert": (str, "", None),
    "wifi_ssid": (str, "", None),
    "wifi_key": (str, "", None),
    "transport": (str, "mqtt", _choice("mqtt", "lorawan")),
    "keepalive_s": (int, 60, _range(10, 3600)),
    "status_period_s": (int, 300, _range(5, 86400)),
    "sample_period_s": (int, 60, _range(1, 86400)),
    "lat": (float, 0.0, _range(-90, 90)),
    "lon": (float, 0.0, _range(-180, 180)),
    "bin_empty_mm": (int, 1200, _range(50, 5000)),
    "bin_full_mm": (int, 150, _range(20, 5000)),
    "store_bytes": (int, 262144, _range(8192, 1572864)),
    "watchdog_ms": (int, 30000, _range(0, 600000)),
    "command_key": (str, "", None),
    "lorawan_deveui": (str, "", None),
    "lorawan_appkey": (str, "", None),
    "timezone_min": (int, 60, _range(-720, 840)),
    # environmental stations: PM duty cycle, hygroscopic correction (kappa x 1000, 0 = off),
    # the microphone's field-calibration offset (dB, from a reference calibrator)
    "pm_period_s": (int, 300, _pm_period),
    "pm_kappa_milli": (int, 0, _range(0, 2000)),
    "sound_offset_db": (float, 0.0, _range(-20, 20)),
}


def defaults():
    return {k: v[1] for k, v in SCHEMA.items()}


def validate(data, source=CONFIG_FILE):
    """Return (config with defaults filled in, list of error strings). Bad fields keep their default."""
    cfg = defaults()
    errors = []
    if not isinstance(data, dict):
        return cfg, ["%s: must be a JSON object" % source]
    # Sorted: dict order differs between MicroPython and CPython, the error list must not.
    for key in sorted(data):
        if key not in SCHEMA:
            errors.append("%s: field '%s': unknown field" % (source, key))
    for key in sorted(SCHEMA):
        kind, default, check = SCHEMA[key]
        if key not in data:
            continue
        value = data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            errors.append("%s: field '%s': must be %s, got %r" % (source, key, kind.__name__, value))
            continue
        why = check(value) if check else None
        if why:
            errors.append("%s: field '%s': %s" % (source, key, why))
            continue
        cfg[key] = value
    if cfg["bin_full_mm"] >= cfg["bin_empty_mm"] and ("bin_full_mm" in data or "bin_empty_mm" in data):
        errors.append("%s: field 'bin_full_mm': must be less than bin_empty_mm" % source)
    return cfg, errors


def load(path=CONFIG_FILE):
    """Read and validate the config file: (config, errors). Never raises."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        cfg, errors = validate({}, path)
        return cfg, ["%s: missing, running on defaults" % path]
    try:
        data = json.loads(text)
    except ValueError as e:
        cfg, errors = validate({}, path)
        return cfg, ["%s: not valid JSON (%s), running on defaults" % (path, e)]
    return validate(data, path)


def parse_broker(url):
    """'mqtts://host:port' -> (host, port, tls)."""
    tls = url.startswith("mqtts://")
    rest = url.split("://", 1)[1].rstrip("/")
    if ":" in rest:
        host, port = rest.rsplit(":", 1)
        return host, int(port), tls
    return rest, 8883 if tls else 1883, tls
