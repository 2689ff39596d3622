"""The bridge's database: SQLite in a file by default, PostgreSQL for a city's shared server.

`Database(url)` opens (and migrates) either: a path or `sqlite:///path` is SQLite (WAL
journal, `synchronous=FULL`: a batch the bridge acknowledged to the broker survives a power
cut, write transactions taken with BEGIN IMMEDIATE so two processes queue rather than fail);
`postgresql://user@host:port/db` is PostgreSQL through psycopg 3. `write(batch)` stores one
batch of readings, states, commands, acks and bad frames in one transaction: readings go
in with insert-or-ignore on (device, seq), and the rows that were new come back
(RETURNING), so two bridge instances never write a reading twice and each knows which
readings were its own. The read side serves NGSI-LD, Home Assistant, export and `bins`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import case, create_engine, event, func, select, text
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from host_tools.backoffice.bridge import schema
from host_tools.backoffice.bridge.schema import (
    MIGRATIONS,
    READING_COLUMNS,
    SCHEMA_VERSION,
    acks,
    bad_frames,
    commands,
    device_states,
    readings,
    schema_version,
)
from host_tools.codec.decoder import STATUS_NAMES

UTC = dt.timezone.utc
PG_MIGRATION_LOCK = 0x4C414E54  # pg_advisory_xact_lock key while migrating ("LANT")
WRITE = "lanterne_write"  # execution option: this transaction writes


class DatabaseError(RuntimeError):
    """The database cannot be opened or used: the message names it."""


def engine_url(spec: str) -> str:
    """A user's --db value -> an SQLAlchemy URL: a path or sqlite:///path, or postgresql://..."""
    if "://" not in spec:
        return f"sqlite:///{Path(spec).expanduser().resolve()}"
    try:
        url = make_url(spec)
    except ArgumentError as exc:
        raise DatabaseError(f"--db {spec!r}: not a database URL ({exc})") from None
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if url.drivername == "sqlite":
        return spec
    raise DatabaseError(f"--db {spec!r}: use a file path, sqlite:///PATH or postgresql://USER@HOST:PORT/DB")


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes: the bridge only ever stores UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass
class Batch:
    """What one transaction writes. Built by the ingestor; rows are plain dicts of column values."""

    readings: dict[tuple[str, int], dict] = field(default_factory=dict)
    states: dict[str, dict] = field(default_factory=dict)  # device -> site, highest_seq, seen times
    statuses: dict[str, dict] = field(default_factory=dict)  # device -> site, state, status, status_at
    commands: list[dict] = field(default_factory=list)
    acks: list[dict] = field(default_factory=list)
    bad: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.readings) + len(self.statuses) + len(self.commands) + len(self.acks) + len(self.bad)


@dataclass
class WriteResult:
    new: list[tuple[str, int]]  # (device, seq) of the readings this write added
    duplicates: int  # readings already in the database (written earlier, or by another instance)


class Database:
    def __init__(self, spec: str, *, migrate: bool = True, pool_size: int = 4):
        self.spec = spec
        self.url = engine_url(spec)
        self.dialect = "postgresql" if self.url.startswith("postgresql") else "sqlite"
        try:
            if self.dialect == "sqlite":
                path = Path(make_url(self.url).database or "")
                if str(path) and not path.parent.exists():
                    raise DatabaseError(f"--db {spec}: folder {path.parent} does not exist")
                self.engine = create_engine(self.url, connect_args={"timeout": 60, "check_same_thread": False})
                _sqlite_setup(self.engine)
            else:
                self.engine = create_engine(self.url, pool_size=pool_size, pool_pre_ping=True)
            if migrate:
                self.migrate()
        except DBAPIError as exc:
            raise DatabaseError(f"cannot open the database {self.display}: {exc.orig}") from None
        self._insert = sqlite_dialect.insert if self.dialect == "sqlite" else pg_dialect.insert
        self._lock = threading.Lock()

    @property
    def display(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _writing(self):
        with self.engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
            yield conn

    # -- migrations -------------------------------------------------------------------------
    def version(self) -> int:
        with self.engine.connect() as conn:
            if not self.engine.dialect.has_table(conn, "schema_version"):
                return 0
            return conn.execute(select(func.max(schema_version.c.version))).scalar() or 0

    def migrate(self) -> int:
        """Apply the migrations this database lacks (one transaction, one instance at a time)."""
        from alembic.migration import MigrationContext
        from alembic.operations import Operations

        with self._writing() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MIGRATION_LOCK})
            schema_version.create(conn, checkfirst=True)
            current = conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
            if current > SCHEMA_VERSION:
                raise DatabaseError(
                    f"{self.display}: schema version {current} is newer than this lanterne's ({SCHEMA_VERSION})"
                )
            op = Operations(MigrationContext.configure(conn))
            for version, description, step in MIGRATIONS:
                if version > current:
                    step(op)
                    conn.execute(schema_version.insert().values(
                        version=version, description=description, applied_at=schema.utcnow()))
        return SCHEMA_VERSION

    # -- writing ----------------------------------------------------------------------------
    def write(self, batch: Batch) -> WriteResult:
        """Store `batch` in one transaction; readings already present are left alone."""
        new: list[tuple[str, int]] = []
        rows = [batch.readings[k] for k in sorted(batch.readings)]
        with self._lock, self._writing() as conn:
            if rows:
                new = self._insert_readings(conn, rows)
            per_device: dict[str, int] = {}
            for device, _seq in new:
                per_device[device] = per_device.get(device, 0) + 1
            state_rows = []
            for device in sorted(set(batch.states) | set(batch.statuses)):
                s = batch.states.get(device, {})
                st = batch.statuses.get(device, {})
                seen = [t for t in (s.get("last_seen"), st.get("status_at")) if t is not None]
                first = [t for t in (s.get("first_seen"), st.get("status_at")) if t is not None]
                state_rows.append({
                    "device": device,
                    "site": s.get("site") or st.get("site"),
                    "highest_seq": s.get("highest_seq"),
                    "first_seen": min(first),
                    "last_seen": max(seen),
                    "readings": per_device.get(device, 0),
                    "state": st.get("state"),
                    "status": st.get("status"),
                    "status_at": st.get("status_at"),
                })
            if state_rows:
                conn.execute(self._state_upsert(), state_rows)
            if batch.commands:
                conn.execute(self._insert(commands).on_conflict_do_nothing(index_elements=["device", "counter"]),
                             batch.commands)
            if batch.acks:
                conn.execute(self._insert(acks).on_conflict_do_nothing(index_elements=["device", "counter"]),
                             batch.acks)
            if batch.bad:
                conn.execute(bad_frames.insert(), batch.bad)
        return WriteResult(new, len(rows) - len(new))

    def _insert_readings(self, conn, rows: list[dict]) -> list[tuple[str, int]]:
        """Insert-or-ignore `rows`; return the (device, seq) of those that were new.

        The hot path of the bridge, written against the driver (through the same connection
        and transaction): SQLAlchemy's per-row parameter handling and psycopg's parsing of a
        many-VALUES statement cost more than decoding the frame. SQLite: one prepared INSERT
        OR IGNORE per row, its change count telling new from known. PostgreSQL: COPY into a
        temporary table, then one INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING.
        """
        raw = conn.connection.dbapi_connection
        cols = INSERT_COLUMNS
        if self.dialect == "sqlite":
            # The write lock is held since BEGIN IMMEDIATE: what is not there now is new.
            cur = raw.cursor()
            try:
                spans: dict[str, list[int]] = {}
                for r in rows:
                    span = spans.get(r["device"])
                    if span is None:
                        spans[r["device"]] = [r["seq"], r["seq"]]
                    else:
                        span[0], span[1] = min(span[0], r["seq"]), max(span[1], r["seq"])
                known = set()
                for device, (low, high) in spans.items():
                    cur.execute("SELECT seq FROM readings WHERE device = ? AND seq BETWEEN ? AND ?", (device, low, high))
                    known.update((device, s) for (s,) in cur.fetchall())
                fresh = [r for r in rows if (r["device"], r["seq"]) not in known]
                i_sampled, i_received = cols.index("sampled_at"), cols.index("received_at")
                received: dict = {}  # one receive time per frame: formatted once
                values = []
                for r in fresh:
                    v = [r[c] for c in cols]
                    v[i_sampled] = _sqlite_time(r["sampled_at"])
                    t = r["received_at"]
                    v[i_received] = received.get(t) or received.setdefault(t, _sqlite_time(t))
                    values.append(v)
                cur.executemany(
                    f"INSERT OR IGNORE INTO readings ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", values
                )
            finally:
                cur.close()
            return [(r["device"], r["seq"]) for r in fresh]
        names = ", ".join(cols)
        with raw.cursor() as cur:
            cur.execute(
                "CREATE TEMPORARY TABLE IF NOT EXISTS incoming_readings (LIKE readings) ON COMMIT DELETE ROWS"
            )
            with cur.copy(f"COPY incoming_readings ({names}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(tuple(r[c] for c in cols))
            cur.execute(
                f"INSERT INTO readings ({names}) SELECT {names} FROM incoming_readings"
                " ON CONFLICT (device, seq) DO NOTHING RETURNING device, seq"
            )
            return [tuple(x) for x in cur.fetchall()]

    def _state_upsert(self):
        ins = self._insert(device_states)
        old, new = device_states.c, ins.excluded
        newer_status = (new.status_at.is_not(None)) & (old.status_at.is_(None) | (new.status_at >= old.status_at))
        return ins.on_conflict_do_update(
            index_elements=["device"],
            set_={
                "site": new.site,
                "highest_seq": case(
                    (new.highest_seq.is_(None), old.highest_seq),
                    (old.highest_seq.is_(None) | (new.highest_seq > old.highest_seq), new.highest_seq),
                    else_=old.highest_seq,
                ),
                "first_seen": case((new.first_seen < old.first_seen, new.first_seen), else_=old.first_seen),
                "last_seen": case((new.last_seen > old.last_seen, new.last_seen), else_=old.last_seen),
                "readings": old.readings + new.readings,
                "state": case((newer_status, new.state), else_=old.state),
                "status": case((newer_status, new.status), else_=old.status),
                "status_at": case((newer_status, new.status_at), else_=old.status_at),
            },
        )

    # -- reading ----------------------------------------------------------------------------
    def highest_seqs(self, devices: list[str] | None = None) -> dict[str, int]:
        q = select(device_states.c.device, device_states.c.highest_seq).where(device_states.c.highest_seq.is_not(None))
        if devices is not None:
            q = q.where(device_states.c.device.in_(devices))
        with self.engine.connect() as conn:
            return {d: s for d, s in conn.execute(q)}

    def states(self) -> dict[str, dict]:
        """device -> its device_states row (status parsed)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(device_states)).mappings().all()
        out = {}
        for r in rows:
            d = dict(r)
            for k in ("first_seen", "last_seen", "status_at"):
                d[k] = as_utc(d[k])
            d["status"] = json.loads(d["status"]) if d["status"] else None
            out[d["device"]] = d
        return out

    def latest_readings(self, devices: list[str] | None = None) -> dict[str, dict]:
        """device -> its reading with the highest seq (what the device says now)."""
        q = select(readings).join(
            device_states,
            (readings.c.device == device_states.c.device) & (readings.c.seq == device_states.c.highest_seq),
        )
        if devices is not None:
            q = q.where(readings.c.device.in_(devices))
        with self.engine.connect() as conn:
            return {r["device"]: reading_dict(r) for r in conn.execute(q).mappings()}

    def readings(self, since: dt.datetime | None = None, until: dt.datetime | None = None,
                 device: str | None = None, batch: int = 5000) -> Iterator[dict]:
        """Readings in sampling-time order (then device, seq), streamed in batches."""
        q = select(readings).order_by(readings.c.sampled_at, readings.c.device, readings.c.seq)
        if since is not None:
            q = q.where(readings.c.sampled_at >= since)
        if until is not None:
            q = q.where(readings.c.sampled_at < until)
        if device is not None:
            q = q.where(readings.c.device == device)
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(q).mappings()
            for r in result:
                yield reading_dict(r)

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(schema.TABLES[table])).scalar()

    def rows(self, table: str, order_by: str | None = None) -> list[dict]:
        t = schema.TABLES[table]
        q = select(t)
        if order_by:
            q = q.order_by(*[t.c[c] for c in order_by.split(",")])
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]


INSERT_COLUMNS = tuple(c.name for c in readings.columns)


def _sqlite_time(v: dt.datetime) -> str:
    # SQLAlchemy's SQLite DATETIME storage format (UTC), so its reads parse what this writes.
    if v.tzinfo is not UTC and v.tzinfo is not None and v.utcoffset():
        v = v.astimezone(UTC)
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)


def reading_dict(row) -> dict:
    d = dict(row)
    d["sampled_at"] = as_utc(d["sampled_at"])
    d["received_at"] = as_utc(d["received_at"])
    mask = d.get("status")
    d["flags"] = [] if mask is None else [name for i, name in enumerate(STATUS_NAMES) if mask >> i & 1]
    extra = d.pop("extra", None)
    if extra:
        d.update(json.loads(extra))
    return d


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN below, as IMMEDIATE
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        # Writers take the write lock at BEGIN, so two processes queue on busy_timeout instead of
        # failing on a read-to-write upgrade; readers stay deferred (WAL: they never block).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")


__all__ = ["Batch", "Database", "DatabaseError", "READING_COLUMNS", "WriteResult", "engine_url"]
