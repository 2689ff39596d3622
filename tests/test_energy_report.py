"""The savings report's rules on inputs made for them, its readers' bad input, and `lanterne energy` as typed.

Readings are encoded with the firmware's encoder (so the frames are what a board sends) and fed
to the report as a capture or as monitor snapshots; the nights come from the firmware's sun
module and are checked here against astral.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from astral import Observer
from astral.sun import dawn, dusk, sunrise, sunset
from conftest import lanterne
from PIL import Image

from host_tools.backoffice import energy_chart
from host_tools.backoffice.energy import Options, ReportError, report
from host_tools.backoffice.energy_sources import CaptureSource, SnapshotSource, SourceError, open_source
from host_tools.backoffice.monitor import FleetView, capture_line
from host_tools.codec import encode_values

LYON = (45.764, 4.836)
H = 3600.0
JAN15 = dt.datetime(2025, 1, 15, tzinfo=dt.timezone.utc).timestamp()


def night_bounds(day: dt.date, lat=LYON[0], lon=LYON[1], depression=6.0):
    o = Observer(lat, lon)
    if depression == 6.0:
        return dusk(o, day, depression=6).timestamp(), dawn(o, day + dt.timedelta(days=1), depression=6).timestamp()
    return sunset(o, day).timestamp(), sunrise(o, day + dt.timedelta(days=1)).timestamp()


def frame(reading: dict) -> str:
    return encode_values([reading], 242, "cpython")[0]["frame"].hex()


def capture(points, device="lamp-1", site="lyon", status=None) -> str:
    """Capture lines for (t, level, Wh, h) points, one frame each, age 0; an optional status first."""
    lines = []
    if status is not None:
        lines.append(json.dumps({"t": points[0][0], "topic": f"lanterne/v1/{site}/{device}/status",
                                 "payload": json.dumps(status).encode().hex()}))
    for i, (t, level, wh, h) in enumerate(points):
        r = {"lamp": level, "lamp_fault": False, "energy": wh, "burning_hours": h, "seq": 100 + i, "age": 0}
        lines.append(json.dumps({"t": t, "topic": f"lanterne/v1/{site}/{device}/up", "payload": frame(r)}))
    return "\n".join(lines) + "\n"


def lit_night(day: dt.date, watts=40.0, every=600.0, wh0=1000.0, h0=50.0, level=100, by_day=0.0, dark_gap=None):
    """A lamp burning at `watts` from dusk to dawn (and `by_day` hours after dawn), sampled every `every` s."""
    d0, d1 = night_bounds(day)
    t, wh, h = d0 - 2 * H, wh0, h0
    out = []
    end = d1 + (2 + by_day) * H
    while t <= end:
        out.append((t, level if d0 <= t < d1 + by_day * H else 0, round(wh), round(h, 2)))
        t2 = t + every
        on = max(0.0, min(t2, d1 + by_day * H) - max(t, d0))
        if dark_gap and dark_gap[0] < t2 and t < dark_gap[1]:
            on -= max(0.0, min(t2, dark_gap[1]) - max(t, dark_gap[0]))
        wh += watts * on / H
        h += on / H
        t = t2
    return out, d0, d1


def one(text: str, **opts):
    src = CaptureSource("capture.jsonl", text)
    rep = report(src.series(), Options(positions={"lamp-1": LYON}, **opts))
    return rep, rep["lamps"][0], src


def test_a_full_night_at_full_power_saves_nothing_and_a_dimmed_one_saves_its_share():
    pts, d0, d1 = lit_night(dt.date(2025, 1, 15))
    rep, lamp, _ = one(capture(pts), rated_w={"lamp-1": 40.0})
    night_h = (d1 - d0) / H
    assert lamp["night_h"] == pytest.approx(night_h, rel=0.001) and lamp["burning_h"] == pytest.approx(night_h, abs=0.02)
    assert lamp["energy_kwh"] == pytest.approx(lamp["baseline_kwh"], abs=0.002) == pytest.approx(0.04 * night_h, rel=0.01)
    # within the counter's resolution (0.01 h a reading) a full night is neither dark nor lit by day
    assert abs(lamp["savings_kwh"]) <= 0.002 and lamp["lit_by_day_h"] <= 0.02 and lamp["dark_by_night_h"] <= 0.02
    pts, _, _ = lit_night(dt.date(2025, 1, 15), watts=21.2, level=50)
    _, dimmed, _ = one(capture(pts), rated_w={"lamp-1": 40.0}, tariff=0.25, co2=50.0)
    assert dimmed["savings_pct"] == pytest.approx(47.0, abs=0.5)
    assert dimmed["savings_eur"] == pytest.approx(dimmed["savings_kwh"] * 0.25, abs=0.01)
    assert dimmed["savings_co2_kg"] == pytest.approx(dimmed["savings_kwh"] * 0.05, abs=0.001)


def test_sunset_twilight_gives_a_longer_night_than_civil():
    pts, _, _ = lit_night(dt.date(2025, 6, 21))
    _, civil, _ = one(capture(pts), rated_w={"lamp-1": 40.0})
    _, sun, _ = one(capture(pts), rated_w={"lamp-1": 40.0}, twilight="sunset")
    s0, s1 = night_bounds(dt.date(2025, 6, 21), depression=0.833)
    assert sun["night_h"] == pytest.approx((s1 - s0) / H, rel=0.01) and sun["night_h"] > civil["night_h"] + 1


def test_lit_by_day_and_dark_by_night_are_told_apart():
    # burning 3 h past dawn (a photocell stuck dark), and dark for 2 h in the night (a breaker tripped)
    day = dt.date(2025, 1, 15)
    d0, d1 = night_bounds(day)
    pts, _, _ = lit_night(day, by_day=3.0, dark_gap=(d0 + 4 * H, d0 + 6 * H))
    _, lamp, _ = one(capture(pts), rated_w={"lamp-1": 40.0})
    assert lamp["lit_by_day_h"] == pytest.approx(3.0, abs=0.05)
    assert lamp["dark_by_night_h"] == pytest.approx(2.0, abs=0.05)
    assert lamp["burning_h"] == pytest.approx((d1 - d0) / H - 2 + 3, abs=0.05)


def test_a_gap_in_the_readings_keeps_the_energy_and_shares_it_by_the_nights_dark_hours():
    pts, d0, d1 = lit_night(dt.date(2025, 1, 15))
    later, _, _ = lit_night(dt.date(2025, 1, 18), wh0=pts[-1][2] + 3 * 560, h0=pts[-1][3] + 3 * 14.0)
    rep, lamp, _ = one(capture(pts + later), rated_w={"lamp-1": 40.0})  # no reading for three days
    assert lamp["energy_kwh"] * 1000 == pytest.approx(later[-1][2] - pts[0][2], abs=1)
    nights = {n["night"]: n["energy_kwh"] for n in rep["nights"]}
    assert set(nights) >= {"2025-01-15", "2025-01-16", "2025-01-17", "2025-01-18"}
    assert nights["2025-01-16"] == pytest.approx(nights["2025-01-17"], rel=0.05)  # by their dark hours
    assert lamp["longest_gap_h"] > 48


def test_counters_that_restart_are_a_reset_not_negative_energy():
    a, _, _ = lit_night(dt.date(2025, 1, 15))
    b, _, _ = lit_night(dt.date(2025, 1, 16), wh0=0, h0=0)  # the board replaced: counters from 0
    rep, lamp, _ = one(capture(a + b), rated_w={"lamp-1": 40.0})
    assert lamp["resets"] == 1 and any("restarted 1 time" in n for n in rep["notes"])
    assert lamp["energy_kwh"] * 1000 == pytest.approx((a[-1][2] - a[0][2]) + (b[-1][2] - b[0][2]), abs=1)


def test_whole_nights_or_instants_choose_the_period():
    pts, d0, d1 = lit_night(dt.date(2025, 1, 15))
    more, _, _ = lit_night(dt.date(2025, 1, 16), wh0=pts[-1][2] + 1, h0=pts[-1][3])
    text = capture(pts + more)
    rep, lamp, _ = one(text, rated_w={"lamp-1": 40.0}, nights=(dt.date(2025, 1, 16), dt.date(2025, 1, 16)))
    assert [n["night"] for n in rep["nights"]] == ["2025-01-16"]
    assert lamp["energy_kwh"] * 1000 == pytest.approx(more[-1][2] - more[0][2], abs=2)
    _, half, _ = one(text, rated_w={"lamp-1": 40.0}, since=d0, until=d0 + 5 * H)
    assert half["night_h"] == pytest.approx(5.0, abs=0.01) and half["energy_kwh"] == pytest.approx(0.2, abs=0.003)
    with pytest.raises(ReportError, match="--until must be after --since"):
        one(text, since=d0, until=d0)


def test_rated_power_comes_from_the_registry_else_the_status_else_an_hour_at_full_power():
    pts, d0, d1 = lit_night(dt.date(2025, 1, 15), watts=55.0)
    status = {"state": "online", "energy": {"wh": 1, "source": "metered", "rated_w": 60.0}}
    _, reg, _ = one(capture(pts, status=status), rated_w={"lamp-1": 50.0})
    _, st, _ = one(capture(pts, status=status))
    _, est, _ = one(capture(pts))
    assert (reg["rated_w"], reg["rated_source"]) == (50.0, "registry")
    assert (st["rated_w"], st["rated_source"], st["meter"]) == (60.0, "status", "metered")
    assert est["rated_w"] == pytest.approx(55.0, rel=0.02) and est["rated_source"].startswith("estimated")
    pts = [(t, 50 if lvl else 0, wh, h) for t, lvl, wh, h in pts]  # never at 100 %: nothing to estimate from
    rep, none, _ = one(capture(pts))
    assert none["rated_w"] is None and none["baseline_kwh"] == 0 and any("no rated power" in n for n in rep["notes"])


def test_sites_lamps_and_nights_add_up_and_a_site_can_be_chosen():
    a, _, _ = lit_night(dt.date(2025, 1, 15), watts=40.0)
    b, _, _ = lit_night(dt.date(2025, 1, 15), watts=20.0)
    text = capture(a, "lamp-1", "lyon") + capture(b, "lamp-2", "lyon") + capture(b, "lamp-3", "villeurbanne")
    opts = dict(positions={"lamp-1": LYON, "lamp-2": LYON, "lamp-3": LYON}, rated_w={"lamp-1": 40.0, "lamp-2": 40.0,
                                                                                     "lamp-3": 40.0})
    rep = report(CaptureSource("c", text).series(), Options(**opts))
    lyon = next(s for s in rep["sites"] if s["site"] == "lyon")
    assert lyon["lamps"] == 2
    assert lyon["energy_kwh"] == pytest.approx(sum(x["energy_kwh"] for x in rep["lamps"] if x["site"] == "lyon"), abs=0.002)
    assert sum(n["energy_kwh"] for n in rep["nights"] if n["site"] == "lyon") == pytest.approx(lyon["energy_kwh"], abs=0.003)
    only = report(CaptureSource("c", text).series(), Options(site="villeurbanne", **opts))
    assert [x["device"] for x in only["lamps"]] == ["lamp-3"]
    with pytest.raises(ReportError, match="no lamp sent energy counters at site nowhere"):
        report(CaptureSource("c", text).series(), Options(site="nowhere", **opts))
    with pytest.raises(ReportError, match="lamp lamp-2 has no position"):
        report(CaptureSource("c", text).series(), Options(positions={"lamp-1": LYON}))


def test_bad_input_is_named_by_line_and_undecodable_frames_are_noted():
    pts, _, _ = lit_night(dt.date(2025, 1, 15))
    good = capture(pts).splitlines()
    for bad, why in (("not json", "line 2: not JSON"), ('{"topic": "lanterne/v1/a/b/up", "payload": "00"}', "line 2: no time"),
                     ('{"t": 1, "payload": "00"}', 'line 2: no "topic" and no "device"'),
                     ('{"t": "yesterday", "topic": "lanterne/v1/a/b/up"}', "line 2: time 'yesterday' is not ISO 8601"),
                     ('{"t": 1, "topic": "x/y"}', "line 2: topic 'x/y' is not lanterne/v1"),
                     ('{"t": 1, "topic": "lanterne/v1/a/b/up", "payload": "zz"}', 'line 2: "payload" must be the frame in hex')):
        with pytest.raises(SourceError, match=why):
            CaptureSource("capture.jsonl", "\n".join([good[0], bad] + good[1:]))
    noisy = "\n".join([good[0], json.dumps({"t": pts[0][0] + 1, "topic": "lanterne/v1/lyon/lamp-1/up",
                                             "payload": "03ffff00"})] + good[1:] + [good[5]])  # garbage, a duplicate
    src = CaptureSource("capture.jsonl", noisy)
    assert len(src.problems) == 1 and "capture.jsonl line 2: lamp-1: byte" in src.problems[0]
    assert len(src.series()[0].points) == len(pts)  # the duplicate frame counted once


def test_monitor_snapshots_an_hour_apart_give_the_hours_energy():
    view = FleetView()
    pts, d0, _ = lit_night(dt.date(2025, 1, 15))
    docs = []
    lines = []
    for t, level, wh, h in pts[:: 6]:  # the monitor's --json, once an hour
        r = {"lamp": level, "energy": wh, "burning_hours": h, "seq": int(t) % 60000, "age": 30}
        payload = bytes.fromhex(encode_values([r], 242, "cpython")[0]["frame"].hex())
        view.feed("lanterne/v1/lyon/lamp-1/up", payload, t + 30)
        lines.append(capture_line("lanterne/v1/lyon/lamp-1/up", payload, t + 30))
        docs.append(json.dumps(view.snapshot(), indent=1))
    assert view.snapshot()[0]["reading_at"] == pytest.approx(pts[::6][-1][0], abs=0.001)  # receive time - age
    snaps = SnapshotSource("snapshots.json", "\n".join(docs))
    rep = report(snaps.series(), Options(positions={"lamp-1": LYON}, rated_w={"lamp-1": 40.0}))
    assert rep["lamps"][0]["energy_kwh"] * 1000 == pytest.approx(pts[::6][-1][2] - pts[0][2], abs=1)
    assert json.loads(lines[0])["t"] == pytest.approx(pts[0][0] + 30, abs=0.001)  # the capture line: what arrived, when


def test_the_chart_has_a_line_per_night_and_a_png(tmp_path):
    pts, _, _ = lit_night(dt.date(2025, 1, 15), watts=21.2, level=50)
    more, _, _ = lit_night(dt.date(2025, 1, 16), watts=40.0, wh0=pts[-1][2], h0=pts[-1][3])
    rep, _, _ = one(capture(pts + more), rated_w={"lamp-1": 40.0})
    text = energy_chart.terminal(rep, width=40)
    lines = text.splitlines()
    assert lines[1].startswith("2025-01-15") and lines[2].startswith("2025-01-16") and "saved" in lines[-1]
    first, second = lines[1], lines[2]
    assert "|" in first and first.count("█") < second.count("█")  # the dimmed night: a shorter bar, the baseline mark
    out = energy_chart.png(rep, tmp_path / "chart.png")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (900, 420)


def test_lanterne_energy_as_typed(tmp_path):
    pts, _, _ = lit_night(dt.date(2025, 1, 15), watts=21.2, level=50)
    path = tmp_path / "uplinks.jsonl"
    path.write_text(capture(pts))
    r = lanterne("energy", "--input", path, "--lat", LYON[0], "--lon", LYON[1], "--registry", tmp_path / "none",
                 "--chart", tmp_path / "c.png", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["lamps"][0]["rated_source"] == "unknown" and (tmp_path / "c.png").exists()
    r = lanterne("energy", "--input", path, "--lat", LYON[0], "--lon", LYON[1], "--csv", cwd=tmp_path)
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0][:3] == ["site", "device", "rated_w"] and rows[1][1] == "lamp-1" and rows[2][1] == "*"
    r = lanterne("energy", "--input", path, "--lat", LYON[0], "--lon", LYON[1], cwd=tmp_path)
    assert r.returncode == 0 and "2025-01-15" in r.stdout and "baseline" in r.stdout
    for args, err in ((["--input", path], "lamp lamp-1 has no position"),
                      (["--input", tmp_path / "missing.jsonl"], "cannot read"),
                      (["--input", path, "--lat", "45"], "--lat and --lon go together"),
                      (["--input", path, "--lat", "45", "--lon", "5", "--since", "2025-01-15"], "both --since and --until"),
                      (["--input", path, "--lat", "45", "--lon", "5", "--since", "2025-01-15", "--until", "2025-01-16T00:00:00Z"],
                       "two dates"),
                      (["--input", path, "--lat", "45", "--lon", "5", "--tariff", "-1"], "--tariff must be zero or more"),
                      ([], "no bridge database at bridge.sqlite: give --db, or --input FILE")):
        r = lanterne("energy", *args, cwd=tmp_path)
        assert r.returncode == 1 and err in r.stderr, (args, r.stderr)


def test_open_source_tells_snapshots_from_a_capture(tmp_path):
    (tmp_path / "a.json").write_text("[]\n[]")
    (tmp_path / "b.jsonl").write_text("")
    assert isinstance(open_source(tmp_path / "a.json"), SnapshotSource)
    assert isinstance(open_source(tmp_path / "b.jsonl"), CaptureSource)
    with pytest.raises(SourceError, match="snapshot 1: not JSON"):
        SnapshotSource("s.json", "[{")
    assert JAN15 > 0


def test_readings_with_a_lamp_fault_are_noted():
    pts, d0, _ = lit_night(dt.date(2025, 1, 15))
    lines = []
    for i, (t, level, wh, h) in enumerate(pts):
        r = {"lamp": level, "lamp_fault": t >= d0 + 5 * H, "energy": wh, "burning_hours": h, "seq": i, "age": 0}
        lines.append(json.dumps({"t": t, "topic": "lanterne/v1/lyon/lamp-1/up", "payload": frame(r)}))
    rep, lamp, _ = one("\n".join(lines), rated_w={"lamp-1": 40.0})
    assert lamp["fault_readings"] == sum(1 for p in pts if p[0] >= d0 + 5 * H)
    first = dt.datetime.fromtimestamp(min(p[0] for p in pts if p[0] >= d0 + 5 * H), dt.timezone.utc)
    assert any(f"lamp-1: lamp_fault in {lamp['fault_readings']} reading(s) from {first:%Y-%m-%dT%H:%M:%SZ}" in n
               for n in rep["notes"])
