"""A flash that refuses writes (docs/store.md, "A flash that refuses writes"): the store holds the
readings it could not append in a bounded RAM ring and appends them, in order, once the flash takes
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
hold_mod = firmware_module("hold")


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


def test_records_of_every_size_wrap_around_the_ring_intact():
    h = hold_mod.Hold(100)
    out = bytearray(256)
    expect: list[bytes] = []
    lost_total = 0
    for i in range(400):
        rec = bytes((i + k) & 0xFF for k in range(1 + (i * 7) % 60))
        lost = h.put(rec, len(rec))
        lost_total += lost
        expect.append(rec)
        del expect[: lost]
        assert h.count == len(expect) and h.used == sum(len(r) + 1 for r in expect) <= 100
        if i % 3 == 0:  # take the oldest now and then, as the store does once the flash takes writes
            n = h.first(out)
            assert bytes(out[:n]) == expect.pop(0)
            h.pop()
    while h.count:
        n = h.first(out)
        assert bytes(out[:n]) == expect.pop(0)
        h.pop()
    assert not expect and h.used == 0 and h.at == 0
    assert lost_total > 0
    assert hold_mod.Hold(10).put(bytes(10), 10) == 1, "a record the ring can never hold is lost alone"
