"""The ten bugs a hand-made mutation audit slipped past the tests, kept as patches that must now fail them.

Each entry is one plausible bug in the code behind Lanterne's promises (no command runs twice
or unauthenticated, no reading lost or committed before the broker has it, the decoders read
what the encoder wrote), written as an exact source replacement, with the tests that must catch
it. `check()` copies the code and tests into a sandbox, applies each patch alone, runs its tests
there (on CPython, on the unix port and on Node, as the tests do) and reports whether they
failed. A patch whose text is no longer found is reported as such: update it with the code.

    python -m host_tools.reliability.survivors        # exit 0 when every patch is caught
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from host_tools.reliability.mutation import judge, make_sandbox, write_source
from host_tools.runtime.paths import REPO


@dataclass(frozen=True)
class Patch:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    impact: str


PATCHES = (
    Patch(
        "ack before publish", "firmware/lanterne/uplink.py",
        '        if not await link.send(_READINGS, frame):\n            return -1\n        self.taken(carried)\n',
        '        self.taken(carried)\n        if not await link.send(_READINGS, frame):\n            return -1\n',
        ("tests/test_uplink.py",),
        "readings committed that never reached the broker",
    ),
    Patch(
        "commit the whole peeked batch", "firmware/lanterne/uplink.py",
        "return memoryview(self.encoder.buf)[: self.encoder.length], batch[:k]",
        "return memoryview(self.encoder.buf)[: self.encoder.length], batch",
        ("tests/test_uplink.py",),
        "readings dropped whenever a frame cannot hold the batch",
    ),
    Patch(
        "ack-log entry CRC not checked", "firmware/lanterne/store.py",
        "                if crc16(e, 0, n) != e[n] | (e[n + 1] << 8):\n                    break\n",
        "",
        ("tests/test_store_ack_guards.py",),
        "one damaged ack-log entry commits unsent readings on reopen",
    ),
    Patch(
        "ack of a seq never appended let through", "firmware/lanterne/store.py",
        "            if item[0] >= nxt:\n",
        "            if item[0] > nxt:\n",
        ("tests/test_store_ack_guards.py",),
        "the next reading's seq is never delivered",
    ),
    Patch(
        "counter persisted after execution", "firmware/lanterne/control.py",
        "        self._persist()\n        try:\n            status, data = self.executor(opcode, args)\n",
        "        try:\n            status, data = self.executor(opcode, args)\n            self._persist()\n",
        ("tests/test_control.py",),
        "a power cut during execution lets a redelivered command run twice",
    ),
    Patch(
        "counter not persisted for refused commands", "firmware/lanterne/control.py",
        "                v.accept(frame, counter, ack)\n                self._persist()\n",
        "                v.accept(frame, counter, ack)\n",
        ("tests/test_control.py",),
        "a refused command's counter is free again after a reboot",
    ),
    Patch(
        "seq delta bound off by one", "firmware/lanterne/codec.py",
        "                if d >= 32768:\n",
        "                if d > 32768:\n",
        ("tests/test_codec_edges.py",),
        "a frame the decoders refuse, its readings already committed",
    ),
    Patch(
        "formatter refuses the largest age", "host_tools/codec/formatter.js",
        "if (age < 0 || age > AGE_MAX) {",
        "if (age < 0 || age >= AGE_MAX) {",
        ("tests/test_codec_edges.py",),
        "the JavaScript and Python decoders disagree on saturated ages",
    ),
    Patch(
        "profile step start bound off by one", "firmware/lanterne/commands.py",
        "if start >= 1440 or end >= 1440 or level > 100:",
        "if start > 1440 or end >= 1440 or level > 100:",
        ("tests/test_command_bounds.py",),
        "an out-of-range dimming step reaches the lamp profile",
    ),
    Patch(
        "set_period upper bound dropped", "firmware/lanterne/commands.py",
        "if not 1 <= seconds <= 86400:",
        "if not 1 <= seconds:",
        ("tests/test_command_bounds.py",),
        "a sampling or status period of up to 136 years reaches the app",
    ),
)


@dataclass
class Verdict:
    patch: Patch
    outcome: str  # caught, missed, stale (the original text is gone), error
    seconds: float


def check(patches=PATCHES, root: Path = REPO, progress=None) -> list[Verdict]:
    """Apply each patch alone in a sandbox and run its tests there; caught means they failed."""
    from host_tools.reliability.mutation import _prepare_parent

    out = []
    with tempfile.TemporaryDirectory(prefix="lanterne-survivors-") as tmp:
        sandbox = make_sandbox(Path(tmp) / "sandbox", root)
        _prepare_parent()
        tests = sorted({t for p in patches for t in p.tests})
        verdict, _ = judge(sandbox, tests, "", 600, Path(tmp) / "baseline.log")
        if verdict != "passed":
            raise RuntimeError("the covering tests fail on the unpatched code:\n" + (Path(tmp) / "baseline.log").read_text())
        for i, p in enumerate(patches):
            target = sandbox / p.path
            original = target.read_text()
            if original.count(p.old) != 1:
                out.append(Verdict(p, "stale", 0.0))
                continue
            write_source(target, original.replace(p.old, p.new))  # never mistaken for its cached bytecode
            try:
                verdict, seconds = judge(sandbox, list(p.tests), "", 600, Path(tmp) / f"patch{i}.log")
            finally:
                write_source(target, original)
            outcome = {"failed": "caught", "passed": "missed"}.get(verdict, "error")
            out.append(Verdict(p, outcome, seconds))
            if progress:
                progress(out[-1])
    return out


def main() -> int:
    start = time.monotonic()
    verdicts = check(progress=lambda v: print(f"{v.outcome:7s} {v.patch.name} ({v.patch.path}, {v.seconds:.1f} s)", flush=True))
    bad = [v for v in verdicts if v.outcome != "caught"]
    for v in bad:
        print(f"NOT CAUGHT: {v.patch.name}: {v.outcome} ({v.patch.impact})")
    print(f"{len(verdicts) - len(bad)}/{len(verdicts)} caught in {time.monotonic() - start:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
