"""A recorded night of a virtual street light, and the savings report made from it.

The firmware cannot run a night faster than real time on a virtual board, so the night is
recorded with `host_tools.emulator.lamp_night`: the firmware's lamp, profile, energy meter and
codec on the unix port, against the emulator's simulated lamp, current sense and supply, the time
passed in (docs/energy.md, "How it is checked"). The report (`lanterne energy`) reads the frames
the board would have sent, and must agree with the power the simulated lamp drew (within 2 %),
with an independent dusk-to-dawn computation (astral, within 1 %), and with the hours it was lit.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from astral import Observer
from astral.sun import dawn, dusk

from host_tools import boards
from host_tools.backoffice.energy import Options, report
from host_tools.backoffice.energy_sources import CaptureSource
from host_tools.codec import decode
from host_tools.emulator.lamp_night import LampNights

LYON = (45.764, 4.836)
START = dt.datetime(2025, 1, 15, 15, 0, tzinfo=dt.timezone.utc)


def astral_night_h(day: dt.date, lat: float, lon: float) -> float:
    """Civil dusk of `day` to civil dawn of the next, by astral (an implementation no one here wrote)."""
    o = Observer(lat, lon)
    return (dawn(o, day + dt.timedelta(days=1), depression=6) - dusk(o, day, depression=6)).total_seconds() / 3600


def readings(capture: list[str]) -> list[dict]:
    out = []
    for line in capture:
        m = json.loads(line)
        if not m["topic"].endswith("/up"):
            continue  # the board's first status
        out.append(dict(decode(bytes.fromhex(m["payload"]))["readings"][0], t=m["t"]))
    return out


def test_a_recorded_night_gives_the_energy_the_lamp_drew_and_the_astronomical_baseline(tmp_path):
    cut_at, cut_s = 11 * 3600, 20 * 60  # 02:00 UTC, dimmed (03:00 local is in the 23:00-05:00 step)
    fault_at = int(13.5 * 3600)  # 04:30 UTC: full power again, half the LED modules die
    night = LampNights("esp32-devkitc", lat=LYON[0], lon=LYON[1], start=START.timestamp(), hours=17.5,
                       flash=tmp_path / "flash", rated_w=40.0, sample_s=600).run(
        events={cut_at: ("cut", cut_s), fault_at: ("fault", "dead_module")})
    rs = readings(night.capture)
    # The counters never go back, across the power cut too; the cut loses at most a minute of burning.
    assert all(b["energy"] >= a["energy"] and b["burning_hours"] >= a["burning_hours"] for a, b in zip(rs, rs[1:], strict=False))
    before = max((r for r in rs if r["t"] <= START.timestamp() + cut_at), key=lambda r: r["t"])
    after = min((r for r in rs if r["t"] > START.timestamp() + cut_at + cut_s), key=lambda r: r["t"])
    lit_between = (after["t"] - before["t"] - cut_s) / 3600
    assert lit_between - 60 / 3600 - 0.011 <= after["burning_hours"] - before["burning_hours"] <= lit_between + 0.011
    # The dead module: the readings say lamp_fault from the first one after it, not before.
    faulted = [r["t"] - START.timestamp() for r in rs if r["lamp_fault"]]
    assert faulted and fault_at < faulted[0] <= fault_at + 600 and all(f > fault_at for f in faulted)

    source = CaptureSource(tmp_path / "night.jsonl", "\n".join(night.capture))
    rep = report(source.series(), Options(positions={"light-1": LYON}, rated_w={"light-1": 40.0}))
    lamp = rep["lamps"][0]
    # energy: the simulated lamp's, within 2 % (it drew nothing outside the readings' window)
    assert night.true_wh > 300
    assert lamp["energy_kwh"] * 1000 == pytest.approx(night.true_wh, rel=0.02)
    # baseline: 40 W from civil dusk to civil dawn, as astral computes them, within 1 %
    expected_night = astral_night_h(START.date(), *LYON)
    assert lamp["night_h"] == pytest.approx(expected_night, rel=0.01)
    assert lamp["baseline_kwh"] * 1000 == pytest.approx(40.0 * expected_night, rel=0.01)
    # burning hours: the hours the simulated lamp gave light; dark by night: the cut
    assert lamp["burning_h"] == pytest.approx(night.lit_s / 3600, abs=0.02)
    assert lamp["dark_by_night_h"] == pytest.approx(cut_s / 3600, abs=0.05) and lamp["lit_by_day_h"] == 0
    # the savings follow from those, at the default tariff and carbon intensity
    saved = lamp["baseline_kwh"] - lamp["energy_kwh"]
    assert lamp["savings_kwh"] == pytest.approx(saved, abs=0.002) and saved > 0.1
    assert lamp["savings_eur"] == pytest.approx(saved * 0.2016, abs=0.01)
    assert rep["sites"][0]["energy_kwh"] == lamp["energy_kwh"] and lamp["fault_readings"] == len(faulted)
    # the dead module's "savings" are called out, not claimed
    assert rep["notes"] == [f"light-1: lamp_fault in {len(faulted)} reading(s) from "
                            f"{dt.datetime.fromtimestamp(START.timestamp() + faulted[0], dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
                            " (a dead LED module saves energy it should not: see its status)"]


def test_without_a_current_sense_the_estimate_follows_the_lamp_through_its_dimming_step(tmp_path):
    # The same street light with a driver the board cannot measure: rated power x the dimming curve.
    data = json.loads(boards.load("esp32-devkitc").path.read_text())
    data["actuators"][0] = {k: v for k, v in data["actuators"][0].items() if k not in ("current_adc", "lamp_v")}
    board_file = tmp_path / "esp32-devkitc.json"
    board_file.write_text(json.dumps(data))
    night = LampNights(str(board_file), lat=LYON[0], lon=LYON[1], start=START.timestamp(), hours=8.5,
                       flash=tmp_path / "flash", rated_w=40.0, sample_s=600).run()
    rs = readings(night.capture)
    assert {r["lamp"] for r in rs} == {0, 50, 100}  # off, on at dusk, the 23:00 local step
    rep = report(CaptureSource(tmp_path / "c.jsonl", "\n".join(night.capture)).series(),
                 Options(positions={"light-1": LYON}, rated_w={"light-1": 40.0}))
    assert rep["lamps"][0]["energy_kwh"] * 1000 == pytest.approx(night.true_wh, rel=0.02)
    assert rep["lamps"][0]["burning_h"] == pytest.approx(night.lit_s / 3600, abs=0.02)
