"""The board's side of LoRaWAN delivery, pure firmware modules: the airtime budget (transport/airtime.py),
the store read and committed for a link that learns later what arrived (delivery.store_read, store_ack_below), and the delivery
ledger applied by the board (delivery.py) against the back office's own ledger logic over two simulated days
of lossy uplinks."""

from __future__ import annotations

import random

import pytest

from host_tools.backoffice.delivery_ledger import DAY_S, DeliveryLedger, LedgerBudget
from host_tools.codec import lorawan_radio as R
from host_tools.runtime import firmware_module
from host_tools.runtime.parity import both, both_on_flash

airtime = firmware_module("transport.airtime")
store_mod = firmware_module("store")
delivery = firmware_module("delivery")
ledger = firmware_module("ledger")
KEY = bytes(range(32))


def test_airtime_formula_and_budget_on_both_interpreters():
    code = """
import json
from lanterne.transport import airtime as A
b = A.Budget(30000)
out = {"toa": [A.time_on_air_us(n, sf) for sf in (7, 9, 12) for n in (13, 64, 235)],
       "max": [A.max_payload(dr) for dr in range(6)] + [A.max_payload(0, 1), A.max_payload(7)]}
t = 0
air = A.uplink_ms(51, 0)  # SF12, a full frame: 2.8 s
b.record(t, air)
out["closed"] = [b.wait_ms(t + 1000, air), b.wait_ms(t + 99 * air, air), b.wait_ms(t + 100 * air, air)]
for i in range(12):  # as often as the duty cycle allows, until the 30 s cap
    t += 100 * air
    out.setdefault("waits", []).append(b.wait_ms(t, air))
    if b.wait_ms(t, air) == 0:
        b.record(t, air)
out["used"] = b.used_ms(t)
out["day_later"] = b.wait_ms(t + 24 * 3600000, air)
b.closed_for(t + 24 * 3600000, 5000)
out["modem_wait"] = b.wait_ms(t + 24 * 3600000, air)
print(json.dumps(out))
"""
    cp, mp = both(code)
    assert cp == mp
    # Semtech's formula, as the host's independent copy computes it (and the calculator: docs/lorawan.md)
    assert cp["toa"] == [round(R.time_on_air_s(n, sf) * 1e6) for sf in (7, 9, 12) for n in (13, 64, 235)]
    assert cp["max"] == [51, 51, 51, 115, 222, 222, 50, 0]
    air = (airtime.time_on_air_us(64, 12) + 999) // 1000
    assert cp["closed"] == [100 * air - 1000, air, 0]  # 1 %: the airtime, then 99 x the airtime off
    # 30 s a day at 2.8 s an uplink: 10 uplinks, then the cap (-1) until the day has passed
    assert cp["waits"] == [0] * 9 + [-1] * 3 and cp["used"] == 10 * air <= 30000
    assert cp["day_later"] == 0 and cp["modem_wait"] == 5000


def test_store_reads_around_what_is_acknowledged_and_frees_below_a_seq(tmp_path):
    code = """
import json
from lanterne.delivery import store_ack_below, store_read
from lanterne.store import Store
def run(folder):
    s = Store(folder + "/st", capacity_bytes=16384, segment_bytes=4096)
    for i in range(40):
        s.append(bytes([i + 1]) * 30)
    out = {"read": [q for q, _ in store_read(s, 5, 12, budget=1000)], "budget": [q for q, _ in store_read(s, 0, 40, budget=100)],
           "max": [q for q, _ in store_read(s, 30, 99, max_records=3)]}
    s.ack([(20,), (21,), (22,)])  # a run past the head: [20, 23) acknowledged
    out["around"] = [q for q, _ in store_read(s, 18, 26, budget=2000)]
    out["below"] = store_ack_below(s, 21)  # 0..20; 20 was acknowledged already
    out["head"], out["pending"] = s._head, s.pending
    out["after"] = [q for q, _ in store_read(s, 0, 26, budget=2000)]
    s.close()
    again = Store(folder + "/st", capacity_bytes=16384, segment_bytes=4096)  # after a reboot
    out["reboot"] = [again._head, again.pending, [q for q, _ in store_read(again, 0, 25, budget=2000)]]
    return out
"""
    got = both_on_flash(code, "run(folder)", tmp_path)
    assert got["read"] == list(range(5, 12))
    assert got["budget"] == [0, 1, 2]  # 30-byte records in a 100-byte budget
    assert got["max"] == [30, 31, 32]
    assert got["around"] == [18, 19, 23, 24, 25]
    assert got["below"] == 20 and got["head"] == 23 and got["pending"] == 40 - 23  # the run joined the head
    assert got["after"] == [23, 24, 25]
    assert got["reboot"] == [23, 17, [23, 24]]


def simulate(seed, loss=0.2, days=2, per_day=10, sample_min=5, uplink_min=15, frame=8, reboot_at=None, tmp=None):
    """A board (firmware store + delivery) sampling every `sample_min` and sending up to `frame` readings
    every `uplink_min`; `loss` of its uplinks lost; the back office's ledger and budget (host code) answer
    with signed ledgers, delivered in the RX window of the board's next uplink (class A)."""
    rng = random.Random(seed)
    (tmp / f"s{seed}").mkdir()
    path = str(tmp / f"s{seed}")
    st = store_mod.Store(path + "/store", capacity_bytes=262144)
    faults = {}
    dl = delivery.LedgerDelivery(st, "bin-1", lambda: KEY, faults, ledger_file=path + "/ledger.bin")
    back = DeliveryLedger(base=0)
    budget = LedgerBudget(per_day)
    arrived, queued, counter, times, freed_early = [], None, 0, [], []
    for minute in range(0, days * 1440, sample_min):
        t = minute * 60.0
        st.append(bytes([2, minute % 251 + 1, 7]))
        if reboot_at is not None and minute == reboot_at:
            st.close()  # the board restarts: what it had in RAM (in flight, to resend) is gone
            st = store_mod.Store(path + "/store", capacity_bytes=262144)
            dl = delivery.LedgerDelivery(st, "bin-1", lambda: KEY, faults, ledger_file=path + "/ledger.bin")
        if minute % uplink_min:
            continue
        batch = dl.peek(budget=frame * 40, max_records=frame)
        if not batch:
            continue
        dl.taken(batch)
        if queued is not None:
            dl.ledger(queued)
            queued = None
            # the board never frees what the back office does not have
            freed_early += [s for s in range(st._head) if s >= back.next_seq and s not in back._have]
        if rng.random() < loss:
            continue
        for s, _ in batch:
            if back.add(s):
                arrived.append(s)
        summary = back.summary()
        if budget.due(t, summary):
            budget.spend(t, summary)
            counter += 1
            times.append(t)
            queued = ledger.build(KEY, "bin-1", counter, *summary)
    return {"arrived": arrived, "next": back.next_seq, "head": st._head, "appended": st.next_seq, "times": times,
            "freed_early": freed_early, "faults": faults, "duplicates": dl.resent}


@pytest.mark.parametrize("seed", range(6))
def test_every_reading_of_a_lossy_day_arrives_once_and_is_freed(tmp_path, seed):
    got = simulate(seed, tmp=tmp_path)
    first_day = 1440 // 5
    assert len(got["arrived"]) == len(set(got["arrived"]))  # the back office's view: each once (duplicates dropped)
    assert set(range(first_day)) <= set(got["arrived"])  # every reading of the first day arrived...
    assert got["head"] >= first_day  # ...and the board freed them
    assert got["freed_early"] == [] and got["faults"] == {}
    # never more ledger downlinks than the budget in any 24 hours
    assert max(sum(1 for u in got["times"] if t <= u < t + DAY_S) for t in got["times"]) <= 10


def test_a_reboot_loses_nothing(tmp_path):
    got = simulate(11, tmp=tmp_path, reboot_at=700)
    assert set(range(1440 // 5)) <= set(got["arrived"]) and got["head"] >= 1440 // 5
    assert got["freed_early"] == []


def test_a_forged_or_replayed_ledger_frees_nothing(tmp_path):
    st = store_mod.Store(str(tmp_path / "store"), capacity_bytes=65536)
    for _ in range(10):
        st.append(b"\x02\x01\x07")
    faults = {}
    dl = delivery.LedgerDelivery(st, "bin-1", lambda: KEY, faults, ledger_file=str(tmp_path / "ledger.bin"))
    dl.taken(dl.peek(max_records=10))
    forged = ledger.build(bytes(32), "bin-1", 5, 10, 0)
    assert dl.ledger(forged) is False and st._head == 0 and "ledger refused: ledger tag does not verify" in faults["ledger"]
    good = ledger.build(KEY, "bin-1", 5, 6, 0)
    assert dl.ledger(good) is True and st._head == 6 and "ledger" not in faults
    assert dl.ledger(good) is False and "not above 5" in faults["ledger"] and st._head == 6  # replayed
    # after a reboot the counter is remembered (ledger.bin): the same frame is still a replay
    again = delivery.LedgerDelivery(st, "bin-1", lambda: KEY, faults, ledger_file=str(tmp_path / "ledger.bin"))
    assert again.ledger(good) is False and again.counter == 5


def test_the_uplink_step_over_lorawan_commits_only_on_a_ledger(tmp_path):
    # The uplink step (lanterne/uplink.py) with the delivery ledger in front of the store, as a LoRaWAN
    # board runs it: a frame the link put on air commits nothing; the ledger does; a lost one goes again.
    import asyncio

    codec = firmware_module("codec")
    reading = firmware_module("reading")
    uplink = firmware_module("uplink")
    st = store_mod.Store(str(tmp_path / "store"), capacity_bytes=65536)
    packer, r = reading.RecordPacker(), codec.new_reading()
    for i in range(6):
        r[codec.TEMPERATURE] = 150 + i
        st.append(packer.pack(r, 1000 + i, 1, False))
    faults = {}
    dl = delivery.LedgerDelivery(st, "bin-1", lambda: KEY, faults, ledger_file=str(tmp_path / "ledger.bin"))
    up = uplink.Uplink(dl, faults, batch_max=3)

    class Link:
        sent = []

        def max_frame(self, kind):
            return 52  # DR0's 51 bytes + the version byte the FPort carries

        def fits(self, kind, n):
            return True

        async def send(self, kind, frame):
            self.sent.append(bytes(frame))
            return True

    link = Link()
    n1 = asyncio.run(up.send(link, 1010, 1, False))
    n2 = asyncio.run(up.send(link, 1010, 1, False))
    assert (n1, n2) == (3, 3) and st._head == 0 and st.pending == 6 and dl.pending == 0  # on air, nothing committed
    assert asyncio.run(up.send(link, 1010, 1, False)) == 0  # nothing new to send: no frame
    # the back office got the second frame only: seqs 3..5; its ledger lists 0..2 missing
    dl.ledger(ledger.build(KEY, "bin-1", 1, 0, 6, 6, [(0, 3)]))
    assert st._head == 0 and dl.pending == 3
    assert asyncio.run(up.send(link, 1020, 1, False)) == 3  # sent again
    dl.ledger(ledger.build(KEY, "bin-1", 2, 6, 0))
    assert st._head == 6 and st.pending == 0 and dl.pending == 0 and len(link.sent) == 3
