"""The fuzzers' firmware targets on the MicroPython unix port (host_tools/reliability/fuzz.py has the
targets, their promises and the CPython side): `python -m host_tools.reliability.fuzz --unix-port`.

Inputs are generated on MicroPython itself (os.urandom, and mutations of the same seeds as on
CPython), each case's promise checked there; the script prints "FAIL target case why hex" or
"DONE target n".
"""

from __future__ import annotations

import json
import tempfile
import time

from host_tools.reliability.fuzz_seeds import (
    FuzzFailure,
    _seed_board,
    _seed_config,
    _seed_manifest,
    _seed_requests,
    _store_seed,
)
from host_tools.runtime.paths import FIRMWARE

# The same firmware parsers on MicroPython, inputs generated there (os.urandom and mutations of a
# seed), each case's promise checked there; prints "FAIL target case hex" or "DONE target n".
UNIX_SCRIPT = r"""
import os, sys, json
sys.path.insert(0, FIRMWARE)
from lanterne import config, boardinfo, http_request, store
from lanterne_ota import manifest as M
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
    # the firmware bugs reported and not fixed yet (fuzz.KNOWN_BUGS), drawn again with SKIP_KNOWN: none today
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
    for k in config.SCHEMA:
        kind, default, _check = config.SCHEMA[k]
        v = cfg[k]
        if v != default and (not isinstance(v, kind) or isinstance(v, bool) or config.check(k, v)):
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
def t_manifest(i, data):
    try:
        m = M.Manifest(data)
    except M.ManifestError as e:
        if e.code != M.MALFORMED:
            fail("ota_manifest", i, data, "refused with " + e.code)
        return
    except Exception as e:
        fail("ota_manifest", i, data, repr(e))
    try:
        n = 0
        for k in range(m.nblocks):
            n += m.block_len(k)
            if len(m.block_sha(k)) != 32:
                fail("ota_manifest", i, data, "a block hash that is not 32 bytes")
        if n != m.length:
            fail("ota_manifest", i, data, "blocks that do not make the image")
        verified = True
        try:
            m.check_signature([MANIFEST_KEY])
        except M.ManifestError as e:
            verified = False
            if e.code not in (M.UNKNOWN_KEY, M.BAD_SIGNATURE):
                fail("ota_manifest", i, data, "signature check refused with " + e.code)
        if verified and data != MANIFEST_SEED:
            fail("ota_manifest", i, data, "a changed manifest verified")
        try:
            m.check_target((6, 3, 0), (1, 25, 0), 196608, 3)
        except M.ManifestError:
            pass
    except SystemExit:
        raise
    except Exception as e:
        fail("ota_manifest", i, data, repr(e))
SEEDS = {"config_json": CONFIG_SEED, "board_info": BOARD_SEED, "http_request": HTTP_SEED, "store_records": STORE_SEED,
         "ota_manifest": MANIFEST_SEED}
FNS = {"config_json": t_config, "board_info": t_board, "http_request": t_http, "store_records": t_store,
       "ota_manifest": t_manifest}
for target in TARGETS:
    for i in range(CASES):
        data = case(SEEDS[target])
        while known(target, data):
            data = case(SEEDS[target])
        FNS[target](i, data)
    print("DONE", target, CASES)
"""

UNIX_TARGETS = ("config_json", "board_info", "http_request", "store_records", "ota_manifest")


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
                    f"HTTP_SEED = {_seed_requests()[1]!r}\nSTORE_SEED = {_store_seed()[1:]!r}\n"
                    f"MANIFEST_SEED = {_seed_manifest()[0]!r}\nMANIFEST_KEY = {_seed_manifest()[1]!r}\n" + UNIX_SCRIPT)
            out = unix_port.run(code, heapsize=4 << 20, timeout=3600)
            for line in out.splitlines():
                if line.startswith("FAIL"):
                    raise FuzzFailure(f"unix port: {line[:4200]}")
            if f"DONE {name} {cases}" not in out:
                raise FuzzFailure(f"unix port: {name} did not finish: {out[-2000:]}")
            done[name] = cases
            log(f"{name} (unix port): {cases} cases, {time.monotonic() - t0:.1f} s, no broken promise")
    return done
