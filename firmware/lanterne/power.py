# Lanterne power mode: is this a battery board (docs/battery.md)? Asked by main.py at every boot,
# before anything else is loaded: a few names, and no JSON parsed on a board whose files do not
# mention power (a mains board at a 64 KB heap must not start the app in a heap left in pieces).
import machine

_DEEPSLEEP_RESET = 4
_STATE_HEAD = b"BL\x02"  # lanterne.wake.State in RTC memory: magic 0x4C42 (little-endian), version 2


def _setting(path, board):
    # config.json's "power", or board.json's power.supply; None when the file does not say
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    if '"power"' not in text:
        return None
    import json

    try:
        data = json.loads(text)
        return data.get("power", {}).get("supply") if board else data.get("power")
    except (ValueError, AttributeError):
        return None


def battery(board_file="board.json", config_file="config.json"):
    """config.json's `power` when set, else the board file's power.supply. After a deep-sleep wake,
    RTC memory holding the duty cycle's state says so without reading a file."""
    if machine.reset_cause() == _DEEPSLEEP_RESET and machine.RTC().memory()[:3] == _STATE_HEAD:
        return True
    for path, board in ((config_file, False), (board_file, True)):
        v = _setting(path, board)
        if v in ("battery", "mains"):
            return v == "battery"
    return False
