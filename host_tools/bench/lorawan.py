"""LoRaWAN benchmark, host side: readings a day within the airtime cap, ledger downlinks a day.

- `readings_per_day_sf12|sf10|sf7`: readings of a slowly varying asset packed by the firmware's
  encoder into the largest EU868 payload of the data rate (51 B at DR0/DR2, 222 B at DR5), each
  uplink's time on air from Semtech's formula (host_tools/codec/lorawan_radio.py, the one the
  modem twin enforces), as many uplinks as fit the 30 s/day cap (TTN fair use; the 1 % duty cycle
  allows 864 s, so the cap is what binds).
- `readings_per_day_sf12_lpp`: the same cap with one Cayenne LPP reading per uplink.
- `ack_downlinks_per_day`: delivery-ledger downlinks the uplink service sends in a simulated day
  (a reading every 5 min, an uplink every 15 min, 20 % of uplinks lost) with the default budget.

With the firmware's LoRaWAN transport on virtual boards (RAK3172 twins, gateways and the emulated
network server on a real Mosquitto, the uplink service with the ChirpStack integration):
- `join_s_p50`: seconds from power-on to the board's "connected to the LoRaWAN network", median over
  fresh boards joining together (the modem's clock at real speed, DR0: the join accept comes in RX1,
  5 s after the request; boot and the random spread of the first join, 0-4 s, included);
- `readings_lost_at_20pct_uplink_loss`: a board sampling every 3 s, 20 % of its uplinks lost (the modem's
  clock 5x, DR5, the uplink service's clock 1200x so that ledgers come as in a day); readings sampled
  up to a cut that never reached the uplink service once the ledger caught up (and `duplicates`);
- `heap_peak_bytes`: the largest `gc.mem_alloc()` in that board's statuses (its console: LoRaWAN does
  not carry them), in ESP32-equivalent bytes as `lanterne bench heap` computes them, the LoRaWAN build
  at the board file's heap.
"""

from __future__ import annotations

from host_tools.backoffice.uplinks import LoraDevice, UplinkService
from host_tools.bench import BenchResult
from host_tools.bench.codec import AIRTIME_BUDGET_S, FULL_READING, _batch_bytes, pack_series, slowly_varying
from host_tools.codec import encode_values, firmware_codec, lpp
from host_tools.codec import lns_json as J
from host_tools.codec import lorawan_radio as R

LEDGER_PER_DAY = 10


def _ledgers_in_a_day(loss: float = 0.2, seed: int = 3) -> tuple[int, int]:
    import random

    rng = random.Random(seed)
    clock = [0.0]
    svc = UplinkService([LoraDevice("bench", "0016c001ff00beef", bytes(32))], ledger_per_day=LEDGER_PER_DAY,
                        clock=lambda: clock[0], publish=lambda topic, msg: None)
    seq, fcnt = 0, 0
    for minute in range(0, 24 * 60, 15):
        clock[0] = minute * 60.0
        batch = [{"temperature": 15.0 + rng.random(), "seq": seq + i} for i in range(3)]
        seq += 3
        fcnt += 1
        if rng.random() < loss:
            continue
        frame = encode_values(batch, budget=51, runtime="cpython", lorawan=True)[0]["frame"]
        svc.handle(J.Uplink(dev_eui="0016c001ff00beef", device="bench", fport=102, fcnt=fcnt, data=frame, dr=0))
    return sum(1 for e in svc.events if e["event"] == "ledger"), seq


SPEEDUP = 5.0
DAY_SCALE = 1200.0


def _wait(pred, timeout: float):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    return None


def _identity(name: str) -> dict:
    import os

    return {"device": name, "dev_eui": os.urandom(8).hex().upper(), "app_key": os.urandom(16).hex().upper(),
            "command_key": os.urandom(32).hex()}


def _config(ident: dict, **extra) -> dict:
    return dict({"device": ident["device"], "site": "bench", "transport": "lorawan", "lorawan_deveui": ident["dev_eui"],
                 "lorawan_appkey": ident["app_key"], "command_key": ident["command_key"], "watchdog_ms": 0}, **extra)


def _emulated(quick: bool) -> dict:
    """join_s_p50, readings_lost_at_20pct_uplink_loss, heap_peak_bytes: virtual boards on the emulated network."""
    import json
    import re
    import statistics
    import tempfile
    import time
    from pathlib import Path

    from host_tools import boards
    from host_tools.backoffice.brokers import Mosquitto
    from host_tools.emulator.network_server import Device, NetworkServer
    from host_tools.emulator.supervisor import Emulator
    from host_tools.emulator.world import World
    from host_tools.fleet import deploy

    board = boards.load("esp32-rak3172")
    n_join = 3 if quick else 6
    window = 60.0 if quick else 150.0
    out: dict = {}
    with Mosquitto() as mq, tempfile.TemporaryDirectory() as tmp, Emulator() as emu:
        ids = [_identity(f"join-{i}") for i in range(n_join)] + [_identity("loss")]
        devices = [Device(i["dev_eui"], i["app_key"], i["device"]) for i in ids]
        with NetworkServer(mq.url, devices, integrations=("chirpstack",)):
            # joins: fresh boards powered up together, the modem at real speed
            handles = []
            for ident in ids[:n_join]:
                flash = Path(tmp) / ident["device"]
                deploy.copy_to_flash(board, _config(ident, sample_period_s=60), flash)
                handles.append((time.monotonic(), emu.add_board(board, flash, radio=mq.url, world=World(seed=len(handles)))))
            joins = []
            for t0, h in handles:
                try:
                    h.wait_for(r"connected to the LoRaWAN network", timeout=90)
                    joins.append(time.monotonic() - t0)
                except TimeoutError:
                    pass
                emu.remove(h)
            out["join_s_p50"] = round(statistics.median(joins), 1) if joins else None
            out["joins"] = f"{len(joins)}/{n_join}"
            # readings through 20 % uplink loss
            ident = ids[-1]
            t0, m0 = time.time(), time.monotonic()
            svc = UplinkService([LoraDevice(ident["device"], ident["dev_eui"].lower(), bytes.fromhex(ident["command_key"]))],
                                integration="chirpstack", ledger_per_day=LEDGER_PER_DAY, broker_url=mq.url,
                                clock=lambda: t0 + (time.monotonic() - m0) * DAY_SCALE).start()
            try:
                flash = Path(tmp) / "loss"
                deploy.copy_to_flash(board, _config(ident, sample_period_s=3, status_period_s=10), flash)
                h = emu.add_board(board, flash, radio=mq.url, world=World(seed=7, lorawan_speedup=SPEEDUP, lorawan_dr=5,
                                                                           lorawan_uplink_loss=0.2))
                h.wait_for(r"connected to the LoRaWAN network", timeout=90)
                time.sleep(window)
                readings = [e["reading"]["seq"] for e in svc.events if e["event"] == "reading"]
                cut = max(readings) + 1 if readings else 0
                # the ledger catches up: what was lost before the cut is sent again
                _wait(lambda: svc.stats()[ident["device"]]["next_seq"] >= cut, 120)
                got = {e["reading"]["seq"] for e in svc.events if e["event"] == "reading"}
                (twin,) = [p for p in h.board.parts.parts if getattr(p, "name", None) == "lorawan"]
                ups = [e for e in twin.log if e["dir"] == "up" and e["kind"] == "data"]
                allocs = [json.loads(m)["heap_alloc"] for m in re.findall(r"status not sent \(LoRaWAN[^)]*\): (\{.*\})", h.console())]
                out.update(
                    readings_lost_at_20pct_uplink_loss=sum(1 for s in range(cut) if s not in got),
                    readings_sampled=cut,
                    uplinks=len(ups),
                    uplinks_lost=sum(1 for e in ups if e["lost"]),
                    duplicates=svc.stats()[ident["device"]]["duplicates"],
                    ledgers=sum(1 for e in svc.events if e["event"] == "ledger"),
                    heap_peak_bytes=h.board.esp32_heap(max(allocs)) if allocs else None,
                    heap_board_bytes=board.heap_bytes,
                )
                emu.remove(h)
            finally:
                svc.stop()
    return out


def run(quick: bool = False) -> BenchResult:
    codec = firmware_codec()
    series = slowly_varying(300 if quick else 1500)
    metrics: dict = {}
    rows = []
    for sf in (12, 10, 7):
        dr = {12: 0, 10: 2, 7: 5}[sf]
        budget = R.max_payload(dr)
        n = min(pack_series(codec, series, budget))
        nbytes = _batch_bytes(codec, series, budget)
        airtime = R.uplink_airtime_s(nbytes, dr)
        uplinks = int(AIRTIME_BUDGET_S // airtime)
        metrics[f"readings_per_day_sf{sf}"] = uplinks * n
        rows.append([f"DR{dr} SF{sf}", budget, n, nbytes, round(airtime * 1000, 1), uplinks, uplinks * n])
    lpp_bytes = len(lpp.encode(FULL_READING))
    lpp_air = R.uplink_airtime_s(lpp_bytes, 0)
    metrics["readings_per_day_sf12_lpp"] = int(AIRTIME_BUDGET_S // lpp_air)
    rows.append(["DR0 SF12, LPP", 51, 1, lpp_bytes, round(lpp_air * 1000, 1), int(AIRTIME_BUDGET_S // lpp_air),
                 int(AIRTIME_BUDGET_S // lpp_air)])
    ledgers, readings = _ledgers_in_a_day()
    metrics["ack_downlinks_per_day"] = ledgers
    metrics["ack_downlink_budget"] = LEDGER_PER_DAY
    emulated = _emulated(quick)
    for key in ("join_s_p50", "readings_lost_at_20pct_uplink_loss", "heap_peak_bytes"):
        metrics[key] = emulated.pop(key)
    return BenchResult(
        metrics,
        tables=[(f"readings a day within {AIRTIME_BUDGET_S:.0f} s of airtime (EU868, 125 kHz, CR 4/5)",
                 ["data rate", "payload max (B)", "readings/frame", "frame (B)", "airtime (ms)", "uplinks/day", "readings/day"],
                 rows)],
        notes=[f"ledger downlinks in a simulated day at 20 % uplink loss: {ledgers} (budget {LEDGER_PER_DAY}), "
               f"{readings} readings sampled",
               "virtual boards on the emulated network (firmware transport, modem twin, network server, uplink service): "
               + ", ".join(f"{k} {v}" for k, v in emulated.items())],
    )
