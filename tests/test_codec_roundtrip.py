"""Codec round trips: firmware encoder -> host decoder, within each field's resolution, over the whole ranges.

Property tests run the encoder in CPython (the same file the board runs), in both
framings (MQTT: version byte first; LoRaWAN: version in the FPort); a batch of
random readings also goes through the MicroPython unix port, which must give the
very same bytes, and allocate nothing per reading once warm.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_tools.codec import FPORT, decode, firmware_codec, firmware_codec_values
from host_tools.codec.decoder import CRC_NIBBLE, LUX_STEP, STATUS_NAMES, _decode

codec = firmware_codec()
from_values = firmware_codec_values().from_values

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


def encode(batch: list, budget: int = 0, capacity: int = 1024, lorawan: bool = False) -> tuple[int, bytes]:
    enc = codec.Encoder(capacity, lorawan)
    n = enc.encode(batch, 0, -1, budget)
    return n, enc.frame()


def decode_framed(frame: bytes, lorawan: bool) -> dict:
    return decode(frame, FPORT if lorawan else None)


@settings(max_examples=400, deadline=None)
@given(readings(), st.booleans())
def test_single_reading_round_trip_over_whole_ranges(r, lorawan):
    n, frame = encode([r], lorawan=lorawan)
    assert n == 1
    out = decode_framed(frame, lorawan)
    assert out["version"] == 2 and len(out["readings"]) == 1
    assert_within_resolution(r, out["readings"][0])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(readings(), min_size=2, max_size=12), st.booleans())
def test_batch_round_trip_deltas_against_first(batch, lorawan):
    n, frame = encode(batch, lorawan=lorawan)
    assert n == len(batch)
    got = decode_framed(frame, lorawan)["readings"]
    assert len(got) == len(batch)
    first_age_seen = False
    for sent, back in zip(batch, got, strict=True):
        # Only the frame's first age is quantised (to 1 %); later ones are exact.
        assert_within_resolution(sent, back, age_exact=first_age_seen)
        first_age_seen |= sent[codec.AGE] is not None


@settings(max_examples=150, deadline=None)
@given(st.lists(readings(), min_size=1, max_size=30), st.sampled_from([11, 51, 115, 222, 242]), st.booleans())
def test_budget_packs_the_longest_prefix_that_fits(batch, budget, lorawan):
    n, frame = encode(batch, budget, capacity=242, lorawan=lorawan)
    if n == 0:
        assert frame == b""
    else:
        assert len(frame) <= budget
        assert len(decode_framed(frame, lorawan)["readings"]) == n
    if n < len(batch):  # the next whole reading would not have fit
        _, bigger = encode(batch[: n + 1], lorawan=lorawan)
        assert len(bigger) > budget


@settings(max_examples=200, deadline=None)
@given(st.lists(readings(), min_size=1, max_size=8))
def test_mqtt_frame_is_the_version_byte_then_the_lorawan_payload(batch):
    _, mqtt = encode(batch)
    _, lorawan = encode(batch, lorawan=True)
    assert mqtt == bytes([2]) + lorawan
    assert decode(mqtt) == decode(lorawan, fport=FPORT)


def test_slowly_varying_asset_fills_a_51_byte_frame_with_9_or_more():
    from host_tools.bench.codec import pack_series, slowly_varying

    for seed in (3, 4):
        counts = pack_series(codec, slowly_varying(300, seed=seed), 51)
        assert counts and min(counts) >= 9, (seed, counts)


FULL = {"temperature": 21.5, "humidity": 45.5, "pressure": 1013.2, "illuminance": 350.0, "fill": 42,
        "lamp": 80, "lamp_fault": False, "voltage": 12.34, "status": [], "seq": 12345, "age": 2}


@pytest.mark.parametrize("status", [[], ["clock_unsynced"]])
def test_a_full_reading_takes_12_bytes_over_lorawan_up_to_11_s_old(status):
    rng = random.Random(len(status))
    for age in range(12):
        for _ in range(20):  # any values: the field widths do not depend on them
            values = dict(FULL, status=status, age=age, seq=rng.randrange(2**32),
                          temperature=rng.randint(-400, 850) / 10, pressure=rng.randint(3000, 11000) / 10,
                          voltage=rng.randint(0, 60000) / 1000, illuminance=rng.randint(0, 120_000_000) / 1000)
            _, frame = encode([from_values(values)], lorawan=True)
            assert len(frame) == 12, (age, values)
            _, frame = encode([from_values(values)])
            assert len(frame) == 13
    _, frame = encode([from_values(dict(FULL, status=status, age=12))], lorawan=True)
    assert len(frame) == 13


def reading_bits(frame: bytes, lorawan: bool) -> int:
    """Bits of the frame's readings: all but the version byte, end bit and check."""
    _, check_bits = _decode(frame, FPORT if lorawan else None, True)
    return len(frame) * 8 - (0 if lorawan else 8) - 1 - check_bits


FIELD_BITS = {codec.TEMPERATURE: 11, codec.HUMIDITY: 8, codec.PRESSURE: 13, codec.ILLUMINANCE: 9,
              codec.FILL: 7, codec.DISTANCE: 14, codec.LAMP: 8, codec.VOLTAGE: 11, codec.SEQ: 16}


def test_an_absent_field_costs_only_presence_bits():
    # Every one of the 2047 field sets, in reading 0: presence (1 bit for the standard set, else 12)
    # plus the present fields' own widths, nothing for the absent ones.
    values = {codec.TEMPERATURE: 215, codec.HUMIDITY: 91, codec.PRESSURE: 10132, codec.ILLUMINANCE: 350000,
              codec.FILL: 42, codec.DISTANCE: 142, codec.LAMP: 80, codec.VOLTAGE: 12340, codec.STATUS: 0,
              codec.SEQ: 7, codec.AGE: 2}
    order = list(values)
    for mask in range(1, 2048):
        r = codec.new_reading()
        expected = 1 if mask == 0x7DF else 12
        for bit, slot in enumerate(reversed(order)):
            if mask >> bit & 1:
                r[slot] = values[slot]
                expected += FIELD_BITS.get(slot, 0) + (1 if slot == codec.STATUS else 0) + (3 if slot == codec.AGE else 0)
        if r[codec.LAMP] is not None:
            r[codec.LAMP_FAULT] = 0
        for lorawan in (False, True):
            _, frame = encode([r], lorawan=lorawan)
            assert reading_bits(frame, lorawan) == expected, hex(mask)


def test_status_codes_in_reading_0():
    r = codec.new_reading()
    r[codec.FILL] = 50
    sizes = {}
    for flags in (0, 1 << 9, 1 << 6, (1 << 9) | (1 << 6)):
        r[codec.STATUS] = flags
        _, frame = encode([r], lorawan=True)
        sizes[flags] = reading_bits(frame, True) - 12 - 7
        got = decode(frame, fport=FPORT)["readings"][0]["status"]
        assert got == [n for i, n in enumerate(STATUS_NAMES) if flags >> i & 1]
    assert sizes == {0: 1, 1 << 9: 2, 1 << 6: 12, (1 << 9) | (1 << 6): 12}


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
    assert codec.crc16(b"456789", 6, codec.crc16(b"123", 3)) == 0x29B1
    assert codec._CRC_VERSION == codec.crc16(b"\x02", 1)


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
    for lorawan in (False, True):
        for budget in (51, 242):
            enc = codec.Encoder(242, lorawan)
            frames = []
            start = 0
            while start < len(batch):
                n = enc.encode(batch, start, -1, budget)
                frames.append([n, binascii.hexlify(enc.frame()).decode()])
                start += n
            out["%s%d" % ("lorawan" if lorawan else "mqtt", budget)] = frames
    # Allocation per reading once warm: same encoder, same readings, measured with the GC off.
    enc = codec.Encoder(242)
    enc.encode(batch, 0, -1, 222)
    enc.encode(batch, 0, -1, 222)
    gc.collect()
    gc.disable()
    packed = 0
    before = gc.mem_alloc()
    for i in range(20):
        enc.lorawan = i % 2 == 1  # both framings
        packed += enc.encode(batch, 0, -1, 222)
        packed += enc.encode(batch, i, 1, 51)  # single readings too
    allocated = gc.mem_alloc() - before
    gc.enable()
    out["alloc"] = [allocated, packed]
    for key in out:  # one line per item: the whole answer as one string would not fit in 100 KB
        for item in out[key]:
            print(json.dumps([key, item]))

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
    out: dict[str, list] = {}
    for line in micropython(_UNIX_PORT_ENCODE, heapsize=100 * 1024, stdin=json.dumps(batch).encode()).split("\n"):
        if line.strip():
            key, item = json.loads(line)
            out.setdefault(key, []).append(item)
    return batch, out


def test_unix_port_and_cpython_give_identical_bytes(unix_port_frames):
    batch, out = unix_port_frames
    for lorawan in (False, True):
        for budget in (51, 242):
            enc = codec.Encoder(242, lorawan)
            start = 0
            for n, hex_frame in out[f"{'lorawan' if lorawan else 'mqtt'}{budget}"]:
                assert enc.encode(batch, start, -1, budget) == n > 0
                assert enc.frame().hex() == hex_frame
                start += n
            assert start == len(batch)


@pytest.mark.parametrize("lorawan", [False, True])
def test_unix_port_frames_decode_within_resolution(unix_port_frames, lorawan):
    batch, out = unix_port_frames
    start = 0
    for n, hex_frame in out["lorawan51" if lorawan else "mqtt51"]:
        frame = bytes.fromhex(hex_frame)
        assert len(frame) <= 51
        got = decode_framed(frame, lorawan)["readings"]
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

