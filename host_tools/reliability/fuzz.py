"""Fuzzing the parsers that face the network or a file, on CPython and on the MicroPython unix port.

Each target is a parser and the promise it makes about any input (docs/reliability.md, "Fuzzers"):

| target | parser | promise |
|---|---|---|
| `config_json` | firmware `config.load` (config.json on flash) | returns a config the schema accepts and a list of errors; never raises |
| `board_info` | firmware `boardinfo.load` (board.json on flash) | returns a board object (a dict) or says why not; never raises |
| `board_file` | host `boards.load_file` (boards/*.json, `lanterne boards --check`) | a `Board`, or `BoardError` naming the file and field |
| `store_records` | firmware `Store` recovery (segment files and ack log on flash) | recovers without raising; only whole, CRC-valid records come back; appends still work |
| `http_request` | firmware `http_request.parse` (the setup page's server) | a `Request`, or `HttpError` with a 4xx/5xx status |
| `lns_json` | host `codec.lns_json.parse_*` (ChirpStack / TTS / gateway JSON from MQTT) | a value, or `IntegrationError` |
| `at_twin` | host RAK3172 twin (`emulator.devices.lorawan_modem`, the lines the firmware sends) | answers only with RUI3's reply lines; never raises |

The codec's decoders and the command verifier have their own fuzz tests (tests/test_codec_decoders.py,
tests/test_commands.py); they are not repeated here.

Inputs: valid seeds (what the real producer writes) mutated (bytes flipped, cut, spliced, repeated;
JSON values replaced by random ones of any type), and plain random bytes. On CPython with
hypothesis (tests/test_fuzz.py, bounded) or with `random` for long runs:

    python -m host_tools.reliability.fuzz --cases 100000 [--seed S] [TARGET ...]
    python -m host_tools.reliability.fuzz --unix-port --cases 20000    # the firmware targets on MicroPython

A failure prints the target, the case number and the input (hex), and exits 1.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from host_tools.runtime import firmware_module
from host_tools.runtime.paths import FIRMWARE


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


# -- targets (CPython) -------------------------------------------------------------------------------
def check_config_json(data: bytes, folder: Path) -> None:
    config = firmware_module("config")
    path = folder / "config.json"
    path.write_bytes(data)
    (folder / "config.lkg").unlink(missing_ok=True)
    try:
        cfg, errors = config.load(str(path), str(folder / "config.lkg"))
    except Exception as exc:  # the promise: never raises
        raise FuzzFailure(f"config.load raised {type(exc).__name__}: {exc}") from None
    defaults = config.defaults()
    if set(cfg) != set(defaults):
        raise FuzzFailure(f"config.load returned other fields than the schema's: {sorted(set(cfg) ^ set(defaults))}")
    for key, (kind, default, check) in config.SCHEMA.items():
        v = cfg[key]
        if v == default:
            continue
        if not isinstance(v, kind) or isinstance(v, bool) or (check and check(v)):
            raise FuzzFailure(f"config.load kept field {key!r} = {v!r}, which its schema refuses")
    if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise FuzzFailure("config.load's errors are not a list of strings")


def check_board_info(data: bytes, folder: Path) -> None:
    boardinfo = firmware_module("boardinfo")
    path = folder / "board.json"
    path.write_bytes(data)
    try:
        board, error = boardinfo.load(str(path))
    except Exception as exc:
        raise FuzzFailure(f"boardinfo.load raised {type(exc).__name__}: {exc}") from None
    if not isinstance(board, dict):
        raise FuzzFailure(f"boardinfo.load returned a {type(board).__name__}, not a board object (error: {error!r}); "
                          "the app calls board.get(...) on it")


def check_board_file(data: bytes, folder: Path) -> None:
    from host_tools import boards

    path = folder / "fuzz-board.json"
    path.write_bytes(data)
    try:
        b = boards.load_file(path)
    except boards.BoardError as exc:
        if "fuzz-board.json" not in str(exc):
            raise FuzzFailure(f"BoardError without the file's name: {exc}") from None
        return
    except Exception as exc:
        raise FuzzFailure(f"boards.load_file raised {type(exc).__name__}: {exc}") from None
    if not isinstance(b, boards.Board):
        raise FuzzFailure("boards.load_file returned something else than a Board")


def check_store_records(data: bytes, folder: Path) -> None:
    """`data` split into a segment file and an ack log: recovery must not raise, must hand back
    only records that were whole (their CRC checks), and appends must work after it."""
    store = firmware_module("store")
    d = folder / "store"
    if d.exists():
        for p in d.iterdir():
            p.unlink()
    else:
        d.mkdir()
    cut = data[0] % (len(data) + 1) if data else 0
    (d / "00000000.seg").write_bytes(b"LS\x01\x00" + data[1:cut] if data and data[0] & 1 else data[:cut])
    if cut < len(data):
        (d / "ack").write_bytes(data[cut:])
    try:
        s = store.Store(str(d), capacity_bytes=65536)
        batch = s.peek(4096)
        for seq, rec in batch:
            if not 1 <= len(rec) <= store.MAX_RECORD:
                raise FuzzFailure(f"store gave back a record of {len(rec)} bytes (seq {seq})")
        before = s.next_seq
        seq = s.append(b"fuzz")
        if seq != before:
            raise FuzzFailure(f"append after recovery gave seq {seq}, expected {before} (errors {s.errors}, {s.last_error})")
        s.close()
        s2 = store.Store(str(d), capacity_bytes=65536)
        got = [r for q, r in s2.peek(1 << 20) if q == seq]
        s2.close()
        if got != [b"fuzz"]:
            raise FuzzFailure(f"the record appended after recovery did not come back after a restart: {got!r}")
    except FuzzFailure:
        raise
    except Exception as exc:
        raise FuzzFailure(f"store recovery raised {type(exc).__name__}: {exc}") from None


def check_http_request(data: bytes, folder: Path | None = None) -> None:
    http = firmware_module("http_request")
    buf = bytearray(data[: http.MAX_HEAD])
    end = http.head_end(buf, len(buf))
    if end < 0:
        return  # not a whole head yet: the server reads on or times out
    try:
        req = http.parse(buf, end)
    except http.HttpError as exc:
        if not 400 <= exc.status <= 599:
            raise FuzzFailure(f"HttpError with status {exc.status}") from None
        return
    except Exception as exc:
        raise FuzzFailure(f"http_request.parse raised {type(exc).__name__}: {exc}") from None
    if req.method not in http.METHODS or not req.path.startswith("/") or req.length < 0 or req.length > http.MAX_BODY:
        raise FuzzFailure(f"accepted a request it should refuse: {req.method} {req.path!r} length {req.length}")


_LNS_PARSERS = {"chirpstack_up": "parse_chirpstack_up", "tts_up": "parse_tts_up", "gateway_uplink": "parse_gateway_uplink",
                "gateway_downlink": "parse_gateway_downlink", "chirpstack_down": "parse_chirpstack_down"}


def check_lns_json(kind: str, value) -> None:
    from host_tools.codec import lns_json as J

    try:
        getattr(J, _LNS_PARSERS[kind])(value)
    except J.IntegrationError:
        return
    except Exception as exc:
        raise FuzzFailure(f"{_LNS_PARSERS[kind]} raised {type(exc).__name__}: {exc}") from None


def check_at_twin(data: bytes, folder: Path | None = None) -> None:
    from host_tools.emulator.devices.lorawan_modem import ModemTwin
    from host_tools.emulator.world import World

    twin = ModemTwin(World(seed=1), uart="uart2")
    try:
        twin.uart_write(data + b"\r\n")
        out = twin.uart_read(1 << 20)
    except Exception as exc:
        raise FuzzFailure(f"the AT twin raised {type(exc).__name__}: {exc}") from None
    if not out and data.strip(b"\r\n"):
        raise FuzzFailure("the AT twin said nothing to a line (RUI3 answers every line: OK or an error)")
    if not twin.echo:
        for line in out.split(b"\r\n"):
            if any(c < 0x20 or c > 0x7E for c in line):
                raise FuzzFailure(f"the AT twin answered a line that is not printable text: {line[:80]!r}")


# -- firmware bugs these fuzzers found, not fixed yet (tests/test_fuzz.py holds a failing test for each) --
def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return False
    except UnicodeError:
        return True


def _json_not_object(data: bytes) -> bool:
    try:
        return not isinstance(json.loads(data), dict)
    except (ValueError, RecursionError):
        return False


KNOWN_BUGS = {
    # config.load raises UnicodeError on a config.json that is not UTF-8 (its read is outside the try);
    # on MicroPython also TypeError on an object with a non-string key, which MicroPython's json module
    # accepts ({"device": "x", 2: 3}): validate() sorts the keys (UNIX_SCRIPT's known() has that case)
    "config_json": _not_utf8,
    # boardinfo.load returns any JSON value: a board.json holding a list, a number ... reaches the app
    "board_info": _json_not_object,
}


def known_bug(target: str, data: bytes) -> bool:
    """The input hits a firmware bug already reported (KNOWN_BUGS): skipped by --skip-known."""
    fn = KNOWN_BUGS.get(target)
    return bool(fn and fn(data))


# -- the registry ------------------------------------------------------------------------------------
def _bytes_cases(seeds, random_share=0.25):
    def gen(rng):
        if rng.random() < random_share:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400)))
        return mutate_bytes(rng.choice(seeds), rng)

    return gen


def _json_bytes_cases(seed):
    def gen(rng):
        r = rng.random()
        if r < 0.5:
            return json.dumps(mutate_json(seed, rng)).encode()
        if r < 0.9:
            return mutate_bytes(json.dumps(seed).encode(), rng)
        return json.dumps(random_json(rng)).encode()

    return gen


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


TARGETS = {
    "config_json": (check_config_json, lambda: _json_bytes_cases(_seed_config())),
    "board_info": (check_board_info, lambda: _json_bytes_cases(_seed_board())),
    "board_file": (check_board_file, lambda: _json_bytes_cases(_seed_board())),
    "store_records": (check_store_records, lambda: _bytes_cases([_store_seed()], 0.2)),
    "http_request": (check_http_request, lambda: _bytes_cases(_seed_requests())),
    "lns_json": (None, None),  # its own loop: JSON values per parser
    "at_twin": (check_at_twin, lambda: _bytes_cases([b"AT+JOIN=1:0:10:8", b"AT+SEND=102:0201ff", b"AT+DEVEUI=?",
                                                     b"AT+NJM=1", b"AT+VER=?", b"AT+BAND=4", b"ATZ", b"AT+CFS=?"])),
}


def run_cpython(targets, cases: int, seed: int, log=print, skip_known: bool = False) -> dict[str, int]:
    """`cases` inputs per target; {target: cases run}. Raises FuzzFailure on the first broken promise
    (`skip_known`: inputs that hit a known firmware bug are drawn again)."""
    done = {}
    with tempfile.TemporaryDirectory(prefix="lanterne-fuzz-") as tmp:
        folder = Path(tmp)
        for name in targets:
            rng = random.Random(f"{seed}:{name}")
            t0 = time.monotonic()
            if name == "lns_json":
                seeds = _seed_lns()
                for i in range(cases):
                    kind, value = rng.choice(seeds)
                    case = mutate_json(value, rng) if rng.random() < 0.9 else random_json(rng)
                    try:
                        check_lns_json(kind, case)
                    except FuzzFailure as exc:
                        raise FuzzFailure(f"lns_json case {i} ({kind}): {exc}\n  input: {json.dumps(case)[:2000]}") from None
            else:
                check, make = TARGETS[name]
                gen = make()
                for i in range(cases):
                    data = gen(rng)
                    while skip_known and known_bug(name, data):
                        data = gen(rng)
                    try:
                        check(data, folder)
                    except FuzzFailure as exc:
                        raise FuzzFailure(f"{name} case {i}: {exc}\n  input (hex): {data.hex()[:4000]}") from None
            done[name] = cases
            log(f"{name}: {cases} cases, {time.monotonic() - t0:.1f} s, no broken promise")
    return done


# -- the unix port --------------------------------------------------------------------------------------
# The same firmware parsers on MicroPython, inputs generated there (os.urandom and mutations of a
# seed), each case's promise checked there; prints "FAIL target case hex" or "DONE target n".
UNIX_SCRIPT = r"""
import os, sys, json
sys.path.insert(0, FIRMWARE)
from lanterne import config, boardinfo, http_request, store
R = bytearray(4)
def rnd(n):
    return int.from_bytes(os.urandom(4), "little") % n if n > 0 else 0
def mutate(b):
    b = bytearray(b)
    for _ in range(1 + rnd(5)):
        op = rnd(5)
        if op == 0 and b:
            b[rnd(len(b))] = rnd(256)
        elif op == 1 and b:
            b = b[:rnd(len(b))]
        elif op == 2:
            at = rnd(len(b) + 1)
            b = b[:at] + os.urandom(1 + rnd(12)) + b[at:]
        elif op == 3 and b:
            i = rnd(len(b))
            piece = bytes(b[i:i + 1 + rnd(40)])
            b = b[:i] + piece + piece + b[i:]
        else:
            b = b + b"{\"\\\x00\xff"[rnd(5):]
    return bytes(b)
def case(seed):
    return os.urandom(rnd(300)) if rnd(4) == 0 else mutate(seed)
def known(target, data):
    # the firmware bugs already reported (fuzz.KNOWN_BUGS), drawn again with SKIP_KNOWN
    if not SKIP_KNOWN:
        return False
    if target == "config_json":
        try:
            data.decode()
        except UnicodeError:
            return True
        try:  # MicroPython's json takes {1: 2}: a key that is not a string (validate sorts the keys)
            v = json.loads(data)
        except Exception:
            return False
        return isinstance(v, dict) and any(not isinstance(k, str) for k in v)
    if target == "board_info":
        try:
            return not isinstance(json.loads(data), dict)
        except (ValueError, RuntimeError):
            return False
    return False
def fail(target, i, data, why):
    print("FAIL", target, i, why, data.hex())
    raise SystemExit
def t_config(i, data):
    with open(TMP + "/config.json", "wb") as f:
        f.write(data)
    try:
        os.remove(TMP + "/config.lkg")
    except OSError:
        pass
    try:
        cfg, errors = config.load(TMP + "/config.json", TMP + "/config.lkg")
    except Exception as e:
        fail("config_json", i, data, repr(e))
    d = config.defaults()
    for k in config.SCHEMA:
        kind, default, check = config.SCHEMA[k]
        v = cfg[k]
        if v != default and (not isinstance(v, kind) or isinstance(v, bool) or (check and check(v))):
            fail("config_json", i, data, "kept a refused value for " + k)
def t_board(i, data):
    with open(TMP + "/board.json", "wb") as f:
        f.write(data)
    try:
        board, err = boardinfo.load(TMP + "/board.json")
    except Exception as e:
        fail("board_info", i, data, repr(e))
    if not isinstance(board, dict):
        fail("board_info", i, data, "not a dict")
def t_http(i, data):
    buf = bytearray(data[:http_request.MAX_HEAD])
    end = http_request.head_end(buf, len(buf))
    if end < 0:
        return
    try:
        http_request.parse(buf, end)
    except http_request.HttpError as e:
        if not 400 <= e.status <= 599:
            fail("http_request", i, data, "status %d" % e.status)
    except Exception as e:
        fail("http_request", i, data, repr(e))
def t_store(i, data):
    d = TMP + "/st"
    try:
        for n in os.listdir(d):
            os.remove(d + "/" + n)
    except OSError:
        os.mkdir(d)
    with open(d + "/00000000.seg", "wb") as f:
        f.write(b"LS\x01\x00" + data)
    try:
        s = store.Store(d, capacity_bytes=65536)
        s.peek(4096)
        n = s.next_seq
        if s.append(b"fuzz") != n:
            fail("store_records", i, data, "append after recovery")
        s.close()
    except Exception as e:
        fail("store_records", i, data, repr(e))
SEEDS = {"config_json": CONFIG_SEED, "board_info": BOARD_SEED, "http_request": HTTP_SEED, "store_records": STORE_SEED}
FNS = {"config_json": t_config, "board_info": t_board, "http_request": t_http, "store_records": t_store}
for target in TARGETS:
    for i in range(CASES):
        data = case(SEEDS[target])
        while known(target, data):
            data = case(SEEDS[target])
        FNS[target](i, data)
    print("DONE", target, CASES)
"""

UNIX_TARGETS = ("config_json", "board_info", "http_request", "store_records")


def run_unix_port(targets, cases: int, log=print, skip_known: bool = False) -> dict[str, int]:
    """The firmware targets on the MicroPython unix port: {target: cases run}; FuzzFailure on the first failure."""
    from host_tools.runtime import unix_port

    done = {}
    with tempfile.TemporaryDirectory(prefix="lanterne-fuzz-up-") as tmp:
        for name in targets:
            if name not in UNIX_TARGETS:
                continue
            t0 = time.monotonic()
            code = (f"FIRMWARE = {str(FIRMWARE)!r}\nTMP = {tmp!r}\nCASES = {cases}\nTARGETS = [{name!r}]\n"
                    f"SKIP_KNOWN = {skip_known}\n"
                    f"CONFIG_SEED = {json.dumps(_seed_config()).encode()!r}\nBOARD_SEED = {json.dumps(_seed_board()).encode()!r}\n"
                    f"HTTP_SEED = {_seed_requests()[1]!r}\nSTORE_SEED = {_store_seed()[1:]!r}\n" + UNIX_SCRIPT)
            out = unix_port.run(code, heapsize=4 << 20, timeout=3600)
            for line in out.splitlines():
                if line.startswith("FAIL"):
                    raise FuzzFailure(f"unix port: {line[:4200]}")
            if f"DONE {name} {cases}" not in out:
                raise FuzzFailure(f"unix port: {name} did not finish: {out[-2000:]}")
            done[name] = cases
            log(f"{name} (unix port): {cases} cases, {time.monotonic() - t0:.1f} s, no broken promise")
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host_tools.reliability.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", metavar="TARGET", help=f"default: all ({', '.join(TARGETS)})")
    ap.add_argument("--cases", type=int, default=10000, help="inputs per target (default 10000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-known", action="store_true", help="draw again an input that hits a firmware bug already reported")
    ap.add_argument("--unix-port", action="store_true", help=f"run the firmware targets on MicroPython ({', '.join(UNIX_TARGETS)})")
    args = ap.parse_args(argv)
    targets = args.targets or list(TARGETS)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target {unknown[0]!r}; known: {', '.join(TARGETS)}")
    try:
        if args.unix_port:
            run_unix_port(targets, args.cases, skip_known=args.skip_known)
        else:
            run_cpython(targets, args.cases, args.seed, skip_known=args.skip_known)
    except FuzzFailure as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
