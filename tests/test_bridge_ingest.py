"""The bridge's ingest and database, on SQLite and on a real PostgreSQL: sampling times, full
seqs across restarts, de-duplication, late backlog, bad input stored with its reason."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from bridge_helpers import bin_reading, frames, lamp_reading, make_registry
from sqlalchemy import text

from host_tools.backoffice.bridge.database import Database, DatabaseError
from host_tools.backoffice.bridge.devices import Directory
from host_tools.backoffice.bridge.ingest import Ingestor
from host_tools.backoffice.bridge.schema import metadata
from host_tools.backoffice.command_client import cmd
from host_tools.fleet.registry import Registry

T0 = 1_790_000_000.0  # a receive time (Unix s)
UTC = dt.timezone.utc


@pytest.fixture
def registry(tmp_path):
    return make_registry(tmp_path / "fleet.sqlite")


@pytest.fixture
def ingest(bridge_db, registry):
    db = Database(bridge_db)
    yield Ingestor(db, Directory(registry))
    db.close()


def at(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, UTC)


def test_schema_is_the_migrated_database_on_both_engines(bridge_db):
    db = Database(bridge_db)
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    assert db.migrate() == 1 and db.version() == 1  # idempotent
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO schema_version VALUES (99, 'from the future', CURRENT_TIMESTAMP)"))
    db.close()
    with pytest.raises(DatabaseError, match="schema version 99 is newer"):
        Database(bridge_db)


def test_backlog_keeps_its_sampling_times_and_full_seqs(ingest):
    # Three readings sampled 10 minutes apart, sent together 2 s after the last one.
    batch = [lamp_reading(70000, age=1202), lamp_reading(70001, age=602), lamp_reading(70002, age=2)]
    (frame,) = frames(batch)
    ingest.highest["lamp-1"] = 69990  # the device's counter is past 65 535
    ingest.mqtt("lanterne/v1/lyon/lamp-1/up", frame, T0)
    done = ingest.flush()
    assert done.written == 3 and done.duplicates == 0
    rows = ingest.db.rows("readings", order_by="seq")
    assert [r["seq"] for r in rows] == [70000, 70001, 70002]
    # The first age travels within 0.8 % (1202 s -> 1200 s); the others exactly.
    assert [ingest.db.readings().__next__()["sampled_at"]] == [at(T0 - 1200)]
    got = {r["seq"]: r for r in ingest.db.readings()}
    assert got[70001]["sampled_at"] == at(T0 - 602) and got[70002]["sampled_at"] == at(T0 - 2)
    assert all(r["received_at"] == at(T0) for r in got.values())
    assert got[70002]["lamp"] == 80 and got[70002]["temperature"] == 11.5 and got[70002]["site"] == "lyon"
    assert ingest.db.states()["lamp-1"]["highest_seq"] == 70002


def test_seq_reference_survives_a_restart(bridge_db, registry):
    db = Database(bridge_db)
    first = Ingestor(db, Directory(registry))
    first.highest["bin-1"] = 65530
    first.mqtt("lanterne/v1/lyon/bin-1/up", frames([bin_reading(65535)])[0], T0)
    first.flush()
    again = Ingestor(Database(bridge_db), Directory(registry))  # a restarted bridge
    # seq 65 536 travels as 0: only the stored reference says it follows 65 535.
    again.mqtt("lanterne/v1/lyon/bin-1/up", frames([bin_reading(65536 + 3)])[0], T0 + 60)
    again.flush()
    assert [r["seq"] for r in again.db.rows("readings", order_by="seq")] == [65535, 65539]


def test_each_reading_is_written_once(ingest):
    (frame,) = frames([bin_reading(10), bin_reading(11)])
    ingest.mqtt("lanterne/v1/lyon/bin-1/up", frame, T0)
    ingest.mqtt("lanterne/v1/lyon/bin-1/up", frame, T0 + 1)  # the broker delivered it again
    assert ingest.flush().written == 2
    ingest.mqtt("lanterne/v1/lyon/bin-1/up", frame, T0 + 5)  # and again, after the commit
    done = ingest.flush()
    assert (done.written, done.duplicates) == (0, 2)
    assert ingest.db.count("readings") == 2
    assert ingest.db.states()["bin-1"]["readings"] == 2


def test_late_backlog_does_not_become_the_device_state(ingest):
    ingest.mqtt("lanterne/v1/lyon/bin-1/up", frames([bin_reading(50, fill=90)])[0], T0)
    ingest.flush()
    # Readings 40..42 arrive after 50 (sent late from another path): stored, but 50 stays the state.
    done = None
    ingest.mqtt("lanterne/v1/lyon/bin-1/up", frames([bin_reading(s, age=600, fill=10) for s in (40, 41, 42)])[0], T0 + 1)
    done = ingest.flush()
    assert done.written == 3 and "bin-1" not in done.new_readings
    assert ingest.db.latest_readings()["bin-1"]["fill"] == 90
    assert ingest.db.count("readings") == 4


def test_malformed_input_is_stored_with_its_reason_and_never_raises(ingest):
    good = frames([bin_reading(1)])[0]
    lamp_frame = frames([lamp_reading(1)])[0]
    cases = [
        ("lanterne/v1/lyon/bin-1/up", b"\x02" + random.Random(7).randbytes(12), "undecodable"),
        ("lanterne/v1/lyon/bin-1/up", random.Random(8).randbytes(13), "unknown_version"),
        ("lanterne/v1/lyon/bin-1/up", b"\x04" + good[1:], "unknown_version"),
        ("lanterne/v1/lyon/bin-1/up", b"\x01" + good[1:], "unknown_version"),
        ("lanterne/v1/lyon/bin-1/up", b"", "undecodable"),
        ("lanterne/v1/lyon/bin-1/up", good[:-1], "undecodable"),
        ("lanterne/v1/lyon/ghost-7/up", good, "unknown_device"),
        ("lanterne/v1/paris/bin-1/up", good, "wrong_site"),
        ("lanterne/v1/lyon/bin-1/up", lamp_frame, "impersonation"),  # a lamp publishing as the bin
        ("lanterne/v1/lyon/bin-1/status", json.dumps({"state": "online", "device": "lamp-1"}).encode(), "impersonation"),
        ("lanterne/v1/lyon/bin-1/status", b"\xff\xfe not json", "bad_status"),
        ("lanterne/v1/lyon/bin-1/ack", cmd.build_ack(b"k" * 32, "bin-1", 5, cmd.BOLLARD, cmd.OK), "impersonation"),
        ("lanterne/v1/lyon/bin-1/ack", b"\x01\x02", "undecodable"),
        ("lanterne/v2/lyon/bin-1/up", good, "bad_topic"),
        ("lanterne/v1/lyon/bin-1/up/extra", good, "bad_topic"),
    ]
    for topic, payload, _ in cases:
        ingest.mqtt(topic, payload, T0)
    ingest.mqtt("lanterne/v1/lyon/bin-1/up", good, T0)  # and the good frame still goes in
    done = ingest.flush()
    assert done.written == 1 and done.bad == len(cases)
    bad = ingest.db.rows("bad_frames", order_by="id")
    assert [(b["topic"], b["reason_code"]) for b in bad] == [(t, code) for t, _, code in cases]
    assert [b["payload"] for b in bad] == [p for _, p, _ in cases]  # kept byte for byte
    reason = {(b["topic"].rsplit("/", 1)[-1], b["reason_code"], i): b["reason"] for i, b in enumerate(bad)}
    text_of = {(k[0], k[1]): v for k, v in reason.items()}
    assert "lamp, lamp_fault" in text_of[("up", "impersonation")] and "olimex-esp32-poe" in text_of[("up", "impersonation")]
    assert "says it is device 'lamp-1'" in text_of[("status", "impersonation")]
    assert "does not verify" in text_of[("ack", "impersonation")]
    assert "registered at site 'lyon'" in text_of[("up", "wrong_site")]
    assert "version 4" in bad[2]["reason"] and "version 1" in bad[3]["reason"], [b["reason"] for b in bad[:4]]
    assert ingest.counts["impersonation"] == 3 and ingest.counts["unknown_device"] == 1


def test_status_acks_and_commands(ingest, registry):
    key = Registry(registry).command_key("lamp-1")
    online = {"state": "online", "device": "lamp-1", "lamp": 30, "faults": []}
    ingest.mqtt("lanterne/v1/lyon/lamp-1/status", json.dumps(dict(online, lamp=10)).encode(), T0 - 100, retained=True)
    ingest.mqtt("lanterne/v1/lyon/lamp-1/status", json.dumps(online).encode(), T0)
    frame = cmd.build(key, "lamp-1", 123, cmd.SET_LAMP, {"level": 30, "ramp_s": 0, "duration_min": 0})
    ingest.mqtt("lanterne/v1/lyon/lamp-1/cmd", frame, T0)
    ingest.mqtt("lanterne/v1/lyon/lamp-1/cmd", frame, T0 + 1)  # redelivered: one row
    ingest.mqtt("lanterne/v1/lyon/lamp-1/ack", cmd.build_ack(key, "lamp-1", 123, cmd.SET_LAMP, cmd.OK, b"\x1e"), T0 + 1)
    ingest.flush()
    st = ingest.db.states()["lamp-1"]
    assert st["state"] == "online" and st["status"]["lamp"] == 30 and st["last_seen"] == at(T0)
    (c,) = ingest.db.rows("commands")
    assert (c["counter"], c["command"], c["source"], json.loads(c["args"])["level"]) == (123, "set_lamp", "broker", 30)
    (a,) = ingest.db.rows("acks")
    assert (a["counter"], a["reason"], a["data"]) == (123, "ok", b"\x1e")
    # An older status arriving late does not overwrite the newer one.
    ingest.mqtt("lanterne/v1/lyon/lamp-1/status", json.dumps(dict(online, state="offline")).encode(), T0 - 50)
    ingest.flush()
    assert ingest.db.states()["lamp-1"]["state"] == "online"


def test_a_failed_write_keeps_the_batch(ingest):
    ingest.mqtt("lanterne/v1/lyon/bin-1/up", frames([bin_reading(7)])[0], T0)
    with ingest.db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE readings RENAME TO readings_away"))
    with pytest.raises(Exception):  # noqa: B017 - the driver's own error, whichever engine
        ingest.flush()
    assert ingest.pending() == 1
    with ingest.db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE readings_away RENAME TO readings"))
    assert ingest.flush().written == 1


def test_lorawan_payloads_enter_through_the_same_ingest(ingest):
    (payload,) = frames([bin_reading(300, age=30), bin_reading(301, age=0)], lorawan=True)
    ingest.uplink("bin-2", payload, T0, fport=102, source="lorawan")
    ingest.uplink("bin-2", payload, T0, fport=101, source="lorawan")
    ingest.uplink("bin-2", payload, T0, fport=7, source="lorawan")
    done = ingest.flush()
    assert done.written == 2 and done.bad == 2
    rows = ingest.db.rows("readings", order_by="seq")
    assert [(r["seq"], r["source"], r["sampled_at"]) for r in rows][0][:2] == (300, "lorawan")
    assert [b["reason_code"] for b in ingest.db.rows("bad_frames", order_by="id")] == ["unknown_version", "undecodable"]
