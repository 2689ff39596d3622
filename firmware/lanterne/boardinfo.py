# Lanterne board facts: board.json (copied from the repo's boards/ at provisioning).
# Pins, buses and which parts are fitted are data, not code.
import json

BOARD_FILE = "board.json"


def load(path=BOARD_FILE):
    """Return (board dict, error or None). A missing file gives a minimal Wi-Fi board."""
    try:
        with open(path) as f:
            return json.loads(f.read()), None
    except OSError:
        return {"name": "unknown", "network": {"kind": "wlan"}, "buses": {}, "sensors": [], "actuators": []}, (
            "%s: missing" % path
        )
    except ValueError as e:
        return {"name": "unknown", "network": {"kind": "wlan"}, "buses": {}, "sensors": [], "actuators": []}, (
            "%s: not valid JSON (%s)" % (path, e)
        )
