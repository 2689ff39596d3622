"""Mutation testing of the network-server formatter (host_tools/codec/formatter.js) with StrykerJS.

StrykerJS (npm, fetched into build/stryker by `ensure_stryker`, never committed) makes the mutants
and runs, for each, a Node script that decodes a corpus of frames with the mutated formatter and
compares every answer with the Python decoder's (host_tools/codec/decoder.py, the independent
implementation the tests already hold it to): the spec's examples, seq deltas and ages at their
limits, random batches from the firmware encoder in both framings and budgets, the same damaged
(bits flipped, cut, extended, overwritten) and random bytes, and the odd inputs a network server
may pass. A difference in any answer (data, or the exact error text) kills the mutant.

Stryker 9.5 is the newest line that runs on Node 20 (10.x needs Node 22).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from pathlib import Path

from host_tools.codec import FPORT, PayloadError, decode, firmware_codec
from host_tools.runtime.paths import BUILD, REPO

STRYKER_PACKAGE = "@stryker-mutator/core"
STRYKER_VERSION = "9.5.1"
STRYKER_DIR = BUILD / "stryker"
FORMATTER = "host_tools/codec/formatter.js"
SPEC = REPO / "docs" / "payload.md"

CHECK_JS = r"""
// Decode every vector with the formatter under test; exit 1 at the first answer that differs.
const fs = require("fs"), path = require("path");
const f = require(path.resolve(process.argv[2]));
const cases = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
function same(a, b) {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a), kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && same(a[k], b[k]));
}
for (let i = 0; i < cases.length; i++) {
  const c = cases[i];
  let got;
  try { got = f.decodeUplink(c.input); } catch (e) { got = {thrown: String(e)}; }
  let ok;
  if (c.expect) ok = same(got, c.expect);
  else ok = got && !("data" in got) && Array.isArray(got.errors) && got.errors.length === 1 &&
    got.errors[0].includes(c.error_contains) && same(got.warnings, []);
  if (!ok) {
    console.log("vector " + i + " (" + c.what + "): got " + JSON.stringify(got));
    process.exit(1);
  }
}
// Where a network server runs it: a plain script in a context with no `module` (The Things Stack).
const vm = require("vm");
const ctx = {process: {env: {__STRYKER_ACTIVE_MUTANT__: process.env.__STRYKER_ACTIVE_MUTANT__}}};
vm.runInNewContext(fs.readFileSync(path.resolve(process.argv[2]), "utf8"), ctx);
for (let i = 0; i < cases.length; i += 97) {
  if (cases[i].expect && !same(ctx.decodeUplink(cases[i].input), cases[i].expect)) {
    console.log("vector " + i + " differs when run as a plain script");
    process.exit(1);
  }
}
// Input whose bytes throw when read: an error answer, never an exception.
const hostile = {length: 3};
Object.defineProperty(hostile, 0, {get() { throw new Error("boom"); }});
if (!same(f.decodeUplink({bytes: hostile}), {warnings: [], errors: ["internal decoder error: Error: boom"]})) {
  console.log("hostile input: " + JSON.stringify(f.decodeUplink({bytes: hostile})));
  process.exit(1);
}
console.log(cases.length + " vectors agree");
"""

# Inputs a network server may hand the formatter that are not a byte array of a frame.
ODD_INPUTS = [
    ({}, "input.bytes is missing"),
    ({"bytes": None}, "input.bytes is missing"),
    ({"bytes": {}}, "input.bytes is missing"),
    ({"bytes": 5}, "input.bytes is missing"),
    ({"bytes": "02a6"}, "not a byte: 0"),
    ({"bytes": [2, 300, 0, 0]}, "byte 1: not a byte: 300"),
    ({"bytes": [2, -1, 0, 0]}, "byte 1: not a byte: -1"),
    ({"bytes": [2, 1.5, 0, 0]}, "byte 1: not a byte: 1.5"),
    ({"bytes": [166, 117, 189], "fPort": "102"}, "FPort 102 is not a Lanterne payload port"),
    ({"bytes": [166, 117, 189], "fPort": 102.5}, "FPort 102.5 is not a Lanterne payload port"),
    ({"bytes": [2, 0, 0, 0], "fPort": None}, "byte 1: reading 0 presence bitmap is empty"),
]


def _bits(bits: str, mqtt: bool = True, length: int = 0) -> bytes:
    """A frame written bit by bit (spaces ignored), zero-padded to whole bytes (at least `length`)."""
    bits = bits.replace(" ", "")
    bits += "0" * (-len(bits) % 8)
    out = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))
    out += bytes(max(0, length - len(out)))
    return (b"\x02" if mqtt else b"") + out


def _eg(value: int, k: int = 0) -> str:
    w = value + (1 << k)
    return "0" * (w.bit_length() - k - 1) + format(w, "b")


# Frames no encoder writes, each aimed at one check of the decoders (they fail before the CRC).
SEQ_ONLY, STATUS_ONLY = "0 00000000010", "0 00000000100"
CRAFTED = [
    _bits("0 11111011111", length=4),  # reading 0: the standard set spelled as an 11-bit bitmap
    _bits(SEQ_ONLY + format(7, "016b") + "1 1 00000000010", length=6),  # reading 1 repeats reading 0's bitmap
    _bits(SEQ_ONLY + format(7, "016b") + "1 1 00000000000", length=6),  # reading 1's bitmap is empty
    _bits(STATUS_ONLY + "11 0000000000", length=4),  # status flags 0 in the long form
    _bits(STATUS_ONLY + "11 1000000000", length=4),  # clock_unsynced alone in the long form
    _bits(STATUS_ONLY + "0 1 0 1 0000000000", length=4),  # reading 1's long form repeats the reference
    _bits(SEQ_ONLY + format(7, "016b") + "1 0" + "0" * 27 + "1", length=10),  # an Exp-Golomb of 27 zeros
    _bits(SEQ_ONLY + format(7, "016b") + "1 0" + _eg(1 << 26), length=10),  # 26 leading zeros: read, too large
    _bits(SEQ_ONLY + format(7, "016b") + "1 0" + _eg(65536), length=10),  # seq delta +32768
    _bits(SEQ_ONLY + format(7, "016b") + "1 0" + _eg(65537), length=10),  # seq delta -32769
    _bits(SEQ_ONLY + format(7, "016b") + "1 0" + _eg(65534) + "0", length=10),  # seq delta +32767, then ends
    _bits("0 10010000100" + "0" * 20, mqtt=False),  # LoRaWAN: cut before reading 0 status
    _bits("0 10000000100" + "0" * 11 + "1", mqtt=False),  # LoRaWAN: cut inside reading 0 status
    _bits("0 10000000100" + "0" * 11 + "1", mqtt=True),
    b"\x02" + bytes(1023),  # 1024 bytes: the largest frame a decoder reads (this one is refused inside)
    b"\x02" + bytes(1024),  # 1025: oversized
    bytes(1024),
]


def _expect(frame: bytes, fport: int | None) -> dict:
    try:
        return {"data": decode(frame, fport), "warnings": [], "errors": []}
    except PayloadError as exc:
        return {"warnings": [], "errors": [str(exc)]}


def _spec_frames() -> list[bytes]:
    return [bytes.fromhex(h) for h in re.findall(r"```\w+ frame=[\w-]+\n(.*?)```", SPEC.read_text(), re.S)]


def _edge_batches(codec) -> list[list]:
    """Readings at the codec's limits: seq deltas at the window's ends, saturated ages, extremes."""
    out = []
    seq = [1000]
    for d in (32767, -32767, 32768, -32768, 32769, 0, -1, 65535, 1):
        seq.append(seq[-1] + 1 + d)
    out.append([[(codec.TEMPERATURE, 200), (codec.SEQ, s)] for s in seq])
    age_max = codec.AGE_MAX
    for ages in ([age_max] * 4, [age_max - 600, age_max - 300, age_max, age_max], [0, 127, 128, 129, 10**6]):
        out.append([[(codec.STATUS, 0), (codec.AGE, a)] for a in ages])
    low = [(codec.TEMPERATURE, -400), (codec.HUMIDITY, 0), (codec.PRESSURE, 3000), (codec.ILLUMINANCE, 0),
           (codec.FILL, 0), (codec.DISTANCE, 0), (codec.LAMP, 0), (codec.LAMP_FAULT, 0), (codec.VOLTAGE, 0),
           (codec.STATUS, 0), (codec.SEQ, 0), (codec.AGE, 0)]
    high = [(codec.TEMPERATURE, 850), (codec.HUMIDITY, 200), (codec.PRESSURE, 11000),
            (codec.ILLUMINANCE, 120_000_000), (codec.FILL, 100), (codec.DISTANCE, 16383), (codec.LAMP, 100),
            (codec.LAMP_FAULT, 1), (codec.VOLTAGE, 60000), (codec.STATUS, 0x3FF), (codec.SEQ, 65535),
            (codec.AGE, age_max)]
    out += [[low, high, low], [high, low, high], [low[:3], high[3:], low[5:], high]]
    return out


def _random_batch(rng: random.Random, codec) -> list[list]:
    slots = [codec.TEMPERATURE, codec.HUMIDITY, codec.PRESSURE, codec.ILLUMINANCE, codec.FILL, codec.DISTANCE,
             codec.LAMP, codec.VOLTAGE, codec.STATUS, codec.SEQ, codec.AGE]
    ranges = {codec.TEMPERATURE: (-400, 850), codec.HUMIDITY: (0, 200), codec.PRESSURE: (3000, 11000),
              codec.ILLUMINANCE: (0, 120_000_000), codec.FILL: (0, 100), codec.DISTANCE: (0, 16383),
              codec.LAMP: (0, 100), codec.VOLTAGE: (0, 60000), codec.STATUS: (0, 0x3FF), codec.SEQ: (0, 70000),
              codec.AGE: (0, codec.AGE_MAX)}
    present = [s for s in slots if rng.random() < 0.7] or [codec.SEQ]
    batch, prev = [], {}
    for _ in range(rng.randint(1, 24)):
        reading = []
        fields = present if rng.random() < 0.8 else ([s for s in slots if rng.random() < 0.5] or [codec.FILL])
        for s in fields:
            lo, hi = ranges[s]
            near = prev.get(s)
            v = rng.randint(lo, hi) if near is None or rng.random() < 0.3 else min(hi, max(lo, near + rng.randint(-3, 3)))
            prev[s] = v
            reading.append((s, v))
        if codec.LAMP in fields:
            reading.append((codec.LAMP_FAULT, rng.randint(0, 1)))
        batch.append(reading)
    return batch


def vectors(seed: int = 7, damaged: int = 2500) -> list[dict]:
    """The corpus: every input with the answer the Python decoder gives (or the error it must contain)."""
    codec = firmware_codec()
    rng = random.Random(seed)
    valid: list[tuple[bytes, int | None]] = []
    for frame in _spec_frames():
        valid += [(frame, FPORT), (b"\x02" + frame, None)]
    batches = _edge_batches(codec) + [_random_batch(rng, codec) for _ in range(120)]
    for batch in batches:
        readings = []
        for spec in batch:
            r = codec.new_reading()
            for slot, value in spec:
                r[slot] = value
            readings.append(r)
        for lorawan in (True, False):
            enc = codec.Encoder(242, lorawan)
            start = 0
            budget = rng.choice([11, 51, 115, 242])
            while start < len(readings):
                n = enc.encode(readings, start, -1, budget)
                if n == 0:
                    break
                valid.append((enc.frame(), FPORT if lorawan else None))
                start += n
    cases = [(f, p, "valid") for f, p in valid]
    while len(cases) < len(valid) + damaged:
        frame, fport = rng.choice(valid)
        base = bytearray(frame)
        kind = rng.randrange(6)
        if kind == 0:
            base = bytearray(rng.randbytes(rng.randint(0, 40)))
        elif kind == 1:
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(base) * 8)
                base[i // 8] ^= 0x80 >> (i % 8)
        elif kind == 2:
            base = base[: rng.randrange(len(base))]
        elif kind == 3:
            base += rng.randbytes(rng.randint(1, 5))
        elif kind == 4:
            base[rng.randrange(len(base))] = rng.randrange(256)
        else:
            fport = rng.choice([None, 100, 101, 102, 103, 199, 200, 1])
        cases.append((bytes(base), fport, "damaged"))
    cases += [(f, None if f[:1] == b"\x02" else FPORT, "crafted") for f in CRAFTED]
    out = []
    for frame, fport, what in cases:
        inp: dict = {"bytes": list(frame)}
        if fport is not None:
            inp["fPort"] = fport
        out.append({"what": what, "input": inp, "expect": _expect(frame, fport)})
    out += [{"what": "odd input", "input": inp, "error_contains": text} for inp, text in ODD_INPUTS]
    return out


def ensure_stryker() -> Path:
    """StrykerJS in build/stryker (npm, the pinned version), installed on first use."""
    main = STRYKER_DIR / "node_modules" / "@stryker-mutator" / "core" / "bin" / "stryker.js"
    if not main.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not installed: the formatter's mutation campaign needs StrykerJS from npm")
        STRYKER_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(STRYKER_DIR),
                        f"{STRYKER_PACKAGE}@{STRYKER_VERSION}"], check=True, capture_output=True, timeout=600)
    return main


def _enclosing_function(lines: list[str], line: int) -> str:
    for text in reversed(lines[:line]):
        m = re.match(r"\s*(?:function (\w+)\(|(\w+(?:\.prototype\.\w+)?) = function)", text)
        if m:
            return m.group(1) or m.group(2)
    return "<top>"


def run_stryker(workdir: Path, jobs: int = 1, root: Path = REPO, timeout_ms: int = 5000) -> list[dict]:
    """Run StrykerJS on formatter.js; one dict per mutant: line, where, operator, before, after, outcome."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: the formatter runs on Node")
    stryker = ensure_stryker()
    if workdir.exists():
        shutil.rmtree(workdir)
    project = workdir / "project"
    (project / FORMATTER).parent.mkdir(parents=True)
    shutil.copy2(root / FORMATTER, project / FORMATTER)
    (workdir / "check.js").write_text(CHECK_JS)
    (workdir / "vectors.json").write_text(json.dumps(vectors()))
    check = subprocess.run([node, str(workdir / "check.js"), FORMATTER, str(workdir / "vectors.json")], cwd=project,
                           capture_output=True, text=True, timeout=120)
    if check.returncode != 0:
        raise RuntimeError("the formatter disagrees with the Python decoder without any mutant:\n" + check.stdout)
    config = {
        "mutate": [FORMATTER],
        "testRunner": "command",
        "commandRunner": {"command": f"{node} {workdir / 'check.js'} {FORMATTER} {workdir / 'vectors.json'}"},
        "coverageAnalysis": "off",
        "reporters": ["json"],
        "jsonReporter": {"fileName": str(workdir / "stryker-report.json")},
        "tempDirName": str(workdir / "stryker-tmp"),
        "concurrency": max(1, jobs),
        "timeoutMS": timeout_ms,
        "logLevel": "error",
    }
    (project / "stryker.config.json").write_text(json.dumps(config, indent=1))
    proc = subprocess.run([node, str(stryker), "run", "stryker.config.json"], cwd=project, capture_output=True,
                          text=True, timeout=3600)
    report_file = workdir / "stryker-report.json"
    if proc.returncode != 0 or not report_file.exists():
        raise RuntimeError(f"stryker failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    report = json.loads(report_file.read_text())
    source = (root / FORMATTER).read_text()
    lines = source.split("\n")
    out = []
    for m in report["files"][FORMATTER]["mutants"]:
        start, end = m["location"]["start"], m["location"]["end"]
        before = lines[start["line"] - 1]
        if start["line"] == end["line"]:
            after = before[: start["column"] - 1] + m.get("replacement", "") + before[end["column"] - 1 :]
        else:
            after = before[: start["column"] - 1] + m.get("replacement", "").split("\n")[0] + " ... (lines changed)"
        status = m["status"]
        outcome = {"Killed": "killed", "Timeout": "timeout", "Survived": "survived", "NoCoverage": "survived"}.get(
            status, "error")
        out.append({"line": start["line"], "where": _enclosing_function(lines, start["line"]),
                    "operator": "stryker/" + m["mutatorName"], "before": before.strip(), "after": after.strip(),
                    "outcome": outcome})
    return out
