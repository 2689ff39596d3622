"""Full sequence numbers on the host: a 10 000-reading backlog drained with fresh readings, resends, wrap.

The frames are real (firmware encoder, LoRaWAN framing, 51-byte budget) and go
through the Python decoder; the tracker must give every reading its true seq back
exactly once, and the limits docs/payload.md states must be where they are.
"""

from __future__ import annotations

import random

import pytest

from host_tools.codec import FPORT, decode, firmware_codec
from host_tools.codec.seq import SeqTracker, extend_seq

codec = firmware_codec()


def reading(seq: int, age: int) -> list:
    r = codec.new_reading()
    r[codec.TEMPERATURE] = 150 + seq % 7
    r[codec.VOLTAGE] = 12300
    r[codec.STATUS] = 0
    r[codec.SEQ] = seq
    r[codec.AGE] = age
    return r


@pytest.mark.parametrize(
    "low, reference, full",
    [
        (5, None, 5),
        (65535, 65535, 65535),
        (0, 65535, 65536),  # the wrap
        (65535, 65536, 65535),  # one back across the wrap
        (4465, 70001 + 10, 70001),
        (1000, 1000 + 32768, 1000),  # 32 768 behind the reference: still behind
        (1000, 1000 - 32767 + 65536, 66536),  # 32 767 ahead
        (60_000, 100, 60_000),  # nearest would be -5 536: seqs are never negative
        (0, 20, 0),
    ],
)
def test_extend_seq(low, reference, full):
    assert extend_seq(low, reference) == full


def test_extend_seq_window_is_32768_behind_to_32767_ahead():
    ref = 1_000_000
    for true in (ref - 32768, ref - 10_000, ref, ref + 32767):
        assert extend_seq(true % 65536, ref) == true
    for true in (ref - 32769, ref + 32768, ref - 40_000):  # beyond the stated limits: 65 536 off
        assert abs(extend_seq(true % 65536, ref) - true) == 65536
    with pytest.raises(ValueError):
        extend_seq(65536, ref)


def drain(start: int, backlog: int, seed: int) -> tuple[list[bytes], list[int]]:
    """Frames a board sends while draining `backlog` readings from `start` on, sampling one more per frame.

    Like the store: each frame carries backlog readings (oldest first), then fresh
    ones, ascending by seq, at most 5 of each; about one frame in ten is sent twice
    (its acknowledgement was lost). Returns the frames and the seqs they carry.
    """
    rng = random.Random(seed)
    enc = codec.Encoder(51, lorawan=True)
    head, split = start, start + backlog  # backlog: head .. split - 1
    fresh, nxt = split, split  # fresh readings: fresh .. nxt - 1
    now = backlog * 600
    sampled = {s: (s - start) * 600 for s in range(start, split)}
    frames, sent = [], []
    while head < split or fresh < nxt:
        if head < split:  # one new reading per frame while the backlog drains
            sampled[nxt] = now
            nxt += 1
            now += 600
        seqs = list(range(head, min(head + 5, split))) + list(range(fresh, min(fresh + 5, nxt)))
        n = enc.encode([reading(s, now + 2 - sampled[s]) for s in seqs], 0, -1, 51)
        assert n > 0
        frames.append(enc.frame())
        if rng.random() < 0.1:
            frames.append(enc.frame())
        packed = seqs[:n]
        sent.extend(packed)
        head += sum(1 for s in packed if s < split)
        fresh += sum(1 for s in packed if s >= split)
    return frames, sent


def test_a_10000_reading_backlog_across_the_wrap_comes_back_in_order_without_duplicates():
    start = 60_000  # the backlog crosses 65 536
    frames, sent = drain(start, 10_000, seed=3)
    assert max(sent) - min(sent) >= 10_000 and len(set(sent)) == len(sent)
    tracker = SeqTracker(highest=start - 1)
    got, duplicates = [], 0
    for frame in frames:
        decoded = decode(frame, FPORT)
        new = tracker.readings(decoded)
        duplicates += len(decoded["readings"]) - len(new)
        got.extend(r["seq"] for r in new)
    assert sorted(got) == sorted(sent)
    assert len(got) == len(set(got))
    resent = sum(len(decode(f, FPORT)["readings"]) for i, f in enumerate(frames) if i and frames[i - 1] == f)
    assert duplicates == resent > 0


def test_the_tracker_fails_where_docs_say_it_does():
    # A backlog that lags the newest seq by more than 32 768 readings comes out 65 536 off.
    tracker = SeqTracker()
    assert tracker.accept(100) == (100, True)
    assert tracker.accept(100) == (100, False)
    tracker = SeqTracker(highest=50_000)
    full, new = tracker.accept((50_000 - 40_000) % 65536)
    assert new and full == 50_000 - 40_000 + 65536
