"""The store's write discipline (docs/store.md, "Write discipline"): what must be on flash, and when.

A power cut can come at any instant, and on the board only what was synced survives it. So the
order in which the store's writes, syncs, closes, renames and removes reach the filesystem is
checked at that seam (the store's file functions and its `os`), on a real folder underneath:
- an append returns only after its frame was synced;
- an ack returns only after its ack-log entry was synced, and before any segment is removed;
- a compaction writes ack.tmp, syncs and closes it, and only then renames it over the log;
- a drop (the store full) syncs the entry that records it before the oldest segment goes.
"""

from __future__ import annotations

import os

import pytest

from host_tools.runtime import firmware_module

store_mod = firmware_module("store")


class Recorded:
    """A file of the store's, passed through to the real one, its writes and close recorded."""

    def __init__(self, log, f, name, mode=""):
        self.log, self.f, self.name, self.mode = log, f, name, mode

    def write(self, data):
        self.log.append(("write", self.name))
        return self.f.write(data)

    def close(self):
        self.log.append(("close", self.name))
        if self.mode == "rb":
            self.log.append(("closed for reading", self.name))
        return self.f.close()

    def __getattr__(self, attr):
        return getattr(self.f, attr)


class RecordedOs:
    def __init__(self, log):
        self.log = log

    def rename(self, a, b):
        self.log.append(("rename", os.path.basename(a), os.path.basename(b)))
        os.rename(a, b)

    def remove(self, p):
        self.log.append(("remove", os.path.basename(p)))
        os.remove(p)

    def __getattr__(self, attr):
        return getattr(os, attr)


@pytest.fixture
def log(monkeypatch):
    ops: list = []
    real_open = store_mod._open

    def recorded_open(path, mode):
        ops.append(("open", os.path.basename(path), mode))
        return Recorded(ops, real_open(path, mode), os.path.basename(path), mode)

    def recorded_sync(f):
        ops.append(("sync", f.name))
        os.fsync(f.fileno())

    monkeypatch.setattr(store_mod, "_open", recorded_open)
    monkeypatch.setattr(store_mod, "_sync", recorded_sync)
    monkeypatch.setattr(store_mod, "os", RecordedOs(ops))
    return ops


def test_an_append_returns_once_its_frame_is_synced(tmp_path, log):
    s = store_mod.Store(str(tmp_path), 1 << 20, 300, 0)
    for i in range(200):
        del log[:]
        s.append(bytes([i]) * 5)
        writes = [op for op in log if op[0] == "write"]
        assert writes and log[-1] == ("sync", writes[-1][1]), f"append {i}: {log}"


def test_an_ack_returns_once_its_entry_is_synced_and_before_segments_go(tmp_path, log):
    s = store_mod.Store(str(tmp_path), 1 << 20, 300, 0)
    for i in range(200):
        s.append(bytes([i]) * 5)
    removed = 0
    while s.pending:
        batch = s.peek(100)
        del log[:]
        s.ack(batch)
        first_remove = next((k for k, op in enumerate(log) if op[0] == "remove"), len(log))
        synced = [k for k, op in enumerate(log) if op == ("sync", "ack") or op == ("rename", "ack.tmp", "ack")]
        assert synced and synced[0] < first_remove, log
        removed += sum(1 for op in log if op[0] == "remove")
    assert removed > 0


def test_a_compaction_is_written_synced_and_closed_before_it_replaces_the_log(tmp_path, log):
    s = store_mod.Store(str(tmp_path), 1 << 20, 4096, 0)
    for i in range(40):
        s.append(bytes([i]) * 5)
    compactions = 0
    for _ in range(30):
        batch = s.peek(4096, 0, 1)
        del log[:]
        s.ack(batch)
        if ("rename", "ack.tmp", "ack") in log:
            compactions += 1
            tmp_ops = [op for op in log if "ack.tmp" in op[1:]]
            assert tmp_ops == [("open", "ack.tmp", "wb"), ("write", "ack.tmp"), ("sync", "ack.tmp"), ("close", "ack.tmp"),
                               ("rename", "ack.tmp", "ack")], log
            assert ("close", "ack") in log[: log.index(("rename", "ack.tmp", "ack"))], "the old log closed first"
    assert compactions >= 1


def test_a_drop_is_recorded_and_synced_before_the_oldest_segment_goes(tmp_path, log):
    s = store_mod.Store(str(tmp_path), 2 * 300, 300, 0)  # two segments: the third drops the oldest
    for i in range(200):
        del log[:]
        s.append(bytes([i]) * 5)
        if any(op[0] == "remove" for op in log):
            first_remove = next(k for k, op in enumerate(log) if op[0] == "remove")
            assert ("sync", "ack") in log[:first_remove] or ("rename", "ack.tmp", "ack") in log[:first_remove], log
    assert s.dropped > 0


def test_every_file_opened_for_reading_is_closed(tmp_path, log):
    # littlefs has few file handles: a read that leaves its file open would exhaust them
    s = store_mod.Store(str(tmp_path), 1 << 20, 300, 0)
    for i in range(200):
        s.append(bytes([i]) * 5)
    s.ack(s.peek(50))
    s.close()
    del log[:]
    s = store_mod.Store(str(tmp_path), 1 << 20, 300, 0)  # recovery scans the segments, reads the ack log
    while batch := s.peek(100):
        s.ack(batch)
    reads = [op[1] for op in log if op[0] == "open" and op[2] == "rb"]
    closed = [op[1] for op in log if op[0] == "closed for reading"]
    assert len(reads) > 5
    assert sorted(reads) == sorted(closed), "every file opened for reading is closed, as often as it was opened"
