"""Alarms first on a LoRaWAN-only board, on the unix port (firmware/lanterne/delivery.py: the delivery
ledger keeps the alarms-first bookkeeping; app.py hands it each reading with an alarm flag).

tests/test_lorawan_board.py shows it on a whole virtual board with its modem and network server.
These tests hold the choices below it: the real store, delivery ledger, uplink step (lanterne/uplink.py)
and codec, with the LoRaWAN link replaced by a scripted one (a DR0 frame of 51 bytes, what it was sent,
an uplink lost on purpose) and a small back office that answers with signed ledgers (lanterne/ledger.py).
What a city's engineer checks: a reading with a fault flag sampled while a backlog waits goes up in a
frame of its own ahead of that backlog (and ahead of what a ledger asked to be sent again); every reading
reaches the back office exactly once; the store ends empty.
"""

from __future__ import annotations

import json

import pytest

from host_tools.codec.decoder import decode
from host_tools.runtime import unix_port

SETUP = """
import asyncio, binascii, json, os
from lanterne import codec, ledger
from lanterne.assets import ALARM_FLAGS
from lanterne.delivery import LedgerDelivery, ALARMS
from lanterne.reading import RecordPacker
from lanterne.store import Store
from lanterne.uplink import Uplink

KEY = bytes(range(32))
DEV = "bin-1"

class Link:
    # LoRaWAN as the uplink step sees it: DR0's 51 bytes (+ the version byte in the FPort); each frame
    # recorded; `lose` frames (their indexes) never reach the back office
    def __init__(self):
        self.frames = []
        self.lose = ()
    def max_frame(self, kind):
        return 52
    def fits(self, kind, nbytes):
        return nbytes <= 52
    async def send(self, kind, payload):
        self.frames.append(binascii.hexlify(bytes(payload)).decode())
        return True

class Office:
    # the back office: what arrived, and the ledger it signs (next, span, seen, missing ranges)
    def __init__(self):
        self.have = set()
        self.counter = 0
    def got(self, seqs):
        for s in seqs:
            self.have.add(s)
    def ledger(self):
        nxt = 0
        while nxt in self.have:
            nxt += 1
        hi = max(self.have)
        ranges = []
        s = nxt
        while s <= hi:
            if s in self.have:
                s += 1
                continue
            a = s
            while s <= hi and s not in self.have:
                s += 1
            ranges.append((a, s - a))
        self.counter += 1
        span = hi + 1 - nxt if hi >= nxt else 0
        return ledger.build(KEY, DEV, self.counter, nxt, span, span, ranges)

class Board:
    def __init__(self, folder, confirmed=False):
        os.mkdir(folder)
        self.store = Store(folder + "/st", capacity_bytes=32768, segment_bytes=4096)
        self.faults = {}
        self.dl = LedgerDelivery(self.store, DEV, lambda: KEY, self.faults, confirmed, ledger_file=folder + "/ledger.bin")
        self.uplink = Uplink(self.dl, self.faults, batch_max=12)
        self.link = Link()
        self.packer = RecordPacker()
        self.r = codec.new_reading()
        self.carried = []  # the seqs of each frame the link took, as the delivery ledger was told
        taken = self.dl.taken
        def spy(batch):
            self.carried.append([s for s, _r in batch])
            return taken(batch)
        self.dl.taken = spy  # (the uplink step calls its outbox's taken)
        self.office = Office()
    def sample(self, flags):
        # what app.sample_task does with a reading: store it; an alarm goes to the delivery ledger
        r = self.r
        r[codec.TEMPERATURE] = 215
        r[codec.STATUS] = flags
        seq = self.store.append(self.packer.pack(r, 1000, 1, True))
        if flags & ALARM_FLAGS:
            self.dl.alarm(seq)
        return seq
    def uplink_once(self):
        # one uplink, as app.drain does it; the back office gets it unless it is to be lost
        n = asyncio.run(self.uplink.send(self.link, 1000, 1, True))
        if n > 0 and len(self.link.frames) - 1 not in self.link.lose:
            self.office.got(self.carried[-1])
        return n
    def drain(self, limit=40):
        while self.dl.pending and limit:
            self.uplink_once()
            limit -= 1
    def ledger(self):
        return self.dl.ledger(self.office.ledger())
    def result(self):
        return {"frames": self.link.frames, "carried": self.carried, "pending": self.store.pending,
                "have": sorted(self.office.have), "faults": sorted(self.faults)}

TEMP_FAULT = 1  # codec status bit 0: temperature_fault (an alarm)
TAMPER = 1 << 6
UNSYNCED = 1 << 9  # clock_unsynced: information, not an alarm
"""

SCENARIOS = """
def backlog_then_alarms(folder):
    b = Board(folder + "/a")
    for i in range(10):
        b.sample(UNSYNCED)  # 0..9: the backlog (the budget closed, the modem away ...)
    b.sample(TEMP_FAULT)  # 10, 11: the temperature sensor fails
    b.sample(TEMP_FAULT | UNSYNCED)
    b.sample(UNSYNCED)  # 12
    b.link.lose = (0,)  # the alarm frame is lost on the air
    b.uplink_once()
    b.uplink_once()  # a frame of the backlog
    b.ledger()  # the back office's ledger: 10 and 11 never arrived
    b.sample(TAMPER)  # 13: tamper, sampled while the resends and the rest of the backlog wait
    b.drain()
    b.ledger()  # everything arrived: the store is freed
    out = b.result()
    out["ledger_frees_all"] = b.store.pending
    return out

def confirmed(folder):
    # lorawan_confirmed: the network's ACK is the delivery (taken commits at once)
    b = Board(folder + "/c", confirmed=True)
    for i in range(8):
        b.sample(0)
    b.sample(TEMP_FAULT)  # 8
    b.sample(0)  # 9
    b.sample(TAMPER)  # 10
    b.sample(0)  # 11
    b.drain()
    return b.result()

def many_alarms(folder):
    # a sensor gone for good: every reading an alarm; at most ALARMS go ahead of the backlog
    b = Board(folder + "/m")
    for i in range(5):
        b.sample(0)
    for i in range(ALARMS + 6):
        b.sample(TEMP_FAULT)
    b.drain()
    b.ledger()
    out = b.result()
    out["alarms_max"] = ALARMS
    return out

def sensor_gone(folder):
    # a sensor gone for good and a reading a frame: each frame finds a new alarm waiting. Those sent
    # ahead of the backlog are bounded (the in-order cursor must pass them to forget them): then the
    # backlog moves again
    b = Board(folder + "/g")
    for i in range(5):
        b.sample(0)
    for i in range(45):
        b.sample(TEMP_FAULT)
        b.uplink_once()
    b.drain()
    b.ledger()
    return b.result()

def run(folder):
    return {"a": backlog_then_alarms(folder), "c": confirmed(folder), "m": many_alarms(folder), "g": sensor_gone(folder)}
"""


@pytest.fixture(scope="module")
def got(tmp_path_factory):
    folder = tmp_path_factory.mktemp("alarms")
    return unix_port.run_json(SETUP + SCENARIOS + f"\nprint(json.dumps(run({json.dumps(str(folder))})))\n")


def frame_readings(hexframe):
    return decode(bytes.fromhex(hexframe))["readings"]


def test_what_each_frame_carried_is_what_the_back_office_decodes(got):
    for case in ("a", "c", "m", "g"):
        run = got[case]
        assert len(run["frames"]) == len(run["carried"])
        for frame, carried in zip(run["frames"], run["carried"], strict=True):
            assert [r["seq"] for r in frame_readings(frame)] == carried


def test_an_alarm_goes_ahead_of_the_backlog_and_ahead_of_the_resends_each_reading_once(got):
    a = got["a"]
    frames = [frame_readings(f) for f in a["frames"]]
    # the first uplink carries only the two fault readings, sampled after a backlog of ten
    assert [r["seq"] for r in frames[0]] == [10, 11]
    assert all("temperature_fault" in r["status"] for r in frames[0])
    # then the backlog, in order, without them; the clock_unsynced flag alone makes no alarm
    assert frames[1][0]["seq"] == 0 and all("temperature_fault" not in r["status"] for r in frames[1])
    # the alarm frame was lost; the next ledger showed it (10, 11 missing, or older than what it has):
    # they go again; the tamper reading sampled
    # afterwards still goes first, in a frame of its own, then 10 and 11 again, then the rest in order
    after_ledger = [r["seq"] for f in frames[2:] for r in f]
    assert [r["seq"] for r in frames[2]] == [13] and "tamper" in frames[2][0]["status"]
    assert after_ledger[1:3] == [10, 11]
    # every reading sent exactly once but for the lost frame's two; all arrived; the store freed
    sent = [s for c in a["carried"] for s in c]
    assert sorted(sent) == sorted(list(range(14)) + [10, 11])
    assert a["have"] == list(range(14))
    assert a["ledger_frees_all"] == 0 and a["faults"] == []


def test_with_confirmed_uplinks_an_alarm_first_never_holds_the_backlog_back(got):
    c = got["c"]
    frames = [[r["seq"] for r in frame_readings(f)] for f in c["frames"]]
    assert frames[0] == [8, 10]
    # the rest in order; a reading the store cannot commit out of order goes again (at worst a
    # duplicate, dropped by seq on the host), nothing is skipped, and the store ends empty
    rest = [s for f in frames[1:] for s in f]
    assert [s for s in rest if s not in (8, 10)] == [0, 1, 2, 3, 4, 5, 6, 7, 9, 11]
    assert set(s for f in frames for s in f) == set(range(12))
    assert c["pending"] == 0


def test_alarms_beyond_the_limit_go_in_order_each_once(got):
    m = got["m"]
    n = m["alarms_max"]
    sent = [s for c in m["carried"] for s in c]
    assert sorted(sent) == list(range(5 + n + 6))  # each exactly once
    # the first frames carry the first ALARMS alarm readings (5 .. 5 + ALARMS - 1) only, ahead of the
    # five readings of the backlog; the alarms beyond the limit follow the backlog in order
    early = sent[:n]
    assert early == list(range(5, 5 + n))
    assert sent[n:] == [0, 1, 2, 3, 4] + list(range(5 + n, 5 + n + 6))
    assert len(m["frames"]) > 2  # (51-byte frames: the alarms took more than one)
    assert m["pending"] == 0


def test_a_sensor_gone_for_good_does_not_hold_the_backlog_back_forever(got):
    g = got["g"]
    frames = g["carried"]
    # each new fault reading went alone, ahead of the five waiting, until 32 had gone ahead of them
    assert frames[:32] == [[s] for s in range(5, 37)]
    # then the backlog, whatever alarms keep coming; each reading exactly once, all freed
    assert frames[32][:5] == [0, 1, 2, 3, 4]
    sent = [s for c in frames for s in c]
    assert sorted(sent) == list(range(50)) and g["have"] == list(range(50))
    assert g["pending"] == 0
