"""The bridge's database schema: one set of tables for SQLite and PostgreSQL, and its migrations.

Tables (docs/bridge.md, "Schema", has the DDL for both):
- `readings`: one row per reading, keyed by (device, seq) — the de-duplication key that two
  bridge instances share — with its sampling and receive times, its age and every field of
  the payload format as its own column; fields a later format adds before a migration gives
  them a column go to `extra` (JSON), so nothing decoded is dropped.
- `device_states`: per device, the highest seq written (which orders late backlog behind
  newer readings), first/last seen, the last status message and whether it is online.
- `commands` and `acks`: every command seen on the broker or sent by the bridge (Home
  Assistant), every ack, keyed by (device, counter), with whether their HMAC tag verified.
- `bad_frames`: what could not be stored as data, with a reason code and a readable reason.
- `schema_version`: the migrations applied.

Why SQLAlchemy Core and Alembic operations: the two engines differ in types (timestamptz vs
text, BYTEA vs BLOB), in insert-or-ignore and upsert syntax, and in what ALTER TABLE can do
(SQLite cannot alter a column; Alembic's batch mode rebuilds the table). Core writes each of
these once, per dialect, and leaves the queries readable; Alembic's `Operations` run the
numbered migrations below in the bridge itself at start-up (no separate tool to run, no
alembic.ini), inside one transaction that also takes a lock, so two instances starting at
once migrate once. `tests/test_bridge_db.py` checks that the migrated database is exactly
`metadata` (Alembic's own comparison) on both engines.
"""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
)

SCHEMA_VERSION = 1

# Payload fields with a column of their own: (JSON name from the decoder, column type).
READING_FIELDS = (
    ("temperature", Float),
    ("humidity", Float),
    ("pressure", Float),
    ("illuminance", Float),
    ("fill", SmallInteger),
    ("distance", Integer),
    ("lamp", SmallInteger),
    ("lamp_fault", Boolean),
    ("voltage", Float),
)
READING_COLUMNS = tuple(name for name, _ in READING_FIELDS)
ID = 64  # device and site ids: the firmware's config allows short identifiers


def _time(name: str, nullable: bool = False) -> Column:
    return Column(name, DateTime(timezone=True), nullable=nullable)


def _tables_v1(metadata: MetaData) -> dict[str, Table]:
    """The schema of version 1, which migration 1 builds and which is still the current one. A
    migration that changes the schema leaves this function as it is (migration 1 keeps using
    it) and gives the current tables a function of their own."""
    readings = Table(
        "readings",
        metadata,
        Column("device", String(ID), nullable=False),
        Column("seq", BigInteger, nullable=False),
        _time("sampled_at"),
        _time("received_at"),
        Column("age_s", Integer, nullable=True),
        Column("site", String(ID), nullable=False),
        *(Column(name, kind, nullable=True) for name, kind in READING_FIELDS),
        Column("status", Integer, nullable=True),  # bit mask, docs/payload.md "Status flags"
        Column("extra", Text, nullable=True),  # JSON: decoded fields without a column yet
        Column("source", String(16), nullable=False),  # mqtt, lorawan
        PrimaryKeyConstraint("device", "seq", name="readings_pkey"),
    )
    Index("readings_sampled_at", readings.c.sampled_at)
    device_states = Table(
        "device_states",
        metadata,
        Column("device", String(ID), primary_key=True),
        Column("site", String(ID), nullable=False),
        Column("highest_seq", BigInteger, nullable=True),
        _time("first_seen"),
        _time("last_seen"),
        Column("readings", BigInteger, nullable=False, server_default="0"),
        Column("state", String(16), nullable=True),  # online / offline, from the status topic
        Column("status", Text, nullable=True),  # the last status message (JSON)
        _time("status_at", nullable=True),
    )
    commands = Table(
        "commands",
        metadata,
        Column("device", String(ID), nullable=False),
        Column("counter", BigInteger, nullable=False),
        Column("command", String(32), nullable=False),
        Column("args", Text, nullable=True),  # JSON
        Column("frame", LargeBinary, nullable=False),
        Column("source", String(32), nullable=False),  # broker (seen on the cmd topic), home-assistant
        _time("seen_at"),
        PrimaryKeyConstraint("device", "counter", name="commands_pkey"),
    )
    acks = Table(
        "acks",
        metadata,
        Column("device", String(ID), nullable=False),
        Column("counter", BigInteger, nullable=False),
        Column("command", String(32), nullable=False),
        Column("status", SmallInteger, nullable=False),
        Column("reason", String(32), nullable=False),
        Column("data", LargeBinary, nullable=False),
        _time("received_at"),
        PrimaryKeyConstraint("device", "counter", name="acks_pkey"),
    )
    bad_frames = Table(
        "bad_frames",
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        _time("received_at"),
        Column("topic", String(256), nullable=False),
        Column("kind", String(16), nullable=False),  # up, status, ack, cmd, lorawan
        Column("site", String(ID), nullable=True),
        Column("device", String(ID), nullable=True),
        Column("reason_code", String(32), nullable=False),
        Column("reason", Text, nullable=False),
        Column("payload", LargeBinary, nullable=False),
    )
    Index("bad_frames_received_at", bad_frames.c.received_at)
    schema_version = Table(
        "schema_version",
        metadata,
        Column("version", Integer, primary_key=True, autoincrement=False),
        Column("description", Text, nullable=False),
        _time("applied_at"),
    )
    return {t.name: t for t in (readings, device_states, commands, acks, bad_frames, schema_version)}


metadata = MetaData()
TABLES = _tables_v1(metadata)
readings = TABLES["readings"]
device_states = TABLES["device_states"]
commands = TABLES["commands"]
acks = TABLES["acks"]
bad_frames = TABLES["bad_frames"]
schema_version = TABLES["schema_version"]


# -- migrations ------------------------------------------------------------------------------
def _v1(op) -> None:
    """Readings, device states, commands, acks, bad frames."""
    own = MetaData()
    for table in _tables_v1(own).values():
        if table.name == "schema_version":
            continue
        op.create_table(table.name, *[c._copy() for c in table.columns], *[
            c._copy() for c in table.constraints if isinstance(c, PrimaryKeyConstraint) and c.name
        ])
        for index in table.indexes:
            op.create_index(index.name, table.name, [c.name for c in index.columns])


# (version, description, function(op)) in order; a new migration is appended, never edited.
MIGRATIONS = ((1, "readings, device states, commands, acks, bad frames", _v1),)


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)
