# Lanterne board facts: board.json (copied from the repo's boards/ at provisioning).
# Pins, buses and which parts are fitted are data, not code.
import json

BOARD_FILE = "board.json"


def load(path=BOARD_FILE):
    """Return (board dict, error or None). A missing file gives a minimal Wi-Fi board."""
    try:
        with open(path) as f:
            board = json.loads(f.read())
        if isinstance(board, dict):
            return board, None
        why = "must be a JSON object"
    except OSError:
        why = "missing"
    except ValueError as e:  # (UnicodeError too: not UTF-8 text)
        why = "not valid JSON (%s)" % (e,)
    return {"name": "unknown", "network": {"kind": "wlan"}, "buses": {}, "sensors": [], "actuators": []}, "%s: %s" % (path, why)
