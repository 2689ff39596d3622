"""Property tests of the store's framing and recovery, on CPython and on the MicroPython unix port.

One driver (DRIVER, plain Python that runs on both interpreters) plays a list of operations
against the firmware store: appends of random sizes, peeks with random budgets, acks, clean
reopens, power cuts (a new Store without closing the old one), and damage to the newest
segment the way a cut in the middle of a flash write leaves it (truncated or garbage tail),
or a flipped bit. Hypothesis draws the operations; the checks are what a user of the store
relies on: every appended record comes back unchanged, once acknowledged it never comes back,
batches are ascending and fit the budget, seqs are dense and never name two records. The
unix-port tests play the same operations on MicroPython and expect the very same answers.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_tools.bench.store import compile_mpy
from host_tools.runtime import unix_port
from host_tools.runtime.paths import FIRMWARE

sys.path.insert(0, str(FIRMWARE))

from lanterne import store as store_mod  # noqa: E402

# Runs unchanged on CPython and MicroPython: run(ops, path) -> one answer per operation.
DRIVER = r"""
import os
from binascii import hexlify
from lanterne.store import Store


def record(i, size):
    return bytes([(i * 7 + k * 13 + size) & 0xFF for k in range(size)])


def segments(path):
    return sorted([n for n in os.listdir(path) if n.endswith(".seg")])


def rewrite(path, name, data):
    f = open(path + "/" + name, "wb")
    f.write(data)
    f.close()


def state(s):
    return [s.next_seq, s.pending, s.dropped, s.corrupt, s.overflow]


def run(ops, path):
    out = []
    s = None
    cfg = None
    batch = []
    kept = []
    i = 0
    for op in ops:
        kind = op[0]
        if kind == "open":
            cfg = op[1:]
            s = Store(path, cfg[0], cfg[1], 0, cfg[2])
            out.append(state(s))
        elif kind == "append":
            out.append(s.append(record(i, op[1])))
            i += 1
        elif kind == "peek":
            batch = s.peek(op[1], op[2], op[3])
            out.append([[q, hexlify(r).decode()] for q, r in batch])
        elif kind == "ack":
            # ["ack"]: the whole batch; ["ack", k]: its first k records (what fitted a frame)
            out.append(s.ack(batch if len(op) == 1 else batch[: op[1]]))
        elif kind == "keep":
            # hold on to the last batch, to acknowledge it later, stale ("ackkept")
            kept.append(batch)
            out.append(None)
        elif kind == "ackkept":
            # ["ackkept", i(, k)]: acknowledge held batch i % len(kept) (its first k records)
            b = kept[op[1] % len(kept)] if kept else []
            out.append(s.ack(b if len(op) == 2 else b[: op[2]]))
        elif kind == "reopen":
            s.close()
            s = Store(path, cfg[0], cfg[1], 0, cfg[2])
            out.append(state(s))
        elif kind == "cut":
            s = Store(path, cfg[0], cfg[1], 0, cfg[2])
            out.append(state(s))
        elif kind == "state":
            out.append(state(s))
        elif kind == "files":
            out.append([[n, os.stat(path + "/" + n)[6]] for n in segments(path)])
        else:
            # damage: [kind, which segment from the newest, argument]
            names = segments(path)
            name = names[len(names) - 1 - op[1]]
            f = open(path + "/" + name, "rb")
            data = f.read()
            f.close()
            if kind == "truncate":
                data = data[: op[2]]
            elif kind == "garbage":
                data = data + bytes(op[2])
            elif kind == "flip":
                data = bytearray(data)
                data[op[2]] ^= 0x5A
            rewrite(path, name, data)
            out.append(None)
    return out
"""

_ns: dict = {}
exec(compile(DRIVER, "store_driver", "exec"), _ns)


def run_cpython(ops: list, path: str | Path) -> list:
    return _ns["run"](ops, str(path))


def run_upy(ops: list, path: str | Path, heapsize: int = 100 * 1024, mpy_path: Path | None = None) -> list:
    code = DRIVER + "\nimport sys, json\nprint(json.dumps(run(json.loads(sys.stdin.read()), %r)))\n" % str(
        path
    )
    return unix_port.run_json(
        code, stdin=json.dumps(ops).encode(), heapsize=heapsize, path=[mpy_path] if mpy_path else None
    )


def record(i: int, size: int) -> bytes:
    return bytes((i * 7 + k * 13 + size) & 0xFF for k in range(size))


def delivered(answers: list) -> list[tuple[int, bytes]]:
    """(seq, record) of every batch among the driver's answers, in order."""
    return [
        (seq, bytes.fromhex(r))
        for a in answers
        if isinstance(a, list) and a and isinstance(a[0], list) and isinstance(a[0][0], int)
        for seq, r in a
    ]


@pytest.fixture(scope="module")
def store_mpy(tmp_path_factory) -> Path:
    """The store compiled to .mpy as deploy puts it on a board (it then fits a 64 KB heap)."""
    return compile_mpy(tmp_path_factory.mktemp("mpy"))


# -- the model -------------------------------------------------------------------------------


class Model:
    """What a user may rely on, checked against the answers of one run of the driver."""

    def __init__(self, fresh_share: int):
        self.fresh_share = fresh_share
        self.records: dict[int, bytes] = {}  # seq -> record, appended and durable
        self.acked: set[int] = set()
        self.appends = 0
        self.last_batch: list[int] = []

    def unacked(self) -> list[int]:
        return sorted(set(self.records) - self.acked)

    def check(self, ops: list, answers: list) -> None:
        for op, answer in zip(ops, answers, strict=True):
            kind = op[0]
            if kind in ("open", "reopen", "cut"):
                next_seq, pending, dropped, corrupt, overflow = answer
                assert next_seq == len(self.records), "seqs are dense and continue after a restart"
                assert pending == len(self.unacked())
                assert (dropped, corrupt, overflow) == (0, 0, False)
            elif kind == "append":
                seq = answer
                assert seq == len(self.records), "append returns the next seq"
                self.records[seq] = record(self.appends, op[1])
                self.appends += 1
            elif kind == "peek":
                self.check_batch(op, answer)
            elif kind == "ack":
                sent = self.last_batch if len(op) == 1 else self.last_batch[: op[1]]
                fresh = [s for s in sent if s not in self.acked]
                assert answer == len(fresh), "ack commits exactly the records it is given"
                self.acked.update(sent)

    def check_batch(self, op: list, batch: list) -> None:
        _, budget, overhead, max_records = op
        seqs = [s for s, _ in batch]
        unacked = self.unacked()
        for seq, hex_record in batch:
            assert bytes.fromhex(hex_record) == self.records[seq], "a record comes back unchanged"
            assert seq not in self.acked, "an acknowledged record never comes back"
        assert seqs == sorted(set(seqs)), "a batch is ascending, no repeats"
        assert bool(batch) == bool(unacked), "nothing pending iff the batch is empty"
        if len(batch) > 1:
            assert sum(len(bytes.fromhex(r)) + overhead for _, r in batch) <= budget
            if max_records:
                assert len(batch) <= max_records
        room = budget * (100 - self.fresh_share) // 100
        if unacked and self.fresh_share < 100 and len(self.records[unacked[0]]) + overhead <= room:
            assert unacked[0] in seqs, "the oldest pending record is always in the batch"
        self.last_batch = seqs


def drain_ops(n: int = 60) -> list:
    return [op for _ in range(n) for op in (["peek", 4096, 0, 0], ["ack"])]


def check_drained(model: Model, ops: list, answers: list) -> None:
    model.check(ops, answers)
    assert not model.unacked(), "a drain delivers everything pending"


# -- strategies ------------------------------------------------------------------------------

sizes = st.one_of(st.integers(1, 40), st.integers(1, 254))
operation = st.one_of(
    st.tuples(st.just("append"), sizes).map(list),
    st.tuples(st.just("append"), sizes).map(list),
    st.tuples(st.just("peek"), st.integers(1, 600), st.integers(0, 4), st.integers(0, 12)).map(list),
    st.just(["ack"]),
    st.tuples(st.just("ack"), st.integers(0, 6)).map(list),
    st.just(["reopen"]),
    st.just(["cut"]),
)
configs = st.tuples(st.sampled_from([600, 1024, 4096]), st.sampled_from([0, 25, 50, 100]))


def scenario(draw_ops, segment, share):
    return [["open", 1 << 22, segment, share]] + draw_ops


# -- CPython ---------------------------------------------------------------------------------


def test_crc16_is_ccitt_false():
    assert store_mod.crc16(b"123456789", 0, 9) == 0x29B1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=80), configs)
def test_any_mix_of_appends_drains_and_restarts(ops, config):
    segment, share = config
    ops = scenario(ops, segment, share) + drain_ops()
    with tempfile.TemporaryDirectory() as tmp:
        answers = run_cpython(ops, tmp)
    check_drained(Model(share), ops, answers)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(20, 200),
    st.lists(st.integers(0, 4), min_size=1, max_size=12),
    st.sampled_from([25, 50, 100]),
    st.sampled_from(["cut", "reopen"]),
)
def test_acknowledged_fresh_readings_never_come_back_after_a_restart(
    backlog, fresh_per_batch, share, restart
):
    """A backlog drains interleaved with fresh readings; a restart mid-way repeats nothing acknowledged."""
    ops = [["open", 1 << 22, 1024, share]] + [["append", 12]] * backlog
    for fresh in fresh_per_batch:
        ops += [["append", 12]] * fresh + [["peek", 120, 0, 0], ["ack"]]
    ops += [[restart]] + drain_ops(backlog // 8 + 20)
    with tempfile.TemporaryDirectory() as tmp:
        answers = run_cpython(ops, tmp)
    check_drained(Model(share), ops, answers)


# Regression (found by test_any_mix_of_appends_drains_and_restarts): a batch peeked during an
# interleaved drain skips seqs (backlog run [0], fresh run [2]: seq 1 is not in it). The split
# between the runs lived only in RAM until a fresh record was acknowledged, so after a restart
# ack() saw one cursor and moved head past the whole batch: it committed seq 1, never sent, and
# that reading was lost. Now ack() commits only the seqs it is given, whatever the state.
SKIPPED_SEQ_CASES = {
    "reopen": [
        ["append", 1],
        ["append", 3],
        ["peek", 1, 0, 0],
        ["append", 1],
        ["peek", 4, 0, 0],
        ["reopen"],
        ["ack"],
    ],
    "cut": [
        ["append", 1],
        ["append", 3],
        ["peek", 1, 0, 0],
        ["append", 1],
        ["peek", 4, 0, 0],
        ["cut"],
        ["ack"],
    ],
    # the backlog part acknowledged first, then a restart, then the whole batch again
    "prefix, reopen, ack": [
        ["append", 1],
        ["append", 3],
        ["append", 3],
        ["peek", 1, 0, 0],
        ["append", 1],
        ["peek", 4, 0, 0],
        ["ack", 1],
        ["reopen"],
        ["ack"],
    ],
    # appends and two restarts between the peek and its ack, then the state read back
    "restarts and appends": [
        ["append", 1],
        ["append", 3],
        ["peek", 1, 0, 0],
        ["append", 1],
        ["peek", 4, 0, 0],
        ["reopen"],
        ["append", 2],
        ["cut"],
        ["append", 2],
        ["ack"],
        ["reopen"],
        ["ack"],
        ["state"],
    ],
}


@pytest.mark.parametrize("case", sorted(SKIPPED_SEQ_CASES))
def test_ack_after_a_restart_commits_only_the_seqs_of_its_batch(case, tmp_path):
    ops = scenario(SKIPPED_SEQ_CASES[case], 600, 25) + drain_ops(5)
    answers = run_cpython(ops, tmp_path)
    batch = ops.index(["peek", 4, 0, 0])
    seqs = [q for q, _ in answers[batch]]
    skipped = set(range(seqs[0], seqs[-1])) - set(seqs)
    assert seqs[0] == 0 and skipped, "backlog run and fresh run, seqs skipped between them"
    check_drained(Model(25), ops, answers)
    assert skipped <= {q for q, _ in delivered(answers[batch + 1 :])}, (
        "the skipped seqs are sent after the ack"
    )


def test_a_batch_peeked_before_a_restart_commits_only_its_own_seqs(tmp_path):
    def open_store():
        return store_mod.Store(str(tmp_path), 1 << 20, 600, 0, 25)

    s = open_store()
    s.append(b"a")
    s.append(b"bbb")
    assert [q for q, _ in s.peek(1)] == [0], "more than a batch waiting: later readings are fresh"
    s.append(b"c")
    batch = s.peek(4)
    assert [q for q, _ in batch] == [0, 2], "backlog run [0], fresh run [2]"
    s.close()
    s = open_store()
    assert s.ack(batch) == 2
    assert s.pending == 1
    assert s.peek(4096) == [(1, b"bbb")], "the seq the batch skipped is still pending"
    assert s.ack(batch) == 0, "a repeated ack commits nothing"
    s.close()
    s = open_store()
    assert s.pending == 1 and s.peek(4096) == [(1, b"bbb")], "and so it is after another restart"
    assert s.ack(s.peek(4096)) == 1 and s.pending == 0


def test_a_stale_batch_that_fits_neither_range_is_left_pending_not_committed(tmp_path):
    def open_store():
        return store_mod.Store(str(tmp_path), 1 << 20, 600, 0, 25)

    s = open_store()
    for r in (b"a", b"bbb"):
        s.append(r)
    s.peek(1)
    s.append(b"c")
    stale = s.peek(4)
    assert [q for q, _ in stale] == [0, 2]
    s.close()
    s = open_store()  # the split is gone; a new one is set at 4 by the next peek
    s.append(b"d")
    assert [q for q, _ in s.peek(1)] == [0]
    s.append(b"e")
    batch = s.peek(4)
    assert [q for q, _ in batch] == [0, 4]
    assert s.ack(batch) == 2  # acknowledged: [0, 1) and [4, 5)
    # seq 2 of the stale batch would need a third acknowledged range: it stays pending
    assert s.ack(stale) == 0 and s.pending == 3
    got = []
    while batch := s.peek(4096):
        got += batch
        s.ack(batch)
    assert got == [(1, b"bbb"), (2, b"c"), (3, b"d")], "sent again, nothing lost"


def test_an_ack_entry_that_breaks_head_split_fresh_keeps_only_its_head(tmp_path):
    s = store_mod.Store(str(tmp_path), 1 << 20, 600, 0)
    for i in range(10):
        s.append(bytes([i]) * 12)
    s.close()
    payload = bytearray(12)
    for o, v in ((0, 2), (4, 6), (8, 4)):  # head 2, split 6 > fresh 4: never written so
        payload[o : o + 4] = v.to_bytes(4, "little")
    crc = store_mod.crc16(payload, 0, 12)
    (tmp_path / "ack").write_bytes(bytes([12]) + payload + crc.to_bytes(2, "little"))
    s = store_mod.Store(str(tmp_path), 1 << 20, 600, 0)
    assert s.pending == 8, "nothing past head is taken for acknowledged"
    assert s.peek(4096)[0][0] == 2


def acked_set(s) -> set[int]:
    """What the store holds for acknowledged (or dropped): [0, head) and [split, fresh)."""
    return set(range(s._head)) | set(range(s._split, s._fresh))


# The operations above plus stale acks: "keep" holds the last batch, "ackkept" acknowledges a
# held one later, after other peeks and acks changed the state it was peeked in.
stale_operation = st.one_of(
    operation,
    st.just(["keep"]),
    st.tuples(st.just("ackkept"), st.integers(0, 7)).map(list),
    st.tuples(st.just("ackkept"), st.integers(0, 7), st.integers(0, 6)).map(list),
)
# Long runs, mostly appends and sends (a peek and its ack): enough acks for the ack log to be
# compacted, and enough data for the oldest segment to be dropped with small capacities.
_send = st.tuples(st.just("send"), st.integers(1, 600), st.integers(0, 4), st.integers(0, 12)).map(list)
_append = st.tuples(st.just("append"), sizes).map(list)
stale_runs = st.tuples(
    st.lists(_append, max_size=60),  # a backlog first, often: the drain is then interleaved
    st.lists(
        st.integers(0, 9).flatmap(lambda k: _append if k < 3 else _send if k < 6 else stale_operation),
        min_size=20,
        max_size=150,
    ),
).map(lambda t: t[0] + t[1])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stale_runs,
    st.sampled_from([600, 1024]),
    st.sampled_from([2, 3, 64]),
    st.sampled_from([0, 25, 50, 100]),
)
def test_an_ack_never_commits_a_seq_it_was_not_given(ops, segment, slots, share):
    """White box, every state: before and after restarts, compactions of the ack log, drops.

    An ack adds to the acknowledged set only seqs of its batch, and returns how many; the
    last batch peeked, acknowledged with no stale ack in between, is committed in full;
    nothing else (peek, restart) changes the set, and an append only by the records it drops.
    At the end every record was either given to an ack or counted as dropped.
    """
    with tempfile.TemporaryDirectory() as tmp:
        run = StaleAckRun(lambda: store_mod.Store(tmp, slots * segment, segment, 0, share))
        for op in ops:
            run.step(op)
        for _ in range(200):
            if not run.s.pending:
                break
            run.step(["peek", 4096, 0, 0])
            run.step(["ack"])
        s = run.s
        assert s.pending == 0, "a drain delivers everything pending"
        assert set(range(s.next_seq)) == run.given_to_ack | run.dropped, (
            "every record was given to an ack or counted as dropped"
        )
        assert len(run.dropped) == s.dropped
        s.close()


class StaleAckRun:
    """Plays operations on a Store in this process, checking its acknowledged set after each."""

    def __init__(self, open_store):
        self.open_store = open_store
        self.s = open_store()
        self.records: dict[int, bytes] = {}
        self.batch: list = []
        self.kept: list = []
        self.given_to_ack: set[int] = set()
        self.dropped: set[int] = set()
        self.exact = True  # no stale ack since the last peek: acking `batch` commits all of it

    def step(self, op: list) -> None:
        if op[0] == "send":
            self.step(["peek"] + op[1:])
            self.step(["ack"])
            return
        s, kind = self.s, op[0]
        before, nxt = acked_set(s), s.next_seq
        if kind == "append":
            was = s.dropped
            rec = record(len(self.records), op[1])
            assert s.append(rec) == nxt
            self.records[nxt] = rec
            after = acked_set(s)
            assert before <= after and len(after - before) == s.dropped - was, "an append only drops"
            self.dropped |= after - before
        elif kind == "peek":
            self.batch = s.peek(op[1], op[2], op[3])
            self.exact = True
            assert acked_set(s) == before
            for q, r in self.batch:
                assert r == self.records[q] and q not in before, "an acknowledged record never comes back"
        elif kind == "keep":
            self.kept.append(self.batch)
        elif kind in ("ack", "ackkept"):
            if kind == "ack":
                b = self.batch if len(op) == 1 else self.batch[: op[1]]
            else:
                b = self.kept[op[1] % len(self.kept)] if self.kept else []
                b = b if len(op) == 2 else b[: op[2]]
            n = s.ack(b)
            seqs = {q for q, _ in b}
            self.given_to_ack |= seqs
            after = acked_set(s)
            assert before <= after
            assert after - before <= seqs, "an ack commits no seq it was not given"
            assert len(after - before) == n, "ack returns how many it committed"
            if kind == "ack" and self.exact:
                assert seqs <= after, "the last batch peeked is committed in full"
            else:
                self.exact = False
        else:  # reopen, or cut: a new Store without closing the old one
            if kind == "reopen":
                s.close()
            s = self.s = self.open_store()
            assert acked_set(s) == before and s.next_seq == nxt, "a restart keeps the acknowledged set"
        assert s.pending == s.next_seq - len(acked_set(s)), "pending is what is not acknowledged"


def layout(sizes: list[int], segment: int) -> list[tuple[int, int]]:
    """(segment index, end offset of the frame) of each record, per the documented format."""
    out, seg, size = [], -1, segment
    for n in sizes:
        if size + n + 3 > segment:
            seg, size = seg + 1, 4
        size += n + 3
        out.append((seg, size))
    return out


damage = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("garbage"), st.integers(1, 300)),
    st.tuples(st.just("flip"), st.floats(0, 1)),
)


def torn_tail_case(sizes, segment, dmg):
    """Ops that append, cut the power, damage the newest segment, restart, drain, append more."""
    kind, amount = dmg
    places = layout(sizes, segment)
    newest = places[-1][0]
    in_newest = [i for i, (s, _) in enumerate(places) if s == newest]
    file_size = places[-1][1]
    survivors = [i for i, (s, _) in enumerate(places) if s < newest]
    if kind == "truncate":
        keep = int(amount * file_size)
        arg = keep
        survivors += [i for i in in_newest if places[i][1] <= keep]
    elif kind == "garbage":
        arg = amount
        survivors += in_newest
    else:
        offset = 4 + int(amount * (file_size - 5))  # a byte of some frame, not the header
        arg = offset
        survivors += [i for i in in_newest if places[i][1] <= offset]
    ops = [["open", 1 << 22, segment, 50]] + [["append", n] for n in sizes]
    ops += [[kind, 0, arg], ["cut"]] + drain_ops(len(sizes) + 2)
    ops += [["append", 5], ["append", 6], ["cut"], ["peek", 4096, 0, 0]]
    return ops, survivors


def check_torn_tail(sizes, ops, survivors, answers):
    cut = len(sizes) + 2
    assert answers[cut][0] == len(survivors), "after the cut, seqs continue right after the last whole record"
    assert delivered(answers[cut + 1 : -4]) == [(k, record(i, sizes[i])) for k, i in enumerate(survivors)], (
        "exactly the whole records before the damage come back, unchanged, in order"
    )
    assert answers[-4:-2] == [len(survivors), len(survivors) + 1], "new appends continue the seqs"
    assert delivered(answers[-1:]) == [
        (len(survivors), record(len(sizes), 5)),
        (len(survivors) + 1, record(len(sizes) + 1, 6)),
    ], "records appended after the recovery survive the next cut"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=120), st.sampled_from([600, 1024]), damage)
def test_torn_or_damaged_tail_is_never_delivered(sizes, segment, dmg):
    ops, survivors = torn_tail_case(sizes, segment, dmg)
    with tempfile.TemporaryDirectory() as tmp:
        answers = run_cpython(ops, tmp)
    check_torn_tail(sizes, ops, survivors, answers)


def test_damage_inside_an_older_segment_loses_only_the_rest_of_that_segment(tmp_path):
    answers = run_cpython([["open", 1 << 22, 600, 50]] + [["append", 12]] * 200 + [["files"]], tmp_path)
    files = answers[-1]
    assert len(files) >= 4
    base, next_base = int(files[1][0][:8], 16), int(files[2][0][:8], 16)
    # flip a byte of the 10th frame of the second-oldest segment (frames of 12 bytes take 15)
    ops = [["open", 1 << 22, 600, 50], ["flip", len(files) - 2, 4 + 9 * 15 + 3]] + drain_ops(20) + [["state"]]
    answers = run_cpython(ops, tmp_path)
    lost = set(range(base + 9, next_base))
    assert [seq for seq, _ in delivered(answers)] == sorted(set(range(200)) - lost), (
        "only the damaged frame and the rest of its segment are lost"
    )
    next_seq, pending, _, corrupt, _ = answers[-1]
    assert (next_seq, pending, corrupt) == (200, 0, len(lost)), (
        "counted as corrupt, and the drain is not stalled"
    )


def test_a_segment_file_lost_under_the_store_is_skipped_not_fatal(tmp_path):
    s = store_mod.Store(str(tmp_path), 1 << 20, 600, 0)
    for i in range(120):
        s.append(bytes([i]) * 12)
    second = sorted(p for p in tmp_path.glob("*.seg"))[1]
    second.unlink()
    got = []
    while batch := s.peek(240):
        got += [seq for seq, _ in batch]
        s.ack(batch)
    lost = s.corrupt
    assert lost > 0 and len(got) == 120 - lost and s.pending == 0, "the drain goes on past the hole"
    assert s.append(b"still works") == 120


def test_ack_log_torn_tail_keeps_the_last_whole_entry(tmp_path):
    s = store_mod.Store(str(tmp_path), 1 << 20, 1024, 0)
    for i in range(50):
        s.append(bytes([i]) * 12)
    s.ack(s.peek(12 * 20))
    s.close()
    with open(tmp_path / "ack", "ab") as f:
        f.write(b"\x04\x99\x99")  # an entry cut short
    s = store_mod.Store(str(tmp_path), 1 << 20, 1024, 0)
    assert s.pending == 30
    assert s.peek(12)[0] == (20, bytes([20]) * 12)
    s.ack(s.peek(12 * 5))
    s.close()
    s = store_mod.Store(str(tmp_path), 1 << 20, 1024, 0)
    assert s.pending == 25, "acks after the recovery are persisted past the torn entry"


def test_length_argument_appends_a_prefix_of_a_reused_buffer(tmp_path):
    s = store_mod.Store(str(tmp_path), 1 << 20, 1024, 0)
    buf = bytearray(b"abcdefghij")
    assert s.append(buf, 4) == 0
    buf[0:4] = b"WXYZ"
    assert s.append(buf, 6) == 1
    assert s.peek() == [(0, b"abcd"), (1, b"WXYZef")]
    with pytest.raises(ValueError):
        s.append(b"")
    with pytest.raises(ValueError):
        s.append(bytes(255))


# -- MicroPython unix port -------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=60), configs)
def test_unix_port_gives_the_same_answers(store_mpy, ops, config):
    segment, share = config
    ops = scenario(ops, segment, share) + drain_ops()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        on_upy = run_upy(ops, a, mpy_path=store_mpy)
        on_cpython = run_cpython(ops, b)
    assert on_upy == on_cpython
    check_drained(Model(share), ops, on_upy)


@pytest.mark.parametrize("case", sorted(SKIPPED_SEQ_CASES))
def test_unix_port_ack_after_a_restart_commits_only_the_seqs_of_its_batch(store_mpy, case):
    ops = scenario(SKIPPED_SEQ_CASES[case], 600, 25) + drain_ops(5)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        on_upy = run_upy(ops, a, mpy_path=store_mpy)
        on_cpython = run_cpython(ops, b)
    assert on_upy == on_cpython
    check_drained(Model(25), ops, on_upy)


def given_to_ack(ops: list, answers: list) -> set[int]:
    """Every seq the driver passed to an ack, stale batches included."""
    seqs: set[int] = set()
    batch: list[int] = []
    kept: list[list[int]] = []
    for op, answer in zip(ops, answers, strict=True):
        if op[0] == "peek":
            batch = [q for q, _ in answer]
        elif op[0] == "keep":
            kept.append(batch)
        elif op[0] == "ack":
            seqs |= set(batch if len(op) == 1 else batch[: op[1]])
        elif op[0] == "ackkept" and kept:
            b = kept[op[1] % len(kept)]
            seqs |= set(b if len(op) == 2 else b[: op[2]])
    return seqs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(stale_operation, max_size=60), configs)
def test_unix_port_stale_acks_give_the_same_answers(store_mpy, ops, config):
    segment, share = config
    ops = scenario(ops, segment, share) + drain_ops() + [["state"]]
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        on_upy = run_upy(ops, a, mpy_path=store_mpy)
        on_cpython = run_cpython(ops, b)
    assert on_upy == on_cpython
    next_seq, pending, dropped, _, _ = on_upy[-1]
    assert (pending, dropped) == (0, 0)
    assert given_to_ack(ops, on_upy) == set(range(next_seq)), "nothing is committed without being sent"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 60), min_size=1, max_size=120), st.sampled_from([600, 1024]), damage)
def test_unix_port_recovers_torn_tails(store_mpy, sizes, segment, dmg):
    ops, survivors = torn_tail_case(sizes, segment, dmg)
    with tempfile.TemporaryDirectory() as tmp:
        answers = run_upy(ops, tmp, mpy_path=store_mpy)
    check_torn_tail(sizes, ops, survivors, answers)


def test_flash_written_by_micropython_reads_on_cpython_and_back(tmp_path, store_mpy):
    ops = [["open", 1 << 20, 1024, 50]] + [["append", 1 + i % 40] for i in range(120)]
    ops += [["peek", 500, 0, 0], ["ack"]]
    run_upy(ops, tmp_path, mpy_path=store_mpy)
    s = store_mod.Store(str(tmp_path), 1 << 20, 1024, 0)
    assert s.next_seq == 120
    first = s.peek(500)
    assert first and first[0][1] == record(first[0][0], 1 + first[0][0] % 40)
    s.ack(first)
    s.append(b"from cpython")
    s.close()
    answers = run_upy([["open", 1 << 20, 1024, 50]] + drain_ops(30), tmp_path, mpy_path=store_mpy)
    got = delivered(answers)
    assert got[-1] == (120, b"from cpython")
    assert [q for q, _ in got] == list(range(first[-1][0] + 1, 121))
    assert answers[0][0] == 121


def test_appending_allocates_nothing_on_the_unix_port(tmp_path, store_mpy):
    code = f"""
import gc
from lanterne.store import Store
s = Store({str(tmp_path)!r}, 65536, 4096, 0)
rec = bytearray(12)
s.append(rec)
i = before = 0
gc.collect()
gc.disable()
before = gc.mem_alloc()
for i in range(100):
    rec[0] = i
    s.append(rec)
print(gc.mem_alloc() - before)
"""
    assert unix_port.run_json(code, heapsize=64 * 1024, path=[store_mpy]) == 0
