"""Format v3 (extension fields: PM, sound levels; 16-bit status): encoder, both decoders, old frames.

The worked examples of docs/payload.md (v2 and v3) are checked by test_codec_decoders.py; here:
the version choice per frame, random v3 batches through the encoder on both runtimes and both
decoders, damaged v3 frames refused alike by Python and JavaScript, and unknown extensions.
"""

from __future__ import annotations

import random

import pytest
from test_codec_decoders import NODE, needs_node, node_decode

from host_tools.codec import PayloadError, decode, encode_values, firmware_codec

ENV = {"temperature": 12.3, "humidity": 71.5, "pressure": 1001.2, "voltage": 12.1, "pm1": 4, "pm2_5": 9,
       "pm10": 17, "laeq": 58.3, "lamax": 71.9, "status": [], "seq": 77, "age": 2}


def random_env_readings(rng: random.Random, n: int) -> list[dict]:
    out = []
    for i in range(n):
        r = {"seq": 1000 + i, "age": 300 * (n - 1 - i) + rng.randint(0, 3)}
        for name, lo, hi, step in (("temperature", -40, 85, 0.1), ("humidity", 0, 100, 0.5), ("pressure", 300, 1100, 0.1)):
            if rng.random() < 0.8:
                r[name] = round(rng.uniform(lo, hi) / step) * step
        for name in ("pm1", "pm2_5", "pm10"):
            if rng.random() < 0.7:
                r[name] = rng.choice([0, 1, 17, 250, 999, 1000])
        for name in ("laeq", "lamax"):
            if rng.random() < 0.7:
                r[name] = round(rng.uniform(0, 140), 1)
        if rng.random() < 0.6:
            r["status"] = rng.sample(["pm_fault", "sound_fault", "pm_humid", "tamper", "clock_unsynced"], rng.randint(0, 2))
        out.append(r)
    return out


def close(sent: dict, got: dict) -> bool:
    for key, value in sent.items():
        if key in ("temperature", "pressure"):
            assert abs(got[key] - value) <= 0.051, key
        elif key == "humidity":
            assert abs(got[key] - value) <= 0.251, key
        elif key in ("laeq", "lamax"):
            assert abs(got[key] - value) <= 0.051, key
        elif key == "age":
            assert abs(got[key] - value) <= max(1, value / 100), key
        elif key == "status":
            assert sorted(got[key]) == sorted(value)
        else:
            assert got[key] == value, key
    assert set(got) <= set(sent) | {"status"}
    return True


def test_frames_without_extension_fields_stay_version_2_and_a_run_splits_at_the_first_v3_reading():
    plain = {"temperature": 21.5, "seq": 7}
    frames = encode_values([plain, dict(plain, seq=8), ENV, dict(ENV, seq=78), plain], 242, "cpython", lorawan=True)
    assert [(f["version"], f["fport"], f["count"]) for f in frames] == [(2, 102, 2), (3, 103, 3)]
    assert decode(frames[1]["frame"], 103)["readings"][2] == {"temperature": 21.5, "seq": 7}
    mqtt = encode_values([plain], 242, "cpython")
    assert mqtt[0]["frame"][0] == 2 and encode_values([ENV], 242, "cpython")[0]["frame"][0] == 3


def test_a_full_environmental_reading_fits_a_51_byte_frame_with_room_to_batch():
    frames = encode_values([dict(ENV, seq=77 + i, age=300 * (9 - i)) for i in range(10)], 51, "cpython", lorawan=True)
    assert len(encode_values([ENV], 51, "cpython", lorawan=True)[0]["frame"]) == 18
    assert frames[0]["count"] >= 5


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_random_v3_batches_round_trip_through_both_decoders(runtime):
    rng = random.Random(31 if runtime == "cpython" else 37)
    frames, ports, sent = [], [], []
    for _ in range(25 if runtime == "cpython" else 8):
        readings = random_env_readings(rng, rng.randint(1, 12))
        for f in encode_values(readings, rng.choice([51, 115, 242]), runtime, lorawan=True):
            got = decode(f["frame"], f["fport"])
            part = readings[f["first"] : f["first"] + f["count"]]
            assert got["version"] == f["version"]
            assert all(close(a, b) for a, b in zip(part, got["readings"], strict=True))
            frames.append(f["frame"])
            ports.append(f["fport"])
            sent.append(got)
    if NODE:
        answers = node_decode(frames, fports=ports)
        assert [a["data"] for a in answers] == sent


@needs_node
def test_damaged_v3_frames_get_the_same_answer_from_both_decoders():
    rng = random.Random(5)
    codec = firmware_codec()
    valid = [f["frame"] for f in encode_values(random_env_readings(rng, 30), 242, "cpython", lorawan=True)]
    valid += [f["frame"] for f in encode_values([ENV] * 3, 51, "cpython", lorawan=True)]
    assert codec.FPORT_V3 == 103
    frames = []
    while len(frames) < 1500:
        base = bytearray(rng.choice(valid))
        kind = rng.randrange(4)
        if kind == 0:
            i = rng.randrange(len(base) * 8)
            base[i // 8] ^= 0x80 >> (i % 8)
        elif kind == 1:
            base = base[: rng.randrange(len(base))]
        elif kind == 2:
            base += rng.randbytes(rng.randint(1, 3))
        else:
            base[rng.randrange(len(base))] = rng.randrange(256)
        frames.append(bytes(base))
    answers = node_decode(frames, 103)
    accepted = 0
    for frame, answer in zip(frames, answers, strict=True):
        try:
            expected = decode(frame, 103)
        except PayloadError as exc:
            assert answer["errors"] == [str(exc)], frame.hex()
        else:
            accepted += 1
            assert answer["data"] == expected, frame.hex()
    assert accepted < len(frames) // 10


def test_unknown_extension_ids_and_reserved_flags_are_refused_clearly():
    codec = firmware_codec()
    enc = codec.Encoder(242, lorawan=True)
    r = codec.new_reading()
    r[codec.SEQ] = 5
    r[codec.EXT_FIRST + 1] = 12  # pm2_5
    enc.encode([r])
    frame = bytearray(enc.frame())
    # Presence `0 00000000010` (seq), then `1`, group 0 `01000000` (id 1): make it id 7 instead.
    bits = "".join(f"{b:08b}" for b in frame)
    assert bits[:22] == "0000000000101" + "01000000" + "0"
    bits = bits[:13] + "00000001" + bits[21:]
    bad = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))
    with pytest.raises(PayloadError, match=r"extension field 7 is unknown to this decoder \(it knows 0..6\).* update the decoder"):
        decode(bad, 103)
    if NODE:
        assert "extension field 7 is unknown to this decoder (it knows 0..6)" in node_decode([bad], 103)[0]["errors"][0]
    # A status mask with reserved bit 15, re-checked so only the reserved bit is wrong.
    r = codec.new_reading()
    r[codec.SEQ] = 5
    r[codec.STATUS] = 1 << 12
    enc.encode([r])
    assert decode(enc.frame(), 103)["readings"][0]["status"] == ["pm_humid"]
    bits = "".join(f"{b:08b}" for b in enc.frame())
    at = bits.index("11" + "0001000000000000")  # status long form, 16-bit mask with bit 12 (sent MSB first)
    bits = bits[:at] + "11" + "1001000000000000" + bits[at + 18 :]  # ... and reserved bit 15
    bad = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))
    with pytest.raises(PayloadError, match="reserved bit set"):
        decode(bad, 103)
    if NODE:
        assert "reserved bit set" in node_decode([bad], 103)[0]["errors"][0]
    r[codec.STATUS] = 1 << 15  # the encoder never sends a reserved bit: masked to the known flags
    assert enc.encode([r]) == 1 and enc.version == 3
    assert decode(enc.frame(), 103)["readings"][0] == {"status": [], "seq": 5}
