"""The board's command gate across reboots: a command runs at most once, whatever happens while it runs.

firmware/lanterne/control.py on CPython and on the unix port. The counter of an authenticated
command is on flash before its executor runs: an executor that raises, or a power cut inside it
(the interpreter stops there; a new handler is built from the same flash, as after a reboot),
never lets a redelivery of the same frame run it again. An authenticated command that is refused
(bad argument, unknown opcode, key not allowed) uses its counter up too, across a reboot.
"""

from __future__ import annotations

import json

import pytest

from host_tools.runtime.parity import both_on_flash

# Runs unchanged on CPython and MicroPython. run(folder, case) -> a JSON-ready dict.
DRIVER = r"""
import json
from lanterne import commands as cmd
from lanterne.control import CommandHandler

KEY = bytes(range(32))
DEVICE = "lamp-7"


class PowerCut(BaseException):
    # The supply goes away: nothing after this point runs (not an error the firmware handles).
    pass


def on_flash(path):
    try:
        with open(path) as f:
            return json.loads(f.read())
    except OSError:
        return None


def run(folder, case):
    state = folder + "/cmdstate.json"
    ran = []  # (counter on flash when the executor started, opcode)

    def executor(opcode, args):
        st = on_flash(state)
        ran.append([st["counter"] if st else None, opcode])
        if case["executor"] == "raises":
            raise RuntimeError("relay driver fault")
        if case["executor"] == "power_cut":
            raise PowerCut()
        return cmd.OK, b""

    def boot():
        return CommandHandler(DEVICE, KEY.hex(), executor, state_file=state)

    out = {"acks": []}
    h = boot()
    frames = []
    for counter, opcode, args, *forged in case["frames"]:
        frames.append(cmd.build(bytes(32) if forged else KEY, DEVICE, counter, opcode, args))

    def deliver(handler, frame):
        try:
            ack, line = handler.handle(frame)
        except PowerCut:
            out["acks"].append("cut")
            return False
        a = cmd.parse_ack(KEY, DEVICE, ack) if ack else None
        out["acks"].append(a["reason"] if a else None)
        return True

    for f in frames:
        if not deliver(h, f):
            h = boot()  # power back: the board boots on the same flash
    # the broker redelivers every frame (QoS 1: the board never acked, or acked before a cut)
    h = boot()
    for f in frames:
        deliver(h, f)
    out["ran"] = ran
    out["on_flash"] = on_flash(state)["counter"]
    out["last_counter"] = h.verifier.last_counter
    return out
"""


def run_both(tmp_path, case: dict) -> dict:
    """Run one case on CPython and on the unix port (own flash folder each); both must agree."""
    return both_on_flash(DRIVER, "run(folder, json.loads(%r))" % json.dumps(case), tmp_path, heapsize=256 * 1024)


SET_LAMP, REQUEST_STATUS, SET_CONFIG, SET_PERIOD = 0x01, 0x06, 0x08, 0x05


@pytest.mark.parametrize("executor", ["returns", "raises", "power_cut"])
def test_the_counter_is_on_flash_before_the_executor_runs(tmp_path, executor):
    frames = [[7, SET_LAMP, {"level": 40}], [9, REQUEST_STATUS, None]]
    out = run_both(tmp_path, {"executor": executor, "frames": frames})
    assert out["ran"] == [[7, SET_LAMP], [9, REQUEST_STATUS]], (
        "each command ran once, with its own counter already on flash; a redelivery after a reboot "
        "does not run it again"
    )
    first = {"returns": "ok", "raises": "failed", "power_cut": "cut"}[executor]
    assert out["acks"] == [first, first, "replay", "replay"]
    assert out["on_flash"] == out["last_counter"] == 9


@pytest.mark.parametrize(
    "frame, reason",
    [
        ([12, SET_LAMP, {"level": 101}], "bad_argument"),
        ([12, SET_PERIOD, {"what": "sample", "seconds": 86401}], "bad_argument"),
        ([12, 0x5A, {}], "unknown_command"),
        ([12, SET_CONFIG, {"key": "broker", "value": "mqtt://evil:1883"}], "not_allowed"),
    ],
)
def test_a_refused_authenticated_command_uses_its_counter_up_across_a_reboot(tmp_path, frame, reason):
    # the refused frame, then a good one with a lower counter: never executed, before or after a reboot
    out = run_both(tmp_path, {"executor": "returns", "frames": [frame, [11, REQUEST_STATUS, None]]})
    assert out["ran"] == []
    assert out["acks"] == [reason, "replay", "replay", "replay"]
    assert out["on_flash"] == out["last_counter"] == 12


def test_a_forged_command_uses_no_counter_up(tmp_path):
    # signed with another key: refused as bad_tag, and the counter it claims stays free
    frames = [[50, REQUEST_STATUS, None, "forged"], [5, REQUEST_STATUS, None]]
    out = run_both(tmp_path, {"executor": "returns", "frames": frames})
    assert out["acks"] == ["bad_tag", "ok", "bad_tag", "replay"]
    assert out["ran"] == [[5, REQUEST_STATUS]]
    assert out["on_flash"] == 5


# -- in this process (CPython): what the acks say, key rotation, counts ---------------------------

from host_tools.runtime import firmware_module  # noqa: E402

control = firmware_module("control")
flashfile = firmware_module("flashfile")  # its write_atomic is the one the counter goes through
cmd = firmware_module("commands")
KEY = bytes(range(32))
DEVICE = "lamp-7"


def handler(folder, key=KEY, executor=None):
    return control.CommandHandler(DEVICE, key.hex(), executor or (lambda op, args: (cmd.OK, b"\x07")),
                                  state_file=str(folder / "cmdstate.json"))


def ack_of(h, frame, key=KEY):
    ack, line = h.handle(frame)
    return cmd.parse_ack(key, DEVICE, ack)


def test_a_nack_names_the_counter_and_opcode_the_frame_claims(tmp_path):
    h = handler(tmp_path)
    forged = cmd.build(bytes(32), DEVICE, 0x81828384, cmd.SET_LAMP, {"level": 5})
    a = ack_of(h, forged)
    assert (a["counter"], a["opcode"], a["reason"]) == (0x81828384, cmd.SET_LAMP, "bad_tag")
    other = cmd.build(KEY, "lamp-8", 0x01020304, cmd.BOLLARD, {"action": "raise"})
    a = ack_of(h, other)
    assert (a["counter"], a["opcode"], a["reason"]) == (0x01020304, cmd.BOLLARD, "wrong_device")
    good = cmd.build(KEY, DEVICE, 0x0A0B0C0D, cmd.REBOOT, {"delay_s": 3})
    for cut, counter, opcode in ((8, 0, 0), (9, 0x0A0B0C0D, 0), (10, 0x0A0B0C0D, cmd.REBOOT), (21, 0x0A0B0C0D, cmd.REBOOT)):
        a = ack_of(h, good[:cut])
        assert (a["counter"], a["opcode"], a["reason"]) == (counter, opcode, "malformed"), cut
    a = ack_of(h, bytes([9]) + good[1:])
    assert (a["counter"], a["opcode"], a["reason"]) == (0x0A0B0C0D, cmd.REBOOT, "bad_version")
    bad_arg = cmd.build(KEY, DEVICE, 0x7F000001, cmd.SET_LAMP, {"level": 101})
    a = ack_of(h, bad_arg)
    assert (a["counter"], a["opcode"], a["reason"]) == (0x7F000001, cmd.SET_LAMP, "bad_argument")
    a = ack_of(h, good)
    assert (a["counter"], a["opcode"], a["reason"], a["data"]) == (0x0A0B0C0D, cmd.REBOOT, "replay", b"")


def test_an_executed_command_is_acked_with_its_data(tmp_path):
    h = handler(tmp_path)
    a = ack_of(h, cmd.build(KEY, DEVICE, 3, cmd.SET_LAMP, {"level": 7}))
    assert (a["counter"], a["opcode"], a["reason"], a["data"]) == (3, cmd.SET_LAMP, "ok", b"\x07")


def test_a_rotated_key_replaces_the_provisioned_one_across_reboots(tmp_path):
    h = handler(tmp_path)
    nonce = bytes(range(16, 32))
    a = ack_of(h, cmd.build(KEY, DEVICE, 5, cmd.ROTATE_KEY, {"nonce": nonce}))  # acked with the old key
    assert (a["counter"], a["reason"]) == (5, "ok")
    new = cmd.rotated_key(KEY, nonce)
    assert ack_of(h, cmd.build(new, DEVICE, 6, cmd.REQUEST_STATUS), new)["reason"] == "ok"
    assert ack_of(h, cmd.build(KEY, DEVICE, 7, cmd.REQUEST_STATUS), new)["reason"] == "bad_tag"
    h = handler(tmp_path)  # rebooted: config.json still holds the provisioned key
    assert ack_of(h, cmd.build(new, DEVICE, 8, cmd.REQUEST_STATUS), new)["reason"] == "ok"
    assert ack_of(h, cmd.build(KEY, DEVICE, 9, cmd.REQUEST_STATUS), new)["reason"] == "bad_tag"


def test_a_key_provisioned_again_takes_effect_when_none_was_rotated(tmp_path):
    h = handler(tmp_path)
    assert ack_of(h, cmd.build(KEY, DEVICE, 1, cmd.REQUEST_STATUS))["reason"] == "ok"
    other = bytes(range(100, 132))
    h = handler(tmp_path, key=other)  # re-provisioned with a new key, then rebooted
    assert ack_of(h, cmd.build(other, DEVICE, 2, cmd.REQUEST_STATUS), other)["reason"] == "ok"
    assert ack_of(h, cmd.build(other, DEVICE, 1, cmd.REQUEST_STATUS), other)["reason"] == "replay"


def test_a_fresh_board_accepts_counter_1(tmp_path):
    assert ack_of(handler(tmp_path), cmd.build(KEY, DEVICE, 1, cmd.REQUEST_STATUS))["reason"] == "ok"


def test_executed_and_refused_are_counted(tmp_path):
    def executor(op, args):
        if op == cmd.REBOOT:
            raise OSError("relay stuck")
        return cmd.OK, b""

    h = handler(tmp_path, executor=executor)
    frames = [cmd.build(KEY, DEVICE, 1, cmd.REQUEST_STATUS), cmd.build(KEY, DEVICE, 2, cmd.REBOOT, {"delay_s": 1}),
              cmd.build(bytes(32), DEVICE, 3, cmd.REQUEST_STATUS), cmd.build(KEY, DEVICE, 4, cmd.SET_LAMP, {"level": 101}),
              cmd.build(KEY, DEVICE, 5, cmd.ROTATE_KEY, {"nonce": bytes(16)})]
    reasons = [ack_of(h, f)["reason"] for f in frames]
    assert reasons == ["ok", "failed", "bad_tag", "bad_argument", "ok"]
    assert (h.executed, h.refused) == (2, 3)
    off = control.CommandHandler(DEVICE, "", executor, state_file=str(tmp_path / "other.json"))
    assert off.handle(frames[0]) == (None, "command refused: no command key provisioned")
    assert (off.executed, off.refused) == (0, 1)


class Flash:
    """The filesystem calls control.py makes, passed through to the real one and watched: the
    state file must exist after every call once it existed (a power cut may come at any)."""

    def __init__(self, path, rename_refuses_existing=False):
        import os as real

        self.real, self.path, self.refuses = real, str(path), rename_refuses_existing
        self.calls, self.gaps = [], []

    def _after(self, call):
        self.calls.append(call)
        if not self.real.path.exists(self.path):
            self.gaps.append(call)

    def rename(self, a, b):
        if self.refuses and self.real.path.exists(b):
            self.calls.append(("rename refused", a, b))
            raise OSError(17)  # EEXIST, as FAT answers
        self.real.rename(a, b)
        self._after(("rename", a, b))

    def remove(self, p):
        self.real.remove(p)
        self._after(("remove", p))


def test_the_state_file_is_replaced_without_ever_being_missing(tmp_path, monkeypatch):
    h = handler(tmp_path)
    assert ack_of(h, cmd.build(KEY, DEVICE, 1, cmd.REQUEST_STATUS))["reason"] == "ok"
    flash = Flash(tmp_path / "cmdstate.json")
    monkeypatch.setattr(flashfile, "os", flash)
    assert ack_of(h, cmd.build(KEY, DEVICE, 2, cmd.REQUEST_STATUS))["reason"] == "ok"
    assert flash.calls and not flash.gaps, f"a power cut here loses the counter: {flash.gaps}"
    assert handler(tmp_path).verifier.last_counter == 2


def test_where_rename_refuses_an_existing_file_the_state_is_still_replaced(tmp_path, monkeypatch):
    h = handler(tmp_path)
    assert ack_of(h, cmd.build(KEY, DEVICE, 1, cmd.REQUEST_STATUS))["reason"] == "ok"
    flash = Flash(tmp_path / "cmdstate.json", rename_refuses_existing=True)
    monkeypatch.setattr(flashfile, "os", flash)
    assert ack_of(h, cmd.build(KEY, DEVICE, 2, cmd.REQUEST_STATUS))["reason"] == "ok"
    assert [c[0] for c in flash.calls] == ["rename refused", "remove", "rename"]
    assert handler(tmp_path).verifier.last_counter == 2 and not (tmp_path / "cmdstate.json.tmp").exists()


@pytest.mark.parametrize("main", [None, "", '{"counter": 4', "[1]", '{"key": ""}', '{"counter": "x"}'])
def test_a_missing_or_damaged_state_file_falls_back_on_the_whole_tmp(tmp_path, main):
    if main is not None:
        (tmp_path / "cmdstate.json").write_text(main)
    (tmp_path / "cmdstate.json.tmp").write_text('{"counter": 41, "key": ""}')  # a cut before the rename
    h = handler(tmp_path)
    assert h.verifier.last_counter == 41
    assert ack_of(h, cmd.build(KEY, DEVICE, 41, cmd.REQUEST_STATUS))["reason"] == "replay"
    (tmp_path / "cmdstate.json.tmp").unlink()
    assert handler(tmp_path).verifier.last_counter == 0


def test_a_damaged_state_file_without_a_tmp_boots_with_counter_0(tmp_path):
    (tmp_path / "cmdstate.json").write_text('{"counter": [')
    h = handler(tmp_path)
    assert h.verifier.last_counter == 0 and h.verifier.key == KEY


def test_a_key_rotation_is_on_flash_when_its_ack_goes_out(tmp_path):
    h = handler(tmp_path)
    nonce = bytes(range(40, 56))
    assert ack_of(h, cmd.build(KEY, DEVICE, 5, cmd.ROTATE_KEY, {"nonce": nonce}))["reason"] == "ok"
    new = cmd.rotated_key(KEY, nonce)
    h = handler(tmp_path)  # the power goes right after the ack: the back office already holds the new key
    assert ack_of(h, cmd.build(new, DEVICE, 6, cmd.REQUEST_STATUS), new)["reason"] == "ok"
    assert ack_of(h, cmd.build(new, DEVICE, 5, cmd.ROTATE_KEY, {"nonce": nonce}), new)["reason"] == "replay"


# -- a flash that refuses writes (full: ENOSPC) -----------------------------------------------------


@pytest.fixture
def full_flash(monkeypatch):
    """flashfile's writes (the counter's path) fail with ENOSPC while `full["on"]`, as on a full
    filesystem: the file is created, the write is refused."""
    import builtins

    full = {"on": True}

    class Refusing:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(28, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def refusing_open(path, mode="r", *a, **kw):
        f = builtins.open(path, mode, *a, **kw)
        return Refusing(f) if full["on"] and ("w" in mode or "a" in mode) else f

    monkeypatch.setattr(flashfile, "open", refusing_open, raising=False)
    return full


def test_a_command_whose_counter_cannot_be_saved_is_not_run_and_runs_once_when_sent_again(tmp_path, full_flash):
    ran = []

    def executor(op, args):
        ran.append(op)
        return cmd.OK, b""

    h = handler(tmp_path, executor=executor)
    full_flash["on"] = False
    assert ack_of(h, cmd.build(KEY, DEVICE, 3, cmd.REQUEST_STATUS))["reason"] == "ok"
    full_flash["on"] = True  # the flash fills up
    frame = cmd.build(KEY, DEVICE, 7, cmd.SET_LAMP, {"level": 40})
    ack, line = h.handle(frame)
    assert ack is None and ran == [cmd.REQUEST_STATUS], "not run, not answered: a reboot would let it run again"
    assert h.unsaved == 28 and "errno 28" in line
    assert h.verifier.last_counter == 3 and handler(tmp_path).verifier.last_counter == 3
    ack, line = h.handle(frame)  # the back office sends it again: the flash still refuses
    assert ack is None and ran == [cmd.REQUEST_STATUS]
    full_flash["on"] = False
    assert ack_of(h, frame)["reason"] == "ok" and ran == [cmd.REQUEST_STATUS, cmd.SET_LAMP]
    assert h.unsaved is None
    assert ack_of(handler(tmp_path), frame)["reason"] == "replay", "on flash now: after a reboot it is a replay"
    assert ran == [cmd.REQUEST_STATUS, cmd.SET_LAMP]


def test_a_key_rotation_that_cannot_be_saved_leaves_the_old_key(tmp_path, full_flash):
    h = handler(tmp_path)
    nonce = bytes(range(60, 76))
    frame = cmd.build(KEY, DEVICE, 5, cmd.ROTATE_KEY, {"nonce": nonce})
    assert h.handle(frame)[0] is None
    assert h.verifier.key == KEY and not h.rotated, "the back office holds no new key: neither does the board"
    full_flash["on"] = False
    assert ack_of(h, cmd.build(KEY, DEVICE, 8, cmd.ROTATE_KEY, {"nonce": nonce}))["reason"] == "ok"
    new = cmd.rotated_key(KEY, nonce)
    assert ack_of(handler(tmp_path), cmd.build(new, DEVICE, 9, cmd.REQUEST_STATUS), new)["reason"] == "ok"


def test_a_refused_command_whose_counter_cannot_be_saved_is_answered_once_it_can(tmp_path, full_flash):
    h = handler(tmp_path)
    bad = cmd.build(KEY, DEVICE, 12, cmd.SET_LAMP, {"level": 101})
    assert h.handle(bad)[0] is None and h.verifier.last_counter == 0
    full_flash["on"] = False
    assert ack_of(h, bad)["reason"] == "bad_argument"
    assert handler(tmp_path).verifier.last_counter == 12
