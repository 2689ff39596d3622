"""Codec benchmark: payload size against Cayenne LPP and JSON, LoRaWAN airtime budget, encode cost.

Sizes come from the firmware encoder (firmware/lanterne/codec.py, run in CPython:
the tests check it gives the same bytes as on the unix port), in the LoRaWAN
framing (format version in the FPort) unless a row says MQTT (one version byte
more); encode time and allocation are measured on the MicroPython unix port at
the board's 100 KB heap. Also: how often random payloads pass the decoder.
"""

from __future__ import annotations

import json
import math
import random

from host_tools.bench import BenchResult
from host_tools.codec import FPORT, acceptance, decode, firmware_codec, firmware_codec_values, lpp

# The reading of the issue, every field present (the optional raw fill distance aside).
FULL_READING = {
    "temperature": 21.5,
    "humidity": 45.5,
    "pressure": 1013.2,
    "illuminance": 350.0,
    "fill": 42,
    "lamp": 80,
    "lamp_fault": False,
    "voltage": 12.34,
    "status": [],
    "seq": 12345,
    "age": 2,
}
# What a Cayenne LPP device usually sends: the sensor values, no sequence number or age.
SENSOR_FIELDS = ("temperature", "humidity", "pressure", "illuminance", "fill", "lamp", "lamp_fault", "voltage")

AIRTIME_BUDGET_S = 30.0  # TTN fair-use airtime per device per day
LORAWAN_OVERHEAD = 13  # MHDR 1 + DevAddr 4 + FCtrl 1 + FCnt 2 + FPort 1 + MIC 4
# Largest EU868 application payload at 125 kHz per spreading factor (222: DR4-5 via a repeater).
MAX_PAYLOAD = {7: 222, 8: 222, 9: 115, 10: 51, 11: 51, 12: 51}
PERIOD_S = 600


def lora_airtime(payload: int, sf: int, bw: float = 125e3, cr: int = 1, preamble: int = 8) -> float:
    """Seconds on air for a LoRa frame of `payload` PHY bytes (Semtech AN1200.13).

    Explicit header, CRC on, low-data-rate optimisation at SF11 and SF12 (125 kHz), coding rate 4/(4+cr).
    """
    t_sym = (2**sf) / bw
    de = 1 if sf >= 11 and bw <= 125e3 else 0
    header, crc = 0, 1
    n = 8 + max(math.ceil((8 * payload - 4 * sf + 28 + 16 * crc - 20 * header) / (4 * (sf - 2 * de))) * (cr + 4), 0)
    return (preamble + 4.25) * t_sym + n * t_sym


def slowly_varying(count: int, seed: int = 7) -> list[dict]:
    """A street asset sampled every 10 minutes: small random walks, as a LoRaWAN batch sees them."""
    rng = random.Random(seed)
    t, h, p, lx, fill, v = 12.0, 60.0, 1008.0, 40.0, 30.0, 12.3
    out = []
    for i in range(count):
        t = min(max(t + rng.gauss(0, 0.1), -40), 85)
        h = min(max(h + rng.gauss(0, 0.5), 0), 100)
        p = min(max(p + rng.gauss(0, 0.1), 300), 1100)
        lx = min(max(lx * (1 + rng.gauss(0, 0.03)), 0.01), 120000)
        fill = min(fill + (1 if rng.random() < 0.1 else 0), 100)
        v = min(max(v + rng.gauss(0, 0.01), 0), 60)
        out.append(
            {
                "temperature": round(t, 1),
                "humidity": round(h * 2) / 2,
                "pressure": round(p, 1),
                "illuminance": round(lx, 3),
                "fill": int(fill),
                "lamp": 80,
                "lamp_fault": False,
                "voltage": round(v, 2),
                "status": [],
                "seq": 40000 + i,
                "sampled": i * PERIOD_S + rng.choice((0, 0, 0, 1, -1)),
            }
        )
    return out


# A metered street light at night (format v3: the lamp's energy and burning-hour counters).
LAMP_READING = {"illuminance": 1.2, "lamp": 60, "lamp_fault": False, "voltage": 12.3, "energy": 48213,
                "burning_hours": 1822.37, "status": [], "seq": 5012, "age": 2}


def lamp_night(count: int, watts: float = 60.0) -> list[dict]:
    """A 60 W street light sampled every 10 minutes: full power, then the night's 50 % step."""
    out = []
    wh, hours = 48213, 1822.37
    for i in range(count):
        level = 100 if i < count // 3 else 50
        out.append(dict(LAMP_READING, illuminance=0.8, lamp=level, energy=round(wh), burning_hours=round(hours, 2),
                        seq=5000 + i, sampled=i * PERIOD_S))
        wh += watts * (1.0 if level == 100 else 0.53) * PERIOD_S / 3600
        hours += PERIOD_S / 3600
    return out


def _with_ages(series: list[dict], start: int, last: int) -> list[dict]:
    """Readings start..end with their age when the frame leaves, 2 s after reading `last` was sampled."""
    send = series[last]["sampled"] + 2
    return [
        {k: v for k, v in r.items() if k != "sampled"} | {"age": send - r["sampled"]}
        for r in series[start : last + 1]
    ]


def pack_series(codec, series: list[dict], budget: int, lorawan: bool = True) -> list[int]:
    """Readings per frame when a device sends each frame as soon as the next reading would not fit.

    Ages depend on when the frame leaves, so the count is the largest k for which
    readings start..start+k-1, aged as of the k-th, all fit in `budget` bytes.
    """
    enc = codec.Encoder(budget, lorawan)
    from_values = firmware_codec_values().from_values

    def fits(start: int, k: int) -> bool:
        batch = [from_values(r) for r in _with_ages(series, start, start + k - 1)]
        return enc.encode(batch, 0, -1, budget) == k

    counts = []
    start = 0
    while start < len(series) and fits(start, 1):
        room = len(series) - start
        good, bad = 1, None
        while bad is None:  # grow until a count does not fit (or the series ends)
            k = min(good * 2, room)
            if k == good:
                break
            if fits(start, k):
                good = k
            else:
                bad = k
        while bad is not None and bad - good > 1:
            mid = (good + bad) // 2
            if fits(start, mid):
                good = mid
            else:
                bad = mid
        if bad is None:  # the tail of the series fits whole: not a full frame
            break
        counts.append(good)
        start += good
    return counts


def _json_bytes(reading: dict) -> int:
    return len(json.dumps(reading, separators=(",", ":")).encode())


def _fit(size: int, budget: int, framing: int = 0) -> int:
    return max((budget - framing) // size, 0) if size else 0


_ENCODE_COST = """
import gc, time
from lanterne import codec

def series(n):
    out = []
    for i in range(n):
        r = codec.new_reading()
        r[codec.TEMPERATURE] = 215 + (i % 5) - 2
        r[codec.HUMIDITY] = 91 + (i % 3)
        r[codec.PRESSURE] = 10132 + (i % 4)
        r[codec.ILLUMINANCE] = 350000 + 7000 * (i % 3)
        r[codec.FILL] = 42 + i // 10
        r[codec.LAMP] = 80
        r[codec.LAMP_FAULT] = 0
        r[codec.VOLTAGE] = 12340 + 10 * (i % 2)
        r[codec.STATUS] = 0
        r[codec.SEQ] = 40000 + i
        r[codec.AGE] = 600 * (n - i) + (i % 2)
        out.append(r)
    return out

def measure(enc, readings, budget, rounds):  # LoRaWAN framing: what counts against the airtime
    enc.encode(readings, 0, -1, budget)
    enc.encode(readings, 0, -1, budget)  # warm-up: attribute slots, first-call paths
    gc.collect()
    gc.disable()
    packed = 0
    a = gc.mem_alloc()
    t = time.ticks_us()
    for _ in range(rounds):
        packed += enc.encode(readings, 0, -1, budget)
    dt = time.ticks_diff(time.ticks_us(), t)
    b = gc.mem_alloc()
    gc.enable()
    return [dt / packed, (b - a) / packed, packed // rounds, dt / rounds]

def main():
    readings = series(64)
    enc = codec.Encoder(242, True)
    out = {}
    for name, count, budget in (("single", 1, 242), ("batch51", 64, 51), ("batch222", 64, 222)):
        out[name] = measure(enc, readings[:count], budget, ROUNDS)
    gc.collect()
    out["heap_free"] = gc.mem_free()
    print(__import__("json").dumps(out))

main()
"""


def _encode_cost(quick: bool) -> dict:
    from host_tools.runtime import unix_port

    return unix_port.run_json(_ENCODE_COST.replace("ROUNDS", "50" if quick else "400"), heapsize=100 * 1024)


def run(quick: bool = False) -> BenchResult:
    codec = firmware_codec()
    from_values = firmware_codec_values().from_values
    full = FULL_READING
    sensors = {k: full[k] for k in SENSOR_FIELDS}

    def ours(reading: dict, lorawan: bool = True) -> int:
        enc = codec.Encoder(codec.MAX_FRAME, lorawan)
        enc.encode([from_values(reading)])
        decode(enc.frame(), FPORT - 2 + enc.version if lorawan else None)  # a frame the host cannot read does not count
        return enc.length

    size = {
        "full": (ours(full), len(lpp.encode(full)), _json_bytes(full)),
        "sensors": (ours(sensors), len(lpp.encode(sensors)), _json_bytes(sensors)),
    }
    metrics: dict[str, float | int | str] = {
        "bytes_full_reading": size["full"][0],
        "bytes_full_reading_lpp": size["full"][1],
        "bytes_full_reading_json": size["full"][2],
        "bytes_sensor_reading": size["sensors"][0],
        "bytes_sensor_reading_lpp": size["sensors"][1],
        "bytes_sensor_reading_json": size["sensors"][2],
        "bytes_full_reading_mqtt": ours(full, lorawan=False),
    }
    size_rows = [
        ["full reading (all 10 fields, seq + age)", *size["full"], f"{size['full'][1] / size['full'][0]:.1f}x"],
        ["sensor fields only (LPP's usual set)", *size["sensors"], f"{size['sensors'][1] / size['sensors'][0]:.1f}x"],
        ["full reading over MQTT (+ version byte)", metrics["bytes_full_reading_mqtt"], "", "", ""],
    ]
    # The largest age that keeps a full reading in bytes_full_reading (status: none, or clock unsynced).
    for label, status in (("none", []), ("clock", ["clock_unsynced"])):
        age = 0
        while ours(dict(full, status=status, age=age + 1)) <= size["full"][0]:
            age += 1
        metrics[f"full_reading_max_age_s_status_{label}"] = age

    # Batches of a slowly varying asset.
    series = slowly_varying(300 if quick else 1500)
    lpp_size, json_size = size["full"][1], size["full"][2] + 1  # JSON list: one comma per reading
    per_frame: dict[int, tuple[int, float]] = {}
    batch_rows = []
    for budget in (11, 51, 115, 222, 242):
        counts = pack_series(codec, series, budget)
        lo = min(counts) if counts else 0
        mean = sum(counts) / len(counts) if counts else 0.0
        per_frame[budget] = (lo, mean)
        batch_rows.append([budget, lo, round(mean, 1), _fit(lpp_size, budget), _fit(json_size, budget, 1)])
    metrics["readings_per_51B"] = per_frame[51][0]
    metrics["readings_per_51B_mean"] = round(per_frame[51][1], 2)
    metrics["readings_per_222B"] = per_frame[222][0]
    # Format v3: an environmental station's full reading (weather, supply, PM, LAeq/LAmax).
    from host_tools.bench.environment import _env_reading_sizes

    env_size, env_per_frame = _env_reading_sizes()
    metrics["bytes_full_reading_env"] = env_size
    metrics["env_readings_per_51B"] = env_per_frame
    # Format v3: a metered street light (lamp level, energy and burning-hour counters).
    metrics["bytes_lamp_reading_energy"] = ours(LAMP_READING)
    metrics["bytes_lamp_reading_energy_mqtt"] = ours(LAMP_READING, lorawan=False)
    lamp_counts = pack_series(codec, lamp_night(60 if quick else 144), 51)
    metrics["lamp_readings_per_51B"] = min(lamp_counts)
    metrics["lamp_readings_per_51B_mean"] = round(sum(lamp_counts) / len(lamp_counts), 2)
    size_rows.append(["street light + energy counters (v3)", metrics["bytes_lamp_reading_energy"], "", "", ""])

    # Airtime: one reading per uplink, and batches at the largest payload of the data rate.
    air_rows = []
    for sf in (7, 10, 12):
        budget = MAX_PAYLOAD[sf]
        batch = {
            "lanterne": (per_frame[budget][0], per_frame[budget][0] and _batch_bytes(codec, series, budget)),
            "lpp": (_fit(lpp_size, budget), _fit(lpp_size, budget) * lpp_size),
            "json": (_fit(json_size, budget, 1), _fit(json_size, budget, 1) * json_size + 1),
        }
        for name, single in (("lanterne", size["full"][0]), ("lpp", lpp_size), ("json", size["full"][2])):
            t1 = lora_airtime(single + LORAWAN_OVERHEAD, sf)
            per_day_single = int(AIRTIME_BUDGET_S // t1) if single <= budget else 0
            n, nbytes = batch[name]
            per_day = int(AIRTIME_BUDGET_S // lora_airtime(nbytes + LORAWAN_OVERHEAD, sf)) * n if n else 0
            suffix = "" if name == "lanterne" else f"_{name}"
            metrics[f"readings_per_day_sf{sf}{suffix}"] = per_day
            metrics[f"readings_per_day_sf{sf}_single{suffix}"] = per_day_single
            air_rows.append(
                [f"SF{sf} ({budget} B)", name, single, round(t1 * 1000), per_day_single, n, per_day]
            )

    cost = _encode_cost(quick)
    metrics["encode_us_per_reading"] = round(cost["batch51"][0], 1)
    metrics["encode_us_single_reading"] = round(cost["single"][0], 1)
    metrics["alloc_bytes_per_encode"] = max(cost[k][1] for k in ("single", "batch51", "batch222"))
    metrics["heap_free_after_bench"] = cost["heap_free"]
    cost_rows = [
        [label, cost[key][2], round(cost[key][3]), round(cost[key][0], 1), cost[key][1]]
        for label, key in (
            ("1 full reading per frame", "single"),
            ("batch, 51-byte frame", "batch51"),
            ("batch, 222-byte frame", "batch222"),
        )
    ]

    # Random payloads that pass the decoder, at the lengths where they pass most often.
    trials = 20_000 if quick else 100_000
    accept_rows = []
    for n in (3, 8, 12, 20, 51):
        e = acceptance.false_acceptance(n, trials, seed=n)
        metrics[f"false_accept_{n}B"] = float(f"{e.rate:.3g}")
        accept_rows.append([n, f"{e.rate:.2e}", f"{e.stderr:.1e}", f"{e.structure:.2%}", f"{e.rate / 256:.1e}"])
    return BenchResult(
        metrics=metrics,
        tables=[
            ("bytes per reading", ["reading", "lanterne", "Cayenne LPP", "JSON", "LPP / lanterne"], size_rows),
            (
                f"readings per frame, slowly varying asset sampled every {PERIOD_S // 60} min",
                ["frame budget (B)", "lanterne (min)", "lanterne (mean)", "LPP", "JSON list"],
                batch_rows,
            ),
            (
                f"daily readings within {AIRTIME_BUDGET_S:.0f} s of airtime (EU868, 125 kHz, CR 4/5, +13 B LoRaWAN)",
                ["data rate", "format", "bytes (1 reading)", "airtime (ms)", "readings/day, 1 per frame",
                 "readings per batch", "readings/day, batched"],
                air_rows,
            ),
            (
                "encode cost on the MicroPython unix port, 100 KB heap (this host's CPU: an ESP32 is many times slower)",
                ["case", "readings/frame", "us per frame", "us per reading", "bytes allocated per reading"],
                cost_rows,
            ),
            (
                f"random payloads that decode ({trials} per length; docs/payload.md has the full table)",
                ["LoRaWAN payload (B)", "pass rate, FPort 102", "std. error", "structure valid",
                 "MQTT frame of 1 B more, random first byte"],
                accept_rows,
            ),
        ],
        notes=[
            "sizes and frames are LoRaWAN payloads: the format version travels in the FPort (102); an MQTT "
            "frame carries it in one more byte.",
            "full reading = temperature, humidity, pressure, illuminance, fill, lamp + fault, voltage, status, "
            "seq, age; LPP carries status/seq/age as 4-byte generic sensors, JSON is compact (no spaces).",
            "LPP and JSON batches are concatenated readings with no time information; lanterne batches carry "
            "each reading's age and sequence number.",
            f"batched readings/day trade latency: a frame leaves once the next reading would not fit "
            f"(at SF12, ~{per_frame[51][0]} readings x {PERIOD_S // 60} min).",
        ],
    )


def _batch_bytes(codec, series: list[dict], budget: int) -> int:
    """Bytes of a typical full frame at `budget` (the frame the airtime figure is computed for)."""
    enc = codec.Encoder(budget, True)
    n = pack_series(codec, series[:200], budget)[0]
    from_values = firmware_codec_values().from_values
    batch = [from_values(r) for r in _with_ages(series, 0, n - 1)]
    enc.encode(batch, 0, -1, budget)
    return enc.length
