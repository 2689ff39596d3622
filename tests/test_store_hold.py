"""A flash that refuses writes (docs/store.md, "A flash that refuses writes"): the store holds the
readings it could not append in bounded RAM and appends them, in order, once the flash takes
writes again; past the ring the oldest held are dropped, counted (on flash, once it can) and flagged.

The refusal is injected at the store's file seam (its `_open`: each write fails with ENOSPC while
the flash is "full"), on a real folder underneath; the same on a real full filesystem:
test_store_overflow.py (littlefs), test_flash_tmpfs.py (a tmpfs under a virtual board).
"""

from __future__ import annotations

import errno

import pytest

from host_tools.runtime import firmware_module

store_mod = firmware_module("store")


def reading(i: int, n: int = 12) -> bytes:
    return i.to_bytes(4, "little") + bytes((i * 31 + k) & 0xFF for k in range(4, n))


class Refusing:
    """A file whose writes fail with ENOSPC while `flash.full`."""

    def __init__(self, f, flash):
        self.f, self.flash = f, flash

    def write(self, data):
        if self.flash.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def __getattr__(self, attr):
        return getattr(self.f, attr)


@pytest.fixture
def flash(monkeypatch):
    class Flash:
        full = False

    state = Flash()
    real_open = store_mod._open
    monkeypatch.setattr(store_mod, "_open", lambda path, mode: Refusing(real_open(path, mode), state))
    return state


def test_readings_refused_by_a_full_flash_are_appended_in_order_once_it_takes_writes(tmp_path, flash):
    s = store_mod.Store(str(tmp_path / "store"), 65536, 4096)
    assert [s.append(reading(i)) for i in range(5)] == list(range(5))
    flash.full = True
    assert [s.append(reading(i)) for i in range(5, 25)] == [-1] * 20
    assert s.held == 20 and s.stats()["held"] == 20
    assert s.dropped == 0 and not s.overflow and s.last_error == errno.ENOSPC
    assert s.next_seq == 5 and s.pending == 5, "held readings have no seq yet: nothing to send"
    flash.full = False
    assert s.append(reading(25)) == 25, "the held readings went first"
    assert s.held == 0 and s.dropped == 0
    got = s.peek(100000)
    assert [q for q, _ in got] == list(range(26))
    assert [r for _, r in got] == [reading(i) for i in range(26)], "every reading, in sampling order"
    s.close()
    again = store_mod.Store(str(tmp_path / "store"), 65536, 4096)
    assert [r for _, r in again.peek(100000)] == [reading(i) for i in range(26)], "and durable"


def test_past_the_hold_the_oldest_held_are_dropped_counted_on_flash_and_flagged(tmp_path, flash):
    s = store_mod.Store(str(tmp_path / "store"), 65536, 4096, hold_bytes=1024)
    s.append(reading(0))
    flash.full = True
    for i in range(1, 201):
        assert s.append(reading(i)) == -1
    room = 1024 // (12 + 1)  # a held record takes its length + 1 byte
    assert s.held == room
    assert s.dropped == 200 - room and s.overflow, "what the hold could not keep is counted and flagged"
    flash.full = False
    assert s.append(reading(201)) == 1 + room
    assert not s.overflow, "the flag is carried by the first reading appended after the loss"
    kept = [0] + list(range(201 - room, 202))
    assert [r for _, r in s.peek(100000)] == [reading(i) for i in kept], "the newest held, in order"
    s.close()
    again = store_mod.Store(str(tmp_path / "store"), 65536, 4096)
    assert again.dropped == 200 - room, "the count reached the flash once it took writes"
    assert again.next_seq == len(kept)


def test_a_store_without_a_hold_drops_a_refused_reading_at_once(tmp_path, flash):
    s = store_mod.Store(str(tmp_path / "store"), 65536, 4096, hold_bytes=0)
    flash.full = True
    assert s.append(reading(0)) == -1
    assert (s.held, s.dropped, s.overflow) == (0, 1, True)
    flash.full = False
    assert s.append(reading(1)) == 0 and not s.overflow


def test_records_of_every_size_are_held_in_order_within_the_holds_bytes(tmp_path, flash):
    s = store_mod.Store(str(tmp_path / "store"), 1 << 20, 4096, hold_bytes=100)
    assert s._held == [], "nothing taken until the flash refuses a write"
    flash.full = True
    expect: list[bytes] = []
    lost_total = 0
    buf = bytearray(64)
    for i in range(400):
        n = 1 + (i * 7) % 60
        for k in range(n):
            buf[k] = (i + k) & 0xFF
        before = s.dropped
        assert s.append(buf, n) == -1  # a reused buffer and a length, as the app appends
        lost_total += s.dropped - before
        expect.append(bytes(buf[:n]))
        del expect[: s.dropped - before]
        buf[0] ^= 0xFF  # the caller's buffer is reused: the hold has its own copy
        assert s._held == expect and sum(len(r) + 1 for r in expect) <= 100
    assert lost_total == 400 - len(expect) > 0
    assert s.append(bytes(101)) == -1 and s._held == expect, "a record the hold can never keep is lost alone"
    flash.full = False
    assert s.append(b"new") >= 0
    assert [r for _, r in s.peek(1 << 20)] == expect + [b"new"]


def test_an_ack_the_full_flash_refuses_is_counted_and_sent_again_after_a_reboot(tmp_path, flash):
    s = store_mod.Store(str(tmp_path / "store"), 65536, 4096)
    for i in range(3):
        s.append(reading(i))
    batch = s.peek(100000)
    flash.full = True
    assert s.ack(batch) == 3, "committed in RAM: not sent again while the board runs"
    assert (s.errors, s.last_error) == (1, errno.ENOSPC) and s.pending == 0
    flash.full = False
    s.close()
    again = store_mod.Store(str(tmp_path / "store"), 65536, 4096)
    assert [q for q, _ in again.peek(100000)] == [0, 1, 2], "not on flash: sent again, never lost"


def test_a_recovery_the_full_flash_cannot_finish_is_counted_and_the_store_goes_on(tmp_path, flash):
    s = store_mod.Store(str(tmp_path / "store"), 65536, 4096)
    for i in range(3):
        s.append(reading(i))
    s.ack(s.peek(100000)[:1])
    s.close()
    with open(tmp_path / "store" / "ack", "ab") as f:
        f.write(b"\x04\x01")  # a torn entry: the log is to be compacted at the next boot
    flash.full = True
    again = store_mod.Store(str(tmp_path / "store"), 65536, 4096)
    assert (again.errors, again.last_error) == (1, errno.ENOSPC), "the compaction it could not write is counted"
    assert [q for q, _ in again.peek(100000)] == [1, 2]
    assert again.append(reading(3)) == -1 and again.held == 1
    flash.full = False
    assert again.append(reading(4)) == 4
