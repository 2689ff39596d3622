"""The exact bounds of every command: the last valid value is accepted, the first invalid one refused.

firmware/lanterne/commands.py decides what reaches the app. Each opcode's arguments are checked at
both ends of each range and at both ends of each length (docs/commands.md); frames are signed
with the right key, so the only reason to refuse one is the bound under test. The same table runs
on CPython and on the unix port and must get the same answers.
"""

from __future__ import annotations

import json
import struct

import pytest

from host_tools.backoffice.command_client import cmd
from host_tools.runtime.parity import both

KEY = bytes(range(32))
DEVICE = "lamp-7"
OK, BAD, MALFORMED = "ok", "bad_argument", "malformed"


def signed(opcode: int, raw: bytes, counter: int = 10) -> bytes:
    """A correctly signed frame whose argument bytes are `raw`, whatever they say."""
    body = struct.pack(">B4sIB", cmd.VERSION, cmd.device_tag(DEVICE), counter, opcode) + raw
    return body + cmd._tag(KEY, b"LNTC", DEVICE, body)


def lamp(level=50, ramp=0, duration=0):
    return struct.pack(">BHH", level, ramp, duration)


def profile(steps, dusk=0, dawn=0, count=None):
    out = struct.pack(">bbB", dusk, dawn, len(steps) if count is None else count)
    return out + b"".join(struct.pack(">HHB", *s) for s in steps)


def period(what, seconds):
    return struct.pack(">BI", what, seconds)


def config(key: bytes, kind: int, value: bytes):
    return bytes([len(key)]) + key + bytes([kind]) + value


STEP = (1380, 300, 50)
# name -> (opcode, argument bytes, expected reason, expected arguments when accepted)
CASES = {
    "set_lamp level 100": (cmd.SET_LAMP, lamp(100), OK, {"level": 100, "ramp_s": 0, "duration_min": 0}),
    "set_lamp level 101": (cmd.SET_LAMP, lamp(101), BAD, None),
    "set_lamp ramp 3600 s": (cmd.SET_LAMP, lamp(ramp=3600), OK, {"level": 50, "ramp_s": 3600, "duration_min": 0}),
    "set_lamp ramp 3601 s": (cmd.SET_LAMP, lamp(ramp=3601), BAD, None),
    "set_lamp duration 65535 min": (cmd.SET_LAMP, lamp(duration=65535), OK,
                                    {"level": 50, "ramp_s": 0, "duration_min": 65535}),
    "set_lamp 4 bytes": (cmd.SET_LAMP, lamp()[:4], MALFORMED, None),
    "set_lamp 6 bytes": (cmd.SET_LAMP, lamp() + b"\x00", MALFORMED, None),
    "resume_profile": (cmd.RESUME_PROFILE, b"", OK, {}),
    "resume_profile 1 byte": (cmd.RESUME_PROFILE, b"\x00", MALFORMED, None),
    "request_status": (cmd.REQUEST_STATUS, b"", OK, {}),
    "request_status 1 byte": (cmd.REQUEST_STATUS, b"\x00", MALFORMED, None),
    "set_profile 0 steps": (cmd.SET_PROFILE, profile([]), OK, {"dusk_offset_min": 0, "dawn_offset_min": 0, "steps": []}),
    "set_profile 8 steps": (cmd.SET_PROFILE, profile([STEP] * 8), OK,
                            {"dusk_offset_min": 0, "dawn_offset_min": 0, "steps": [list(STEP)] * 8}),
    "set_profile 9 steps": (cmd.SET_PROFILE, profile([STEP] * 9), BAD, None),
    "set_profile start 1439": (cmd.SET_PROFILE, profile([(1439, 300, 50)]), OK,
                               {"dusk_offset_min": 0, "dawn_offset_min": 0, "steps": [[1439, 300, 50]]}),
    "set_profile start 1440": (cmd.SET_PROFILE, profile([(1440, 300, 50)]), BAD, None),
    "set_profile end 1439": (cmd.SET_PROFILE, profile([(0, 1439, 50)]), OK,
                             {"dusk_offset_min": 0, "dawn_offset_min": 0, "steps": [[0, 1439, 50]]}),
    "set_profile end 1440": (cmd.SET_PROFILE, profile([(0, 1440, 50)]), BAD, None),
    "set_profile level 100": (cmd.SET_PROFILE, profile([(0, 60, 100)]), OK,
                              {"dusk_offset_min": 0, "dawn_offset_min": 0, "steps": [[0, 60, 100]]}),
    "set_profile level 101": (cmd.SET_PROFILE, profile([(0, 60, 101)]), BAD, None),
    "set_profile second step out of range": (cmd.SET_PROFILE, profile([STEP, (0, 1440, 0)]), BAD, None),
    "set_profile offsets -128 and 127": (cmd.SET_PROFILE, profile([], -128, 127), OK,
                                         {"dusk_offset_min": -128, "dawn_offset_min": 127, "steps": []}),
    "set_profile 2 bytes": (cmd.SET_PROFILE, b"\x00\x00", MALFORMED, None),
    "set_profile step short by a byte": (cmd.SET_PROFILE, profile([STEP])[:-1], MALFORMED, None),
    "set_profile a byte too many": (cmd.SET_PROFILE, profile([STEP]) + b"\x00", MALFORMED, None),
    "set_profile 9 steps claimed, 8 sent": (cmd.SET_PROFILE, profile([STEP] * 8, count=9), MALFORMED, None),
    "bollard lower": (cmd.BOLLARD, b"\x00", OK, {"action": "lower"}),
    "bollard raise": (cmd.BOLLARD, b"\x01", OK, {"action": "raise"}),
    "bollard 2": (cmd.BOLLARD, b"\x02", BAD, None),
    "bollard 0 bytes": (cmd.BOLLARD, b"", MALFORMED, None),
    "bollard 2 bytes": (cmd.BOLLARD, b"\x01\x00", MALFORMED, None),
    "set_period sample 1 s": (cmd.SET_PERIOD, period(0, 1), OK, {"what": "sample", "seconds": 1}),
    "set_period sample 0 s": (cmd.SET_PERIOD, period(0, 0), BAD, None),
    "set_period status 86400 s": (cmd.SET_PERIOD, period(1, 86400), OK, {"what": "status", "seconds": 86400}),
    "set_period status 86401 s": (cmd.SET_PERIOD, period(1, 86401), BAD, None),
    "set_period 2**32-1 s": (cmd.SET_PERIOD, period(0, 2**32 - 1), BAD, None),
    "set_period kind 2": (cmd.SET_PERIOD, period(2, 60), BAD, None),
    "set_period 4 bytes": (cmd.SET_PERIOD, period(0, 60)[:4], MALFORMED, None),
    "set_period 6 bytes": (cmd.SET_PERIOD, period(0, 60) + b"\x00", MALFORMED, None),
    "reboot 0 s": (cmd.REBOOT, b"\x00", OK, {"delay_s": 0}),
    "reboot 255 s": (cmd.REBOOT, b"\xff", OK, {"delay_s": 255}),
    "reboot 0 bytes": (cmd.REBOOT, b"", MALFORMED, None),
    "reboot 2 bytes": (cmd.REBOOT, b"\x01\x00", MALFORMED, None),
    "set_config int": (cmd.SET_CONFIG, config(b"bin_full_mm", 0, struct.pack(">i", 150)), OK,
                       {"key": "bin_full_mm", "value": 150}),
    "set_config int -2**31": (cmd.SET_CONFIG, config(b"timezone_min", 0, struct.pack(">i", -(2**31))), OK,
                              {"key": "timezone_min", "value": -(2**31)}),
    "set_config float": (cmd.SET_CONFIG, config(b"lat", 2, struct.pack(">i", 45750)), OK,
                         {"key": "lat", "value": 45.75}),
    "set_config float negative": (cmd.SET_CONFIG, config(b"lon", 2, struct.pack(">i", -4850)), OK,
                                  {"key": "lon", "value": -4.85}),
    "set_config string": (cmd.SET_CONFIG, config(b"lat", 1, b"\x02ab"), OK, {"key": "lat", "value": "ab"}),
    "set_config empty string": (cmd.SET_CONFIG, config(b"lat", 1, b"\x00"), OK, {"key": "lat", "value": ""}),
    "set_config key not allowed": (cmd.SET_CONFIG, config(b"broker", 1, b"\x01x"), "not_allowed", None),
    "set_config key the empty string": (cmd.SET_CONFIG, config(b"", 0, bytes(4)), "not_allowed", None),
    "set_config type 3": (cmd.SET_CONFIG, config(b"lat", 3, bytes(4)), MALFORMED, None),
    "set_config number of 3 bytes": (cmd.SET_CONFIG, config(b"lat", 0, bytes(3)), MALFORMED, None),
    "set_config number of 5 bytes": (cmd.SET_CONFIG, config(b"lat", 2, bytes(5)), MALFORMED, None),
    "set_config string short": (cmd.SET_CONFIG, config(b"lat", 1, b"\x03ab"), MALFORMED, None),
    "set_config string long": (cmd.SET_CONFIG, config(b"lat", 1, b"\x01ab"), MALFORMED, None),
    "set_config string without length": (cmd.SET_CONFIG, config(b"lat", 1, b""), MALFORMED, None),
    "set_config value missing": (cmd.SET_CONFIG, b"\x03lat", MALFORMED, None),
    "set_config key truncated": (cmd.SET_CONFIG, b"\x04lat", MALFORMED, None),
    "set_config 1 byte": (cmd.SET_CONFIG, b"\x00", MALFORMED, None),
    "set_config 0 bytes": (cmd.SET_CONFIG, b"", MALFORMED, None),
    "set_config key not UTF-8": (cmd.SET_CONFIG, config(b"\xff\xfe", 0, bytes(4)), MALFORMED, None),
    "rotate_key 16 bytes": (cmd.ROTATE_KEY, bytes(range(16)), OK, {"nonce": bytes(range(16)).hex()}),
    "rotate_key 15 bytes": (cmd.ROTATE_KEY, bytes(15), MALFORMED, None),
    "rotate_key 17 bytes": (cmd.ROTATE_KEY, bytes(17), MALFORMED, None),
    "opcode 0x00": (0x00, b"", "unknown_command", None),
    "ota_start 37 bytes": (cmd.OTA_START, struct.pack(">IB", 2**32 - 1, 1) + bytes(range(32)), OK,
                           {"counter": 2**32 - 1, "force": True, "digest": bytes(range(32)).hex()}),
    "ota_start flags 0": (cmd.OTA_START, struct.pack(">IB", 7, 0) + bytes(32), OK,
                          {"counter": 7, "force": False, "digest": bytes(32).hex()}),
    "ota_start flags 2": (cmd.OTA_START, struct.pack(">IB", 7, 2) + bytes(32), BAD, None),
    "ota_start 36 bytes": (cmd.OTA_START, struct.pack(">IB", 7, 0) + bytes(31), MALFORMED, None),
    "ota_start 38 bytes": (cmd.OTA_START, struct.pack(">IB", 7, 0) + bytes(33), MALFORMED, None),
    "opcode 0x0b": (0x0B, b"", "unknown_command", None),
    "opcode 0xff": (0xFF, b"\x01", "unknown_command", None),
    # the whole frame: 200 bytes at most (header 10 + arguments + tag 12)
    "frame of 200 bytes": (cmd.SET_CONFIG, config(b"lat", 1, bytes([172]) + b"a" * 172), OK,
                           {"key": "lat", "value": "a" * 172}),
    "frame of 201 bytes": (cmd.SET_CONFIG, config(b"lat", 1, bytes([173]) + b"a" * 173), MALFORMED, None),
}


def answer(v, frame: bytes):
    """(reason, arguments) the gate gives a frame; arguments JSON-ready (bytes as hex, tuples as lists)."""
    try:
        _, _, args = v.check(frame)
    except cmd.CommandError as e:
        return cmd.REASONS[e.reason], None
    return "ok", json.loads(json.dumps({k: (x.hex() if isinstance(x, bytes) else x) for k, x in args.items()}))


def test_the_table_reaches_both_ends_of_the_frame_length():
    assert len(signed(*CASES["frame of 200 bytes"][:2])) == cmd.MAX_FRAME == 200
    assert len(signed(*CASES["frame of 201 bytes"][:2])) == 201
    assert len(signed(cmd.REQUEST_STATUS, b"")) == cmd.HEADER_LEN + cmd.TAG_LEN


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_bound(name):
    opcode, raw, reason, args = CASES[name]
    assert answer(cmd.Verifier(DEVICE, KEY, 9), signed(opcode, raw)) == (reason, args)


def test_shortest_frame_and_one_byte_less():
    f = signed(cmd.REQUEST_STATUS, b"")
    assert answer(cmd.Verifier(DEVICE, KEY, 9), f) == ("ok", {})
    assert answer(cmd.Verifier(DEVICE, KEY, 9), f[1:]) == (MALFORMED, None)


@pytest.mark.parametrize(
    "last, counter, reason",
    [(9, 10, "ok"), (9, 9, "replay"), (9, 8, "replay"), (0, 1, "ok"), (0, 0, "replay"),
     (2**32 - 2, 2**32 - 1, "ok"), (2**32 - 1, 2**32 - 1, "replay"), (2**31, 2**31 - 1, "replay")],
)
def test_counter_window_ends(last, counter, reason):
    v = cmd.Verifier(DEVICE, KEY, last)
    assert answer(v, signed(cmd.REQUEST_STATUS, b"", counter))[0] == reason


def test_the_last_frame_again_is_a_redelivery_only_once_acked():
    # The window's top: the board records a command's counter before executing it (a power cut
    # must not run it twice) and its ack after. Between the two the same frame has no ack to send
    # again: a replay, never a redelivery answered with nothing. Once acked, the ack again.
    v = cmd.Verifier(DEVICE, KEY, 9)
    f = signed(cmd.REQUEST_STATUS, b"", 10)
    v.check(f)
    v.accept(f, 10, None)
    assert answer(v, f) == ("replay", None)
    v.last_ack = ack = v.ack(10, cmd.REQUEST_STATUS, cmd.OK)
    with pytest.raises(cmd.CommandError) as e:
        v.check(f)
    assert e.value.reason == cmd.OK and e.value.ack == ack


def test_the_same_answers_on_the_unix_port():
    frames = {name: signed(op, raw).hex() for name, (op, raw, _, _) in CASES.items()}
    code = (
        "import json\nfrom lanterne import commands as c\n"
        "frames = json.loads(%r)\nout = {}\n"
        "for name in sorted(frames):\n"
        "    v = c.Verifier('lamp-7', bytes(range(32)), 9)\n"
        "    try:\n"
        "        _, _, a = v.check(bytes.fromhex(frames[name]))\n"
        "        out[name] = ['ok', sorted([[k, x.hex() if isinstance(x, bytes) else x] for k, x in a.items()])]\n"
        "    except c.CommandError as e:\n"
        "        out[name] = [c.REASONS[e.reason], None]\n"
        "print(json.dumps(out))\n"
    ) % json.dumps(frames)
    cp, mp = both(code, heapsize=256 * 1024)
    assert {name: got[0] for name, got in mp.items()} == {name: got[0] for name, got in cp.items()}
    assert cp == mp
    assert {name: got[0] for name, got in cp.items()} == {name: case[2] for name, case in CASES.items()}


# A refused frame's nack carries only the reason; the board's log line says what was wrong.
MESSAGES = {
    "set_lamp 4 bytes": "set_lamp takes 5 argument bytes, got 4",
    "set_lamp level 101": "level 101 is over 100 %",
    "set_lamp ramp 3601 s": "ramp 3601 s is over 3600 s",
    "set_profile 2 bytes": "set_profile needs 3 header bytes",
    "set_profile step short by a byte": "set_profile with 1 steps needs 8 bytes, got 7",
    "set_profile a byte too many": "set_profile with 1 steps needs 8 bytes, got 9",
    "set_profile 9 steps": "at most 8 dimming steps",
    "set_profile second step out of range": "step 1 out of range",
    "bollard 2": "bollard action 2 (0 lower, 1 raise)",
    "set_period kind 2": "period kind 2 (0 sample, 1 status)",
    "set_period status 86401 s": "period 86401 s outside 1..86400",
    "set_config 1 byte": "set_config key truncated",
    "set_config key truncated": "set_config key truncated",
    "set_config value missing": "set_config key truncated",
    "set_config number of 3 bytes": "set_config number needs 4 bytes",
    "set_config string short": "set_config string truncated",
    "set_config type 3": "set_config value type 3",
    "set_config key not UTF-8": "arguments do not decode",
    "rotate_key 15 bytes": "rotate_key takes a 16-byte nonce",
    "ota_start flags 2": "ota_start flags 0x02 (bit 0: force)",
    "ota_start 36 bytes": "ota_start takes 37 argument bytes, got 36",
    "opcode 0x0b": "opcode 0x0b",
    "frame of 201 bytes": "frame of 201 bytes is over 200",
}
MESSAGE_EXTRA = {
    # an empty key and a type byte: the key is whole, the number is not
    "set_config type only": (config(b"", 0, b""), "set_config number needs 4 bytes"),
    "set_config key and type": (config(b"lat", 0, b""), "set_config number needs 4 bytes"),
}


@pytest.mark.parametrize("name", sorted(MESSAGES) + sorted(MESSAGE_EXTRA))
def test_a_refusal_says_what_is_wrong(name):
    if name in MESSAGES:
        opcode, raw, _, _ = CASES[name]
        text = MESSAGES[name]
    else:
        (raw, text), opcode = MESSAGE_EXTRA[name], cmd.SET_CONFIG
    with pytest.raises(cmd.CommandError) as e:
        cmd.Verifier(DEVICE, KEY, 9).check(signed(opcode, raw))
    assert str(e.value) == text
