"""The store's drain order while a backlog drains and fresh readings keep coming (docs/store.md,
"Drain order"), checked exactly at the edges the property tests reach only by chance: max_records
shared between backlog and fresh, a record larger than the budget, the budget left once the
backlog is through, a batch when nothing is pending.
"""

from __future__ import annotations

from host_tools.runtime import firmware_module

Store = firmware_module("store").Store


def interleaved(tmp_path, backlog: int = 30, size: int = 10, share: int = 50):
    """A store with `backlog` readings pending from before, in the mode where readings appended
    from now on are fresh (the first peek found more than a batch waiting)."""
    s = Store(str(tmp_path), 1 << 20, 4096, 0, share)
    for i in range(backlog):
        s.append(bytes([i]) * size)
    first = s.peek(size * 2)
    assert [q for q, _ in first] == [0, 1]
    return s


def seqs(batch):
    return [q for q, _ in batch]


def test_max_records_is_shared_between_fresh_and_backlog(tmp_path):
    s = interleaved(tmp_path)
    for i in range(5):
        s.append(bytes([100 + i]) * 10)  # seqs 30..34: fresh
    batch = s.peek(4096, 0, 6)
    assert seqs(batch) == [0, 1, 2, 30, 31, 32], "3 fresh (50 % of 6), 3 from the backlog, oldest first"


def test_a_backlog_record_larger_than_the_budget_still_comes_alone(tmp_path):
    s = interleaved(tmp_path, backlog=30, size=200)
    s.ack(s.peek(400))  # two big ones sent
    assert seqs(s.peek(100)) == [2], "larger than the budget: alone, rather than never"


def test_once_the_backlog_fits_the_rest_of_the_budget_goes_to_fresh_readings(tmp_path):
    s = interleaved(tmp_path, backlog=4)
    s.ack(s.peek(20))  # 0, 1 sent: the backlog left is 2, 3
    for i in range(10):
        s.append(bytes([100 + i]) * 10)  # seqs 4..13: fresh
    assert seqs(s.peek(4096)) == list(range(2, 14)), "the whole backlog fits: every fresh reading too"
    assert seqs(s.peek(80)) == [2, 3, 4, 5, 6, 7, 8, 9], "fresh 4..7 (half), backlog 2, 3, and what is left: 8, 9"
    assert seqs(s.peek(40)) == [2, 3, 4, 5], "half the budget to fresh, half to the backlog, nothing left"
    assert seqs(s.peek(4096, 0, 6)) == [2, 3, 4, 5, 6, 7], "max 6: fresh 3, the backlog's 2, one more fresh"
    assert seqs(s.peek(30)) == [2, 3, 4], "fresh take 10 of their 15 bytes: the backlog gets the other 20"


def test_nothing_pending_gives_an_empty_batch(tmp_path):
    s = interleaved(tmp_path, backlog=3)
    s.ack(s.peek(4096))
    assert s.pending == 0 and s.peek(4096) == [] and s.peek(4096, 0, 5) == []
