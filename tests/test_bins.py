"""`lanterne bins` on a generated city of 500 bins: fill trends robust to emptying, rounds planned by
OR-Tools within the time limit, shorter than collecting every bin, every full bin on exactly one round."""

from __future__ import annotations

import datetime as dt
import json
import random
import statistics
import time

import pytest
from conftest import lanterne

from host_tools.backoffice import bins
from host_tools.backoffice.bridge.database import Database
from host_tools.backoffice.bridge.devices import Directory
from host_tools.backoffice.bridge.ingest import Ingestor
from host_tools.fleet.registry import Registry

N_BINS = 500
HOURS = 48
CENTRE = (45.7578, 4.8320)  # Lyon
UTC = dt.timezone.utc


def generate_city(tmp_path, n: int = N_BINS, seed: int = 16):
    """A registry of `n` bins spread over ~6 x 6 km and two days of hourly fill readings in a bridge
    database. Every bin fills at its own rate; about a third were emptied during those two days."""
    rng = random.Random(seed)
    now = time.time()
    registry, db_path = tmp_path / "fleet.sqlite", tmp_path / "bridge.sqlite"
    truth = {}
    with Registry(registry) as reg:
        for i in range(n):
            lat = CENTRE[0] + rng.uniform(-0.027, 0.027)
            lon = CENTRE[1] + rng.uniform(-0.039, 0.039)
            reg.add_or_update(f"bin-{i:03d}", site="lyon", board="olimex-esp32-poe", config={"lat": lat, "lon": lon})
    db = Database(str(db_path))
    ingest = Ingestor(db, Directory(registry))
    for i in range(n):
        rate = rng.uniform(0.25, 1.6)  # % per hour
        level = rng.uniform(0, 30)
        emptied = rng.uniform(6, HOURS - 6) if rng.random() < 0.3 else None
        readings = []
        for h in range(HOURS):
            if emptied is not None and h == int(HOURS - emptied):
                level = rng.uniform(0, 5)
            level = min(100.0, level + rate)
            noisy = min(100, max(0, round(level + rng.gauss(0, 1.5))))
            readings.append({"fill": noisy, "seq": h, "age": (HOURS - 1 - h) * 3600})
        ingest.decoded(f"bin-{i:03d}", readings, now, site="lyon", source="mqtt")
        truth[f"bin-{i:03d}"] = {"rate": rate, "emptied": emptied, "fills": [r["fill"] for r in readings]}
    ingest.flush()
    db.close()
    return registry, db_path, truth


def test_trend_ignores_what_was_before_the_last_emptying():
    t0 = dt.datetime(2026, 11, 1, tzinfo=UTC)
    before = [(t0 + dt.timedelta(hours=h), 20 + 5 * h) for h in range(12)]  # 5 %/h up to 75 %
    after = [(t0 + dt.timedelta(hours=12 + h), 4 + 2 * h) for h in range(10)]  # emptied, then 2 %/h
    after[4] = (after[4][0], 95)  # one spurious echo
    b = bins.trend(bins.Bin("b", 0, 0, None, None), before + after)
    assert b.emptied_at == after[0][0] and b.readings_used == 10
    assert b.rate_per_h == pytest.approx(2.0, abs=0.01)
    assert b.fill == 20 and b.hours_to_full == pytest.approx(40, abs=0.5)  # median of 18, 20, 22; 80 % at 2 %/h
    flat = bins.trend(bins.Bin("c", 0, 0, None, None), [(t0 + dt.timedelta(hours=h), 50) for h in range(5)])
    assert flat.hours_to_full is None  # not filling: no prediction


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return generate_city(tmp_path_factory.mktemp("city"))


def test_rounds_for_a_city_of_500_bins(city, tmp_path):
    registry, db_path, truth = city
    geo = tmp_path / "rounds.geojson"
    limit = 2.0
    res = lanterne("bins", "--db", db_path, "--registry", registry, "--threshold", 80, "--trucks", 4,
                   "--capacity", 30, "--time-limit", limit, "--json", "--geojson", geo, timeout=120)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert plan["bins"] == N_BINS
    # Every bin at or over the threshold (median of its last three readings), and no other.
    expected = {d for d, t in truth.items() if statistics.median(t["fills"][-3:]) >= 80}
    assert {b["device"] for b in plan["threshold_bins"]} == expected and len(expected) > 40
    stops = [d for r in plan["rounds"] for d in r["stops"]]
    assert sorted(stops) == sorted(expected)  # each on exactly one round
    assert all(r["load_bins"] <= 30 for r in plan["rounds"]) and len(plan["rounds"]) <= 4
    assert plan["solve_s"] <= limit + 2.0
    assert plan["status"] in ("solved", "optimal", "best found within the time limit")
    assert plan["distance_m"] < plan["fixed_round_distance_m"]
    # Predicted time to full from the slope since the last emptying.
    for b in plan["threshold_bins"]:
        t = truth[b["device"]]
        assert b["rate_per_h"] == pytest.approx(t["rate"], abs=0.35), b["device"]
    emptied = [b for b in plan["threshold_bins"] if truth[b["device"]]["emptied"] is not None]
    assert all(b["emptied_at"] for b in emptied)
    # GeoJSON any map shows: the depot, 500 bins, one closed line per round.
    doc = json.loads(geo.read_text())
    kinds = [f["properties"]["kind"] for f in doc["features"]]
    assert doc["type"] == "FeatureCollection" and kinds.count("bin") == N_BINS and kinds.count("depot") == 1
    lines = [f for f in doc["features"] if f["properties"]["kind"] == "round"]
    assert len(lines) == len(plan["rounds"])
    assert all(f["geometry"]["coordinates"][0] == f["geometry"]["coordinates"][-1] for f in lines)
    # The table, as a person reads it.
    res = lanterne("bins", "--db", db_path, "--registry", registry, "--time-limit", 4, "--trucks", 4,  # (a loaded machine)
                   "--capacity", 30, timeout=120)
    assert res.returncode == 0 and "shorter" in res.stdout and "no road network" in res.stdout


def test_bad_requests_are_refused_plainly(city):
    registry, db_path, _ = city
    res = lanterne("bins", "--db", db_path, "--registry", registry, "--trucks", 1, "--capacity", 2)
    assert res.returncode == 1 and "raise --trucks or --capacity" in res.stderr
    res = lanterne("bins", "--db", db_path, "--registry", registry, "--depot", "north")
    assert res.returncode == 1 and "--depot 'north'" in res.stderr
    res = lanterne("bins", "--db", "nowhere.sqlite", "--registry", registry)
    assert res.returncode == 1 and "no bridge database at nowhere.sqlite" in res.stderr
