# Lanterne field changes: what an installer changed on site through the setup page.
#
# field.json = {"n": saves so far, "hash": 16 hex digits over the changed fields and values,
#               "fields": {field: value as saved}}: every field changed on site since the last
# provisioning and still in effect, with its latest value. The status carries it, so the back
# office and the registry learn what changed (`lanterne verify` shows it, over serial or from the
# status on the broker; `lanterne registry accept` adopts it). A fresh provisioning (a config.json
# the board did not write itself) clears it; a field the back office sets again by command
# (set-config) leaves it (forget), as the installer's value is no longer the one in effect.
#
# The setup boot decision is here too (setup_entry), so that a normal boot imports nothing of
# setup mode (lanterne/setup_mode.py) but this small module, and drops it once the app is built
# (the button is watched by lanterne/setup_button.py).
#
# setup.json = {"config": hash of the config.json the board last saw, "used_s": seconds of the
# post-provisioning setup window already spent}: how the board tells a fresh provisioning from
# a reboot, and how much of the window is left across power cycles.
import json

FIELD_FILE = "field.json"
STATE_FILE = "setup.json"
# The config fields the setup page may change: public values only (never a secret).
EDITABLE = ("asset_id", "lat", "lon", "bin_empty_mm", "bin_full_mm")


def _read(path):
    try:
        with open(path) as f:
            doc = json.loads(f.read())
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def _write(path, doc):
    from lanterne.flashfile import write_atomic as _write_atomic

    _write_atomic(path, json.dumps(doc))


def _try_write(path, doc):
    # Bookkeeping of the setup window: a full flash must not stop the board booting.
    try:
        _write(path, doc)
    except OSError:
        pass


def load(path=FIELD_FILE):
    """The field changes recorded on this board (None: none since the last provisioning)."""
    return _read(path)


def digest(fields):
    import hashlib

    text = json.dumps([[k, fields[k]] for k in sorted(fields)])
    return hashlib.sha256(text.encode()).digest()[:8].hex()


def record(changed, path=FIELD_FILE):
    """Add one save's changed fields (field -> new value); returns the new record."""
    doc = load(path) or {"n": 0, "fields": {}}
    fields = doc.get("fields") or {}
    for k in changed:
        fields[k] = changed[k]
    new = {"n": int(doc.get("n", 0)) + 1, "hash": digest(fields), "fields": fields}
    _write(path, new)
    return new


def forget(key, path=FIELD_FILE):
    """The back office set `key` again (a command): the value saved on site is no longer the one
    in effect, so it is no longer a field change. Returns the record left (None: none left)."""
    doc = load(path)
    fields = (doc or {}).get("fields") or {}
    if key not in fields:
        return doc
    del fields[key]
    if not fields:
        import os

        os.remove(path)
        return None
    new = {"n": int(doc.get("n", 0)), "hash": digest(fields), "fields": fields}
    _write(path, new)
    return new


def config_hash(path):
    """Hash of a config.json as it is on the flash ("" when there is none)."""
    import hashlib

    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).digest()[:8].hex()
    except OSError:
        return ""


def window_state(config_path, path=STATE_FILE, field_path=FIELD_FILE):
    """(fresh provisioning?, seconds of the setup window already used). A config.json this board
    did not write itself is a fresh provisioning: the window starts again and field.json goes."""
    h = config_hash(config_path)
    st = _read(path) or {}
    if st.get("config") == h:
        return False, int(st.get("used_s", 0))
    _try_write(path, {"config": h, "used_s": 0})
    try:
        import os

        os.remove(field_path)
    except OSError:
        pass
    return True, 0


def spend_window(config_path, used_s, path=STATE_FILE):
    _try_write(path, {"config": config_hash(config_path), "used_s": int(used_s)})


from lanterne.setup_button import REQUEST_FILE  # the button was held: the next boot is a setup boot
MODULES = ("lanterne.setup_mode", "lanterne.setup_credentials", "lanterne.http_request", "lanterne.setup_server", "lanterne.setup_api")
# What the app imports after this (and the drivers of the board's parts, assets.load_drivers):
# imported here, first, at every boot.
_APP = ("lanterne.assets", "lanterne.control", "lanterne.reading", "lanterne.store")



def setup_entry(cfg, board):
    """At boot, before the app builds anything: (how setup mode was asked for or None, seconds
    of the post-provisioning window used).

    Every boot imports here, first, every module the app is about to import (and a setup boot
    the setup modules): MicroPython keeps the names it interns in pools, and when the modules
    push their number past the last pool (1260 names: the firmware with a board's full set of
    parts is close), the next pool is one contiguous block of ~9 KB on the ESP32 (14 KB on the
    64-bit virtual board). Allocated now, the heap still has such a block; later, once the app
    has built its parts, store and link, it may not, and whatever imports next fails with a
    MemoryError. Importing earlier costs nothing: the same modules, loaded anyway."""
    import os

    from lanterne import config

    _fresh, used_s = window_state(config.CONFIG_FILE)
    via = None
    try:
        os.remove(REQUEST_FILE)
        via = "button"
    except OSError:
        kind = board.get("network", {}).get("kind", "wlan")
        if kind != "lan" and cfg["setup_key"] and cfg["setup_window_min"] * 60 > used_s:
            via = "provisioned"
    import gc

    gc.collect()
    if via is not None:
        try:
            for name in MODULES:
                __import__(name)
        except Exception as e:  # a firmware image without them: normal operation, said so
            print("[lanterne] setup mode unavailable: %r" % (e,))
            via = None
    names = list(_APP)
    if cfg["transport"] == "mqtt":
        names.append("lanterne.transport.mqtt")
    for name in names:
        try:
            __import__(name)
        except ImportError:
            pass  # the app reports a part it cannot build
    from lanterne.assets import load_drivers

    load_drivers(board)
    return via, used_s
