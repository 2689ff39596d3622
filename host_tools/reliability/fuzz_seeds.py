"""The fuzzers' inputs: valid seeds (what the real producers write) and the mutations made of them,
shared by the CPython side (fuzz.py) and the unix-port side (fuzz_unix.py)."""

from __future__ import annotations

import functools
import json
import random
import tempfile
from pathlib import Path

from host_tools.runtime import firmware_module


class FuzzFailure(AssertionError):
    pass


# -- mutation -------------------------------------------------------------------------------------
def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(7)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2 and b:
            del b[rng.randrange(len(b)):]
        elif op == 3:
            at = rng.randrange(len(b) + 1)
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        elif op == 4 and b:
            i = rng.randrange(len(b))
            b[i:i] = b[i:i + rng.randrange(1, 64)] * rng.randrange(1, 4)
        elif op == 5 and b:
            i, j = sorted((rng.randrange(len(b)), rng.randrange(len(b))))
            del b[i:j]
        else:
            b += rng.choice((b"\x00", b"\xff", b"\r\n", b"{", b"}", b"\"", b"\\u0000", b"9" * 40, b"\xc3\x28"))
    return bytes(b)


def random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice((True, False))
    if kind == 2:
        return rng.choice((0, -1, 1, 2**31, -(2**63), 10**30, rng.randrange(-1000, 100000)))
    if kind == 3:
        return rng.choice((0.5, -0.0, 1e308, -1e-300, rng.uniform(-1e6, 1e6)))
    if kind in (4, 5):
        return rng.choice(("", "x" * rng.randrange(300), "\x00", "é", "AAAA==", "not base64!", "1.2.3.4", str(rng.random())))
    if kind == 6:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(("a", "device", "rssi", "data", "fPort", "", "x" * 40)): random_json(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def mutate_json(value, rng: random.Random):
    """A copy of `value` with one node (maybe the root) replaced, removed or retyped."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        out = dict(value)
        key = rng.choice(sorted(out))
        r = rng.random()
        if r < 0.2:
            del out[key]
        elif r < 0.6:
            out[key] = mutate_json(out[key], rng)
        else:
            out[key] = random_json(rng)
        return out
    if isinstance(value, list) and value and rng.random() < 0.8:
        out = list(value)
        i = rng.randrange(len(out))
        out[i] = mutate_json(out[i], rng)
        return out
    return random_json(rng)


# -- seeds -----------------------------------------------------------------------------------------
def _seed_config() -> dict:
    return {"device": "lamp-01", "site": "centre", "broker": "mqtts://broker.example:8883", "sample_period_s": 60,
            "status_period_s": 300, "command_key": "ab" * 32, "mqtt_user": "lamp-01", "mqtt_password": "x" * 32,
            "lat": 48.85, "lon": 2.35, "bin_empty_mm": 1200, "bin_full_mm": 150, "lamp_curve": "10:15 50:53 100:100"}


def _seed_board() -> dict:
    return json.loads((Path(__file__).resolve().parents[2] / "boards" / "esp32-devkitc.json").read_text())


def _seed_requests() -> list[bytes]:
    return [
        b"GET /api/readings HTTP/1.1\r\nHost: 192.168.4.1\r\nX-Session: 0123456789abcdef\r\n\r\n",
        b"POST /api/position HTTP/1.1\r\nHost: 192.168.4.1:80\r\nContent-Type: application/json\r\n"
        b"Content-Length: 40\r\nX-Session: 0123456789abcdef\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ]


@functools.lru_cache(maxsize=1)
def _seed_manifest() -> tuple[bytes, bytes]:
    """(a release manifest signed as `lanterne release build` signs one, its signer's public key): a
    10 KB image in three blocks, one trusted key listed. The key is made once, in a folder dropped at once."""
    from host_tools.fleet.release.build import sign
    from host_tools.fleet.release.keys import KeyStore

    with tempfile.TemporaryDirectory(prefix="lanterne-fuzz-keys-") as tmp:
        keys = KeyStore(tmp)
        keys.new("fuzz")
        image = bytes(range(256)) * 40
        manifest, _meta = sign(image, "1.2.3", 7, keys, mpy=(6, 3, 0), created=1767225600)
        return manifest, keys.trusted()[0]


def _seed_lns() -> list[tuple[str, dict]]:
    from host_tools.codec import lns_json as J

    app = J.Application()
    up = J.Uplink(dev_eui="0016c001ff000001", device="lamp-01", fport=102, fcnt=7, data=b"\x02\x01\x02", dev_addr="26011bda",
                  dr=5, rssi=-90, snr=7.0, confirmed=False, time="2026-12-06T10:00:00Z", gateways=1)
    meta = J.RadioMeta(gateway_id="0016c001ff10a235", frequency=868100000, sf=7, rssi=-90, snr=7.0)
    return [
        ("chirpstack_up", J.chirpstack_up(app, up, [meta], adr=True)),
        ("tts_up", J.tts_up(app, up, "70b3d57ed0000001", [meta], b"\x01" * 16)),
        ("gateway_uplink", J.gateway_uplink(b"\x40\x01\x02\x03\x04\x00\x01\x00\x66\x02\x01\x02\x03\x04\x05\x06", meta)),
        ("gateway_downlink", J.gateway_downlink(3, "0016c001ff10a235", [(b"\x60\x01", 868100000, 7, 1.0, b"")])),
        ("chirpstack_down", J.chirpstack_down("0016c001ff000001", 10, b"\x01\x02")),
    ]


def _store_seed() -> bytes:
    store = firmware_module("store")
    with tempfile.TemporaryDirectory() as tmp:
        s = store.Store(tmp + "/s", capacity_bytes=65536)
        for i in range(12):
            s.append(bytes([2, i, i * 3 % 256, 7]))
        s.ack(s.peek(20))
        s.close()
        seg = sorted(Path(tmp, "s").glob("*.seg"))[0].read_bytes()
        ack = Path(tmp, "s", "ack").read_bytes() if Path(tmp, "s", "ack").exists() else b""
    return bytes([len(seg) - 3 if len(seg) > 3 else 0]) + seg[4:] + ack
