# Lanterne config fields: the schema every config.json field is checked against, one field's check,
# and config.json read and written whole. The board loads this module alone when a command sets
# one field (lanterne/execute.py: at its smallest heap there is no room for the whole of config.py);
# config.py loads and validates the file at boot with it. Runs on MicroPython and CPython.
CONFIG_FILE = "config.json"
LKG_FILE = "config.lkg.json"

# A field's rule (its check): None, (lo, hi) a range, a tuple of text the choices, or the name of a
# check that is code (_named). _why(rule, value) applies it: None when the value is fine.


def _why(rule, v):
    if rule is None:
        return None
    if type(rule) is str:
        return _named(rule, v)
    if type(rule[0]) is str:
        return None if v in rule else "must be one of " + ", ".join(rule)
    return None if rule[0] <= v <= rule[1] else "must be between %s and %s" % rule


def check(key, value):
    """Why `value` (of the right type) is wrong for field `key`, or None: the schema's check."""
    return _why(spec(key)[2], value)


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


def _named(rule, v):
    # The checks that are code, by the name the table gives them (one function, not one each: the
    # module's globals stay few, and its import small, at the board's smallest heap).
    if rule == "ident":
        if not v or len(v) > 64:
            return "must be 1..64 characters"
        for c in v:
            if not (c.isalpha() or c.isdigit() or c in "-_."):
                return "may only hold letters, digits, '-', '_' and '.'"
    elif rule == "asset":  # what is painted on the asset (lamp-post number, bin number): short, printable, no quotes
        if len(v) > 32:
            return "must be at most 32 characters"
        for c in v:
            if not (c.isalpha() or c.isdigit() or c in " -_./#"):
                return "may only hold letters, digits, spaces and - _ . / #"
    elif rule == "key_hex":
        if v and (len(v) != 32 or any(c not in "0123456789abcdef" for c in v)):
            return "must be 32 lowercase hex digits"
    elif rule == "eui_hex":
        if v and (len(v) != 16 or any(c not in "0123456789abcdefABCDEF" for c in v)):
            return "must be 16 hex digits"
    elif rule == "pm_period":
        if v != 0 and not 40 <= v <= 86400:
            return "must be 0 (fan always on) or 40..86400 s (30 s warm-up + 10 s measurement)"
    elif rule == "curve":
        try:
            parse_curve(v)
        except ValueError as e:
            return "must be level:power pairs in percent, levels rising to 100, powers 0..200: %s" % e
    elif rule == "url":
        if not (v.startswith("mqtt://") or v.startswith("mqtts://")):
            return "must start with mqtt:// or mqtts://"
    else:
        return "no check named " + rule  # (a slip in the table: every value refused, so it shows at once)
    return None


# The schema as text, one line a field: name;type;default;rule. type s, i or f (str, int, float);
# rule empty (none), lo..hi (a range), a|b|c (the choices) or @name (a function above). The text
# sits in the module's constants, which the board maps from flash (ROMFS): it costs no heap until
# a field is looked up, and then only that field's tuple (a command that sets one field runs at
# the board's smallest heap; the same table as a dict of tuples took ~5 KB). Lines starting with
# '#' explain the fields below them. Secrets (passwords, keys) have no default: without them the
# board runs offline-safe.
_TABLE = """
device;s;unprovisioned;@ident
site;s;default;@ident
# broker: none, and the board stays offline (never a broker it was not given)
broker;s;;@url
mqtt_user;s;;
mqtt_password;s;;
ca_cert;s;;
wifi_ssid;s;;
wifi_key;s;;
# transport: failover is MQTT, and LoRaWAN while it is down (transport/failover.py)
transport;s;mqtt;mqtt|lorawan|failover
keepalive_s;i;60;10..3600
status_period_s;i;300;5..86400
sample_period_s;i;60;1..86400
# power (docs/battery.md): "" = the board file's power.supply; "battery": deep sleep between
# readings (lanterne/wake.py), a frame sent when the oldest unsent reading is send_period_s old
power;s;;|mains|battery
send_period_s;i;3600;60..86400
lat;f;0.0;-90..90
lon;f;0.0;-180..180
bin_empty_mm;i;1200;50..5000
bin_full_mm;i;150;20..5000
store_bytes;i;262144;8192..1572864
watchdog_ms;i;30000;0..600000
command_key;s;;
lorawan_deveui;s;;
lorawan_appkey;s;;
# LoRaWAN (transport/lorawan.py, docs/lorawan.md): the JoinEUI (AppEUI; empty: all zeros), the
# board's airtime cap in any 24 hours (The Things Network's fair use: 30 s), confirmed uplinks
# (1: each readings frame committed on the network's ACK instead of the delivery ledger)
lorawan_joineui;s;;@eui_hex
lorawan_airtime_s;i;30;1..3600
lorawan_confirmed;i;0;0..1
timezone_min;i;60;-720..840
# field setup hook (lanterne/setup_mode.py): the asset the board is mounted on, set on site; the
# secret the setup access point's name and passphrase derive from; how long the setup page stays
# up after a fresh provisioning (0: only with the button)
asset_id;s;;@asset
setup_key;s;;@key_hex
setup_window_min;i;0;0..240
# environmental stations: PM duty cycle, hygroscopic correction (kappa x 1000, 0 = off), the
# microphone's field-calibration offset (dB, from a reference calibrator)
pm_period_s;i;300;@pm_period
pm_kappa_milli;i;0;0..2000
sound_offset_db;f;0.0;-20..20
# street lights (lanterne/energy.py): the lamp's rated input power at 100 % (0: the board file's,
# or unknown), its dimming curve, and the energy faults' thresholds: measured power below low %
# or above high % of what the curve expects at the driven level
lamp_rated_w;f;0.0;0..2000
lamp_curve;s;@DEFAULT_CURVE;@curve
lamp_power_low_pct;i;70;5..95
lamp_power_high_pct;i;130;105..400
"""


def spec(key):
    """(type, default, rule) of config field `key`, or None when there is no such field."""
    if type(key) is not str or not key or key[0] == "#" or ";" in key or "\n" in key:
        return None
    i = _TABLE.find("\n" + key + ";")
    if i < 0:
        return None
    name, kind, default, rule = _TABLE[i + 1:_TABLE.find("\n", i + 1)].split(";")
    kind = str if kind == "s" else int if kind == "i" else float
    default = globals()[default[1:]] if default[:1] == "@" else kind(default)
    if not rule:
        rule = None
    elif rule[0] == "@":
        rule = rule[1:]
    elif ".." in rule:
        lo, hi = rule.split("..")
        rule = (int(lo), int(hi))
    else:
        rule = tuple(rule.split("|"))
    return kind, default, rule


def field_value(key, value):
    """(the value as the config keeps it, None), or (None, why it is refused): one known field."""
    kind, _default, rule = spec(key)
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
    import json

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
    import json

    from lanterne.flashfile import write_atomic  # (imported here: the host loads this file on its own)

    text = json.dumps(data)
    write_atomic(path, text)
    if lkg_too:
        write_atomic(lkg, text)
