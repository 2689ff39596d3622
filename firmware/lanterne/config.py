# Lanterne config: load and validate config.json; defaults in code, site values on the board.
# One schema for the board and the host (this module runs on MicroPython and CPython).
# A bad or missing file never stops the board: load() returns what it can use plus the list
# of errors, each naming the file and field, and the app reports them in its status.
# One bad write never unprovisions a board: every config.json that validates (and names its
# device) is kept as config.lkg.json, the last known good, and what a broken config.json
# lacks or gets wrong comes from there, identity and secrets included. With neither, the
# board has no broker: it stays offline rather than try one it was never given.
import json

CONFIG_FILE = "config.json"
LKG_FILE = "config.lkg.json"

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


# -- field setup hook: checks of the fields the setup page and its provisioning add ---------
def _asset(v):
    # What is painted on the asset (lamp-post number, bin number): short, printable, no quotes.
    if len(v) > 32:
        return "must be at most 32 characters"
    for c in v:
        if not (c.isalpha() or c.isdigit() or c in " -_./#"):
            return "may only hold letters, digits, spaces and - _ . / #"
    return None


def _key_hex(v):
    if v and (len(v) != 32 or any(c not in "0123456789abcdef" for c in v)):
        return "must be 32 lowercase hex digits"


def _eui_hex(v):
    if v and (len(v) != 16 or any(c not in "0123456789abcdefABCDEF" for c in v)):
        return "must be 16 hex digits"


def _pm_period(v):
    if v != 0 and not 40 <= v <= 86400:
        return "must be 0 (fan always on) or 40..86400 s (30 s warm-up + 10 s measurement)"
    return None


# -- the lamp's dimming curve (lanterne/energy.py, docs/energy.md): "level:power ..." pairs, in
# percent of full light and of rated input power; the default models a constant-current LED
# driver (docs/energy.md says where the numbers come from).
DEFAULT_CURVE = "10:15 25:29 50:53 75:76 100:100"


def parse_curve(text):
    """'10:15 ... 100:100' -> ((level permille, power permille), ...); ValueError(the bad point)."""
    points = []
    last = 0
    for item in text.split():
        pair = item.split(":")
        level = int(pair[0]) if len(pair) == 2 and pair[0].isdigit() and pair[1].isdigit() else -1
        power = int(pair[1]) if level >= 0 else -1
        if not last < level <= 100 or not 0 <= power <= 200:
            raise ValueError(repr(item))
        last = level
        points.append((level * 10, power * 10))
    if last != 100:
        raise ValueError("no point at level 100")
    return tuple(points)


def _curve(v):
    try:
        parse_curve(v)
    except ValueError as e:
        return "must be level:power pairs in percent, levels rising to 100, powers 0..200: %s" % e
    return None


def _url(v):
    if not (v.startswith("mqtt://") or v.startswith("mqtts://")):
        return "must start with mqtt:// or mqtts://"
    return None


SCHEMA = {
    "device": (str, "unprovisioned", _ident),
    "site": (str, "default", _ident),
    "broker": (str, "", _url),  # none: the board stays offline (never a broker it was not given)
    "mqtt_user": (str, "", None),
    "mqtt_password": (str, "", None),
    "ca_cert": (str, "", None),
    "wifi_ssid": (str, "", None),
    "wifi_key": (str, "", None),
    "transport": (str, "mqtt", _choice("mqtt", "lorawan", "failover")),  # failover: MQTT, and LoRaWAN while it is down (transport/failover.py)
    "keepalive_s": (int, 60, _range(10, 3600)),
    "status_period_s": (int, 300, _range(5, 86400)),
    "sample_period_s": (int, 60, _range(1, 86400)),
    # power (docs/battery.md): "" = the board file's power.supply; "battery": deep sleep between
    # readings (lanterne/wake.py), a frame sent when the oldest unsent reading is send_period_s old
    "power": (str, "", _choice("", "mains", "battery")),
    "send_period_s": (int, 3600, _range(60, 86400)),
    "lat": (float, 0.0, _range(-90, 90)),
    "lon": (float, 0.0, _range(-180, 180)),
    "bin_empty_mm": (int, 1200, _range(50, 5000)),
    "bin_full_mm": (int, 150, _range(20, 5000)),
    "store_bytes": (int, 262144, _range(8192, 1572864)),
    "watchdog_ms": (int, 30000, _range(0, 600000)),
    "command_key": (str, "", None),
    "lorawan_deveui": (str, "", None),
    "lorawan_appkey": (str, "", None),
    # LoRaWAN (transport/lorawan.py, docs/lorawan.md): the JoinEUI (AppEUI; empty: all zeros), the
    # board's airtime cap in any 24 hours (The Things Network's fair use: 30 s), confirmed uplinks
    # (1: each readings frame committed on the network's ACK instead of the delivery ledger)
    "lorawan_joineui": (str, "", _eui_hex),
    "lorawan_airtime_s": (int, 30, _range(1, 3600)),
    "lorawan_confirmed": (int, 0, _range(0, 1)),
    "timezone_min": (int, 60, _range(-720, 840)),
    # -- field setup hook (lanterne/setup_mode.py): the asset the board is mounted on, set on
    # site; the secret the setup access point's name and passphrase derive from; how long the
    # setup page stays up after a fresh provisioning (0: only with the button).
    "asset_id": (str, "", _asset),
    "setup_key": (str, "", _key_hex),
    "setup_window_min": (int, 0, _range(0, 240)),
    # environmental stations: PM duty cycle, hygroscopic correction (kappa x 1000, 0 = off),
    # the microphone's field-calibration offset (dB, from a reference calibrator)
    "pm_period_s": (int, 300, _pm_period),
    "pm_kappa_milli": (int, 0, _range(0, 2000)),
    "sound_offset_db": (float, 0.0, _range(-20, 20)),
    # street lights (lanterne/energy.py): the lamp's rated input power at 100 % (0: the board
    # file's, or unknown), its dimming curve, and the energy faults' thresholds: measured power
    # below low % or above high % of what the curve expects at the driven level
    "lamp_rated_w": (float, 0.0, _range(0, 2000)),
    "lamp_curve": (str, DEFAULT_CURVE, _curve),
    "lamp_power_low_pct": (int, 70, _range(5, 95)),
    "lamp_power_high_pct": (int, 130, _range(105, 400)),
}


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
        good = base or defaults()
        cfg["bin_full_mm"], cfg["bin_empty_mm"] = good["bin_full_mm"], good["bin_empty_mm"]
    return cfg, errors


def _read(path):
    """(text, data, why): the file's text and JSON value, or why it cannot be used."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None, None, "missing"
    except ValueError:  # UnicodeError: a flipped bit, a name typed in another encoding
        return None, None, "not UTF-8 text"
    try:
        return text, json.loads(text), None
    except ValueError as e:
        return text, None, "not valid JSON (%s)" % (e,)


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


def file_data(path=CONFIG_FILE, lkg=LKG_FILE):
    """The fields config.json holds (the last known good's when config.json is not a JSON object): what a change starts from."""
    for p in (path, lkg):
        data = _read(p)[1]
        if isinstance(data, dict):
            return data
    return {}


def save(data, path=CONFIG_FILE, lkg=LKG_FILE):
    """Write `data` as config.json atomically; kept as the last known good too when it is usable. Raises OSError."""
    from lanterne.flashfile import write_atomic  # (imported here: the host loads this file on its own)

    text = json.dumps(data)
    write_atomic(path, text)
    if _usable(data, validate(data, path)[1]):
        write_atomic(lkg, text)
