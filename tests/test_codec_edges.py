"""The codec at its edges: seq deltas at the limits of their window, saturated ages.

The firmware encoder writes them on CPython and on the unix port (same bytes); the Python decoder
and the network-server formatter (JavaScript, on Node) must both read back exactly what was
written. A frame the decoders refuse is a frame whose readings the board has already committed:
lost, so every edge here is one the encoder can produce.
"""

from __future__ import annotations

import json
import shutil

import pytest
from test_codec_decoders import needs_node, node_decode

from host_tools.codec import FPORT, decode
from host_tools.runtime.parity import both

AGE_MAX = 1 << 24

# Runs on both VMs: encode readings given as {slot: value} dicts, print the frames (hex).
ENCODE = r"""
import json
from lanterne import codec
readings = []
for spec in json.loads(%r):
    r = codec.new_reading()
    for slot, value in spec:
        r[slot] = value
    readings.append(r)
out = []
for lorawan in (False, True):
    enc = codec.Encoder(242, lorawan)
    n = enc.encode(readings, 0, -1, 242)
    out.append([n, enc.frame().hex()])
print(json.dumps(out))
"""

SEQ, AGE, TEMPERATURE, STATUS = 10, 11, 0, 9


def encode_both(readings: list[list[tuple[int, int]]]) -> tuple[bytes, bytes]:
    """(MQTT frame, LoRaWAN payload) of the readings, the same on CPython and the unix port."""
    cp, mp = both(ENCODE % json.dumps(readings))
    assert cp == mp, "the encoder writes other bytes on the unix port"
    for n, _ in cp:
        assert n == len(readings), "all readings fit one frame"
    return bytes.fromhex(cp[0][1]), bytes.fromhex(cp[1][1])


def read_everywhere(mqtt: bytes, lorawan: bytes, with_node: bool) -> list[list[dict]]:
    got = [decode(mqtt)["readings"], decode(lorawan, fport=FPORT)["readings"]]
    if with_node:
        for answer in node_decode([mqtt], None) + node_decode([lorawan], FPORT):
            assert answer["errors"] == [], answer["errors"]
            got.append(answer["data"]["readings"])
    return got


# Each seq is coded against the previous one plus one: s[i] = s[i-1] + 1 + delta.
DELTAS = [32767, -32767, 32768, -32768, 32769, 0, -1, 65535, 1]


def seqs_with_deltas(first: int) -> list[int]:
    out = [first]
    for d in DELTAS:
        out.append(out[-1] + 1 + d)
    return out


@pytest.mark.parametrize("first", [0, 1000, 65535, 2**30 - 1])
def test_seq_deltas_at_the_window_limits_read_back_exactly(first):
    true = seqs_with_deltas(first)
    readings = [[(TEMPERATURE, 200), (SEQ, s)] for s in true]
    mqtt, lorawan = encode_both(readings)
    for got in read_everywhere(mqtt, lorawan, with_node=False):
        assert [r["seq"] for r in got] == [s & 0xFFFF for s in true]


@needs_node
def test_the_formatter_reads_the_same_seq_deltas():
    true = seqs_with_deltas(1000)
    mqtt, lorawan = encode_both([[(TEMPERATURE, 200), (SEQ, s)] for s in true])
    for got in read_everywhere(mqtt, lorawan, with_node=True):
        assert [r["seq"] for r in got] == [s & 0xFFFF for s in true]


# A backlog older than 194 days: ages at, around and beyond the largest (they saturate).
AGE_CASES = {
    "all saturated": [AGE_MAX] * 5,
    "beyond, clamped": [AGE_MAX + 1, 10**9, AGE_MAX, 2**31 - 1],
    "reaching it": [AGE_MAX - 600, AGE_MAX - 300, AGE_MAX, AGE_MAX],
    "the trend overshoots": [AGE_MAX - 20000, AGE_MAX - 100, AGE_MAX, AGE_MAX - 1, AGE_MAX],
}


def expected_ages(ages: list[int]) -> list[int]:
    """What the host must read: the first age to within 1 % (it is quantised), later ones exact,
    every age saturated at AGE_MAX."""
    return [min(a, AGE_MAX) for a in ages]


@pytest.mark.parametrize("case", sorted(AGE_CASES))
def test_saturated_ages_read_back_by_both_decoders(case):
    ages = AGE_CASES[case]
    mqtt, lorawan = encode_both([[(STATUS, 0), (AGE, a)] for a in ages])
    want = expected_ages(ages)
    for got in read_everywhere(mqtt, lorawan, with_node=shutil.which("node") is not None):
        read = [r["age"] for r in got]
        assert abs(read[0] - want[0]) <= want[0] // 100 and read[0] <= AGE_MAX
        assert read[1:] == want[1:]
        assert max(read) == AGE_MAX


@needs_node
def test_the_formatter_is_run_on_the_saturated_ages():
    # guard: the test above must not silently skip Node where Node is installed
    mqtt, lorawan = encode_both([[(AGE, AGE_MAX)], [(AGE, AGE_MAX)]])
    answers = node_decode([mqtt], None) + node_decode([lorawan], FPORT)
    assert [[r["age"] for r in a["data"]["readings"]] for a in answers] == [[AGE_MAX, AGE_MAX]] * 2


ILLUMINANCE = 3


def test_illuminance_beyond_the_largest_reads_as_the_largest():
    from host_tools.codec.decoder import lux

    for mlx in (120_315_000, 200_000_000, 10**12):
        mqtt, lorawan = encode_both([[(ILLUMINANCE, mlx)], [(ILLUMINANCE, mlx)], [(ILLUMINANCE, 5)]])
        for got in read_everywhere(mqtt, lorawan, with_node=False):
            assert [r["illuminance"] for r in got][:2] == [lux(511)] * 2, mlx


def test_encode_counts_and_starts_as_documented():
    from host_tools.codec import firmware_codec

    codec = firmware_codec()
    readings = []
    for i in range(5):
        r = codec.new_reading()
        r[codec.SEQ] = 100 + i
        readings.append(r)
    enc = codec.Encoder(242)
    enc.encode(readings)
    assert enc.encode(readings, 0, 0) == 0 and (enc.length, enc.count) == (0, 0), "count 0: nothing"
    assert enc.encode(readings, 2, -1) == 3 and [r["seq"] for r in decode(enc.frame())["readings"]] == [102, 103, 104]
    assert enc.encode(readings, 1, 2) == 2 and [r["seq"] for r in decode(enc.frame())["readings"]] == [101, 102]
    assert enc.encode(readings, 3, 10) == 2, "a count past the end stops at the end"
    assert enc.encode(readings) == 5 and enc.count == 5


# slot -> (just past the bottom, what it reads as; just past the top, what it reads as)
PAST_THE_LIMITS = {
    0: ((-401, -40.0), (851, 85.0), "temperature"),
    1: ((-1, 0.0), (201, 100.0), "humidity"),
    2: ((2999, 300.0), (11001, 1100.0), "pressure"),
    3: ((-1, 0.0), (None, None), "illuminance"),
    4: ((-1, 0), (101, 100), "fill"),
    5: ((-1, 0), (16384, 16383), "distance"),
    6: ((-1, 0), (101, 100), "lamp"),
    8: ((-1, 0.0), (60001, 60.0), "voltage"),
}


def test_values_past_a_fields_limits_read_as_the_limit():
    for slot, (low, high, name) in PAST_THE_LIMITS.items():
        for value, reads in (low, high):
            if value is None:
                continue
            mqtt, lorawan = encode_both([[(slot, value)], [(slot, value)], [(slot, value)]])
            for got in read_everywhere(mqtt, lorawan, with_node=False):
                assert [r[name] for r in got] == [reads] * 3, (name, value)


def test_frames_no_encoder_writes_are_refused_saying_why():
    """Each crafted frame aims at one check of the decoders (host_tools/reliability/mutation_js.py
    holds them: the formatter's mutation corpus uses the same); the Python decoder's answers."""
    from host_tools.codec import PayloadError
    from host_tools.reliability.mutation_js import CRAFTED

    expected = [
        "byte 1: reading 0 presence bitmap is not canonical (the standard set has a 1-bit code)",
        "byte 4: reading 1 presence bitmap is not canonical",
        "byte 4: reading 1 presence bitmap is empty",
        "byte 2: reading 0 status flags are not canonical (they have a shorter code)",
        "byte 2: reading 0 status flags are not canonical (they have a shorter code)",
        "byte 2: reading 1 status flags are not canonical (long form repeats the reference)",
        "byte 4: malformed reading 1 seq delta: more than 26 leading zero bits",
        "byte 11: reading 1 seq: delta +33554432 is outside -32768..32767",
        "byte 8: reading 1 seq: delta +32768 is outside -32768..32767",
        "byte 8: reading 1 seq: delta -32769 is outside -32768..32767",
        "byte 10: oversized: 1 unexpected byte after the end of the frame (it ends after byte 9)",
        "byte 3: truncated: the frame ends inside reading 0 status (4 bytes, reading 0 status needs 1 more bit)",
        "byte 2: truncated: the frame ends inside reading 0 status (3 bytes, reading 0 status needs 1 more bit)",
        "byte 3: truncated: the frame ends inside reading 0 status (4 bytes, reading 0 status needs 1 more bit)",
        "byte 1: reading 0 presence bitmap is empty",  # 1 024 bytes: read, not refused for its size
        "byte 1024: oversized: 1025 bytes, a frame is at most 1024 bytes",
        "byte 0: reading 0 presence bitmap is empty",
    ]
    got = []
    for frame in CRAFTED:
        with pytest.raises(PayloadError) as e:
            decode(frame, None if frame[:1] == b"\x02" else FPORT)
        got.append(str(e.value))
    assert got == expected
