"""`lanterne bench fleet`: what a virtual board costs the host in CPU, the figure that sizes a soak.

K virtual boards (K = 1, 5, 10, 20; --quick: 1 and 5) of the soak's board kinds in the proportions
of its full profile (soak_profile: wifi-lamp, ethernet-bollard, envstation, lorawan-sensor; the
battery bin, asleep most of the time, is left out), with the full profile's periods (a reading
every 10 s, a LoRaWAN board's too, a status a minute, keepalive 15 s) and the firmware's own
watchdog, each MQTT board behind its own `FaultProxy` to one Mosquitto, the LoRaWAN boards through
their modem twin, the gateways, the emulated network server and the uplink service: the soak's
fleet without its faults, commands and probes. Once every board is online, the CPU time
(utime + stime, /proc) over a window of `WINDOW_S`:
- of each board's interpreter process (its MicroPython, and its interrupt thread if it has one),
  by board kind, with the HAL requests it made;
- of the supervisor: the emulator's loop thread (every board's pty, HAL requests, simulated
  parts, NTP, watchdog, deep sleep) and the fault proxies' threads; and of the whole process.

Each size runs in a process of its own. With `LANTERNE_BENCH_BEFORE=<git revision>` the same
fleet also runs on that revision's host tools (its emulator; `git archive` into a temporary
folder, this checkout's build folder and firmware), interleaved size by size with this
checkout's, so the table puts before and after side by side. What 200 boards cost follows from
the per-board figures of the largest size (`cores_for_200_boards`): the boards' interpreters and
the supervisor's share, not the broker, the bridge and the back office's clients, which the
soak adds.
"""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from host_tools.bench import BenchResult

WINDOW_S = 60.0
SETTLE_S = 5.0
MIX = {"wifi-lamp": 3, "ethernet-bollard": 2, "envstation": 1, "lorawan-sensor": 1, "battery-bin": 1}
TICK = os.sysconf("SC_CLK_TCK")
SHORT = {"wifi-lamp": "L", "ethernet-bollard": "B", "envstation": "E", "lorawan-sensor": "R", "battery-bin": "W"}  # the table's kinds column


def _cpu_s(path: str, children: bool = False) -> float | None:
    """utime + stime of /proc/.../stat, in seconds (None: gone); `children`: cutime + cstime, the
    CPU of the children it has waited for (a board's interpreters that ended)."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    at = 13 if children else 11
    return (int(fields[at]) + int(fields[at + 1])) / TICK


def _thread_ids(*names: str) -> list[int]:
    return [t.native_id for t in threading.enumerate() if t.name in names and t.native_id]


def _sample(handles) -> dict:
    me = os.getpid()
    boards = {}
    for i, h in handles:
        proc = h.board.proc
        if proc is not None and proc.returncode is None:
            boards[i] = (proc.pid, _cpu_s(f"/proc/{proc.pid}/stat"))
    return {
        "t": time.monotonic(),
        "boards": boards,
        "emulator": sum(_cpu_s(f"/proc/{me}/task/{t}/stat") or 0.0 for t in _thread_ids("lanterne-emulator")),
        "proxies": sum(_cpu_s(f"/proc/{me}/task/{t}/stat") or 0.0 for t in _thread_ids("lanterne-fault-proxy")),
        "process": _cpu_s(f"/proc/{me}/stat"),
        "ended": _cpu_s(f"/proc/{me}/stat", children=True),
    }


def _kinds(k: int) -> list[str]:
    from host_tools.reliability.soak_profile import fleet_kinds, load_profile

    profile = load_profile("full")
    profile.board_mix = dict(MIX)
    return fleet_kinds(profile, k, random.Random(k))


def interpreters_cpu(a: dict, b: dict, kinds: list[str]) -> tuple[float, dict[str, list[float]], int]:
    """The boards' interpreters' CPU seconds between two samples (`_sample`): those running at both
    (the difference), those started since (all of theirs), those that ended meanwhile (their whole
    life is in this process's children's time once reaped, less what they had used before `a`).
    Also each kind's boards that ran one interpreter throughout (CPU seconds each), and how many
    boards changed interpreter (a reboot, a deep sleep's wake)."""
    by_kind: dict[str, list[float]] = {}
    fleet = b["ended"] - a["ended"]
    changed = 0
    for i, (pid, cpu) in a["boards"].items():
        pid_b, cpu_b = b["boards"].get(i, (None, None))
        if pid_b == pid and cpu is not None and cpu_b is not None:
            fleet += cpu_b - cpu
            by_kind.setdefault(kinds[i], []).append(cpu_b - cpu)
        else:
            changed += 1
            fleet -= cpu or 0.0
    for i, (pid_b, cpu_b) in b["boards"].items():
        if a["boards"].get(i, (None,))[0] != pid_b:
            fleet += cpu_b or 0.0
            changed += i not in a["boards"]
    return fleet, by_kind, changed


def measure(k: int, window_s: float = WINDOW_S, kinds: list[str] | None = None) -> dict:
    """Start K boards of the soak's kinds (or of `kinds`), wait until each is online, and measure a window."""
    from host_tools import boards
    from host_tools.backoffice.brokers import Mosquitto
    from host_tools.backoffice.uplinks import LoraDevice, UplinkService
    from host_tools.backoffice.watcher import Watcher
    from host_tools.emulator.netsim import FaultProxy
    from host_tools.emulator.network_server import Device, NetworkServer
    from host_tools.emulator.supervisor import Emulator
    from host_tools.emulator.world import World
    from host_tools.fleet import deploy
    from host_tools.reliability import soak_lorawan
    from host_tools.reliability.soak_profile import BOARD_KINDS, load_profile

    full = load_profile("full")
    kinds = list(kinds) if kinds else _kinds(k)
    k = len(kinds)
    key = bytes(range(7, 39))
    with Mosquitto() as mq, tempfile.TemporaryDirectory(prefix="lanterne-bench-fleet-") as tmp, \
            Watcher(mq.url, ["lanterne/#"]) as office, Emulator() as emu:
        lora = [(i, os.urandom(8).hex(), os.urandom(16).hex()) for i, kind in enumerate(kinds)
                if BOARD_KINDS[kind].transport == "lorawan"]
        ns = NetworkServer(mq.url, [Device(eui.upper(), app.upper(), f"b{i}") for i, eui, app in lora],
                           integrations=("chirpstack",)).start() if lora else None
        t0, m0 = time.time(), time.monotonic()
        svc = UplinkService([LoraDevice(f"b{i}", eui, key) for i, eui, _ in lora], broker_url=mq.url,
                            ledger_per_day=soak_lorawan.LEDGERS_PER_DAY,
                            clock=lambda: t0 + (time.monotonic() - m0) * soak_lorawan.LEDGER_CLOCK_SCALE).start() if lora else None
        proxies, handles = [], []
        try:
            lora_ids = {i: (eui, app) for i, eui, app in lora}
            for i, kind in enumerate(kinds):
                bk = BOARD_KINDS[kind]
                board = boards.load(bk.board)
                world = World(seed=1000 + i)
                cfg = {"device": f"b{i}", "site": "bench", "command_key": key.hex(), "keepalive_s": full.keepalive_s,
                       "sample_period_s": max(full.sample_period_s, bk.min_sample_period_s),
                       "status_period_s": full.status_period_s}
                kw = {}
                if bk.transport == "lorawan":
                    eui, app = lora_ids[i]
                    cfg.update(transport="lorawan", lorawan_deveui=eui.upper(), lorawan_appkey=app.upper())
                    world.set(**soak_lorawan.LORA_WORLD)
                    kw["radio"] = mq.url
                else:
                    proxy = FaultProxy("127.0.0.1", mq.port, world=world).start()
                    proxies.append(proxy)
                    cfg["broker"] = f"mqtt://127.0.0.1:{proxy.port}"
                cfg.update(bk.config)
                world.set(**bk.world)
                flash = Path(tmp) / f"b{i}" / "flash"
                deploy.copy_to_flash(board, cfg, flash)
                handles.append((i, emu.add_board(board, flash, world=world, **kw)))
            # online: an MQTT board's "online" status; a LoRaWAN board's first reading through the service
            deadline = time.monotonic() + 120 + 5 * k
            waiting = {f"b{i}" for i, _ in handles}
            while waiting and time.monotonic() < deadline:
                for m in office.matching("lanterne/v1/bench/*/status", lambda m: b'"online"' in m.payload):
                    waiting.discard(m.topic.split("/")[3])
                if svc is not None:
                    waiting -= {e["device"] for e in list(svc.events) if e["event"] == "reading"}
                time.sleep(0.5)
            if waiting:
                raise RuntimeError(f"boards never online: {', '.join(sorted(waiting))}")
            time.sleep(SETTLE_S)
            for _i, h in handles:
                h.board.requests = collections.deque()  # the HAL requests each board makes (hal.py)
            a = _sample(handles)
            time.sleep(window_s)
            b = _sample(handles)
            hal: dict[str, collections.Counter] = {}
            for i, h in handles:
                reqs, h.board.requests = h.board.requests, None
                hal.setdefault(kinds[i], collections.Counter()).update(line.split(b" ", 1)[0].strip().decode() for _t, line in reqs)
        finally:
            for p in proxies:
                p.close()
            if svc is not None:
                svc.stop()
            if ns is not None:
                ns.stop()
    dt = b["t"] - a["t"]
    fleet, by_kind, rebooted = interpreters_cpu(a, b, kinds)
    board_cpu = [v for vs in by_kind.values() for v in vs]
    return {
        "k": k, "window_s": round(dt, 1), "kinds": {kd: kinds.count(kd) for kd in dict.fromkeys(kinds)},
        "board_pct": 100 * fleet / dt / k,
        "board_pct_steady": 100 * sum(board_cpu) / max(1, len(board_cpu)) / dt,
        "board_pct_by_kind": {kd: 100 * sum(v) / len(v) / dt for kd, v in by_kind.items()},
        "emulator_pct": 100 * (b["emulator"] - a["emulator"]) / dt,
        "proxies_pct": 100 * (b["proxies"] - a["proxies"]) / dt,
        "process_pct": 100 * (b["process"] - a["process"]) / dt,
        "hal_requests_per_s_by_kind": {kd: round(sum(c.values()) / dt / kinds.count(kd), 1) for kd, c in hal.items()},
        "hal_ops_per_s": {kd: {op: round(n / dt / kinds.count(kd), 1) for op, n in c.most_common(6)} for kd, c in hal.items()},
        "boards_measured": len(board_cpu), "boards_rebooted_in_window": rebooted,
    }


BEFORE_ENV = "LANTERNE_BENCH_BEFORE"


def _checkout(rev: str, into: Path) -> Path:
    """That revision's host tools, board files and firmware, extracted (the repository is only read)."""
    from host_tools.runtime.paths import REPO

    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, "host_tools", "boards", "firmware"],
                             capture_output=True, check=False)
    if archive.returncode:
        raise RuntimeError(f"{BEFORE_ENV}={rev}: git archive failed: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _measure_in(root: Path, k: int, window_s: float) -> dict:
    """measure(k) in a process of its own, on the host tools under `root`."""
    from host_tools.runtime.paths import BUILD

    env = dict(os.environ, PYTHONPATH=str(root), LANTERNE_BUILD=str(BUILD))
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(k), str(window_s)], env=env, cwd=str(root),
                       capture_output=True, text=True, timeout=600 + 10 * k + window_s)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        raise RuntimeError(f"fleet of {k} on {root}: {(r.stderr or r.stdout)[-2000:]}")
    return json.loads(lines[-1])


def _supervisor(m: dict) -> float:
    return (m["emulator_pct"] + m["proxies_pct"]) / m["k"]


def run(quick: bool = False) -> BenchResult:
    from host_tools.runtime.paths import REPO

    sizes = (1, 5) if quick else (1, 5, 10, 20)
    window = 20.0 if quick else WINDOW_S
    before_rev = os.environ.get(BEFORE_ENV)
    rows, metrics, notes = [], {}, []
    with tempfile.TemporaryDirectory(prefix="lanterne-bench-before-") as tmp:
        before_root = _checkout(before_rev, Path(tmp)) if before_rev else None
        results = {}
        for k in sizes:
            if before_root is not None:
                results[("before", k)] = _measure_in(before_root, k, window)
            results[("after", k)] = _measure_in(REPO, k, window)
    for k in sizes:
        a = results[("after", k)]
        b = results.get(("before", k))
        row = [k, " ".join(f"{n}{SHORT.get(kd, kd)}" for kd, n in a["kinds"].items())]
        if b is not None:
            ratio = round(_supervisor(b) / _supervisor(a), 1) if _supervisor(a) > 0 else "-"
            row += [round(b["board_pct"], 2), round(a["board_pct"], 2), round(_supervisor(b), 3), round(_supervisor(a), 3), ratio]
            metrics[f"supervisor_cpu_pct_per_board_{k}_before"] = round(_supervisor(b), 3)
        else:
            row += [round(a["board_pct"], 2), round(_supervisor(a), 3)]
        rows.append(row + [round(a["process_pct"], 1)])
        metrics[f"board_cpu_pct_{k}"] = round(a["board_pct"], 3)
        metrics[f"supervisor_cpu_pct_per_board_{k}"] = round(_supervisor(a), 3)
    big = results[("after", sizes[-1])]
    per_board = big["board_pct"] + _supervisor(big)
    metrics["cpu_pct_per_board"] = round(per_board, 3)
    metrics["cores_for_200_boards"] = round(2 * per_board, 2)
    if before_rev:
        columns = ["boards", "kinds", f"interpreter per board, {before_rev}", "interpreter per board",
                   f"supervisor per board, {before_rev}", "supervisor per board", "supervisor before / after", "whole process"]
        bb = results[("before", sizes[-1])]
        before_per_board = bb["board_pct"] + _supervisor(bb)
        metrics["cpu_pct_per_board_before"] = round(before_per_board, 3)
        metrics["cores_for_200_boards_before"] = round(2 * before_per_board, 2)
    else:
        columns = ["boards", "kinds", "interpreter per board", "supervisor per board", "whole process"]
    kinds_rows = [[kd, round(v, 2), big["hal_requests_per_s_by_kind"].get(kd, 0),
                   ", ".join(f"{op} {n}" for op, n in big["hal_ops_per_s"].get(kd, {}).items())]
                  for kd, v in big["board_pct_by_kind"].items()]
    if not before_rev:
        notes.append(f"{BEFORE_ENV}=<git revision> measures that revision's emulator beside this one")
    notes.append("kinds: L wifi-lamp, B ethernet-bollard, E envstation, R lorawan-sensor (RAK3172), W battery-bin "
                 "(asleep between readings: each wake is a new interpreter, counted whole once it ended)")
    notes.append("CPU in % of one core; supervisor = the emulator's loop thread + the fault proxies' threads, "
                 "divided by the boards; cores_for_200_boards = 200 x (interpreter + supervisor) per board at the largest size")
    return BenchResult(metrics, [("CPU per board (% of one core)", columns, rows),
                                 (f"by board kind, {big['k']} boards", ["kind", "interpreter %", "HAL requests/s", "top HAL requests/s"],
                                  kinds_rows)], notes)


if __name__ == "__main__":  # one size, in a process of its own (run()): python fleet.py K WINDOW_S
    print(json.dumps(measure(int(sys.argv[1]), float(sys.argv[2]))))
