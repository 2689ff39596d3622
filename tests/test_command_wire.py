"""The command format as the back office and the board both rely on it (docs/commands.md).

firmware/lanterne/commands.py is the one implementation, run by the board and imported by the host:
so its HMAC is checked against Python's own `hmac` (RFC 2104, written by no one here), its codes
against the table in the docs, what the host encodes against what the board decodes, and the ack
format at its length limits. A mistake here would be made identically on both sides and pass
every round trip: only references from outside catch it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct

import pytest

from host_tools.backoffice.command_client import cmd
from host_tools.runtime.paths import REPO

KEY = bytes(range(32))
DEVICE = "lamp-7"


@pytest.mark.parametrize("length", [0, 1, 32, 63, 64, 65, 100, 200])
def test_hmac_is_rfc_2104_hmac_sha256(length):
    key = bytes((i * 37 + 11) & 0xFF for i in range(length))
    for data in (b"", b"LNTC" + b"x" * 100, bytes(range(256))):
        assert cmd.hmac_sha256(key, data) == hmac.new(key, data, hashlib.sha256).digest()


def test_tag_and_rotated_key_are_as_documented():
    frame = cmd.build(KEY, DEVICE, 7, cmd.REQUEST_STATUS)
    body = frame[:-12]
    assert body == struct.pack(">B4sIB", 1, hashlib.sha256(DEVICE.encode()).digest()[:4], 7, 0x06)
    assert frame[-12:] == hmac.new(KEY, b"LNTC" + DEVICE.encode() + body, hashlib.sha256).digest()[:12]
    nonce = bytes(range(16))
    assert cmd.rotated_key(KEY, nonce) == hmac.new(KEY, b"LNTK" + nonce, hashlib.sha256).digest()
    ack = cmd.build_ack(KEY, DEVICE, 7, 0x06, cmd.OK, b"\x2a")
    assert ack[:-12] == struct.pack(">BIBB", 1, 7, 0x06, 0) + b"\x2a"
    assert ack[-12:] == hmac.new(KEY, b"LNTA" + DEVICE.encode() + ack[:-12], hashlib.sha256).digest()[:12]


def test_status_codes_are_the_documented_ones():
    table = re.findall(r"^\| (\d+) \| `(\w+)` \|", (REPO / "docs" / "commands.md").read_text(), re.M)
    assert len(table) == 11
    assert {int(code): name for code, name in table} == cmd.REASONS
    for code, name in table:
        assert getattr(cmd, name.upper()) == int(code)


def test_opcodes_are_the_documented_ones():
    table = re.findall(r"^\| 0x([0-9a-f]{2}) \| `(\w+)` \|", (REPO / "docs" / "commands.md").read_text(), re.M)
    assert {int(code, 16): name for code, name in table} == cmd.NAMES


# What the host encodes (encode_args, from the arguments a person types) is what the board decodes.
ROUND_TRIPS = [
    (cmd.SET_LAMP, {"level": 35}, {"level": 35, "ramp_s": 0, "duration_min": 0}),
    (cmd.SET_LAMP, {"level": 100, "ramp_s": 3600, "duration_min": 90}, {"level": 100, "ramp_s": 3600, "duration_min": 90}),
    (cmd.RESUME_PROFILE, None, {}),
    (cmd.REQUEST_STATUS, {}, {}),
    (cmd.SET_PROFILE, {"steps": [(1380, 300, 50), (0, 1439, 100)]},
     {"dusk_offset_min": 0, "dawn_offset_min": 0, "steps": [(1380, 300, 50), (0, 1439, 100)]}),
    (cmd.SET_PROFILE, {"dusk_offset_min": -15, "dawn_offset_min": 20, "steps": []},
     {"dusk_offset_min": -15, "dawn_offset_min": 20, "steps": []}),
    (cmd.BOLLARD, {"action": "lower"}, {"action": "lower"}),
    (cmd.BOLLARD, {"action": "raise"}, {"action": "raise"}),
    (cmd.SET_PERIOD, {"what": "sample", "seconds": 60}, {"what": "sample", "seconds": 60}),
    (cmd.SET_PERIOD, {"what": "status", "seconds": 86400}, {"what": "status", "seconds": 86400}),
    (cmd.REBOOT, {}, {"delay_s": 1}),
    (cmd.REBOOT, {"delay_s": 0}, {"delay_s": 0}),
    (cmd.SET_CONFIG, {"key": "bin_full_mm", "value": 150}, {"key": "bin_full_mm", "value": 150}),
    (cmd.SET_CONFIG, {"key": "timezone_min", "value": -60}, {"key": "timezone_min", "value": -60}),
    (cmd.SET_CONFIG, {"key": "lat", "value": 45.757}, {"key": "lat", "value": 45.757}),
    (cmd.SET_CONFIG, {"key": "lon", "value": -0.5}, {"key": "lon", "value": -0.5}),
    (cmd.SET_CONFIG, {"key": "lat", "value": "45.7"}, {"key": "lat", "value": "45.7"}),
    (cmd.ROTATE_KEY, {"nonce": bytes(range(16))}, {"nonce": bytes(range(16))}),
    (cmd.OTA_START, {"counter": 42, "digest": bytes(range(32))}, {"counter": 42, "force": False, "digest": bytes(range(32))}),
    (cmd.OTA_START, {"counter": 2**32 - 1, "force": True, "digest": bytes(32)},
     {"counter": 2**32 - 1, "force": True, "digest": bytes(32)}),
]


@pytest.mark.parametrize("opcode, args, decoded", ROUND_TRIPS)
def test_what_the_host_encodes_the_board_decodes(opcode, args, decoded):
    assert cmd.Verifier(DEVICE, KEY).check(cmd.build(KEY, DEVICE, 1, opcode, args)) == (opcode, 1, decoded)


def test_set_config_numbers_are_typed_on_the_wire():
    assert cmd.encode_args(cmd.SET_CONFIG, {"key": "lat", "value": 45.75})[-5:] == b"\x02" + struct.pack(">i", 45750)
    assert cmd.encode_args(cmd.SET_CONFIG, {"key": "lat", "value": 45})[-5:] == b"\x00" + struct.pack(">i", 45)


@pytest.mark.parametrize("value", [True, False, None, [1], {"a": 1}])
def test_set_config_refuses_values_that_are_not_numbers_or_strings(value):
    with pytest.raises(cmd.CommandError) as e:
        cmd.encode_args(cmd.SET_CONFIG, {"key": "lat", "value": value})
    assert e.value.reason == cmd.BAD_ARGUMENT and "number or a string" in str(e.value)


def test_a_fresh_verifier_accepts_counter_1():
    assert cmd.Verifier(DEVICE, KEY).check(cmd.build(KEY, DEVICE, 1, cmd.REQUEST_STATUS))[1] == 1
    with pytest.raises(cmd.CommandError) as e:
        cmd.Verifier(DEVICE, KEY).check(cmd.build(KEY, DEVICE, 0, cmd.REQUEST_STATUS))
    assert e.value.reason == cmd.REPLAY


def test_an_ack_at_its_length_limits():
    bare = cmd.build_ack(KEY, DEVICE, 9, cmd.SET_LAMP, cmd.OK)
    assert len(bare) == 7 + 12
    assert cmd.parse_ack(KEY, DEVICE, bare)["data"] == b""
    with pytest.raises(cmd.CommandError) as e:
        cmd.parse_ack(KEY, DEVICE, bare[1:])
    assert e.value.reason == cmd.MALFORMED
    full = cmd.parse_ack(KEY, DEVICE, cmd.build_ack(KEY, DEVICE, 2**32 - 1, cmd.BOLLARD, cmd.REFUSED, b"\x01\x02"))
    assert full == {"counter": 2**32 - 1, "opcode": cmd.BOLLARD, "command": "bollard", "status": cmd.REFUSED,
                    "reason": "refused", "data": b"\x01\x02"}
    body = bytes([2]) + bare[1:-12]
    with pytest.raises(cmd.CommandError) as e:
        cmd.parse_ack(KEY, DEVICE, body + cmd._tag(KEY, b"LNTA", DEVICE, body))
    assert e.value.reason == cmd.BAD_VERSION


def test_errors_name_what_is_wrong():
    assert str(cmd.CommandError(cmd.BAD_TAG)) == "bad_tag"
    assert str(cmd.CommandError(cmd.MALFORMED, "frame of 3 bytes")) == "frame of 3 bytes"
    assert cmd.CommandError(cmd.MALFORMED, "x").reason == cmd.MALFORMED
    frame = cmd.build(KEY, DEVICE, 5, cmd.REQUEST_STATUS)
    with pytest.raises(cmd.CommandError, match=r"^version 2 \(this firmware speaks 1\)$"):
        cmd.Verifier(DEVICE, KEY).check(bytes([2]) + frame[1:])


def test_tags_compare_in_full():
    assert cmd._equal(b"abc", b"abc")
    assert not cmd._equal(b"abc", b"abd") and not cmd._equal(b"xbc", b"abc")
    assert not cmd._equal(b"ab", b"abc") and not cmd._equal(b"abc", b"ab") and not cmd._equal(b"", b"a")
