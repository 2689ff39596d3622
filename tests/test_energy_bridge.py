"""`lanterne energy` on the bridge's database (SQLite and a real PostgreSQL): the bridge takes a lamp's
energy counters in (not as fields its board lacks), and the report reads them back with the registry's
positions and rated powers, as it reads a capture."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from bridge_helpers import make_registry
from conftest import lanterne
from test_energy_report import capture, lit_night

from host_tools.backoffice.bridge.database import Database
from host_tools.backoffice.bridge.devices import Directory
from host_tools.backoffice.bridge.ingest import Ingestor
from host_tools.backoffice.energy import Options, report
from host_tools.backoffice.energy_sources import BridgeSource, CaptureSource

pytestmark = pytest.mark.integration


def test_the_report_reads_the_bridges_database_as_it_reads_a_capture(bridge_db, tmp_path):
    registry = make_registry(tmp_path / "fleet.sqlite", lamp_rated_w=40.0)
    a, _, _ = lit_night(dt.date(2025, 1, 15), watts=21.2, level=50)
    b, _, _ = lit_night(dt.date(2025, 1, 16), watts=40.0, wh0=a[-1][2], h0=a[-1][3])
    text = capture(a + b, "lamp-1", "lyon", status={"state": "online", "energy": {"source": "metered", "rated_w": 40.0}})
    db = Database(bridge_db)
    ingest = Ingestor(db, Directory(registry))
    for line in text.splitlines():
        m = json.loads(line)
        ingest.mqtt(m["topic"], bytes.fromhex(m["payload"]), m["t"])
    ingest.flush()
    assert db.count("bad_frames") == 0  # the counters are a lamp's fields: nothing refused
    assert db.count("readings") == len(a) + len(b)
    db.close()
    r = lanterne("energy", "--db", bridge_db if "://" in bridge_db else bridge_db, "--registry", registry, "--json",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    lamp = rep["lamps"][0]
    assert (lamp["device"], lamp["rated_w"], lamp["rated_source"], lamp["lat"]) == ("lamp-1", 40.0, "registry", 45.764043)
    from_capture = report(CaptureSource("c", text).series(),
                          Options(positions={"lamp-1": (45.764043, 4.835659)}, rated_w={"lamp-1": 40.0}))
    assert lamp["energy_kwh"] == from_capture["lamps"][0]["energy_kwh"]
    assert lamp["baseline_kwh"] == pytest.approx(from_capture["lamps"][0]["baseline_kwh"], abs=0.002)
    # a night chosen from the database: only that night's readings are read
    url = bridge_db if "://" in bridge_db else f"sqlite:///{bridge_db}"
    src = BridgeSource(url, since=dt.datetime(2025, 1, 16, 12, tzinfo=dt.timezone.utc).timestamp())
    assert min(p.t for p in src.series()[0].points) >= dt.datetime(2025, 1, 15, 12, tzinfo=dt.timezone.utc).timestamp()
    r = lanterne("energy", "--db", tmp_path / "none.sqlite", cwd=tmp_path)
    assert r.returncode == 1 and "no bridge database at" in r.stderr
