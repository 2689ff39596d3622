"""The commit-after-ack rule: a reading is committed in the store only once the broker acknowledged
the frame that carried it, and only the readings that frame carried. On CPython and the unix port.

The seam is the link object the app holds (firmware/lanterne/transport/link.py: `await
link.send(READINGS, frame)` is True once the far end took the frame, MQTT's PUBACK; False when the
link went down on the way). The fake links below stand in for it; the store, the record format, the encoder and the uplink step are the firmware's.
Frames are read back with the host decoder, as the back office reads them.
"""

from __future__ import annotations

import json

import pytest

from host_tools.codec import decode
from host_tools.runtime.parity import both_on_flash

# The modules are compiled from source here (the board runs them precompiled from ROMFS and fits a
# 64 KB heap: tests/test_store_props.py and `lanterne bench heap` check that).
HEAP = 256 * 1024

# Runs unchanged on CPython and MicroPython. run(path, case) -> a JSON-ready dict.
DRIVER = r"""
import asyncio
import json
from lanterne import codec
from lanterne.reading import RecordPacker, unpack
from lanterne.store import Store
from lanterne.uplink import Uplink


class Link:
    # The link the app holds. mode "ok": PUBACK for every frame; "refuse": the link is down
    # before anything is sent; "no_puback": the frame goes out, its PUBACK never comes (the link
    # goes down waiting); "airtime": over the airtime budget (LoRaWAN), nothing sent.
    # max_frame: the largest frame the link takes now (LoRaWAN: the data rate's).
    def __init__(self, mode="ok", max_frame=242):
        self.mode = mode
        self.largest = max_frame
        self.wire = []  # frames that left the board, acknowledged or not
        self.acked = []  # frames the broker acknowledged

    def max_frame(self, kind):
        assert kind == 0  # READINGS
        return self.largest

    def fits(self, kind, nbytes):
        assert kind == 0 and nbytes <= self.largest
        return self.mode != "airtime"

    async def send(self, kind, payload):
        assert kind == 0 and len(payload) <= self.largest
        if self.mode == "refuse":
            return False
        self.wire.append(bytes(payload).hex())
        if self.mode == "no_puback":
            return False
        self.acked.append(bytes(payload).hex())
        return True


def send(up, link, now, boot, synced):
    return asyncio.run(up.send(link, now, boot, synced))


_seed = [12345]


def rand(n):
    _seed[0] = (_seed[0] * 1103515245 + 12345) & 0x7FFFFFFF
    return (_seed[0] >> 8) % n


def fill(store, count, wild, bad=()):
    # wild: every field jumps around (a frame then holds few readings); else slowly varying.
    # bad: indexes where an unreadable record (not a reading record: 5 bytes) is stored instead.
    packer = RecordPacker()
    r = codec.new_reading()
    for i in range(count):
        if i in bad:
            store.append(b"\x09" * 5)
            continue
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
    fill(s, case["count"], case["wild"], case.get("bad", ()))
    faults = {}
    up = Uplink(s, faults, case["budget"]) if "budget" in case else Uplink(s, faults)
    for step in case["steps"]:
        mode, _, largest = step.partition("@")
        link = Link(mode, int(largest or 242))
        n = send(up, link, 2000, 1, True)
        if n < 0:
            out.setdefault("errors", []).append(mode)
        else:
            out.setdefault("sent", []).append(n)
        out.setdefault("after", []).append(state(s))
        out.setdefault("wire", []).extend(link.wire)
        out.setdefault("acked", []).extend(link.acked)
        out.setdefault("faults", []).append(sorted(faults.values()))
        out.setdefault("held", []).append(len(up.batch))
    if case.get("cut"):
        s = Store(path, 1 << 20, 4096, 0)  # power cut: a new store on the same flash
        up = Uplink(s, {})
        out["after_cut"] = state(s)
    link = Link("ok")
    while s.pending:
        if case.get("packing"):
            # the frame holds as many readings as the codec packs into the largest EU868 payload
            peeked = s.peek(24 * 28, 0, 24)
            readings = [unpack(rec, codec.new_reading(), q, 2000, 1, True) for q, rec in peeked]
            fits = codec.Encoder(242).encode(readings, 0, len(readings), 242)
            out.setdefault("packing", []).append([send(up, link, 2000, 1, True), fits, len(peeked)])
        else:
            out.setdefault("drain_sent", []).append(send(up, link, 2000, 1, True))
    out["drained"] = link.acked
    out["drain_faults"] = sorted(faults.values())
    out["final"] = state(s)
    return out
"""


def run_both(tmp_path, case: dict) -> dict:
    """Run one case on CPython and on the unix port (own flash folder each); both must agree."""
    return both_on_flash(DRIVER, "run(folder, json.loads(%r))" % json.dumps(case), tmp_path, heapsize=HEAP)


def seqs(frames_hex: list[str]) -> list[int]:
    return [r["seq"] for h in frames_hex for r in decode(bytes.fromhex(h))["readings"]]


@pytest.mark.parametrize("failure", ["refuse", "no_puback", "airtime"])
def test_nothing_is_committed_when_the_publish_fails_or_its_puback_never_comes(tmp_path, failure):
    out = run_both(tmp_path, {"count": 30, "wild": False, "steps": [failure, failure], "cut": True})
    assert out["errors"] == [failure] * 2
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


def test_a_frame_carries_a_whole_batch_of_24_when_it_fits(tmp_path):
    out = run_both(tmp_path, {"count": 50, "wild": False, "steps": ["ok"]})
    assert out["sent"] == [24] and seqs(out["acked"]) == list(range(24)), "24 slowly varying readings fit 242 bytes"
    assert out["drain_sent"] == [24, 2]
    assert seqs(out["drained"]) == list(range(24, 50))


def test_each_frame_holds_what_the_codec_packs_into_242_bytes(tmp_path):
    out = run_both(tmp_path, {"count": 120, "wild": True, "steps": [], "packing": True})
    assert len(out["packing"]) >= 8
    for sent, fits, peeked in out["packing"]:
        assert sent == fits and peeked == min(24, peeked), (sent, fits, peeked)
    assert sorted(seqs(out["drained"])) == list(range(120))


@pytest.mark.parametrize("bad", [[3], [0], [1], [0, 1, 5]])
def test_an_unreadable_record_is_skipped_and_reported_the_rest_delivered(tmp_path, bad):
    steps = ["ok"] * 8
    out = run_both(tmp_path, {"count": 8, "wild": False, "steps": steps, "bad": bad})
    good = [i for i in range(8) if i not in bad]
    assert seqs(out["acked"]) == good, "every readable reading is sent, in order, once"
    assert sum(out["sent"]) == len(good), "send counts only readings sent"
    assert out["after"][-1]["pending"] == 0, "the unreadable records are not retried forever"
    reported = {f for fs in out["faults"] for f in fs}
    assert reported == {f"store: record {b} unreadable, skipped" for b in bad}, "each one reported"
    # each frame carries only readable records, consecutive up to the first unreadable one
    for h in out["acked"]:
        got = seqs([h])
        assert got == list(range(got[0], got[0] + len(got)))


def test_a_reading_no_frame_can_hold_is_skipped_and_reported(tmp_path):
    out = run_both(tmp_path, {"count": 3, "wild": True, "steps": ["ok"] * 3, "budget": 6})
    assert out["sent"] == [0, 0, 0] and not out["acked"], "nothing fits a 6-byte frame"
    assert out["after"][-1]["pending"] == 0, "not retried forever"
    assert out["faults"] == [[f"uplink: reading {i} does not fit a 6-byte frame, skipped"] for i in range(3)], (
        "each reading reported"
    )


def test_with_a_small_budget_frames_of_one_reading_still_commit_and_deliver(tmp_path):
    out = run_both(tmp_path, {"count": 12, "wild": True, "steps": ["ok"] * 3, "budget": 24})
    assert out["sent"] == [1, 1, 1], "a 24-byte frame holds one wild reading"
    assert seqs(out["acked"]) == [0, 1, 2]
    assert sorted(seqs(out["acked"]) + seqs(out["drained"])) == list(range(12))


def test_a_link_taking_smaller_frames_now_gets_them_and_nothing_is_skipped(tmp_path):
    # LoRaWAN at a slow data rate takes 51-byte frames: the readings go in more, smaller frames.
    out = run_both(tmp_path, {"count": 30, "wild": True, "steps": ["ok@51"] * 3})
    assert out["acked"] and all(len(bytes.fromhex(h)) <= 51 for h in out["acked"])
    assert out["sent"] == [len(seqs([h])) for h in out["acked"]] and not out.get("errors")
    assert sorted(seqs(out["acked"]) + seqs(out["drained"])) == list(range(30)) and not out["drain_faults"]


def test_a_reading_too_large_for_the_link_now_waits_for_a_larger_frame(tmp_path):
    # A frame a few bytes long (a data rate too slow for even one reading) is no reason to drop one.
    out = run_both(tmp_path, {"count": 3, "wild": True, "steps": ["ok@6"] * 2})
    assert out["errors"] == ["ok", "ok"] and not out.get("acked"), "nothing sent, nothing committed"
    assert out["after"] == [{"pending": 3, "next": 3}] * 2 and out["faults"] == [[], []]
    assert sorted(seqs(out["drained"])) == [0, 1, 2], "all three go once the link takes larger frames"


def test_the_readings_a_backlog_needed_go_back_to_the_heap(tmp_path):
    # 24 reusable readings are ~4.6 KB of a 64 KB board's heap: held while a backlog drains,
    # given back when the frames are small again (a board that keeps up sends one or two).
    out = run_both(tmp_path, {"count": 30, "wild": False, "steps": ["ok", "ok", "ok"]})
    assert out["sent"] == [24, 6, 0]
    assert out["held"] == [24, 6, 6], "as many readings as the last frame needed, no more"
