"""LoRaWAN benchmark, host side: readings a day within the airtime cap, ledger downlinks a day.

- `readings_per_day_sf12|sf10|sf7`: readings of a slowly varying asset packed by the firmware's
  encoder into the largest EU868 payload of the data rate (51 B at DR0/DR2, 222 B at DR5), each
  uplink's time on air from Semtech's formula (host_tools/codec/lorawan_radio.py, the one the
  modem twin enforces), as many uplinks as fit the 30 s/day cap (TTN fair use; the 1 % duty cycle
  allows 864 s, so the cap is what binds).
- `readings_per_day_sf12_lpp`: the same cap with one Cayenne LPP reading per uplink.
- `ack_downlinks_per_day`: delivery-ledger downlinks the uplink service sends in a simulated day
  (a reading every 5 min, an uplink every 15 min, 20 % of uplinks lost) with the default budget.

Not here yet (they need the firmware's LoRaWAN transport): heap_peak_bytes, join_s_p50,
readings_lost_at_20pct_uplink_loss.
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
    return BenchResult(
        metrics,
        tables=[(f"readings a day within {AIRTIME_BUDGET_S:.0f} s of airtime (EU868, 125 kHz, CR 4/5)",
                 ["data rate", "payload max (B)", "readings/frame", "frame (B)", "airtime (ms)", "uplinks/day", "readings/day"],
                 rows)],
        notes=[f"ledger downlinks in a simulated day at 20 % uplink loss: {ledgers} (budget {LEDGER_PER_DAY}), "
               f"{readings} readings sampled",
               "heap_peak_bytes, join_s_p50, readings_lost_at_20pct_uplink_loss: need the firmware's LoRaWAN transport"],
    )
