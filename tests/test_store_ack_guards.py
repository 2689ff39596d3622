"""The store's commit guards: what it must refuse to take for acknowledged. CPython and the unix port.

- an ack-log entry of a whole, valid length whose CRC does not match is damage, not a commit:
  the readings it claims stay pending after a reopen (and acks after it are persisted again);
- an ack naming a seq that was never appended is refused (ValueError) and commits nothing, so
  the reading that later gets that seq is delivered like any other.
"""

from __future__ import annotations

import pytest

from host_tools.runtime.parity import both_on_flash

DRIVER = r"""
import json
from lanterne.store import Store, crc16


def put32(b, o, v):
    for i in range(4):
        b[o + i] = (v >> (8 * i)) & 0xFF


def drain(s):
    got = []
    while s.pending:
        batch = s.peek(4096)
        got.extend([q for q, _ in batch])
        s.ack(batch)
    return got


def bad_crc_entry(folder, length, claim):
    # Open a store of 30 readings, acknowledge the first 2, then append to the ack log one
    # entry of a valid length that claims `claim` readings acknowledged, with a wrong CRC.
    s = Store(folder, 1 << 20, 1024, 0)
    for i in range(30):
        s.append(bytes([i]) * 12)
    s.ack(s.peek(24))
    s.close()
    e = bytearray(length + 3)
    e[0] = length
    put32(e, 1, claim)  # head
    if length > 4:
        put32(e, 5, claim)  # split
        put32(e, 9, claim)  # fresh
    if length > 12:
        put32(e, 13, 0)  # dropped
        put32(e, 17, 0)  # overflow until
    crc = crc16(e, 1, length + 1) ^ 0x0100  # one bit off
    e[length + 1] = crc & 0xFF
    e[length + 2] = crc >> 8
    f = open(folder + "/ack", "ab")
    f.write(e)
    f.close()
    s = Store(folder, 1 << 20, 1024, 0)
    out = {"pending": s.pending, "first": s.peek(12)[0][0]}
    s.ack(s.peek(12 * 3))
    s.close()
    s = Store(folder, 1 << 20, 1024, 0)
    out["pending_after_ack"] = s.pending
    out["drained"] = drain(s)
    return out


def ack_unknown(folder, acked_first):
    s = Store(folder, 1 << 20, 1024, 0)
    for i in range(5):
        s.append(bytes([i]) * 8)
    if acked_first:
        drain(s)
    out = {}
    for batch in ([(5, b"x")], [(4, bytes([4]) * 8), (5, b"x")], [(6, b"x")]):
        try:
            s.ack(batch)
            out.setdefault("accepted", []).append(batch[-1][0])
        except ValueError:
            out.setdefault("refused", []).append(batch[-1][0])
    out["pending"] = s.pending
    out["seq"] = s.append(bytes([5]) * 8)
    s.close()
    s = Store(folder, 1 << 20, 1024, 0)
    out["pending_after_reopen"] = s.pending
    out["drained"] = drain(s)
    return out
"""


def run_both(tmp_path, call: str) -> dict:
    return both_on_flash(DRIVER, call, tmp_path, heapsize=256 * 1024)


@pytest.mark.parametrize("length", [4, 12, 20])
@pytest.mark.parametrize("claim", [30, 1 << 20])
def test_an_ack_log_entry_with_a_bad_crc_commits_nothing(tmp_path, length, claim):
    out = run_both(tmp_path, f"bad_crc_entry(folder, {length}, {claim})")
    assert out["pending"] == 28, "the damaged entry is ignored: only the 2 acknowledged readings are gone"
    assert out["first"] == 2
    assert out["pending_after_ack"] == 25, "acks after the damaged entry are persisted"
    assert out["drained"] == list(range(5, 30))


@pytest.mark.parametrize("acked_first", [False, True])
def test_an_ack_of_a_seq_never_appended_is_refused_and_commits_nothing(tmp_path, acked_first):
    out = run_both(tmp_path, f"ack_unknown(folder, {acked_first})")
    assert out["refused"] == [5, 5, 6] and "accepted" not in out
    assert out["pending"] == (0 if acked_first else 5), "a refused ack commits nothing, not even its valid seqs"
    assert out["seq"] == 5
    assert out["pending_after_reopen"] == (1 if acked_first else 6)
    assert out["drained"] == ([5] if acked_first else [0, 1, 2, 3, 4, 5]), "the reading that got seq 5 is delivered"
