"""Command frames: authentication, replay window, argument checks — same module on both VMs."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host_tools.backoffice.command_client import cmd, next_counter
from host_tools.runtime.parity import both

KEY = bytes(range(32))


def verifier(last=0):
    return cmd.Verifier("lamp-7", KEY, last)


def reason_of(frame, v=None):
    v = v or verifier()
    with pytest.raises(cmd.CommandError) as exc:
        v.check(frame)
    return exc.value.reason


def test_good_command_is_accepted_with_its_arguments():
    f = cmd.build(KEY, "lamp-7", 10, cmd.SET_LAMP, {"level": 35, "ramp_s": 4, "duration_min": 30})
    assert cmd.Verifier("lamp-7", KEY, 9).check(f) == (cmd.SET_LAMP, 10, {"level": 35, "ramp_s": 4, "duration_min": 30})


def test_forged_tag_replay_wrong_device_are_refused():
    f = cmd.build(KEY, "lamp-7", 10, cmd.SET_LAMP, {"level": 35})
    forged = f[:-1] + bytes([f[-1] ^ 1])
    assert reason_of(forged) == cmd.BAD_TAG
    other_key = cmd.build(bytes(32), "lamp-7", 10, cmd.SET_LAMP, {"level": 35})
    assert reason_of(other_key) == cmd.BAD_TAG
    tampered = bytearray(f)
    tampered[10] = 100  # level changed in flight
    assert reason_of(bytes(tampered)) == cmd.BAD_TAG
    assert reason_of(f, cmd.Verifier("lamp-7", KEY, 10)) == cmd.REPLAY
    assert reason_of(f, cmd.Verifier("lamp-7", KEY, 11)) == cmd.REPLAY
    for_other = cmd.build(KEY, "lamp-8", 10, cmd.SET_LAMP, {"level": 35})
    assert reason_of(for_other) == cmd.WRONG_DEVICE


def test_redelivery_acks_again_without_executing():
    v = verifier(9)
    f = cmd.build(KEY, "lamp-7", 10, cmd.REQUEST_STATUS)
    op, counter, _ = v.check(f)
    ack = v.ack(counter, op, cmd.OK)
    v.accept(f, counter, ack)
    with pytest.raises(cmd.CommandError) as exc:
        v.check(f)  # QoS 1 redelivery of the same frame
    assert exc.value.reason == cmd.OK and exc.value.ack == ack
    g = cmd.build(KEY, "lamp-7", 10, cmd.REBOOT, {"delay_s": 1})  # same counter, other command
    assert reason_of(g, v) == cmd.REPLAY


@pytest.mark.parametrize(
    "opcode,args,reason",
    [
        (cmd.SET_LAMP, {"level": 101}, cmd.BAD_ARGUMENT),
        (cmd.SET_LAMP, {"level": 50, "ramp_s": 4000}, cmd.BAD_ARGUMENT),
        (cmd.BOLLARD, {"action": 7}, cmd.BAD_ARGUMENT),
        (cmd.SET_PERIOD, {"what": "sample", "seconds": 0}, cmd.BAD_ARGUMENT),
        (cmd.SET_CONFIG, {"key": "mqtt_password", "value": "x"}, cmd.NOT_ALLOWED),
        (cmd.SET_CONFIG, {"key": "broker", "value": "mqtt://evil:1883"}, cmd.NOT_ALLOWED),
        (0x5A, {"raw": b"\x00"}, cmd.UNKNOWN_COMMAND),
        (cmd.SET_PROFILE, {"steps": [(1500, 300, 50)]}, cmd.BAD_ARGUMENT),
    ],
)
def test_out_of_range_and_unknown_are_refused(opcode, args, reason):
    assert reason_of(cmd.build(KEY, "lamp-7", 1, opcode, args)) == reason


def test_truncated_wrong_version_oversized():
    f = cmd.build(KEY, "lamp-7", 1, cmd.SET_LAMP, {"level": 5})
    assert reason_of(f[:15]) == cmd.MALFORMED
    assert reason_of(bytes([2]) + f[1:]) == cmd.BAD_VERSION
    assert reason_of(f + bytes(300)) == cmd.MALFORMED
    # a signed frame whose arguments are short is refused as malformed, not executed
    body = f[:10] + f[10:12]
    assert reason_of(body + cmd._tag(KEY, b"LNTC", "lamp-7", body)) == cmd.MALFORMED


def test_rotate_key_then_old_key_fails():
    v = verifier()
    nonce = bytes(range(16))
    f = cmd.build(KEY, "lamp-7", 1, cmd.ROTATE_KEY, {"nonce": nonce})
    op, counter, args = v.check(f)
    v.accept(f, counter, b"")
    v.rotate(args["nonce"])
    new_key = cmd.rotated_key(KEY, nonce)
    assert v.check(cmd.build(new_key, "lamp-7", 2, cmd.REQUEST_STATUS))[0] == cmd.REQUEST_STATUS
    assert reason_of(cmd.build(KEY, "lamp-7", 3, cmd.REQUEST_STATUS), v) == cmd.BAD_TAG


def test_ack_is_signed():
    ack = cmd.build_ack(KEY, "lamp-7", 5, cmd.SET_LAMP, cmd.OK, b"\x01")
    assert cmd.parse_ack(KEY, "lamp-7", ack)["reason"] == "ok"
    with pytest.raises(cmd.CommandError):
        cmd.parse_ack(KEY, "lamp-8", ack)  # an ack claiming to come from another device
    with pytest.raises(cmd.CommandError):
        cmd.parse_ack(KEY, "lamp-7", ack[:-1] + b"\x00")


def test_identical_on_cpython_and_micropython():
    code = (
        "import json\nfrom lanterne import commands as c\n"
        "key = bytes(range(32))\nout = []\n"
        "for op, a in ((c.SET_LAMP, {'level': 35, 'ramp_s': 4}), (c.SET_PROFILE, {'dusk_offset_min': -5, 'steps': [(1380, 300, 50)]}),"
        " (c.SET_CONFIG, {'key': 'lat', 'value': 45.75}), (c.SET_CONFIG, {'key': 'bin_full_mm', 'value': 150}), (c.BOLLARD, {'action': 'raise'})):\n"
        "    f = c.build(key, 'lamp-7', 3, op, a)\n"
        "    v = c.Verifier('lamp-7', key, 2)\n"
        "    r = v.check(f)\n"
        "    out.append([f.hex(), r[0], r[1], sorted((k, str(x)) for k, x in r[2].items()), v.ack(3, op, 0).hex()])\n"
        "print(json.dumps(out))\n"
    )
    cp, mp = both(code)
    assert cp == mp


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=260))
def test_random_bytes_never_crash_the_verifier(data):
    try:
        verifier().check(data)
    except cmd.CommandError as e:
        assert e.reason in cmd.REASONS
    else:
        pytest.fail("random bytes were accepted as a command")


def test_fuzz_on_the_unix_port(micropython):
    out = micropython(
        "import os, json\nfrom lanterne import commands as c\n"
        "v = c.Verifier('lamp-7', bytes(32), 0)\nseen = {}\n"
        "for i in range(400):\n"
        "    f = os.urandom(i % 64)\n"
        "    try:\n        v.check(f); seen['accepted'] = 1\n"
        "    except c.CommandError as e:\n        seen[e.reason] = seen.get(e.reason, 0) + 1\n"
        "print(json.dumps(seen))\n"
    )
    seen = json.loads(out.strip().splitlines()[-1])
    assert "accepted" not in seen and seen


def test_host_counters_increase():
    a = next_counter(0)
    assert next_counter(a) > a and next_counter(a + 10**6) == a + 10**6 + 1
