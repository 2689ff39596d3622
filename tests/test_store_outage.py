"""Broker outage: readings pile up in the store with no uplink, then drain in order once it returns.

The firmware store runs on the MicroPython unix port at the board's heap, compiled from
source as it is deployed, with its default capacity and segment size. `run_outage` is the
scenario; a later MQTT integration test can run the same readings through the broker.
"""

from __future__ import annotations

from host_tools.runtime import unix_port

BOARD_HEAP = 100 * 1024

# MicroPython side of reading(): stands in for a 12-byte record, its index in the first 4 bytes.
READING = r"""
def reading(i):
    b = bytearray(12)
    for k in range(4):
        b[k] = (i >> (8 * k)) & 0xFF
    for k in range(4, 12):
        b[k] = (i * 31 + k) & 0xFF
    return b
"""

OUTAGE = (
    READING
    + r"""
import sys
from binascii import hexlify
from lanterne.store import Store

N, BUDGET, FRESH_EVERY, FRESH = %(n)d, %(budget)d, %(fresh_every)d or 1, %(fresh)d

s = Store(%(path)r)
for i in range(N):
    if s.append(reading(i)) != i:
        raise SystemExit("append %%d failed" %% i)
print("outage", s.next_seq, s.pending, s.dropped)
# link up: drain, one batch per frame budget; optionally fresh readings keep coming
i = N
batches = 0
while True:
    batch = s.peek(BUDGET)
    if batch:
        print("B " + " ".join(["%%d:%%s" %% (q, hexlify(r).decode()) for q, r in batch]))
        s.ack(batch)
        batches += 1
    elif i >= N + FRESH:
        break
    if i < N + FRESH and (not batch or batches %% FRESH_EVERY == 0):
        print("F %%d %%d" %% (s.append(reading(i)), i))
        i += 1
print("done", s.next_seq, s.pending, s.dropped, s.stats()["segments"])
"""
)


def reading(i: int) -> bytes:
    return i.to_bytes(4, "little") + bytes((i * 31 + k) & 0xFF for k in range(4, 12))


def run_outage(path, n: int, budget: int, fresh_every: int = 0, fresh: int = 0) -> dict:
    """Append n readings with the link down, then drain; return what the uplink saw."""
    code = OUTAGE % {"path": str(path), "n": n, "budget": budget, "fresh_every": fresh_every, "fresh": fresh}
    lines = unix_port.run(code, heapsize=BOARD_HEAP, timeout=300).splitlines()
    out = {"batches": [], "fresh_appended": {}, "outage": None, "done": None}
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind == "B":
            out["batches"].append(
                [(int(q), bytes.fromhex(r)) for q, r in (x.split(":") for x in rest.split())]
            )
        elif kind == "F":
            seq, index = map(int, rest.split())
            out["fresh_appended"][seq] = (index, len(out["batches"]))
        elif kind in ("outage", "done"):
            out[kind] = [int(x) for x in rest.split()]
    return out


def test_ten_thousand_readings_stored_through_an_outage_arrive_in_order(tmp_path):
    got = run_outage(tmp_path / "store", 10_000, budget=240)
    assert got["outage"] == [10_000, 10_000, 0], "all 10 000 kept while the link was down, none dropped"
    delivered = [rec for batch in got["batches"] for rec in batch]
    assert [seq for seq, _ in delivered] == list(range(10_000)), "each exactly once, oldest first"
    assert all(record == reading(seq) for seq, record in delivered), "unchanged"
    assert all(sum(len(r) for _, r in batch) <= 240 for batch in got["batches"]), "every batch fits the frame"
    assert len(got["batches"]) <= 10_000 * 12 // 240 + 1, "batches are full"
    next_seq, pending, dropped, segments = got["done"]
    assert (next_seq, pending, dropped) == (10_000, 0, 0)
    assert segments <= 1, "acknowledged segments are deleted"


def test_fresh_readings_are_not_starved_by_the_backlog(tmp_path):
    got = run_outage(tmp_path / "store", 3_000, budget=240, fresh_every=3, fresh=60)
    backlog_batches = 3_000 * 12 // 240
    assert len(got["fresh_appended"]) == 60
    for seq, (index, after_batches) in got["fresh_appended"].items():
        batch_index = next(b for b, batch in enumerate(got["batches"]) if any(q == seq for q, _ in batch))
        assert batch_index == after_batches, f"fresh reading {index} goes out in the very next batch"
    during_backlog = [s for s, (_, b) in got["fresh_appended"].items() if b < backlog_batches - 5]
    assert len(during_backlog) >= 40, "most fresh readings arrived while the backlog was still draining"
    delivered = [rec for batch in got["batches"] for rec in batch]
    seqs = [seq for seq, _ in delivered]
    assert sorted(seqs) == list(range(3_060)), "backlog and fresh readings each delivered exactly once"
    backlog = [s for s in seqs if s < 3_000]
    assert backlog == sorted(backlog), "the backlog drains in order"
    fresh = [s for s in seqs if s >= 3_000]
    assert fresh == sorted(fresh), "fresh readings go in order"
    assert all(batch == sorted(batch) for batch in got["batches"]), "each batch ascending by seq"
    assert all(record == reading(got["fresh_appended"].get(seq, (seq,))[0]) for seq, record in delivered)
    assert got["done"][1:3] == [0, 0]
