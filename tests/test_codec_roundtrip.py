"""Codec round trips: firmware encoder -> host decoder, within each field's resolution, over the whole ranges.

Property tests run the encoder in CPython (the same file the board runs); a batch
of random readings also goes through the MicroPython unix port, which must give
the very same bytes, and allocate nothing per reading once warm.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_tools.codec import decode, firmware_codec
from host_tools.codec.decoder import CRC_NIBBLE, LUX_STEP, STATUS_NAMES

codec = firmware_codec()

# Firmware integer fields (resolution units) and their full ranges, from docs/payload.md.
RANGES = {
    codec.TEMPERATURE: (-400, 850),
    codec.HUMIDITY: (0, 200),
    codec.PRESSURE: (3000, 11000),
    codec.ILLUMINANCE: (0, 120_000_000),
    codec.FILL: (0, 100),
    codec.DISTANCE: (0, 16383),
    codec.LAMP: (0, 100),
    codec.LAMP_FAULT: (0, 1),
    codec.VOLTAGE: (0, 60000),
    codec.STATUS: (0, 1023),
    codec.SEQ: (0, 2**32 - 1),
    codec.AGE: (0, codec.AGE_MAX),
}


@st.composite
def readings(draw):
    r = codec.new_reading()
    for slot, (low, high) in RANGES.items():
        if slot == codec.LAMP_FAULT:
            continue
        if draw(st.booleans()):
            if slot == codec.ILLUMINANCE:  # spread over the decades, and exact 0
                r[slot] = draw(st.one_of(st.just(0), st.integers(1, 1000), st.integers(low, high)))
            elif slot == codec.AGE:
                r[slot] = draw(st.one_of(st.integers(0, 200), st.integers(low, high)))
            else:
                r[slot] = draw(st.integers(low, high))
    if r[codec.LAMP] is not None:
        r[codec.LAMP_FAULT] = draw(st.integers(0, 1))
    if all(v is None for v in r):
        r[codec.SEQ] = draw(st.integers(0, 2**32 - 1))
    return r


def assert_within_resolution(sent: list, got: dict, age_exact: bool = False):
    """What a user checks: every value back within the documented resolution, absent fields absent."""
    names = {
        codec.TEMPERATURE: "temperature",
        codec.HUMIDITY: "humidity",
        codec.PRESSURE: "pressure",
        codec.ILLUMINANCE: "illuminance",
        codec.FILL: "fill",
        codec.DISTANCE: "distance",
        codec.LAMP: "lamp",
        codec.VOLTAGE: "voltage",
        codec.STATUS: "status",
        codec.SEQ: "seq",
        codec.AGE: "age",
    }
    expected_keys = {name for slot, name in names.items() if sent[slot] is not None}
    if sent[codec.LAMP] is not None:
        expected_keys.add("lamp_fault")
    assert set(got) == expected_keys
    v = sent
    if v[codec.TEMPERATURE] is not None:
        assert round(got["temperature"] * 10) == v[codec.TEMPERATURE]
    if v[codec.HUMIDITY] is not None:
        assert got["humidity"] * 2 == v[codec.HUMIDITY]
    if v[codec.PRESSURE] is not None:
        assert round(got["pressure"] * 10) == v[codec.PRESSURE]
    if v[codec.ILLUMINANCE] is not None:
        mlx = v[codec.ILLUMINANCE]
        if mlx == 0:
            assert got["illuminance"] == 0
        else:
            assert abs(got["illuminance"] * 1000 - mlx) <= 0.02 * mlx, (mlx, got["illuminance"])
    for slot, name in ((codec.FILL, "fill"), (codec.DISTANCE, "distance"), (codec.LAMP, "lamp")):
        if v[slot] is not None:
            assert got[name] == v[slot]
    if v[codec.LAMP] is not None:
        assert got["lamp_fault"] is bool(v[codec.LAMP_FAULT])
    if v[codec.VOLTAGE] is not None:
        mv = v[codec.VOLTAGE]
        assert abs(got["voltage"] * 1000 - mv) <= (5 if mv < 5000 else 50) + 1e-6, (mv, got["voltage"])
    if v[codec.STATUS] is not None:
        assert got["status"] == [n for i, n in enumerate(STATUS_NAMES) if v[codec.STATUS] >> i & 1]
    if v[codec.SEQ] is not None:
        assert got["seq"] == v[codec.SEQ] % 65536
    if v[codec.AGE] is not None:
        a = v[codec.AGE]
        if age_exact:
            assert got["age"] == a
        else:
            assert abs(got["age"] - a) <= max(1, 0.01 * a), (a, got["age"])


def encode(batch: list, budget: int = 0, capacity: int = 1024) -> tuple[int, bytes]:
    enc = codec.Encoder(capacity)
    n = enc.encode(batch, 0, -1, budget)
    return n, enc.frame()


@settings(max_examples=400, deadline=None)
@given(readings())
def test_single_reading_round_trip_over_whole_ranges(r):
    n, frame = encode([r])
    assert n == 1
    out = decode(frame)
    assert out["version"] == 1 and len(out["readings"]) == 1
    assert_within_resolution(r, out["readings"][0])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(readings(), min_size=2, max_size=12))
def test_batch_round_trip_deltas_against_first(batch):
    n, frame = encode(batch)
    assert n == len(batch)
    got = decode(frame)["readings"]
    assert len(got) == len(batch)
    first_age_seen = False
    for sent, back in zip(batch, got, strict=True):
        # Only the frame's first age is quantised (to 1 %); later ones are exact.
        assert_within_resolution(sent, back, age_exact=first_age_seen)
        first_age_seen |= sent[codec.AGE] is not None


@settings(max_examples=150, deadline=None)
@given(st.lists(readings(), min_size=1, max_size=30), st.sampled_from([11, 51, 115, 222, 242]))
def test_budget_packs_the_longest_prefix_that_fits(batch, budget):
    n, frame = encode(batch, budget, capacity=242)
    if n == 0:
        assert frame == b""
    else:
        assert len(frame) <= budget
        assert len(decode(frame)["readings"]) == n
    if n < len(batch):  # the next whole reading would not have fit
        _, bigger = encode(batch[: n + 1])
        assert len(bigger) > budget


def test_slowly_varying_asset_fills_a_51_byte_frame_with_8_or_more():
    from host_tools.bench.codec import pack_series, slowly_varying

    counts = pack_series(codec, slowly_varying(200, seed=3), 51)
    assert counts and min(counts) >= 8


def test_saturates_out_of_range_values_to_the_nearest_end():
    r = codec.new_reading()
    r[codec.TEMPERATURE], r[codec.PRESSURE], r[codec.VOLTAGE], r[codec.AGE] = 900, 200, 75000, 10**9
    got = decode(encode([r])[1])["readings"][0]
    assert got["temperature"] == 85.0 and got["pressure"] == 300.0 and got["voltage"] == 60.0
    assert got["age"] == codec.AGE_MAX


def test_empty_reading_is_refused():
    with pytest.raises(ValueError, match="no fields"):
        encode([codec.new_reading()])


def test_illuminance_within_2_percent_for_every_millilux_up_to_a_million():
    worst = 0.0
    for mlx in range(1, 1_000_001, 7):
        code = codec.lux_code(mlx)
        e, j = divmod(code - 1, 19)
        worst = max(worst, abs(LUX_STEP[j] * 2**e / 65536 - mlx) / mlx)
    assert worst <= 0.0185


def test_tables_match_their_formulas():
    # Hard-coded so every port rounds alike; here they are recomputed in double precision.
    assert list(codec._LUX_SPLIT) == [round(2 ** ((i + 0.5) / 19) * 65536) for i in range(19)]
    assert list(LUX_STEP) == [round(2 ** (i / 19) * 65536) for i in range(19)]
    crc = []
    for n in range(16):
        c = n << 12
        for _ in range(4):
            c = ((c << 1) ^ 0x1021 if c & 0x8000 else c << 1) & 0xFFFF
        crc.append(c)
    assert list(CRC_NIBBLE) == crc == list(codec._CRC_NIBBLE)
    assert codec.crc16(b"123456789", 9) == 0x29B1  # the CRC-16/CCITT-FALSE check value


@pytest.mark.parametrize("age", [0, 1, 127, 128, 129, 255, 256, 1000, 86_399, 86_400, 10**6, 2**24 - 1, 2**24])
def test_age_within_one_second_or_one_percent(age):
    back = codec.age_value(codec.age_code(age))
    assert abs(back - age) <= max(1, age / 100)


# -- the unix port ----------------------------------------------------------------------

_UNIX_PORT_ENCODE = """
import json, sys, binascii, gc
from lanterne import codec

def main():
    batch = json.loads(sys.stdin.read())
    out = {}
    for budget in (51, 242):
        enc = codec.Encoder(242)
        frames = []
        start = 0
        while start < len(batch):
            n = enc.encode(batch, start, -1, budget)
            frames.append([n, binascii.hexlify(enc.frame()).decode()])
            start += n
        out[str(budget)] = frames
    # Allocation per reading once warm: same encoder, same readings, measured with the GC off.
    enc = codec.Encoder(242)
    enc.encode(batch, 0, -1, 222)
    enc.encode(batch, 0, -1, 222)
    gc.collect()
    gc.disable()
    packed = 0
    before = gc.mem_alloc()
    for _ in range(20):
        packed += enc.encode(batch, 0, -1, 222)
    allocated = gc.mem_alloc() - before
    gc.enable()
    out["alloc"] = [allocated, packed]
    print(json.dumps(out))

main()
"""


def random_batch(count: int, seed: int) -> list[list]:
    rng = random.Random(seed)
    batch = []
    for _ in range(count):
        r = [None] * codec.N_FIELDS
        for slot, (low, high) in RANGES.items():
            if slot != codec.LAMP_FAULT and rng.random() < 0.7:
                r[slot] = rng.randint(low, high) if rng.random() < 0.5 else rng.randint(low, low + (high - low) // 50)
        if r[codec.LAMP] is not None:
            r[codec.LAMP_FAULT] = rng.randint(0, 1)
        if all(v is None for v in r):
            r[codec.FILL] = 50
        batch.append(r)
    return batch


@pytest.fixture(scope="module")
def unix_port_frames(micropython):
    batch = random_batch(120, seed=11)
    out = json.loads(micropython(_UNIX_PORT_ENCODE, heapsize=100 * 1024, stdin=json.dumps(batch).encode()).strip())
    return batch, out


def test_unix_port_and_cpython_give_identical_bytes(unix_port_frames):
    batch, out = unix_port_frames
    for budget in (51, 242):
        enc = codec.Encoder(242)
        start = 0
        for n, hex_frame in out[str(budget)]:
            assert enc.encode(batch, start, -1, budget) == n > 0
            assert enc.frame().hex() == hex_frame
            start += n
        assert start == len(batch)


def test_unix_port_frames_decode_within_resolution(unix_port_frames):
    batch, out = unix_port_frames
    start = 0
    for n, hex_frame in out["51"]:
        frame = bytes.fromhex(hex_frame)
        assert len(frame) <= 51
        got = decode(frame)["readings"]
        assert len(got) == n
        first_age_seen = False
        for sent, back in zip(batch[start : start + n], got, strict=True):
            assert_within_resolution(sent, back, age_exact=first_age_seen)
            first_age_seen |= sent[codec.AGE] is not None
        start += n
    assert start == len(batch)


def test_unix_port_encode_allocates_nothing_per_reading(unix_port_frames):
    _, out = unix_port_frames
    allocated, packed = out["alloc"]
    assert packed > 0
    assert allocated == 0, f"{allocated} bytes over {packed} readings"

