"""A battery bin's simulated week on a virtual board: every reading delivered once, RTC state used
across wakes, a power cut mid-week that loses nothing stored, an alarm that goes out within seconds.

    python -m host_tools.reliability.battery_week [--days 7] [--period 600] [--speedup 100000]
        [--transport mqtt|lorawan] [--cut-at 0.5] [--alarm-at 0.3] [--json]

The board is the battery bin (`esp32-rak3172-bin`; over MQTT its Wi-Fi variant, `wifi_variant`),
running the real firmware's duty cycle (lanterne/wake.py) from deep sleep to deep sleep, the world
clock fast-forwarded while it sleeps (`sleep_speedup`). At `--alarm-at` of the run the lid opens
while the board sleeps (world `alarm`): the tamper reading must reach the back office within
seconds of real time; it closes again a little later. At `--cut-at` the supply drops while the
board sleeps (RTC memory lost) and comes back. At the end the supply drops once more, and the store
on the board's flash (read with the firmware's own module) says which sequence numbers it handed
out: each must have arrived exactly once, or still be in the store, not yet due for sending.

`run()` returns the report (`tests/test_battery_week.py` runs a short slice; docs/battery.md has
the week's numbers).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from host_tools import boards
from host_tools.runtime.paths import FIRMWARE

BOARD = "esp32-rak3172-bin"
_WAKE = re.compile(r"\[lanterne\] wake (\d+) \((cold|deepsleep)(, alarm)?\): (\w+), seq (-?\d+), backlog (\d+)")


def wifi_variant(board: boards.Board | None = None) -> boards.Board:
    """The battery bin with the ESP32's own Wi-Fi as its link instead of the RAK3172."""
    b = board or boards.load(BOARD)
    data = json.loads(json.dumps(b.data))
    data.update(name="esp32-bin-wifi", network={"kind": "wlan"}, buses={})
    return boards.Board("esp32-bin-wifi", b.path, data)


def store_state(flash: Path) -> tuple[int, int, int]:
    """(next seq, pending, dropped) of the store on a board's flash folder, by the firmware's own module."""
    sys.path.insert(0, str(FIRMWARE))
    try:
        from lanterne.store import Store

        s = Store(str(flash / "store"))
        out = (s.next_seq, s.pending, s.dropped)
        s.close()
        return out
    finally:
        sys.path.remove(str(FIRMWARE))


def _wait_plain(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


class _Mqtt:
    """The back office of a Wi-Fi battery bin: Mosquitto and a watcher on its uplink topic."""

    def __init__(self, stack, device, site):
        from host_tools.backoffice.brokers import Mosquitto
        from host_tools.backoffice.watcher import Watcher

        self.mq = stack.enter_context(Mosquitto())
        self.topic = f"lanterne/v1/{site}/{device}/up"
        self.w = stack.enter_context(Watcher(self.mq.url, [self.topic]))
        self.board = wifi_variant()
        self.config = {"broker": self.mq.url}
        self.radio = None

    def set_world(self, world) -> None:
        pass

    def readings(self) -> list[dict]:
        from host_tools.codec.decoder import decode

        return [r for m in self.w.matching(self.topic) for r in decode(m.payload)["readings"]]

    def joins(self) -> int | None:
        return None


class _Lorawan:
    """The back office of a LoRaWAN battery bin: Mosquitto, the emulated network server, the uplink
    service (its delivery ledger on the world's clock, so its downlinks a day are the week's)."""

    def __init__(self, stack, device, site):
        import os

        from host_tools.backoffice.brokers import Mosquitto
        from host_tools.backoffice.uplinks import LoraDevice, UplinkService
        from host_tools.codec import lns_json as J
        from host_tools.emulator.network_server import Device, NetworkServer

        self.mq = stack.enter_context(Mosquitto())
        dev_eui, app_key, command_key = os.urandom(8).hex().upper(), os.urandom(16).hex().upper(), os.urandom(32).hex()
        self.ns = stack.enter_context(NetworkServer(self.mq.url, [Device(dev_eui=dev_eui, app_key=app_key, name=device)],
                                                    integrations=("chirpstack",), app=J.Application()))
        self._clock = [time.time]
        self.svc = UplinkService([LoraDevice(device, dev_eui.lower(), bytes.fromhex(command_key))], integration="chirpstack",
                                 broker_url=self.mq.url, clock=lambda: self._clock[0]()).start()
        stack.callback(self.svc.stop)
        self.board = boards.load(BOARD)
        self.config = {"transport": "lorawan", "lorawan_deveui": dev_eui, "lorawan_appkey": app_key, "command_key": command_key}
        self.radio = self.mq.url

    def set_world(self, world) -> None:
        self._clock[0] = world.now

    def readings(self) -> list[dict]:
        return [e["reading"] for e in list(self.svc.events) if e["event"] == "reading"]

    def joins(self) -> int | None:
        return self.ns.counts["joins"]


def run(days: float = 7.0, period_s: int = 600, speedup: float = 100_000.0, transport: str = "mqtt",
        cut_at: float | None = 0.5, alarm_at: float | None = 0.3, send_period_s: int = 3600,
        workdir: str | None = None, modem_speedup: float = 5.0) -> dict:
    """The run; `modem_speedup`: the LoRaWAN modem's clock while the board is awake (its receive
    windows: 2 s to RX2 at 1, 0.4 s at 5)."""
    import contextlib

    from host_tools.codec.seq import SeqTracker
    from host_tools.emulator.supervisor import Emulator
    from host_tools.emulator.world import World
    from host_tools.fleet import deploy

    device, site = "week-bin", "week"
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(dir=workdir) as tmp:
        office = (_Lorawan if transport == "lorawan" else _Mqtt)(stack, device, site)
        emu = stack.enter_context(Emulator())
        flash = Path(tmp) / "flash"
        flash.mkdir()
        cfg = dict(office.config, device=device, site=site, sample_period_s=period_s, send_period_s=send_period_s,
                   status_period_s=86400, bin_empty_mm=1200, bin_full_mm=200, watchdog_ms=0)
        deploy.copy_to_flash(office.board, cfg, flash, romfs=True)
        world = World(seed=7, sleep_speedup=speedup, distance_mm=1100.0, lorawan_speedup=modem_speedup, lorawan_dr=5)
        office.set_world(world)
        t0 = time.monotonic()
        h = emu.add_board(office.board, flash, world=world, radio=office.radio)
        total = days * 86400.0

        def _wait(cond, timeout: float, what: str) -> None:  # (a timeout shows what the board said)
            try:
                _wait_plain(cond, timeout, what)
            except TimeoutError:
                raise TimeoutError(f"{what}; the board's last output:\n{h.console()[-2500:]}") from None

        def elapsed() -> float:  # world seconds since the start
            return world.slept_ahead_s + (time.monotonic() - t0)

        def wait_world(frac: float) -> None:
            _wait(lambda: elapsed() >= frac * total, timeout=3600, what=f"world time {frac:.0%} of the run")

        def wait_asleep() -> None:
            _wait(lambda: h.board.sleep.asleep, timeout=60, what="the board to be asleep")

        def tamper_count() -> int:
            return sum(1 for r in office.readings() if "tamper" in r.get("status", []))

        alarm_latency = None
        events = sorted((x, k) for x, k in ((alarm_at, "alarm"), (cut_at, "cut")) if x is not None)
        for frac, kind in events:
            wait_world(frac)
            # the bin fills through the week: the world moves the contents closer
            world.set(distance_mm=max(250.0, 1100.0 - 800.0 * frac))
            if kind == "cut":
                wait_asleep()
                h.power_cut()
                h.power_on()
            else:
                world.set(sleep_speedup=1.0)  # the lid opens in real time, mid-sleep
                wait_asleep()
                before = tamper_count()
                t_alarm = time.monotonic()
                world.set(alarm=True)
                _wait(lambda n=before: tamper_count() > n, timeout=60, what="the alarm uplink")
                alarm_latency = time.monotonic() - t_alarm
                wait_asleep()
                world.set(alarm=False, sleep_speedup=speedup)
        wait_world(1.0)
        # finish on a send wake's frame, then stop the board asleep and read its store
        sends_before = h.console().count(": send,")
        _wait(lambda: h.console().count(": send,") > sends_before, timeout=600, what="a last send wake")
        wait_asleep()
        time.sleep(0.5 if transport == "mqtt" else 3.0)  # (the network server and the service take their time)
        h.power_cut()
        real_s = time.monotonic() - t0
        console = h.console()
        next_seq, pending, dropped = store_state(flash)
        tracker = SeqTracker()
        got: list[int] = []
        dupes = 0
        for r in office.readings():
            full, new = tracker.accept(r["seq"])
            if new:
                got.append(full)
            else:
                dupes += 1
        wakes = _WAKE.findall(console)
        log = list(h.board.sleep.wake_log)
        joins = office.joins()
    delivered = set(got)
    unsent = set(range(next_seq)) - delivered
    # not lost: still in the store (never sent yet, or sent and not acknowledged by a ledger yet)
    in_store = set(range(next_seq - pending, next_seq)) & unsent
    missing = sorted(unsent - in_store)
    return {
        "days": days,
        "period_s": period_s,
        "transport": transport,
        "real_s": round(real_s, 1),
        "wakes": len(wakes),
        "cold_starts": sum(1 for x in wakes if x[1] == "cold"),
        "rtc_wakes": sum(1 for x in wakes if x[1] == "deepsleep"),
        "send_wakes": sum(1 for x in wakes if x[3] == "send"),
        "joins": joins,
        "readings_stored": next_seq,
        "readings_delivered": len(delivered),
        "readings_in_store_not_sent": len(in_store),
        "readings_missing": len(missing),
        "readings_duplicated": dupes,
        "dropped": dropped,
        "alarm_uplink_s": None if alarm_latency is None else round(alarm_latency, 2),
        "host_ms_per_wake_median": round(sorted(e["wall_s"] for e in log)[len(log) // 2] * 1000, 1) if log else None,
        "missing_seqs": missing[:20],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host_tools.reliability.battery_week", description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--period", type=int, default=600, help="sampling period, s (default 600)")
    ap.add_argument("--send-period", type=int, default=3600, help="config send_period_s (default 3600)")
    ap.add_argument("--speedup", type=float, default=100_000.0, help="world sleep_speedup (default 100000)")
    ap.add_argument("--transport", choices=("mqtt", "lorawan"), default="mqtt")
    ap.add_argument("--cut-at", type=float, default=0.5, help="power cut at this fraction of the run (default 0.5)")
    ap.add_argument("--alarm-at", type=float, default=0.3, help="lid opens at this fraction of the run (default 0.3)")
    ap.add_argument("--modem-speedup", type=float, default=5.0, help="the LoRaWAN modem's clock while awake (default 5)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rep = run(a.days, a.period, a.speedup, a.transport, a.cut_at, a.alarm_at, a.send_period, modem_speedup=a.modem_speedup)
    if a.json:
        print(json.dumps(rep))
    else:
        for k, v in rep.items():
            print(f"{k:28} {v}")
    ok = rep["readings_missing"] == 0 and rep["readings_duplicated"] == 0
    print("every reading delivered once" if ok else "READINGS LOST OR DUPLICATED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
