"""Power cuts under the lamp's energy meter on littlefs: the counters never go back, a cut loses a minute at most.

The firmware's `EnergyMeter` (firmware/lanterne/energy.py) runs on the MicroPython unix port over
littlefs on a file-backed NOR-flash device (the store harness's, `powercut.FLASH_DEVICE`: only what
littlefs programmed survives a SIGKILL, as on the board). A lamp of 100 W burns in virtual time, a
tick every 2 s, as fast as the process runs; every few ticks the meter reports (a reading: it saves
first), and each line the child prints says what it reported and what it had counted so far. The
harness SIGKILLs it at seeded random instants and starts it again on the same flash. Verified:

- the counters loaded at each start are at least the last values reported before the cut (a
  reading never said more than the flash held), so the counters never go back;
- what was counted but not kept is at most SAVE_MS plus one tick of burning (a minute);
- the flash device's counts give the wear: bytes programmed and blocks erased per save.

    python -m host_tools.reliability.energy_powercut --cuts 200    # the documented run
    run_energy_powercuts(40, seed=1, flash_dir=tmp) -> EnergyPowercutReport
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.reliability.powercut import FLASH_DEVICE
from host_tools.runtime.paths import micropython_binary
from host_tools.runtime.unix_port import micropython_path

# argv: flash mode report_every blocks
CHILD = (
    FLASH_DEVICE
    + r"""
import sys, os
a = sys.argv
dev = mount_flash(a[1] + "/flash.img", blocks=int(a[4]), format=a[2] == "format")
if a[2] == "format":
    sys.exit(0)
os.chdir("/flash")
from lanterne.energy import EnergyMeter, SAVE_MS
from lanterne.config import parse_curve, DEFAULT_CURVE


class Lamp:  # what the meter reads of lanterne/actuators/lamp.py: 100 W at full light, no current sense
    output = 1000
    current_ma = -1
    current_adc = None
    fault = 0
    fault_ma = 20


lamp = Lamp()
m = EnergyMeter(lamp, rated_w=100.0, curve=parse_curve(DEFAULT_CURVE), now_ms=0)
out = sys.stdout
# L: what was loaded (Wh, 0.01 h, watt-seconds counted), then T/R lines: counted so far, reported
out.write("L %d %d %d %d\n" % (m.saved[0], m.saved[1], m.wh * 3600 + m.acc // 100000, m.seq))
every = int(a[3])
t = 0
saves = m.seq
while True:
    t += 2000
    m.tick(t)
    ws = m.wh * 3600 + m.acc // 100000
    if t % (2000 * every) == 0:
        wh, ch = m.report(t)
        out.write("R %d %d %d %d %d %d\n" % (wh, ch, ws, m.seq, dev.erases, dev.programmed))
    else:
        out.write("T %d\n" % ws)
"""
)


@dataclass
class EnergyPowercutReport:
    cuts: int
    seed: int
    seconds: float = 0.0
    saves: int = 0  # saves made over the whole run (the last start's sequence number)
    reports: int = 0
    worst_loss_ws: int = 0  # watt-seconds counted but not kept, worst cut
    max_loss_ws: int = 0  # the bound: SAVE_MS + one tick at 100 W
    erases_per_save: float = 0.0
    programmed_per_save: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [f"energy meter power cuts: {self.cuts} on littlefs (seed {self.seed}) in {self.seconds:.1f} s; "
                 f"{self.saves} saves, {self.reports} reports",
                 f"worst loss at a cut: {self.worst_loss_ws} W.s of 100 W (bound {self.max_loss_ws} W.s: a minute)",
                 f"flash wear: {self.programmed_per_save:.0f} bytes programmed, {self.erases_per_save:.3f} blocks "
                 f"erased per save",
                 "OK: the counters never went back" if self.ok else f"FAILED ({len(self.problems)} problems):"]
        return "\n".join(lines + ["  " + p for p in self.problems[:20]])


def run_energy_powercuts(n_cuts: int, seed: int, flash_dir: str | os.PathLike, *, blocks: int = 32,
                         report_every: int = 45, max_delay: float = 0.25, heapsize: int = 200 * 1024,
                         progress=None) -> EnergyPowercutReport:
    """Cut `n_cuts` times at seeded random instants; verify each start against the run before it."""
    flash = Path(flash_dir)
    flash.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rep = EnergyPowercutReport(cuts=n_cuts, seed=seed, max_loss_ws=(58 + 2) * 100)
    env = dict(os.environ, MICROPYPATH=micropython_path())
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "energy_child.py"
        script.write_text(CHILD)

        def start(mode: str) -> subprocess.Popen:
            argv = [micropython_binary(), "-X", f"heapsize={heapsize}", str(script), str(flash), mode,
                    str(report_every), str(blocks)]
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env)

        fmt = start("format")
        if fmt.wait(timeout=60) != 0:
            rep.problems.append("formatting the flash image failed: " + fmt.stderr.read().decode()[-400:])
            return rep
        fmt.stdout.close()
        fmt.stderr.close()
        last_reported = (0, 0)
        last_counted = 0
        first_wear = None
        for run in range(n_cuts + 1):
            proc = start("run")
            lines: list[str] = []
            reader = threading.Thread(target=lambda p=proc, out=lines: out.extend(
                raw.decode() for raw in p.stdout if raw.endswith(b"\n")), daemon=True)
            reader.start()
            # the last run is longer: it measures the wear over many saves
            time.sleep(rng.uniform(0.05, max_delay) if run < n_cuts else 4 * max_delay + 2)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            reader.join(timeout=30)
            err = proc.stderr.read().decode("utf-8", "replace")
            proc.stdout.close()
            proc.stderr.close()
            loaded = next((ln.split() for ln in lines if ln.startswith("L ")), None)
            if loaded is None:
                if "Traceback" in err:
                    rep.problems.append(f"run {run}: {err.strip().splitlines()[-1]}")
                continue  # cut before it loaded anything: the flash is as the previous run left it
            wh, ch, ws, seq = (int(x) for x in loaded[1:])
            if (wh, ch) < last_reported:
                rep.problems.append(f"run {run}: loaded {wh} Wh {ch} ch, below the {last_reported} reported before the cut")
            loss = last_counted - ws
            rep.worst_loss_ws = max(rep.worst_loss_ws, loss)
            if loss > rep.max_loss_ws:
                rep.problems.append(f"run {run}: {loss} W.s counted before the cut were lost (bound {rep.max_loss_ws})")
            if ws < 0 or (run and ws < last_counted - rep.max_loss_ws):
                rep.problems.append(f"run {run}: counters went back to {ws} W.s")
            last_counted = ws
            for ln in lines:
                parts = ln.split()
                if parts[0] == "T":
                    last_counted = int(parts[1])
                elif parts[0] == "R":
                    rwh, rch, rws, rseq, erases, programmed = (int(x) for x in parts[1:])
                    last_reported, last_counted = (rwh, rch), rws
                    rep.reports += 1
                    rep.saves = rseq
                    if run == n_cuts:  # the wear: over the last run, the device counting from its start
                        if first_wear is None:
                            first_wear = (rseq, erases, programmed)
                        elif rseq > first_wear[0]:
                            n = rseq - first_wear[0]
                            rep.erases_per_save = (erases - first_wear[1]) / n
                            rep.programmed_per_save = (programmed - first_wear[2]) / n
            if progress:
                progress(run, rep)
    rep.seconds = time.monotonic() - t0
    return rep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuts", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", help="flash folder (default: a temporary one)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rep = run_energy_powercuts(args.cuts, args.seed, args.dir or tmp)
    print(rep.summary())
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
