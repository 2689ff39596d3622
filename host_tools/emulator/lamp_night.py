"""A street light's nights, fast: the firmware's lamp, profile and energy meter in virtual time.

The firmware cannot run faster than real time on a virtual board (its clock is the host's), so a
night of a virtual street light takes a night. This runs the same firmware modules on the unix
port — `lanterne.actuators.lamp.Lamp`, `lanterne.lamp_profile.LampProfile`,
`lanterne.energy.EnergyMeter`, `lanterne.codec.Encoder` — against the emulator's simulated parts of
the board (its lamp driver, current sense and supply, through the HAL as on a virtual board), with
the time passed in: every tick (2 s, the board's lamp check) the host advances the clock, the
profile decides the level, the lamp ramps, the meter integrates, and every sampling period a
reading is encoded as the board would send it. The host integrates the power the simulated lamp
draws over the same virtual time: the truth the meter is checked against. (The firmware runs
tick after tick on its own and stops to answer after any tick that changed the lamp's output or
sent a reading, so the host knows the power was constant over the ticks in between; the host's
events — faults, cuts, world changes — fall between requests.)

What it leaves out of a board: the asyncio loop, the store and the link (each reading is sent at
once, age 0), the photocell (the astronomical clock decides). Power cuts restart the lamp and the
meter from the flash folder, as a boot does.

    night = LampNights("esp32-devkitc", lat=45.764, lon=4.836, start=..., hours=16, flash=tmp)
    night.run(events={3 * 3600: ("fault", "dead_module"), 5 * 3600: ("cut", 120)})
    night.capture   # JSON lines, as `lanterne monitor --capture` writes them
    night.true_wh   # what the simulated lamp drew

    python -m host_tools.emulator.lamp_night --start 2025-01-01T12:00:00Z --hours 744 --out month.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import tempfile
from pathlib import Path

from host_tools import boards
from host_tools.emulator import ROM
from host_tools.emulator.hal import StandaloneHal
from host_tools.emulator.world import World
from host_tools.runtime import paths, unix_port

_SCRIPT = r"""
import sys
from machine import ADC, PWM, Pin
from lanterne import codec
from lanterne.actuators.lamp import Lamp
from lanterne.lamp_profile import LampProfile
from lanterne.energy import EnergyMeter
from lanterne.config import parse_curve, DEFAULT_CURVE
from lanterne.sensors.supply import SupplyVoltage
import os
A = {args}
os.chdir(A["flash"])
supply = SupplyVoltage(ADC(Pin(A["supply_adc"])), A["divider"]) if A["supply_adc"] is not None else None
enc = codec.Encoder(242)
r = codec.new_reading()


def boot(t_ms):
    lamp = Lamp(PWM(Pin(A["pwm"])), current_adc=ADC(Pin(A["adc"])) if A["adc"] is not None else None,
                current_ohms=A["ohms"], current_gain=A["gain"])
    profile = LampProfile(A["lat"], A["lon"], utc_offset_min=A["tz"], dst="eu")
    meter = EnergyMeter(lamp, supply, lamp_v=A["lamp_v"], rated_w=A["rated_w"], curve=parse_curve(A["curve"]),
                        now_ms=t_ms)
    return lamp, profile, meter


t = 0
seq = A["seq"]
lamp, profile, meter = boot(t)
if supply is not None:
    supply.sample()
out = sys.stdout
while True:
    line = sys.stdin.readline()
    if not line or line[0] == "q":
        break
    if line[0] == "c":  # a power cut of n seconds: the board is dead, then boots again
        t += int(line[1:]) * 1000
        lamp, profile, meter = boot(t)
        out.write("ok\n")
        continue
    # "s k": up to k ticks; stops early after a tick that changed the lamp's output or sent a reading,
    # so the host knows the simulated lamp's power was constant over the ticks it is told about
    k = int(line[1:])
    n = 0
    sent = ""
    while n < k:
        n += 1
        t += A["tick"]
        now = A["start"] + t // 1000
        before = lamp.output
        want = profile.level(now, None, True)
        if want != lamp.level:
            lamp.set(want, now_ms=t)
        lamp.update(t)
        lamp.check(t)
        if supply is not None and t % 60000 == 0:
            supply.sample()
        meter.tick(t)
        if t % A["sample"] == 0:
            for i in range(codec.N_FIELDS):
                r[i] = None
            wh, ch = meter.report(t)
            r[codec.LAMP] = lamp.level
            r[codec.LAMP_FAULT] = 1 if lamp.fault else 0
            r[codec.EXT_FIRST + 5] = wh
            r[codec.EXT_FIRST + 6] = ch
            r[codec.STATUS] = 0
            r[codec.SEQ] = seq
            r[codec.AGE] = 0
            seq += 1
            enc.encode([r])
            sent = " %d %s %d %d" % (now, enc.frame().hex(), lamp.level, lamp.fault)
            break
        if lamp.output != before:
            break
    out.write("%d%s\n" % (n, sent))
"""


class LampNights:
    """One virtual street light run in virtual time; `capture` and `true_wh` once `run()` returned."""

    def __init__(self, board: str = "esp32-devkitc", *, lat: float, lon: float, start: float, hours: float,
                 flash: str | Path, site: str = "night", device: str = "light-1", rated_w: float = 40.0,
                 curve: str | None = None, tz_min: int = 60, tick_s: int = 2, sample_s: int = 600,
                 world: dict | None = None, seq: int = 0):
        self.board = boards.load(board)
        self.lat, self.lon, self.start, self.hours = lat, lon, int(start), hours
        self.flash = Path(flash)
        self.topic = f"lanterne/v1/{site}/{device}/up"
        self.device = device
        self.world = World(seed=1, **{"lamp_load_w": rated_w, **(world or {})})  # the lamp is what it is rated
        lamp = self.board.data["actuators"][0] if self.board.data.get("actuators") else None
        if lamp is None or lamp.get("type") != "lamp":
            raise ValueError(f"board {board} drives no lamp")
        supply = next((s for s in self.board.data.get("sensors", []) if s.get("type") == "supply"), None)
        from host_tools.runtime import firmware_module

        self.args = {
            "flash": str(self.flash), "pwm": lamp["pwm"], "adc": lamp.get("current_adc"),
            "ohms": lamp.get("current_ohms", 0.1), "gain": lamp.get("current_gain", 20.0),
            "lamp_v": float(lamp.get("lamp_v", 0.0)), "rated_w": rated_w,
            "curve": curve or firmware_module("config").DEFAULT_CURVE, "lat": lat, "lon": lon, "tz": tz_min,
            "start": int(start), "tick": tick_s * 1000, "sample": sample_s * 1000, "seq": seq,
            "supply_adc": supply["adc"] if supply else None, "divider": supply.get("divider", 11.0) if supply else 1.0,
        }
        self.capture: list[str] = []
        self.levels: list[tuple[int, int, int]] = []  # (time, level, lamp fault word) at each reading
        self.true_wh = 0.0
        self.lit_s = 0.0  # time the simulated lamp gave light

    def run(self, events: dict[int, tuple] | None = None, timeout: float = 600.0) -> LampNights:
        """Run the hours. `events`: {seconds from the start: ("fault", kind) | ("clear",) |
        ("cut", seconds) | ("set", {world quantity: value})}, each applied before that tick."""
        pending = sorted((events or {}).items())
        self.flash.mkdir(parents=True, exist_ok=True)
        with StandaloneHal(self.board.data, self.world) as hal:
            lamp_part = next(p for p in hal.parts.parts if getattr(p, "name", None) == "lamp")
            fd, script = tempfile.mkstemp(suffix=".py")
            with os.fdopen(fd, "w") as f:
                f.write(_SCRIPT.replace("{args}", repr(self.args)))
            env = dict(os.environ, MICROPYPATH=unix_port.micropython_path([ROM]), **hal.env())
            proc = subprocess.Popen([paths.micropython_binary(), "-X", "heapsize=1048576", script],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=env, text=True, bufsize=1)
            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ)

            def ask(line: str) -> str:
                try:
                    proc.stdin.write(line + "\n")
                    proc.stdin.flush()
                except BrokenPipeError:
                    raise RuntimeError("the firmware stopped:\n" + proc.stderr.read()) from None
                if not sel.select(timeout):
                    raise TimeoutError(f"the firmware did not answer {line!r}")
                reply = proc.stdout.readline()
                if not reply:
                    raise RuntimeError("the firmware stopped:\n" + proc.stderr.read())
                return reply

            # the board's first status, as it connects: what its meter is (docs/mqtt.md, "Status")
            source = "metered" if self.args["adc"] is not None else ("rated" if self.args["rated_w"] else "none")
            status = {"state": "online", "device": self.device, "energy": {
                "wh": 0.0, "burning_h": 0.0, "power_w": 0.0, "source": source, "rated_w": self.args["rated_w"] or None}}
            self.capture.append(json.dumps({"t": self.start, "topic": self.topic[:-2] + "status",
                                            "payload": json.dumps(status).encode().hex()}))
            try:
                tick = self.args["tick"] // 1000
                total = int(self.hours * 3600)
                t = 0
                power = 0.0  # what the simulated lamp draws, constant until the firmware's next change
                while t < total:
                    while pending and pending[0][0] <= t:
                        what = pending.pop(0)[1]
                        if what[0] == "cut":
                            hal.parts.release_pwm()  # the board is dead: no PWM, the lamp goes dark
                            ask(f"c{int(what[1])}")
                            t += int(what[1])
                        else:
                            self._event(what)
                        power = lamp_part.power_w()
                    horizon = min(total, pending[0][0] if pending else total)
                    reply = ask(f"s{max(1, -(-(horizon - t) // tick))}").split()
                    steps = int(reply[0])
                    self.true_wh += power * steps * tick / 3600.0
                    self.lit_s += steps * tick if power > 0 else 0
                    power = lamp_part.power_w()
                    t += steps * tick
                    if len(reply) > 1:
                        now, frame, level, fault = reply[1:]
                        self.capture.append(json.dumps({"t": int(now), "topic": self.topic, "payload": frame}))
                        self.levels.append((int(now), int(level), int(fault)))
            finally:
                proc.kill()
                proc.wait()
                os.unlink(script)
        return self

    def _event(self, what: tuple) -> None:
        kind = what[0]
        if kind == "fault":
            self.world.inject("lamp", what[1])
        elif kind == "clear":
            self.world.clear("lamp")
        elif kind == "set":
            self.world.set(**what[1])
        else:
            raise ValueError(f"unknown event {what!r}")


def _when(value: str) -> float:
    import datetime as dt

    try:
        return float(value)
    except ValueError:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", default="esp32-devkitc")
    ap.add_argument("--lat", type=float, default=45.764)
    ap.add_argument("--lon", type=float, default=4.836)
    ap.add_argument("--start", required=True, help="Unix seconds or ISO 8601 (UTC without an offset)")
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--rated-w", type=float, default=40.0)
    ap.add_argument("--tick", type=int, default=2, help="seconds between lamp checks (the board's: 2)")
    ap.add_argument("--sample", type=int, default=600, help="seconds between readings")
    ap.add_argument("--device", default="light-1")
    ap.add_argument("--site", default="night")
    ap.add_argument("--flash", help="the board's flash folder (default: a temporary one)")
    ap.add_argument("--event", action="append", default=[], metavar="HOURS:KIND[:ARG]",
                    help="at HOURS from the start: fault:dead_module, fault:failing_driver, clear, cut:SECONDS")
    ap.add_argument("--out", required=True, help="the capture (JSON lines), as lanterne monitor --capture writes")
    args = ap.parse_args(argv)
    events = {}
    for text in args.event:
        at, _, rest = text.partition(":")
        kind, _, arg = rest.partition(":")
        if kind not in ("fault", "clear", "cut") or (kind != "clear" and not arg):
            ap.error(f"--event {text!r}: HOURS:fault:KIND, HOURS:clear or HOURS:cut:SECONDS")
        events[int(float(at) * 3600)] = (kind, int(arg) if kind == "cut" else arg) if arg else (kind,)
    with tempfile.TemporaryDirectory() as tmp:
        night = LampNights(args.board, lat=args.lat, lon=args.lon, start=_when(args.start), hours=args.hours,
                           flash=args.flash or tmp, site=args.site, device=args.device, rated_w=args.rated_w,
                           tick_s=args.tick, sample_s=args.sample).run(events)
    Path(args.out).write_text("\n".join(night.capture) + "\n")
    print(json.dumps({"readings": len(night.capture), "true_wh": round(night.true_wh, 3),
                      "lit_h": round(night.lit_s / 3600, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
