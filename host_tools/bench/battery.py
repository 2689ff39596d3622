"""Battery benchmark: what one wake costs on a virtual battery bin, and the energy model in years.

Measured: a virtual `esp32-rak3172-bin` (and its Wi-Fi variant against a real Mosquitto) runs the
firmware's battery duty cycle (lanterne/wake.py) through deep sleeps at `sleep_speedup`; for each
wake the emulator records the host time from the ROM's BOOTED to the firmware's deep-sleep request
and the CPU time the interpreter used meanwhile (host_tools/emulator/sleep.py, `wake_log`).

An ESP32 wake is then estimated (docs/battery.md, "Awake time"):

    awake = esp32_boot (board file: ROM, bootloader, MicroPython start-up)
          + cpu x HOST_TO_ESP32 x 240 / esp32_mhz   (the interpreter's work, at the board's clock)
          + (host wall - cpu)                        (waits: ultrasonic pings, the network, the modem)

HOST_TO_ESP32 = 60 is host_tools/bench/environment.py's CoreMark ratio at 240 MHz (x 1.5 at the
160 MHz MicroPython runs the ESP32 at). A send wake over LoRaWAN is measured on the RAK3172 twin
when the firmware has its LoRaWAN link (its receive windows in real time; else modelled: a sample
wake's work, the AT exchange as the MQTT send's CPU beyond a sample wake's, and the wait on the
radio); the modem adds the uplink's time on air (Semtech's formula at the data rate,
host_tools/codec/lorawan_radio.py) at its TX current and its receive windows at its RX current, and
the ESP32 waits from the TX until RX2 has closed. Over Wi-Fi a send wake adds the association
(board file wifi_connect) and the time the link was up, at the Wi-Fi current. Sleep is the ESP32's deep sleep,
the modem's sleep and the regulator's quiescent current; the cell loses its self-discharge.

Metrics (`lanterne bench battery --json`): `awake_ms_per_wake_sample`, `awake_ms_per_wake_send`
(LoRaWAN) and `awake_ms_per_wake_send_wifi` (ESP32 estimates), their host measurements,
`charge_mah_per_day` and `battery_years` at a 10-minute and a 60-minute sampling period (LoRaWAN,
DR5, one frame an hour), the same for the Wi-Fi variant, `target_years` (10) and
`years_short_of_target_10min`, `lorawan_send_measured` (1: on the twin, 0: modelled). A sensitivity table varies the period, the data rate and the awake
time (x0.5, x1.5).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from host_tools import boards
from host_tools.bench import BenchResult
from host_tools.bench.environment import HOST_TO_ESP32
from host_tools.codec import lorawan_radio as R
from host_tools.reliability.battery_week import wifi_variant

BOARD = "esp32-rak3172-bin"
TARGET_YEARS = 10.0
SEND_PERIOD_S = 3600  # one frame an hour (config send_period_s)
DR = 5  # SF7 (ADR moves a bin near its gateway here); the sensitivity table shows DR0..DR5
RX_DELAY1_S, RX_DELAY2_S = 1.0, 2.0  # LoRaWAN RECEIVE_DELAY1/2 (RP002 EU868)
RX_WINDOW_SYMBOLS = 8  # a receive window that finds no preamble closes after ~8 symbols (RUI3/LoRaMac-node)
BIN_READING = {"fill": 47, "distance": 730, "voltage": 3.59}


@dataclass
class Wake:
    """One wake kind: what the virtual board measured and its ESP32 estimate (seconds). `wait_s`:
    of `esp32_s`, the ESP32 waiting on the radio (from the uplink's TX until RX2 has closed)."""

    wall_s: float
    cpu_s: float
    esp32_s: float
    n: int
    wait_s: float = 0.0


def esp32_awake_s(wall_s: float, cpu_s: float, power: dict) -> float:
    factor = HOST_TO_ESP32 * 240.0 / float(power["esp32_mhz"])
    return power["timing_ms"]["esp32_boot"] / 1000.0 + cpu_s * factor + max(0.0, wall_s - cpu_s)


def frame_bytes(n_readings: int) -> int:
    """The LoRaWAN FRMPayload the firmware's encoder makes of `n_readings` bin readings."""
    from host_tools.codec import encode_values

    readings = [dict(BIN_READING, seq=i, age=(n_readings - 1 - i) * 600) for i in range(n_readings)]
    return sum(len(f["frame"]) for f in encode_values(readings, budget=222, runtime="cpython", lorawan=True))


def _symbol_s(sf: int) -> float:
    return (1 << sf) / 125_000


def radio_wait_s(payload: int, dr: int) -> float:
    """How long the ESP32 waits on an uplink: its time on air, then until RX2 has closed (the AT
    driver waits for +EVT:TX_DONE, which RUI3 sends then; RX2 opens RECEIVE_DELAY2 after the TX)."""
    return R.uplink_airtime_s(payload, dr) + RX_DELAY2_S + RX_WINDOW_SYMBOLS * _symbol_s(12)


def modem_charge(power: dict, payload: int, dr: int) -> float:
    """mA s of the modem for one uplink: the TX at its TX current, two receive windows that find no
    preamble (RX1 at the uplink's SF, RX2 at SF12) at its RX current."""
    c = power["currents_ma"]
    rx = RX_WINDOW_SYMBOLS * (_symbol_s(R.EU868_DR_SF[dr]) + _symbol_s(12))
    return R.uplink_airtime_s(payload, dr) * c["modem_tx"] + rx * c["modem_rx"]


def daily(power: dict, period_s: float, sample: Wake, send: Wake, *, transport: str = "lorawan", dr: int = DR,
          awake_scale: float = 1.0, send_period_s: float = SEND_PERIOD_S, rx_wait_ma: float | None = None) -> dict:
    """The model: charge a day (mAh) by where it goes, and the battery's life in years. awake_scale
    scales the ESP32's own work (not the radio's waits); rx_wait_ma: the ESP32's current while it
    waits on the radio (default: awake)."""
    c = power["currents_ma"]
    t = power["timing_ms"]
    wakes = 86400.0 / period_s
    sends = min(wakes, 86400.0 / max(send_period_s, period_s))
    per_frame = max(1, round(max(send_period_s, period_s) / period_s))
    pings_s = t["sensor_per_ping"] / 1000.0 * 5  # the board file's 5 pings
    sample_s = sample.esp32_s * awake_scale
    q_sample = sample_s * c["esp32_active"] + pings_s * c["sensor_active"]
    if transport == "lorawan":
        payload = frame_bytes(min(per_frame, 24))
        wait_s = radio_wait_s(payload, dr)  # at this data rate (the measured wake's was DR5's)
        work_s = (send.esp32_s - send.wait_s) * awake_scale
        send_s = work_s + wait_s
        wait_ma = c["esp32_active"] if rx_wait_ma is None else rx_wait_ma
        q_send = work_s * c["esp32_active"] + wait_s * wait_ma + modem_charge(power, payload, dr) + pings_s * c["sensor_active"]
    else:
        # Wi-Fi: the association (not emulated: the board file's figure) and the link's time up
        # (the send wake's host wall time beyond a sample wake's) at the Wi-Fi current
        link_s = t["wifi_connect"] / 1000.0 + max(0.0, send.wall_s - sample.wall_s) * awake_scale
        send_s = send.esp32_s * awake_scale + t["wifi_connect"] / 1000.0
        q_send = (send_s - link_s) * c["esp32_active"] + link_s * c["esp32_wifi"] + pings_s * c["sensor_active"]
    awake_day_s = (wakes - sends) * sample_s + sends * send_s
    sleep_ma = c["esp32_deep_sleep"] + c["regulator_quiescent"] + (c["modem_sleep"] if transport == "lorawan" else 0.0)
    bat = power["battery"]
    parts = {
        "sample_wakes": (wakes - sends) * q_sample / 3600.0,
        "send_wakes": sends * q_send / 3600.0,
        "sleep": sleep_ma * (86400.0 - awake_day_s) / 3600.0,
        "self_discharge": bat["capacity_mah"] * bat["self_discharge_pct_per_year"] / 100.0 / 365.0,
    }
    total = sum(parts.values())
    return {"parts": parts, "mah_per_day": total, "years": bat["capacity_mah"] / total / 365.0, "wakes": wakes,
            "sends": sends, "q_sample_mas": q_sample, "q_send_mas": q_send, "send_s": send_s}


# -- measuring on the virtual board ------------------------------------------------------------
def _kinds(console: str) -> list[str]:
    return re.findall(r"\[lanterne\] wake \d+ \([^)]*\): (\w+)", console)


def measure(board: boards.Board, config: dict, wakes: int, speedup: float = 5000.0, radio: str | None = None) -> dict[str, list[dict]]:
    """Run `wakes` wakes of `board` with `config`: each wake's log entry, by the kind the firmware
    printed (the cold start left out). radio: the broker of the LoRaWAN gateways (the modem's clock
    then runs in real time, its receive windows as long as on air)."""
    from host_tools.emulator.supervisor import Emulator
    from host_tools.emulator.world import World
    from host_tools.fleet import deploy

    with tempfile.TemporaryDirectory() as tmp, Emulator() as emu:
        flash = Path(tmp) / "flash"
        flash.mkdir()
        deploy.copy_to_flash(board, config, flash, romfs=True)
        world = World(seed=1, sleep_speedup=speedup, distance_mm=730.0, lorawan_speedup=1.0, lorawan_dr=DR)
        h = emu.add_board(board, flash, world=world, radio=radio)
        h.wait_for(r"\[lanterne\] wake %d " % (wakes + 1), timeout=60 + wakes * 5)
        log = list(h.board.sleep.wake_log)
        kinds = _kinds(h.console())
    out: dict[str, list[dict]] = {}
    for kind, entry in zip(kinds[1:], log[1:], strict=False):  # the cold start is not a steady wake
        out.setdefault(kind, []).append(entry)
    return out


def _wake(entries: list[dict], power: dict) -> Wake:
    walls = sorted(e["wall_s"] for e in entries)
    cpus = sorted(e["cpu_s"] for e in entries)
    wall, cpu = walls[len(walls) // 2], cpus[len(cpus) // 2]  # medians: a loaded host's outliers do not count
    return Wake(wall, cpu, esp32_awake_s(wall, cpu, power), len(entries))


def lorawan_firmware() -> bool:
    """Whether the firmware benchmarked has its LoRaWAN link (then the send wake is measured)."""
    from host_tools.runtime.paths import FIRMWARE

    return (FIRMWARE / "lanterne" / "transport" / "lorawan.py").exists()


def _measure_lorawan(board: boards.Board, base: dict, n: int, mq_url: str) -> dict[str, list[dict]]:
    import os

    from host_tools.codec import lns_json as J
    from host_tools.emulator.network_server import Device, NetworkServer

    dev_eui, app_key = os.urandom(8).hex().upper(), os.urandom(16).hex().upper()
    cfg = dict(base, device="bench-bin-lw", transport="lorawan", lorawan_deveui=dev_eui, lorawan_appkey=app_key,
               command_key=os.urandom(32).hex(), send_period_s=1200)  # a frame every 2nd wake
    with NetworkServer(mq_url, [Device(dev_eui=dev_eui, app_key=app_key, name="bench-bin-lw")], integrations=("chirpstack",),
                       app=J.Application()):
        return measure(board, cfg, n, radio=mq_url)


def run(quick: bool = False) -> BenchResult:
    from host_tools.backoffice.brokers import Mosquitto

    board = boards.load(BOARD)
    power = board.data["power"]
    n = 8 if quick else 24
    base = {"sample_period_s": 600, "send_period_s": SEND_PERIOD_S, "status_period_s": 86400, "watchdog_ms": 0}
    measured = lorawan_firmware()
    with Mosquitto() as mq:
        if measured:
            lw = _measure_lorawan(board, base, n, mq.url)
        else:
            lw = measure(board, dict(base, device="bench-bin-lw", transport="lorawan"), n)
        # a frame every 2nd wake: as many send wakes as sample wakes in one run
        wifi = measure(wifi_variant(board), dict(base, device="bench-bin-wifi", broker=mq.url, send_period_s=1200, site="bench"),
                       n)
    wifi_sample = _wake(wifi["sample"], power)
    wifi_send = _wake(wifi["send"], power)
    dr5_wait = radio_wait_s(frame_bytes(2), DR)  # what a measured send wake waited on the radio (2 readings a frame)
    if measured:
        sample = _wake(lw["sample"], power)
        send = _wake(lw["send"], power)
        send.wait_s = dr5_wait
    else:
        # no LoRaWAN link in this firmware: every wake is a sample wake (its send fails at once);
        # the send wake is modelled: the ESP32's work of a sample wake, plus the AT exchange (as the
        # MQTT send wake's CPU beyond a sample wake's), plus the wait on the radio
        sample = _wake(lw.get("sample", []) + lw.get("send", []), power)
        at_cpu = max(0.0, wifi_send.cpu_s - wifi_sample.cpu_s)
        wall, cpu = sample.wall_s + at_cpu, sample.cpu_s + at_cpu
        send = Wake(wall, cpu, esp32_awake_s(wall, cpu, power) + dr5_wait, 0, dr5_wait)
    m10 = daily(power, 600, sample, send)
    m60 = daily(power, 3600, sample, send)
    w10 = daily(power, 600, wifi_sample, wifi_send, transport="wifi")
    w60 = daily(power, 3600, wifi_sample, wifi_send, transport="wifi")
    metrics = {
        "awake_ms_per_wake_sample": round(sample.esp32_s * 1000),
        "awake_ms_per_wake_send": round(m10["send_s"] * 1000),
        "awake_ms_per_wake_send_wifi": round(w10["send_s"] * 1000),
        "host_ms_per_wake_sample": round(sample.wall_s * 1000, 1),
        "host_cpu_ms_per_wake_sample": round(sample.cpu_s * 1000, 2),
        "host_ms_per_wake_send": round(send.wall_s * 1000, 1) if measured else None,
        "host_cpu_ms_per_wake_send": round(send.cpu_s * 1000, 2) if measured else None,
        "host_ms_per_wake_send_wifi": round(wifi_send.wall_s * 1000, 1),
        "host_cpu_ms_per_wake_send_wifi": round(wifi_send.cpu_s * 1000, 2),
        "charge_mah_per_day": round(m10["mah_per_day"], 3),
        "battery_years": round(m10["years"], 2),
        "charge_mah_per_day_60min": round(m60["mah_per_day"], 3),
        "battery_years_60min": round(m60["years"], 2),
        "charge_mah_per_day_wifi": round(w10["mah_per_day"], 3),
        "battery_years_wifi": round(w10["years"], 2),
        "battery_years_60min_wifi": round(w60["years"], 2),
        "target_years": TARGET_YEARS,
        "years_short_of_target_10min": round(max(0.0, TARGET_YEARS - m10["years"]), 2),
        "battery_mah": power["battery"]["capacity_mah"],
        "host_to_esp32_factor": round(HOST_TO_ESP32 * 240 / power["esp32_mhz"], 1),
        "lorawan_send_measured": int(measured),  # the send wake ran on the modem twin (else modelled)
    }
    parts = [[k, f"{m10['parts'][k]:.3f}", f"{m60['parts'][k]:.3f}", f"{w10['parts'][k]:.3f}"] for k in m10["parts"]]
    parts.append(["total mAh/day", f"{m10['mah_per_day']:.3f}", f"{m60['mah_per_day']:.3f}", f"{w10['mah_per_day']:.3f}"])
    parts.append(["years on the cell", f"{m10['years']:.1f}", f"{m60['years']:.1f}", f"{w10['years']:.1f}"])
    # What would close the gap: the same model with one change at a time, then all of them.
    light_sleep_ma = 0.8  # ESP32 light sleep, RTC timer and UART wake (datasheet: 0.8 mA)
    fast = dict(power, timing_ms=dict(power["timing_ms"], esp32_boot=150))

    def rewake(w: Wake, pw: dict, cpu_scale: float = 1.0) -> Wake:
        cpu = w.cpu_s * cpu_scale
        wall = w.wall_s - w.cpu_s + cpu
        modelled = 0.0 if measured or w is not send else w.wait_s  # (a modelled send's wait is on top of its wall)
        return Wake(wall, cpu, esp32_awake_s(wall, cpu, pw) + modelled, w.n, w.wait_s)

    closers = [
        ("as measured", daily(power, 600, sample, send)),
        ("ESP32 in light sleep (0.8 mA) until RX2 closes", daily(power, 600, sample, send, rx_wait_ma=light_sleep_ma)),
        ("boot from deep sleep in 150 ms (bootloader skips the image check)", daily(fast, 600, rewake(sample, fast), rewake(send, fast))),
        ("half the interpreter's work per wake", daily(power, 600, rewake(sample, power, 0.5), rewake(send, power, 0.5))),
        ("all three", daily(fast, 600, rewake(sample, fast, 0.5), rewake(send, fast, 0.5), rx_wait_ma=light_sleep_ma)),
    ]
    closing = [[what, f"{m['mah_per_day']:.3f}", f"{m['years']:.1f}"] for what, m in closers]
    metrics["battery_years_10min_all_closers"] = round(closers[-1][1]["years"], 2)
    sens = []
    for period in (300, 600, 1800, 3600):
        for dr in (0, 2, 5):
            row = [f"{period // 60} min", f"DR{dr}"]
            for scale in (0.5, 1.0, 1.5):
                row.append(f"{daily(power, period, sample, send, dr=dr, awake_scale=scale)['years']:.1f}")
            sens.append(row)
    wake_rows = [
        ["sample-only (LoRaWAN bin)", f"{sample.wall_s * 1000:.0f}", f"{sample.cpu_s * 1000:.1f}", f"{sample.esp32_s * 1000:.0f}",
         f"{m10['q_sample_mas'] / 3.6:.1f}"],
        [f"send, LoRaWAN DR5 ({'measured' if measured else 'modelled'})", f"{send.wall_s * 1000:.0f}" if measured else "",
         f"{send.cpu_s * 1000:.1f}" if measured else "", f"{metrics['awake_ms_per_wake_send']}", f"{m10['q_send_mas'] / 3.6:.1f}"],
        ["sample-only (Wi-Fi bin)", f"{wifi_sample.wall_s * 1000:.0f}", f"{wifi_sample.cpu_s * 1000:.1f}",
         f"{wifi_sample.esp32_s * 1000:.0f}", f"{w10['q_sample_mas'] / 3.6:.1f}"],
        ["send, Wi-Fi + MQTT", f"{wifi_send.wall_s * 1000:.0f}", f"{wifi_send.cpu_s * 1000:.1f}",
         f"{metrics['awake_ms_per_wake_send_wifi']}", f"{w10['q_send_mas'] / 3.6:.1f}"],
    ]
    notes = [
        f"ESP32 awake = board file's esp32_boot ({power['timing_ms']['esp32_boot']} ms) + host CPU x "
        f"{metrics['host_to_esp32_factor']} + host waits; medians of {n} wakes each (docs/battery.md).",
        "The LoRaWAN send wake ran on the RAK3172 twin, its receive windows in real time (network server on Mosquitto)."
        if measured else "The LoRaWAN send wake is modelled (its AT exchange as the MQTT send's CPU beyond a sample wake, the "
        "ESP32 awake until RX2 closes): the firmware's LoRaWAN link is not in this build.",
        f"10-year target at 10 min: {'met' if m10['years'] >= TARGET_YEARS else 'missed by %.1f years' % (TARGET_YEARS - m10['years'])}"
        " (docs/battery.md says what closes the gap).",
    ]
    return BenchResult(
        metrics,
        tables=[
            ("awake time per wake", ["wake", "host ms", "host CPU ms", "ESP32 ms (est.)", "uAh per wake"], wake_rows),
            ("charge a day (mAh), 8.5 Ah cell", ["where", "LoRaWAN 10 min", "LoRaWAN 60 min", "Wi-Fi 10 min"], parts),
            ("battery years: LoRaWAN, a frame an hour", ["period", "DR", "awake x0.5", "awake x1", "awake x1.5"], sens),
            ("closing the gap: LoRaWAN, 10 min, DR5", ["change", "mAh/day", "years"], closing),
        ],
        notes=notes,
    )
