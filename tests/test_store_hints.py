"""The drain cursors' resume hints are a shortcut only: every batch is the same with or without them.

A hint says where a cursor stopped (seq, segment base, byte offset) so that the next read need not
start its segment over. Here the fresh cursor stops at byte offset 148 of its segment just before
the backlog cursor crosses into the segment whose base is seq 148: a hint matched on the wrong
field would send the backlog to offset 148's neighbour in the wrong file, end its batch early and
then skip a whole segment as damaged.
"""

from __future__ import annotations

from host_tools.runtime import firmware_module

Store = firmware_module("store").Store


def test_a_cursor_crossing_into_a_segment_whose_base_equals_the_other_cursors_offset(tmp_path):
    for hints in (True, False):
        folder = tmp_path / str(hints)
        s = Store(str(folder), 1 << 20, 300, 0, 50)  # 1-byte records: 4-byte frames, 74 per segment
        for i in range(300):
            s.append(bytes([i & 0xFF]))
        assert sorted(p.name for p in folder.glob("*.seg"))[:3] == ["00000000.seg", "0000004a.seg", "00000094.seg"]

        def peek(budget, s=s, hints=hints):
            if not hints:
                s._hints[:] = [-1, -1, 0, -1, -1, 0]
            batch = s.peek(budget)
            s.ack(batch)
            return [q for q, _ in batch]

        assert peek(2) == [0, 1]  # more than a batch waiting: readings appended from now on are fresh
        assert peek(72) == list(range(2, 74))
        assert peek(70) == list(range(74, 144))
        for i in range(32):
            s.append(bytes([i]))  # 300..331, after the backlog's 296..299 in segment 296: offset 148 at the end
        assert peek(64) == list(range(144, 176)) + list(range(300, 332)), "32 fresh, then 32 of the backlog"
        rest = []
        while s.pending:
            rest += peek(4096)
        assert rest == list(range(176, 300)) and s.corrupt == 0
