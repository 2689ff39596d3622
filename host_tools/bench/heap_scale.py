"""Heap scale calibration: the 64-bit unix port's heap against a 32-bit MicroPython's, per firmware layout.

    python -m host_tools.bench.heap_scale --micropython32 PATH [--micropython64 PATH] [--board esp32-devkitc]
                                          [--window 30] [--json]

The virtual board multiplies a board's heap by a scale because the unix port here is a 64-bit
build and the ESP32 a 32-bit one (docs/emulator.md, "Heap"). This measures that scale again, on
any pair of MicroPython binaries (the 32-bit one is given; the 64-bit one is by default the
unix port the virtual boards run): for each layout of the firmware ("romfs": the library in the
ROMFS partition, objects only in the heap; "filesystem": everything under /lib, bytecode in the
heap), the smallest heap the firmware runs in on each binary, bisected in 4 KB steps then 1 KB,
inside the same virtual board with LANTERNE_HEAP_SCALE=1.0 (so a trial's heap is that binary's
own bytes, the ROM's share and the ROMFS buffer added on top as always). A heap passes when for
the whole window the board sends its status and a reading every second over Mosquitto with no
MemoryError and no task restarted (`host_tools.bench.heap`'s trial). The scale is the ratio of
the two smallest heaps; it prints both layouts' ratios, the binaries' versions and the firmware
version, so the result can be recorded with what it was measured on.

Each binary runs in a child process of its own (`--child`), since the emulator reads
LANTERNE_MICROPYTHON and LANTERNE_HEAP_SCALE from its environment. A 32-bit unix port: MicroPython's
`ports/unix` built with `CC="gcc -m32"` (Debian: gcc-multilib; the port ignores MICROPY_FORCE_32BIT
now, and builds 64-bit with it); build the 64-bit one from the
same source with the same options to compare like with like (docs/emulator.md has the commands).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYOUTS = ("romfs", "filesystem")
LO, HI = 24 * 1024, 224 * 1024


def _smallest(board_name: str, layout: str, window: float) -> dict:
    """In the child: the smallest heap (this process's binary, scale 1.0) the firmware runs in."""
    from host_tools import boards
    from host_tools.backoffice.brokers import Mosquitto
    from host_tools.backoffice.watcher import Watcher
    from host_tools.bench.heap import _Trial
    from host_tools.emulator.supervisor import Emulator

    board = boards.load(board_name)
    trials = []
    with Mosquitto() as mq, tempfile.TemporaryDirectory() as tmp, Emulator() as emu, \
            Watcher(mq.url, ["lanterne/v1/heap/+/status", "lanterne/v1/heap/+/up"]) as w:
        trial = _Trial(emu, w, mq.url, Path(tmp))

        def passes(heap: int) -> bool:
            ok, _steady, why = trial.run(board, layout, heap, window)
            trials.append([heap, ok, why])
            return ok

        if not passes(HI):
            return {"smallest": None, "trials": trials}

        def bisect(a: int, b: int, step: int) -> int:
            # smallest k in [a, b] with passes(k * step), given passes(b * step)
            while a < b:
                mid = (a + b) // 2
                if passes(mid * step):
                    b = mid
                else:
                    a = mid + 1
            return b * step

        hi = bisect(LO // 4096, HI // 4096, 4096)
        if hi > LO:  # hi - 4 KB failed: the 1 KB steps between
            hi = bisect((hi - 4096) // 1024 + 1, hi // 1024, 1024)
    return {"smallest": hi, "trials": trials}


def _version(binary: str) -> str:
    out = subprocess.run([binary, "-c", "import sys; print(sys.version, sys.implementation._mpy)"], capture_output=True,
                         text=True, timeout=30)
    return out.stdout.strip() or out.stderr.strip()[-200:]


def _bits(binary: str) -> int:
    out = subprocess.run([binary, "-c", "import sys; print(64 if sys.maxsize > 2**32 else 32)"], capture_output=True,
                         text=True, timeout=30)
    return int(out.stdout.strip())


def _firmware_version() -> str:
    from host_tools.runtime.paths import FIRMWARE

    m = re.search(r'^__version__ = "([^"]+)"', (FIRMWARE / "lanterne" / "__init__.py").read_text(), re.MULTILINE)
    return m.group(1) if m else "?"


def calibrate(micropython32: str, micropython64: str | None = None, board: str = "esp32-devkitc", window: float = 30.0,
              log=print) -> dict:
    from host_tools.runtime.paths import micropython_binary

    m64 = micropython64 or micropython_binary()
    for path, want in ((micropython32, 32), (m64, 64)):
        got = _bits(path)
        if got != want:
            raise ValueError(f"{path} is a {got}-bit MicroPython, expected {want}-bit")
    result: dict = {"board": board, "firmware": _firmware_version(), "window_s": window,
                    "micropython32": {"path": micropython32, "version": _version(micropython32)},
                    "micropython64": {"path": m64, "version": _version(m64)}, "layouts": {}}
    t0 = time.monotonic()
    for layout in LAYOUTS:
        row = {}
        for bits, binary in ((64, m64), (32, micropython32)):
            env = dict(os.environ, LANTERNE_MICROPYTHON=binary, LANTERNE_HEAP_SCALE="1.0")
            out = subprocess.run([sys.executable, "-m", "host_tools.bench.heap_scale", "--child", "--layout", layout,
                                  "--board", board, "--window", str(window)], capture_output=True, text=True, env=env,
                                 timeout=3600)
            if out.returncode:
                raise RuntimeError(f"{bits}-bit {layout} trial failed: {out.stderr[-2000:]}")
            row[f"smallest_{bits}"] = json.loads(out.stdout.strip().splitlines()[-1])["smallest"]
            log(f"{layout}: smallest heap on the {bits}-bit build: {row[f'smallest_{bits}']} bytes")
        a, b = row["smallest_64"], row["smallest_32"]
        row["scale"] = round(a / b, 3) if a and b else None
        result["layouts"][layout] = row
    result["seconds"] = round(time.monotonic() - t0)
    return result


def format_result(r: dict) -> str:
    lines = [f"heap scale, 64-bit -> 32-bit, firmware {r['firmware']} on {r['board']} ({r['window_s']:g} s per trial):",
             f"  64-bit: {r['micropython64']['version']} ({r['micropython64']['path']})",
             f"  32-bit: {r['micropython32']['version']} ({r['micropython32']['path']})",
             f"  {'layout':<12} {'64-bit':>10} {'32-bit':>10} {'scale':>7}"]
    for layout, row in r["layouts"].items():
        kb = [f"{row[k] / 1024:.0f} KB" if row[k] else "none" for k in ("smallest_64", "smallest_32")]
        lines.append(f"  {layout:<12} {kb[0]:>10} {kb[1]:>10} {row['scale'] if row['scale'] else '-':>7}")
    lines.append("  (HEAP_SCALE_ROMFS is the romfs scale, HEAP_SCALE the filesystem one: host_tools/emulator/board.py)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host_tools.bench.heap_scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--micropython32", metavar="PATH", help="a 32-bit MicroPython unix port")
    ap.add_argument("--micropython64", metavar="PATH", help="the 64-bit one to compare with (default: the virtual boards')")
    ap.add_argument("--board", default="esp32-devkitc")
    ap.add_argument("--window", type=float, default=30.0, help="seconds each trial runs (default 30)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--layout", choices=LAYOUTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_smallest(args.board, args.layout, args.window)))
        return 0
    if not args.micropython32:
        ap.error('--micropython32 PATH is required (a MicroPython unix port built with CC="gcc -m32")')
    try:
        r = calibrate(args.micropython32, args.micropython64, args.board, args.window,
                      log=(lambda m: print(m, file=sys.stderr)) if args.json else print)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"heap_scale: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(r) if args.json else format_result(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
