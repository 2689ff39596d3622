"""Network faults against a virtual board running the real firmware: does the board keep doing its job?

One scenario = one board (a street light with a rising bollard: `lamp_and_bollard_board()`),
its own `FaultProxy` in front of a real Mosquitto, and one fault (`SCENARIOS`). The run:

1. the board boots (with the fault already on when the scenario says so) and comes online;
2. the back office commands the bollard up (a slow rise: it is still moving later);
3. the fault goes on (and the link drops for a moment when a reconnect must meet it);
4. 1 s in, the world turns bright: the lamp must fade out (its photocell, then a 2 s ramp);
5. 2.5 s in, something appears on the bollard's loop detector while it rises: the relay must
   stop the rise at once;
6. the fault lasts `fault_s`, then clears; the board must reconnect and deliver every reading
   it took meanwhile.

What is measured, from outside (so an older firmware is measured the same way) and from the
firmware's own status: the loop's lateness (`loop_lag_max_ms` from the status; the longest
silence between the firmware's hardware accesses, `stall_ms`), how long the relay took to
react to presence, the lamp's ramp (steps, longest pause between steps), the readings taken
during the fault (seen on the sensor bus: count, longest gap), the time to recover, readings
lost, the heap.

Used by tests/test_network_faults.py (assertions per fault) and `lanterne bench loop`.
"""

from __future__ import annotations

import collections
import copy
import json
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from host_tools import boards
from host_tools.backoffice.command_client import CommandClient, next_counter
from host_tools.backoffice.watcher import Watcher
from host_tools.codec.decoder import decode
from host_tools.emulator.netsim import FaultProxy
from host_tools.emulator.world import World
from host_tools.fleet import deploy

KEY = bytes(range(11, 43))
RELAY_PIN, POSITION_PIN, PRESENCE_PIN, LAMP_PWM = 32, 33, 39, 25
TRAVEL_MS = 9000  # a slow rise: still under way when presence appears
SAMPLE_PERIOD_S = 1
ACTUATOR_PERIOD_MS = 100  # the firmware touches the bollard's inputs this often, fault or not


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    fault: tuple[str, str] | None  # (part, kind) for World.inject
    at_boot: bool = False  # the fault is on from power-on
    reconnect: bool = False  # the link drops for a moment once the fault is on: a reconnect meets it
    tls: bool = False
    by_name: bool = False  # the config names the broker "localhost": a DNS lookup


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("healthy", "no fault (reference)", None),
        Scenario("broker_silent", "the broker accepts and never answers", ("broker", "silent")),
        Scenario("half_open", "the connection goes silent mid-session", ("broker", "half_open")),
        Scenario("broker_slow", "the broker takes 2 s per packet", ("broker", "slow")),
        Scenario("tls_slow", "a slow TLS handshake (2 s per handshake record)", ("broker", "slow_tls"), reconnect=True, tls=True),
        Scenario("ntp_silent", "NTP never answers", ("ntp", "silent"), at_boot=True),
        Scenario("dns_hang", "DNS never answers", ("dns", "hang"), reconnect=True, by_name=True),
    )
}


@dataclass
class Result:
    scenario: str
    online: bool = False
    commanded: bool = False
    loop_lag_max_ms: int | None = None  # the firmware's own figure over the fault (None: not reported)
    loop_lag_max_ms_boot: int | None = None
    stall_ms: int = 0  # longest silence between hardware accesses during the fault, less the 100 ms poll
    interlock_reaction_ms: float | None = None  # presence appeared -> relay stopped driving up
    interlock_missed: bool = False  # the bollard kept rising through the whole presence
    interlock_by_interrupt: bool = False
    lamp_ramp_steps: int = 0
    lamp_ramp_max_pause_ms: float | None = None
    lamp_off_s: float | None = None  # bright -> lamp fully off
    samples_during_fault: int = 0  # sensor readings started during the fault (seen on the bus)
    sample_gap_max_s: float | None = None  # the longest time without one, fault edges included
    recovered_s: float | None = None  # fault cleared -> online again with the backlog delivered
    readings_lost: int = 0
    heap_peak_bytes: int | None = None  # ESP32-equivalent
    memory_errors: int = 0  # MemoryError or a task restarted, in the board's console
    notes: list[str] = field(default_factory=list)
    console: str = ""


def lamp_and_bollard_board() -> boards.Board:
    """The devkitc street light, with a rising bollard on its relay (guard "up": it must never
    rise under a vehicle) and a slow travel."""
    b = boards.load("esp32-devkitc")
    data = copy.deepcopy(b.data)
    data["name"] = "esp32-devkitc"
    data["actuators"].append(
        {"type": "relay", "pin": RELAY_PIN, "position_pin": POSITION_PIN, "presence_pin": PRESENCE_PIN,
         "travel_ms": TRAVEL_MS, "guard": "up"}
    )
    return boards.Board(b.name, b.path, data)


def _config(device: str, url: str, ca_pem: str | None) -> dict:
    cfg = {"device": device, "site": "faults", "broker": url, "sample_period_s": SAMPLE_PERIOD_S,
           "status_period_s": 5, "keepalive_s": 10, "command_key": KEY.hex(), "watchdog_ms": 0}
    if ca_pem:
        cfg["ca_cert"] = ca_pem
    return cfg


def run(scenario: Scenario, emulator, broker_url: str, *, tls: dict | None = None, fault_s: float = 10.0,
        net_delay_s: float = 2.0, workdir: str | Path | None = None, device: str | None = None,
        board_heap: int | None = None, board: boards.Board | None = None) -> Result:
    """Run one scenario on a new board in `emulator` against the Mosquitto at `broker_url` (for a
    TLS scenario, `tls` = {"port": its TLS port, "ca_pem": ...}). `board_heap`: the ESP32 heap to
    give the board instead of its board file's; `board`: another board than the street light
    with a bollard (without a bollard, nothing is commanded)."""
    device = device or f"nf-{scenario.name.replace('_', '-')}"
    res = Result(scenario.name)
    world = World(seed=1, illuminance_lx=2.0, net_delay_s=net_delay_s)  # dark: the lamp is on
    if scenario.fault and scenario.at_boot:
        world.inject(*scenario.fault)
    if scenario.tls:
        up_host, up_port = "127.0.0.1", tls["port"]
    else:
        up_host, up_port = "127.0.0.1", int(broker_url.rsplit(":", 1)[1])
    events: list[tuple[float, str, dict]] = []
    world.subscribe(lambda what, values: events.append((time.monotonic(), what, dict(values))) if what in ("pin", "pwm") else None)
    tmp = tempfile.TemporaryDirectory(dir=workdir)
    proxy = FaultProxy(up_host, up_port, world=world).start()
    client = watcher = handle = None
    try:
        host = "localhost" if (scenario.by_name or scenario.tls) else "127.0.0.1"
        url = f"{'mqtts' if scenario.tls else 'mqtt'}://{host}:{proxy.port}"
        board = board or lamp_and_bollard_board()
        flash = Path(tmp.name) / "flash"
        deploy.copy_to_flash(board, _config(device, url, tls["ca_pem"] if scenario.tls else None), flash)
        base = f"lanterne/v1/faults/{device}/"
        watcher = Watcher(broker_url, [base + "#"])
        handle = emulator.add_board(board, flash, world=world, board_heap=board_heap)
        handle.board.requests = collections.deque(maxlen=100000)
        try:
            watcher.wait_for(base + "status", lambda m: b'"online"' in m.payload, timeout=90)
            res.online = True
        except TimeoutError:
            res.notes.append("never came online")
            res.console = handle.console()[-4000:]
            return res
        client = CommandClient(broker_url)
        if board.actuators("relay"):
            try:
                ack = client.send("faults", device, KEY, next_counter(0), "bollard", {"action": "raise"}, timeout=30)
                res.commanded = ack.ok and world.pin_level(RELAY_PIN) == 1
            except TimeoutError:
                res.notes.append("the bollard command was never acknowledged")
        # -- the fault -------------------------------------------------------------------
        t_fault = time.monotonic()
        if scenario.fault and not scenario.at_boot:
            world.inject(*scenario.fault)
        if scenario.reconnect:
            world.set(link_up=False)
            time.sleep(0.3)
            world.set(link_up=True)
        _sleep_until(t_fault + 1.0)
        t_bright = time.monotonic()
        world.set(illuminance_lx=800.0)
        _sleep_until(t_fault + 2.5)
        t_presence = time.monotonic()
        world.set(presence=True)
        _sleep_until(t_fault + 4.0)
        world.set(presence=False)
        _sleep_until(t_fault + fault_s)
        t_clear = time.monotonic()
        if scenario.fault:
            world.clear(scenario.fault[0])
        # -- recovery ----------------------------------------------------------------------
        _recover(res, watcher, base, t_clear, handle)
        # -- what happened -------------------------------------------------------------------
        requests = list(handle.board.requests)
        times = [t for t, _line in requests]
        # sampling, seen from outside: each reading starts with a BME280 forced conversion
        # (a write to its ctrl_meas register, 0xF4, at 0x76 on bus 0)
        samples = [t for t, line in requests if line.startswith(b"I2CW 0 118 f4") and t_fault <= t <= t_clear]
        res.samples_during_fault = len(samples)
        edges = [t_fault, *samples, t_clear]
        res.sample_gap_max_s = round(max(b - a for a, b in zip(edges, edges[1:], strict=False)), 2)
        # the fault's window, and the silences that straddle its edges
        first = max((i for i, t in enumerate(times) if t < t_fault), default=0)
        window = [t for t in times[first:] if t <= t_clear + 1.0]
        gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
        res.stall_ms = max(0, int(max(gaps, default=0) * 1000) - ACTUATOR_PERIOD_MS)
        relay = [(t, v[RELAY_PIN]) for t, what, v in events if what == "pin" and RELAY_PIN in v and t >= t_presence]
        if res.commanded and relay and relay[0][1] == 0 and relay[0][0] < t_presence + 1.5:
            res.interlock_reaction_ms = round((relay[0][0] - t_presence) * 1000, 1)
        elif res.commanded:
            res.interlock_missed = True  # presence came and went (1.5 s) and the rise went on
        res.interlock_by_interrupt = "move reversed (by the interrupt handler)" in handle.console()
        _lamp(res, [(t, v[LAMP_PWM]) for t, what, v in events if what == "pwm" and LAMP_PWM in v and t >= t_bright], t_bright)
        _readings_and_status(res, watcher, base, t_fault, t_clear, handle)
        console = handle.console()
        res.memory_errors = console.count("MemoryError") + console.count("(restarted)")
        res.console = console[-4000:]
        return res
    finally:
        if client is not None:
            client.close()
        if watcher is not None:
            watcher.close()
        if handle is not None:
            handle.close()
        proxy.close()
        tmp.cleanup()


def run_all(names, emulator, broker_url: str, *, tls: dict | None = None, **kw) -> dict[str, Result]:
    """Run the scenarios side by side, one board each: {name: Result}. A name may carry a
    suffix after ":" (the same scenario twice, e.g. "broker_silent:64k" with other `kw`)."""
    results: dict[str, Result] = {}

    def one(name):
        try:
            results[name] = run(SCENARIOS[name.split(":")[0]], emulator, broker_url, tls=tls,
                                device="nf-" + name.replace("_", "-").replace(":", "-"), **kw)
        except Exception as exc:  # a harness failure is reported in the result, not raised in a thread
            results[name] = Result(name, notes=[f"harness error: {exc!r}"])

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
        time.sleep(0.3)  # staggered boots
    for t in threads:
        t.join()
    return results


def _sleep_until(t: float) -> None:
    left = t - time.monotonic()
    if left > 0:
        time.sleep(left)


def _seqs(watcher, base):
    out = {}
    for m in watcher.matching(base + "up"):
        for r in decode(m.payload)["readings"]:
            out[r["seq"]] = m.t - r.get("age", 0)  # when it was taken (wall clock)
    return out


def _recover(res: Result, watcher, base: str, t_clear: float, handle, timeout: float = 90.0) -> None:
    # Online again after the fault cleared, and every reading taken until then delivered.
    clear_wall = time.time() - (time.monotonic() - t_clear)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seqs = _seqs(watcher, base)
        later = [s for s, t in seqs.items() if t > clear_wall + 1]
        if later and seqs:
            lo, hi = min(seqs), max(later)
            if all(s in seqs for s in range(lo, hi + 1)):
                res.recovered_s = round(time.monotonic() - t_clear, 1)
                return
        time.sleep(0.2)
    res.notes.append(f"not recovered within {timeout:.0f} s of the fault clearing")


def _lamp(res: Result, pwm: list, t_bright: float) -> None:
    # The fade out: each PWM write a step; off when the duty reaches 0 (or the PWM stops).
    steps = [(t, d) for t, d in pwm]
    if not steps:
        res.notes.append("the lamp never moved")
        return
    off = [t for t, d in steps if not d]
    res.lamp_ramp_steps = len({d for _t, d in steps if d})
    moving = [t for t, d in steps if d] + off[:1]
    pauses = [b - a for a, b in zip(moving, moving[1:], strict=False)]
    res.lamp_ramp_max_pause_ms = round(max(pauses, default=0) * 1000, 1)
    if off:
        res.lamp_off_s = round(off[0] - t_bright, 2)


def _readings_and_status(res: Result, watcher, base: str, t_fault: float, t_clear: float, handle) -> None:
    fault_wall = time.time() - (time.monotonic() - t_fault)
    seqs = _seqs(watcher, base)
    if seqs:
        lo, hi = min(seqs), max(seqs)
        res.readings_lost = sum(1 for s in range(lo, hi + 1) if s not in seqs)
    lags, boot_lags, allocs = [], [], []
    for m in watcher.matching(base + "status"):
        try:
            doc = json.loads(m.payload)
        except ValueError:
            continue
        if "heap_alloc" in doc:
            allocs.append(doc["heap_alloc"])
        if "loop_lag_max_ms" in doc and m.t >= fault_wall:
            lags.append(doc["loop_lag_max_ms"])
            boot_lags.append(doc["loop_lag_max_ms_boot"])
    if lags:
        res.loop_lag_max_ms = max(lags)
        res.loop_lag_max_ms_boot = max(boot_lags)
    if allocs:
        res.heap_peak_bytes = handle.board.esp32_heap(max(allocs))
