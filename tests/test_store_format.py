"""The store's flash format is the one docs/store.md documents, byte for byte, both ways.

A board's flash outlives its firmware: what one version wrote, the next must read. So the bytes are
checked against the document with references written here from the document alone (the CRC is
Python's own `binascii.crc_hqx`, CRC-16/CCITT-FALSE), the store must read a folder built by hand
the same way, and its ack log must hold the documented entries.
"""

from __future__ import annotations

import binascii
import struct

import pytest

from host_tools.runtime import firmware_module

store_mod = firmware_module("store")
Store = store_mod.Store


def crc(data: bytes) -> int:
    return binascii.crc_hqx(data, 0xFFFF)


def frame(seq: int, record: bytes) -> bytes:
    n = bytes([len(record)])
    return n + record + struct.pack("<H", crc(struct.pack("<I", seq) + n + record))


def segment(base: int, records: list[bytes]) -> bytes:
    return b"LS\x01\x00" + b"".join(frame(base + i, r) for i, r in enumerate(records))


def entry(head: int, split: int | None = None, fresh: int | None = None, dropped: int | None = None,
          overflow_until: int | None = None) -> bytes:
    fields = [head] + [v for v in (split, fresh, dropped, overflow_until) if v is not None]
    payload = struct.pack(f"<{len(fields)}I", *fields)
    return bytes([len(payload)]) + payload + struct.pack("<H", crc(payload))


def records(count: int, start: int = 0) -> list[bytes]:
    return [bytes([(start + i) & 0xFF]) * (1 + (start + i) % 40) for i in range(count)]


def test_crc_is_ccitt_false():
    assert store_mod.crc16(b"123456789", 0, 9) == 0x29B1 == crc(b"123456789")
    assert store_mod.frame_crc(0x12345678, b"abc", 3) == crc(struct.pack("<I", 0x12345678) + b"\x03abc")


def test_segments_are_written_as_documented(tmp_path):
    s = Store(str(tmp_path), 1 << 20, 600, 0)
    recs = records(60)
    assert [s.append(r) for r in recs] == list(range(60))
    s.close()
    # frames go into a segment while they fit in 600 bytes; the next starts a segment at its seq
    expected, base, current = {}, 0, []
    for seq, r in enumerate(recs):
        if len(segment(base, current + [r])) > 600:
            expected[base], base, current = current, seq, []
        current.append(r)
    expected[base] = current
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(f"{b:08x}.seg" for b in expected)
    for b, rs in expected.items():
        assert (tmp_path / f"{b:08x}.seg").read_bytes() == segment(b, rs)


def test_a_folder_built_from_the_document_is_read(tmp_path):
    (tmp_path / "00000000.seg").write_bytes(segment(0, records(20)))
    (tmp_path / "00000014.seg").write_bytes(segment(20, records(15, 20)))
    (tmp_path / "ack").write_bytes(entry(3) + entry(5))
    s = Store(str(tmp_path), 1 << 20, 4096, 0)
    assert (s.next_seq, s.pending) == (35, 30)
    got = s.peek(4096)
    assert got == [(q, r) for q, r in enumerate(records(35)) if q >= 5]
    assert s.append(b"next") == 35


def test_a_split_entry_and_a_full_entry_are_read(tmp_path):
    (tmp_path / "00000000.seg").write_bytes(segment(0, records(30)))
    (tmp_path / "ack").write_bytes(entry(2, 10, 14))  # [0, 2) and [10, 14) acknowledged
    s = Store(str(tmp_path), 1 << 20, 4096, 0)
    assert s.pending == 30 - 2 - 4
    seqs = []
    while batch := s.peek(4096):
        seqs += [q for q, _ in batch]
        s.ack(batch)
    assert sorted(seqs) == [q for q in range(30) if not (q < 2 or 10 <= q < 14)]
    (tmp_path / "ack").write_bytes(entry(0, 0, 0, 7, 40))
    s = Store(str(tmp_path), 1 << 20, 4096, 0)
    assert (s.dropped, s.overflow, s.pending) == (7, True, 30)


@pytest.mark.parametrize("version", [0, 2, 0xFF])
def test_a_segment_of_another_format_version_is_not_read(tmp_path, version):
    data = bytearray(segment(0, records(5)))
    data[2] = version
    (tmp_path / "00000000.seg").write_bytes(bytes(data))
    s = Store(str(tmp_path), 1 << 20, 4096, 0)
    assert (s.next_seq, s.pending, s.peek(4096)) == (0, 0, [])


@pytest.mark.parametrize("magic", [b"LT", b"MS", b"\x00\x00"])
def test_a_segment_without_the_magic_is_not_read(tmp_path, magic):
    (tmp_path / "00000000.seg").write_bytes(magic + segment(0, records(5))[2:])
    assert Store(str(tmp_path), 1 << 20, 4096, 0).next_seq == 0


def test_the_ack_log_holds_the_documented_entries(tmp_path):
    s = Store(str(tmp_path), 1 << 20, 4096, 0)
    for r in records(40):
        s.append(r)
    s.ack(s.peek(4096, 0, 3))  # seqs 0..2
    assert (tmp_path / "ack").read_bytes() == entry(3)
    s.ack(s.peek(4096, 0, 2))
    assert (tmp_path / "ack").read_bytes() == entry(3) + entry(5)
    s.close()
    s = Store(str(tmp_path), 1 << 20, 4096, 0)
    assert s.pending == 35 and s.peek(4096)[0][0] == 5


def test_compaction_writes_one_full_entry(tmp_path):
    s = Store(str(tmp_path), 1 << 20, 4096, 0)
    for r in records(40):
        s.append(r)
    sizes = []
    for _ in range(20):
        s.ack(s.peek(4096, 0, 1))
        sizes.append(len((tmp_path / "ack").read_bytes()))
    # 7 bytes per entry up to 119 (17 entries), then the compaction: 23 bytes, then 7 more each
    assert sizes == [7 * k for k in range(1, 18)] + [23, 30, 37]
    # split and fresh at 40: with more than a batch waiting, readings appended from now on are fresh
    assert (tmp_path / "ack").read_bytes() == entry(18, 40, 40, 0, 0) + entry(19) + entry(20)
    assert not (tmp_path / "ack.tmp").exists()


def test_seqs_past_16_bits_are_written_and_read_in_all_4_bytes(tmp_path):
    base = 0x01020304
    (tmp_path / f"{base:08x}.seg").write_bytes(segment(base, records(10)))
    (tmp_path / "ack").write_bytes(entry(base + 2))
    s = Store(str(tmp_path), 1 << 20, 4096, 0)
    assert (s.next_seq, s.pending) == (base + 10, 8)
    assert s.peek(4096)[0] == (base + 2, records(10)[2])
    assert s.append(b"x") == base + 10
    s.ack(s.peek(4096, 0, 3))
    assert (tmp_path / "ack").read_bytes() == entry(base + 2) + entry(base + 5)
    s.close()
    assert (tmp_path / f"{base:08x}.seg").read_bytes() == segment(base, records(10) + [b"x"])


def test_other_files_in_the_folder_are_left_alone(tmp_path):
    (tmp_path / "00000000.seg").write_bytes(segment(0, records(5)))
    strays = {"0000000a.bak": b"LS\x01\x00junk", "00000010.tmp": b"", "0000000.seg": b"LS\x01\x00", "notes.txt": b"x",
              "ack.bak": entry(4)}
    for name, data in strays.items():
        (tmp_path / name).write_bytes(data)
    s = Store(str(tmp_path), 1 << 20, 4096, 0)
    assert (s.next_seq, s.pending) == (5, 5)
    s.ack(s.peek(4096))
    for r in records(3):
        s.append(r)
    s.close()
    assert {n: (tmp_path / n).read_bytes() for n in strays} == strays


def test_the_counters_add_up_to_what_is_on_flash(tmp_path):
    s = Store(str(tmp_path), 4 * 600, 600, 0)
    assert (s.bytes_written, s.record_bytes, s.appended, s.syncs, s.files_created, s.files_removed,
            s.corrupt, s.errors, s.last_error) == (0, 0, 0, 0, 0, 0, 0, 0, None)
    recs = records(50)
    for r in recs:
        s.append(r)
    seg_bytes = sum(p.stat().st_size for p in tmp_path.glob("*.seg"))
    assert s.appended == 50 and s.record_bytes == sum(map(len, recs))
    assert s.bytes_written == seg_bytes == 4 * s.files_created + sum(len(r) + 3 for r in recs)
    assert s.syncs == 50, "one sync per append: header and first frame go together"
    s.ack(s.peek(4096, 0, 10))
    assert s.bytes_written == seg_bytes + 7 and s.syncs == 51
    while batch := s.peek(4096):
        s.ack(batch)
    assert s.files_removed == s.files_created - 1, "every segment but the open one deleted once acknowledged"
    assert (s.corrupt, s.errors, s.dropped) == (0, 0, 0)


@pytest.mark.parametrize("segment_bytes, ok", [(4 + 3 + 254, True), (4 + 3 + 253, False)])
def test_a_segment_must_hold_the_largest_record(tmp_path, segment_bytes, ok):
    if ok:
        s = Store(str(tmp_path), 2 * segment_bytes, segment_bytes, 0)
        assert s.append(bytes(254)) == 0 and s.peek(4096) == [(0, bytes(254))]
    else:
        with pytest.raises(ValueError, match="segment_bytes too small"):
            Store(str(tmp_path), 2 * segment_bytes, segment_bytes, 0)


@pytest.mark.parametrize("capacity, ok", [(2 * 600, True), (2 * 600 - 1, False)])
def test_the_capacity_must_hold_two_segments(tmp_path, capacity, ok):
    if ok:
        assert Store(str(tmp_path), capacity, 600, 0).stats()["slots"] == 2
    else:
        with pytest.raises(ValueError, match="two segments"):
            Store(str(tmp_path), capacity, 600, 0)


def test_a_length_of_0_appends_nothing(tmp_path):
    s = Store(str(tmp_path), 1 << 20, 4096, 0)
    with pytest.raises(ValueError, match="1..254"):
        s.append(b"abc", 0)
    assert s.append(b"abc", 2) == 0 and s.peek(4096) == [(0, b"ab")]
    assert s.append(b"abc") == 1 and s.append(b"abc", -1) == 2


def test_a_store_growing_past_its_first_ring_of_segments_keeps_them_all(tmp_path):
    s = Store(str(tmp_path), 1 << 20, 600, 0)  # opened empty: room for 16 segment bases, then it grows
    recs = records(1000)
    for r in recs:
        s.append(r)
    assert len(list(tmp_path.glob("*.seg"))) >= 40
    got = []
    while batch := s.peek(4096):
        got += batch
        s.ack(batch)
    assert got == list(enumerate(recs))
    for r in records(1000):
        s.append(r)
    s.close()
    s = Store(str(tmp_path), 1 << 20, 600, 0)  # reopened with 40 segments: its ring sized for them
    assert (s.next_seq, s.pending) == (2000, 1000)
    assert s.peek(1 << 20) == list(zip(range(1000, 2000), records(1000), strict=True))


def test_damage_found_in_the_open_segment_seals_it_and_later_readings_go_to_a_new_one(tmp_path):
    s = Store(str(tmp_path), 1 << 20, 4096, 0)
    for r in records(10):
        s.append(r)
    seg = tmp_path / "00000000.seg"
    data = bytearray(seg.read_bytes())
    data[len(segment(0, records(5))) + 1] ^= 0x5A  # a byte of frame 5's record
    seg.write_bytes(bytes(data))
    assert [q for q, _ in s.peek(4096)] == [0, 1, 2, 3, 4], "up to the damage"
    assert s.corrupt == 0, "the readings before the damage come first; the damage is dealt with after"
    s.ack(s.peek(4096))
    assert s.peek(4096) == [] and s.corrupt == 5, "the rest of the damaged segment is skipped, counted"
    assert [s.append(r) for r in records(3, 10)] == [10, 11, 12]
    assert (tmp_path / "0000000a.seg").exists(), "new readings go to a new segment, past the damage"
    assert s.peek(4096) == list(zip(range(10, 13), records(3, 10), strict=True))
    s.close()
    assert Store(str(tmp_path), 1 << 20, 4096, 0).peek(4096) == list(zip(range(10, 13), records(3, 10), strict=True))


def test_a_segment_file_gone_is_counted_as_an_error_with_its_errno(tmp_path):
    s = Store(str(tmp_path), 1 << 20, 300, 0)
    for r in records(200):
        s.append(r)
    sorted(tmp_path.glob("*.seg"))[1].unlink()
    batch = s.peek(4096)
    assert (s.errors, s.last_error) == (1, 2), "the file that is gone counts as an error (ENOENT) when it is read"
    while batch:
        s.ack(batch)
        batch = s.peek(4096)
    assert s.errors >= 1 and s.last_error == 2, "ENOENT"
    assert s.corrupt > 0 and s.pending == 0


def test_a_newest_segment_without_a_whole_frame_is_removed_and_its_seqs_not_reused(tmp_path):
    # everything before seq 50 was sent and its segments deleted; the ack log is lost; the append
    # of seq 50 was cut short: that seq, and every one before it, must never be given again
    (tmp_path / "00000032.seg").write_bytes(b"LS\x01\x00\x05ab")
    s = Store(str(tmp_path), 1 << 20, 4096, 0)
    assert not (tmp_path / "00000032.seg").exists()
    assert (s.next_seq, s.pending) == (50, 0)
    assert s.append(b"new") == 50 and s.peek(4096) == [(50, b"new")]


def test_an_ack_log_of_exactly_120_bytes_is_not_compacted(tmp_path):
    s = Store(str(tmp_path), 1 << 20, 4096, 0, 50)
    for r in records(40):
        s.append(r)
    for _ in range(15):  # 15 entries of 7 bytes: the backlog one reading at a time (the first peek splits)
        s.ack(s.peek(4096, 0, 1))
    assert len((tmp_path / "ack").read_bytes()) == 105
    s.append(b"fresh")  # seq 40
    batch = s.peek(4096, 0, 2)
    assert [q for q, _ in batch] == [15, 40]
    s.ack(batch)  # a fresh reading acknowledged past the backlog: a 15-byte entry, 120 bytes in all
    log = (tmp_path / "ack").read_bytes()
    assert len(log) == 120, "at the limit, not past it: no compaction"
    assert log[-15:] == entry(16, 40, 41)


def test_a_capacity_lowered_by_a_config_change_drops_the_oldest_at_reopen(tmp_path):
    s = Store(str(tmp_path), 8 * 300, 300, 0)
    for r in records(400):
        s.append(r)
    s.close()
    segments = len(list(tmp_path.glob("*.seg")))
    assert segments > 3
    s = Store(str(tmp_path), 3 * 300, 300, 0)  # the new capacity holds 3 segments
    assert len(list(tmp_path.glob("*.seg"))) == 3
    assert s.dropped > 0 and s.pending == 400 - s.dropped
    assert s.overflow, "the next reading carries the overflow flag"
    s.append(b"next")
    assert not s.overflow, "and only that one"
