# Lanterne config fields: the schema every config.json field is checked against, one field's check,
# and config.json read and written whole. The board loads this module alone when a command sets
# one field (lanterne/execute.py: at its smallest heap there is no room for the whole of config.py);
# config.py loads and validates the file at boot with it. Runs on MicroPython and CPython.
import json

CONFIG_FILE = "config.json"
LKG_FILE = "config.lkg.json"

# field -> (type, default, check); check(key, value) returns None when fine, else why it is wrong.
# Secrets (passwords, keys) have no default: without them the board runs offline-safe.


# A check is data where it can be (a command loads this module at the board's smallest heap, and a
# closure per field cost twice the heap): (lo, hi) a range, a tuple of text the choices, else a
# function. check(key, value) applies it.


def _why(rule, v):
    if rule is None:
        return None
    if type(rule) is not tuple:
        return rule(v)
    if type(rule[0]) is str:
        return None if v in rule else "must be one of " + ", ".join(rule)
    return None if rule[0] <= v <= rule[1] else "must be between %s and %s" % rule


def check(key, value):
    """Why `value` (of the right type) is wrong for field `key`, or None: the schema's check."""
    return _why(SCHEMA[key][2], value)


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
    "transport": (str, "mqtt", ("mqtt", "lorawan", "failover")),  # failover: MQTT, and LoRaWAN while it is down (transport/failover.py)
    "keepalive_s": (int, 60, (10, 3600)),
    "status_period_s": (int, 300, (5, 86400)),
    "sample_period_s": (int, 60, (1, 86400)),
    # power (docs/battery.md): "" = the board file's power.supply; "battery": deep sleep between
    # readings (lanterne/wake.py), a frame sent when the oldest unsent reading is send_period_s old
    "power": (str, "", ("", "mains", "battery")),
    "send_period_s": (int, 3600, (60, 86400)),
    "lat": (float, 0.0, (-90, 90)),
    "lon": (float, 0.0, (-180, 180)),
    "bin_empty_mm": (int, 1200, (50, 5000)),
    "bin_full_mm": (int, 150, (20, 5000)),
    "store_bytes": (int, 262144, (8192, 1572864)),
    "watchdog_ms": (int, 30000, (0, 600000)),
    "command_key": (str, "", None),
    "lorawan_deveui": (str, "", None),
    "lorawan_appkey": (str, "", None),
    # LoRaWAN (transport/lorawan.py, docs/lorawan.md): the JoinEUI (AppEUI; empty: all zeros), the
    # board's airtime cap in any 24 hours (The Things Network's fair use: 30 s), confirmed uplinks
    # (1: each readings frame committed on the network's ACK instead of the delivery ledger)
    "lorawan_joineui": (str, "", _eui_hex),
    "lorawan_airtime_s": (int, 30, (1, 3600)),
    "lorawan_confirmed": (int, 0, (0, 1)),
    "timezone_min": (int, 60, (-720, 840)),
    # -- field setup hook (lanterne/setup_mode.py): the asset the board is mounted on, set on
    # site; the secret the setup access point's name and passphrase derive from; how long the
    # setup page stays up after a fresh provisioning (0: only with the button).
    "asset_id": (str, "", _asset),
    "setup_key": (str, "", _key_hex),
    "setup_window_min": (int, 0, (0, 240)),
    # environmental stations: PM duty cycle, hygroscopic correction (kappa x 1000, 0 = off),
    # the microphone's field-calibration offset (dB, from a reference calibrator)
    "pm_period_s": (int, 300, _pm_period),
    "pm_kappa_milli": (int, 0, (0, 2000)),
    "sound_offset_db": (float, 0.0, (-20, 20)),
    # street lights (lanterne/energy.py): the lamp's rated input power at 100 % (0: the board
    # file's, or unknown), its dimming curve, and the energy faults' thresholds: measured power
    # below low % or above high % of what the curve expects at the driven level
    "lamp_rated_w": (float, 0.0, (0, 2000)),
    "lamp_curve": (str, DEFAULT_CURVE, _curve),
    "lamp_power_low_pct": (int, 70, (5, 95)),
    "lamp_power_high_pct": (int, 130, (105, 400)),
}


def field_value(key, value):
    """(the value as the config keeps it, None), or (None, why it is refused): one known field."""
    kind, _default, rule = SCHEMA[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        return None, "must be %s, got %r" % (kind.__name__, value)
    why = _why(rule, value)
    return (None, why) if why else (value, None)


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


def file_data(path=CONFIG_FILE, lkg=LKG_FILE):
    """The fields config.json holds (the last known good's when config.json is not a JSON object): what a change starts from."""
    for p in (path, lkg):
        data = _read(p)[1]
        if isinstance(data, dict):
            return data
    return {}


def write(data, lkg_too, path=CONFIG_FILE, lkg=LKG_FILE):
    """Write `data` as config.json atomically, and as the last known good when `lkg_too`. Raises OSError."""
    from lanterne.flashfile import write_atomic  # (imported here: the host loads this file on its own)

    text = json.dumps(data)
    write_atomic(path, text)
    if lkg_too:
        write_atomic(lkg, text)
