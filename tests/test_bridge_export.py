"""`lanterne export`: the bridge's readings as open data, CSV or Parquet, one file per day, a README beside."""

from __future__ import annotations

import csv
import datetime as dt
import json

import pyarrow.parquet as pq
import pytest
from bridge_helpers import make_registry
from conftest import lanterne

from host_tools.backoffice.bridge.database import Database
from host_tools.backoffice.bridge.devices import Directory
from host_tools.backoffice.bridge.ingest import Ingestor

DAY0 = dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc)


@pytest.fixture
def stored(bridge_db, tmp_path):
    registry = make_registry(tmp_path / "fleet.sqlite")
    db = Database(bridge_db)
    ingest = Ingestor(db, Directory(registry))
    received = (DAY0 + dt.timedelta(days=3)).timestamp()
    # bin-1: a reading every 6 h for three days; lamp-1: every 12 h, flagged tamper once.
    ingest.decoded("bin-1", [{"fill": 10 + i, "temperature": 5.5, "seq": i, "age": int(received - (DAY0 + dt.timedelta(
        hours=6 * i)).timestamp())} for i in range(12)], received, site="lyon", source="lorawan")
    ingest.decoded("lamp-1", [{"lamp": 40, "lamp_fault": False, "illuminance": 2.0, "seq": i, "age": int(
        received - (DAY0 + dt.timedelta(hours=12 * i)).timestamp()), "status": ["tamper"] if i == 1 else []}
        for i in range(6)], received, site="lyon", source="mqtt")
    ingest.flush()
    db.close()
    return bridge_db, registry


def test_csv_and_parquet_by_day(stored, tmp_path):
    url, registry = stored
    out = tmp_path / "csv"
    res = lanterne("export", "--db", url, "--registry", registry, "--since", "2026-11-25", "--until", "2026-11-27",
                   "--format", "csv", "--out", out, "--publisher", "Ville de Lyon", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["days"] == ["2026-11-25", "2026-11-26"] and summary["rows"] == 12  # 4 + 2 per day
    with open(out / "date=2026-11-25" / "readings.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["device"] for r in rows] == ["bin-1", "lamp-1", "bin-1", "bin-1", "lamp-1", "bin-1"]
    assert rows[0]["sampled_at"] == "2026-11-25T00:00:00Z" and rows[0]["fill"] == "14"
    assert (rows[0]["lat"], rows[0]["lon"]) == ("45.762", "4.833")  # 3 decimals by default
    assert rows[0]["lamp"] == "" and rows[1]["lamp"] == "40" and rows[1]["source"] == "mqtt"
    readme = (out / "README.md").read_text()
    for needed in ("Licence Ouverte", "Ville de Lyon", "WasteContainer", "Streetlight", "WeatherObserved",
                   "Personal data", "`fill` | %"):
        assert needed in readme
    pq_out = tmp_path / "pq"
    res = lanterne("export", "--db", url, "--registry", registry, "--since", "2026-11-24", "--format", "parquet",
                   "--out", pq_out, "--precision", "5", "--licence", "CC-BY-4.0")
    assert res.returncode == 0, res.stderr
    days = sorted(p.parent.name for p in pq_out.glob("date=*/readings.parquet"))
    assert days == ["date=2026-11-24", "date=2026-11-25", "date=2026-11-26"]
    table = pq.read_table(pq_out / "date=2026-11-24" / "readings.parquet").to_pylist()
    tampered = [r for r in table if r["flags"]]
    assert len(table) == 6 and [(r["device"], r["seq"], r["flags"]) for r in tampered] == [("lamp-1", 1, "tamper")]
    assert tampered[0]["lat"] == 45.76404 and tampered[0]["sampled_at"] == "2026-11-24T12:00:00Z"
    assert "CC-BY-4.0" in (pq_out / "README.md").read_text()
    assert not list(pq_out.rglob("*.tmp"))


def test_bad_arguments(stored, tmp_path):
    url, registry = stored
    res = lanterne("export", "--db", url, "--since", "last week")
    assert res.returncode == 1 and "--since 'last week'" in res.stderr
    res = lanterne("export", "--db", url, "--since", "2026-11-25", "--until", "2026-11-01")
    assert res.returncode == 1 and "--until must be after --since" in res.stderr
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    res = lanterne("export", "--db", empty, "--since", "2026-11-25")
    assert res.returncode == 1 and "is not a bridge database" in res.stderr
