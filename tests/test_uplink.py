"""The commit-after-ack rule: a reading is committed in the store only once the broker acknowledged
the frame that carried it, and only the readings that frame carried. On CPython and the unix port.

The seam is the link object the app holds (`link.publish(topic, frame, qos=1)` returns after the
PUBACK, raises OSError when the publish failed or the PUBACK never came). The fake links below
stand in for it; the store, the record format, the encoder and the uplink step are the firmware's.
Frames are read back with the host decoder, as the back office reads them.
"""

from __future__ import annotations

import json

import pytest

from host_tools.codec import decode
from host_tools.runtime.parity import both

# The modules are compiled from source here (the board runs them precompiled from ROMFS and fits a
# 64 KB heap: tests/test_store_props.py and `lanterne bench heap` check that).
HEAP = 256 * 1024

# Runs unchanged on CPython and MicroPython. run(path, case) -> a JSON-ready dict.
DRIVER = r"""
import json
from lanterne import codec
from lanterne.reading import RecordPacker
from lanterne.store import Store
from lanterne.uplink import Uplink


class Link:
    # The link the app holds. mode "ok": PUBACK for every frame; "refuse": the publish fails
    # before anything is sent; "no_puback": the frame goes out, its PUBACK never comes.
    def __init__(self, mode="ok"):
        self.mode = mode
        self.topics = {"up": "lanterne/t/d/up"}
        self.wire = []  # frames that left the board, acknowledged or not
        self.acked = []  # frames the broker acknowledged

    def publish(self, topic, payload, retain=False, qos=1):
        assert topic == self.topics["up"] and qos == 1
        if self.mode == "refuse":
            raise OSError(104)  # ECONNRESET: the link broke
        self.wire.append(bytes(payload).hex())
        if self.mode == "no_puback":
            raise OSError(110)  # ETIMEDOUT waiting for the PUBACK
        self.acked.append(bytes(payload).hex())


_seed = [12345]


def rand(n):
    _seed[0] = (_seed[0] * 1103515245 + 12345) & 0x7FFFFFFF
    return (_seed[0] >> 8) % n


def fill(store, count, wild):
    # wild: every field jumps around (a frame then holds few readings); else slowly varying.
    packer = RecordPacker()
    r = codec.new_reading()
    for i in range(count):
        if wild:
            r[codec.TEMPERATURE] = rand(1251) - 400
            r[codec.HUMIDITY] = rand(201)
            r[codec.PRESSURE] = 3000 + rand(8001)
            r[codec.ILLUMINANCE] = rand(120000000)
            r[codec.FILL] = rand(101)
            r[codec.LAMP] = rand(101)
            r[codec.LAMP_FAULT] = rand(2)
            r[codec.VOLTAGE] = rand(60001)
            r[codec.STATUS] = rand(512)
        else:
            r[codec.TEMPERATURE] = 215 + i % 3
            r[codec.HUMIDITY] = 90
            r[codec.PRESSURE] = 10132
            r[codec.VOLTAGE] = 12340
            r[codec.STATUS] = 0
        store.append(packer.pack(r, 1000 + i * 60, 1, True))


def state(store):
    return {"pending": store.pending, "next": store.next_seq}


def run(path, case):
    out = {}
    s = Store(path, 1 << 20, 4096, 0)
    fill(s, case["count"], case["wild"])
    up = Uplink(s, {})
    for step in case["steps"]:
        link = Link(step)
        try:
            n = up.send(link, 2000, 1, True)
            out.setdefault("sent", []).append(n)
        except OSError as e:
            out.setdefault("errors", []).append(e.args[0])
        out.setdefault("after", []).append(state(s))
        out.setdefault("wire", []).extend(link.wire)
        out.setdefault("acked", []).extend(link.acked)
    if case.get("cut"):
        s = Store(path, 1 << 20, 4096, 0)  # power cut: a new store on the same flash
        up = Uplink(s, {})
        out["after_cut"] = state(s)
    link = Link("ok")
    while s.pending:
        up.send(link, 2000, 1, True)
    out["drained"] = link.acked
    out["final"] = state(s)
    return out
"""


def run_both(tmp_path, case: dict) -> dict:
    """Run one case on CPython and on the unix port (own flash folder each); both must agree."""
    folders = {vm: tmp_path / vm for vm in ("cpython", "micropython")}
    for folder in folders.values():
        folder.mkdir()
    code = DRIVER + (
        "\nimport sys\nfolders = json.loads(%r)\n"
        "print(json.dumps(run(folders[sys.implementation.name], json.loads(%r))))\n"
    ) % (json.dumps({k: str(v) for k, v in folders.items()}), json.dumps(case))
    cp, mp = both(code, heapsize=HEAP)
    assert cp == mp, "CPython and the unix port disagree"
    return cp


def seqs(frames_hex: list[str]) -> list[int]:
    return [r["seq"] for h in frames_hex for r in decode(bytes.fromhex(h))["readings"]]


@pytest.mark.parametrize("failure", ["refuse", "no_puback"])
def test_nothing_is_committed_when_the_publish_fails_or_its_puback_never_comes(tmp_path, failure):
    out = run_both(tmp_path, {"count": 30, "wild": False, "steps": [failure, failure], "cut": True})
    assert out["errors"] == [104 if failure == "refuse" else 110] * 2
    assert out["after"] == [{"pending": 30, "next": 30}] * 2, "nothing committed while unacknowledged"
    assert out["after_cut"] == {"pending": 30, "next": 30}, "and nothing after a power cut either"
    assert not out.get("acked")
    if failure == "no_puback":
        assert len(out["wire"]) == 2, "the frame left the board, it was just never acknowledged"
    assert sorted(set(seqs(out["drained"]))) == list(range(30)), "every reading arrives once the link is back"
    assert out["final"] == {"pending": 0, "next": 30}


def test_a_failure_after_good_frames_commits_only_what_was_acknowledged(tmp_path):
    out = run_both(tmp_path, {"count": 60, "wild": False, "steps": ["ok", "no_puback", "ok"], "cut": True})
    first = seqs(out["acked"][:1])
    assert out["sent"][0] == len(first) and first == list(range(len(first)))
    assert out["after"][1] == out["after"][0], "the unacknowledged frame committed nothing"
    acked = seqs(out["acked"])
    assert out["after_cut"]["pending"] == 60 - len(acked)
    assert sorted(set(acked + seqs(out["drained"]))) == list(range(60)), "nothing lost"
    assert not set(acked) & set(seqs(out["drained"])), "nothing acknowledged is sent again"


def test_a_frame_holding_fewer_readings_than_the_batch_commits_only_those(tmp_path):
    out = run_both(tmp_path, {"count": 48, "wild": True, "steps": ["ok"], "cut": True})
    carried = seqs(out["acked"])
    assert 0 < len(carried) < 24, "readings that jump around: a 242-byte frame holds fewer than a batch of 24"
    assert out["sent"] == [len(carried)]
    assert out["after"] == [{"pending": 48 - len(carried), "next": 48}], "only the readings the frame carried"
    assert out["after_cut"] == out["after"][0]
    drained = seqs(out["drained"])
    assert sorted(carried + drained) == list(range(48)), "every seq arrives, exactly once"
    for h in out["acked"] + out["drained"]:
        assert len(bytes.fromhex(h)) <= 242
