"""Where the energy report's readings come from: a small interface, and the readers behind it.

A source gives, for each lamp, the time series of its counters (`LampSeries`: sampling time,
full seq, lamp level, `energy` Wh and `burning_hours` from the readings, docs/payload.md) and
the last status the lamp sent (its `energy` object: rated power, meter source). The report
(`host_tools.backoffice.energy`) asks nothing else, so any store of the back office's data
plugs in by implementing `LampSource.series()`:

- `CaptureSource(path)`: a capture of uplinks, one JSON object per line, as
  `lanterne monitor --capture FILE` writes them: `{"t": <Unix s>, "topic":
  "lanterne/v1/{site}/{device}/up|status", "payload": "<hex>"}`. Also accepted: `"received_at"`
  (ISO 8601, UTC when it has no offset) instead of `"t"`, `"device"` (and `"site"`) instead of a
  topic, `"fport"` for a LoRaWAN payload (no version byte), `"status"` (an object) instead of a
  payload. Frames are decoded, given their full seq and de-duplicated (`SeqTracker`), and placed at
  receive time − age.
- `SnapshotSource(path)`: one or more `lanterne monitor --json` documents (appended, e.g., by a
  job every hour): each gives every device's last reading, at its sampling time (`reading_at`).
  The counters are cumulative, so snapshots an hour apart give the hour's energy.
- `BridgeSource(db)`: the bridge's database (docs/bridge.md), SQLite or PostgreSQL: its
  `readings` (sampling times, full seqs, de-duplicated; the counters in the `extra` column until
  a migration gives them columns) and each device's last status (`device_states`).

`open_source(path)` tells a capture from snapshots by the first character; `open_source` of a
database URL (`sqlite:///bridge.sqlite`, `postgresql://...`) or a `.sqlite`/`.db` file is the
bridge's. A line that is not
JSON, or lacks a time or a device, is an error naming the line; a frame that does not decode is
not: the report lists it (the back office receives garbage now and then) and goes on.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from host_tools.codec.decoder import PayloadError, decode
from host_tools.codec.seq import SeqTracker


class SourceError(ValueError):
    """Input that is not what the source reads: the message names the file and the line."""


@dataclass
class Point:
    """One reading of a lamp's counters."""

    t: float  # sampling time, Unix seconds (UTC)
    seq: int | None
    lamp: int | None  # the level the lamp was asked for, %
    energy_wh: int | None
    burning_h: float | None
    timed: bool = True  # False: the reading had no age, its receive time stands for its sampling time
    fault: bool = False  # the reading's lamp_fault (failed, power_low, power_high ...: the status says which)


@dataclass
class LampSeries:
    device: str
    site: str
    points: list[Point] = field(default_factory=list)  # ascending by time
    status: dict | None = None  # the last status message (its "energy" object has rated_w, source)


class LampSource(Protocol):
    def series(self) -> list[LampSeries]:
        """Every lamp that sent its counters, with its points in time order."""


@dataclass
class _Device:
    site: str
    tracker: SeqTracker = field(default_factory=SeqTracker)
    points: list[Point] = field(default_factory=list)
    status: dict | None = None


def parse_time(value, where: str) -> float:
    """Unix seconds from a number or an ISO 8601 string (UTC without an offset)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise SourceError(f"{where}: time {value!r} is not ISO 8601 (e.g. 2025-01-14T18:30:00Z)") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
        return t.timestamp()
    raise SourceError(f"{where}: no time (\"t\": Unix seconds, or \"received_at\": ISO 8601)")


def _point(reading: dict, received: float) -> Point | None:
    if "energy" not in reading and "burning_hours" not in reading:
        return None  # not a lamp with counters
    age = reading.get("age")
    return Point(
        t=received - (age or 0),
        seq=reading.get("seq"),
        lamp=reading.get("lamp"),
        energy_wh=reading.get("energy"),
        burning_h=reading.get("burning_hours"),
        timed=age is not None,
        fault=bool(reading.get("lamp_fault")),
    )


class CaptureSource:
    """A capture of uplinks (JSON lines). `problems` lists the frames that did not decode."""

    def __init__(self, path: str | Path, text: str | None = None):
        self.path = Path(path)
        self.problems: list[str] = []
        self._devices: dict[str, _Device] = {}
        text = self.path.read_text() if text is None else text
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                self._line(line, f"{self.path.name} line {n}")

    def _line(self, line: str, where: str) -> None:
        try:
            msg = json.loads(line)
        except ValueError as exc:
            raise SourceError(f"{where}: not JSON ({exc})") from None
        if not isinstance(msg, dict):
            raise SourceError(f"{where}: expected a JSON object, got {type(msg).__name__}")
        t = parse_time(msg.get("t", msg.get("received_at")), where)
        topic = msg.get("topic")
        if topic is not None:
            parts = str(topic).split("/")
            if len(parts) != 5 or parts[:2] != ["lanterne", "v1"]:
                raise SourceError(f"{where}: topic {topic!r} is not lanterne/v1/{{site}}/{{device}}/{{up,status,...}}")
            site, device, kind = parts[2:]
        elif isinstance(msg.get("device"), str):
            site, device, kind = str(msg.get("site", "default")), msg["device"], "status" if "status" in msg else "up"
        else:
            raise SourceError(f"{where}: no \"topic\" and no \"device\": whose message is it?")
        dev = self._devices.setdefault(device, _Device(site))
        if kind == "status":
            status = msg.get("status")
            if status is None:
                try:
                    status = json.loads(bytes.fromhex(msg.get("payload", "")))
                except ValueError:
                    self.problems.append(f"{where}: {device}'s status is not a JSON object")
                    return
            if isinstance(status, dict) and status.get("state") != "offline":
                dev.status = status
            return
        if kind != "up":
            return
        try:
            payload = bytes.fromhex(msg.get("payload", ""))
        except (TypeError, ValueError):
            raise SourceError(f"{where}: \"payload\" must be the frame in hex") from None
        try:
            frame = decode(payload, msg.get("fport"))
        except PayloadError as exc:
            self.problems.append(f"{where}: {device}: {exc}")
            return
        for r in dev.tracker.readings(frame):
            p = _point(r, t)
            if p is not None:
                dev.points.append(p)

    def series(self) -> list[LampSeries]:
        out = []
        for device, d in sorted(self._devices.items()):
            if d.points:
                out.append(LampSeries(device, d.site, sorted(d.points, key=lambda p: (p.t, p.seq or 0)), d.status))
        return out


class SnapshotSource:
    """`lanterne monitor --json` documents, one after the other in a file."""

    def __init__(self, path: str | Path, text: str | None = None):
        self.path = Path(path)
        self.problems: list[str] = []
        self._devices: dict[str, _Device] = {}
        text = self.path.read_text() if text is None else text
        decoder = json.JSONDecoder()
        i, n = 0, 0
        while True:
            while i < len(text) and text[i].isspace():
                i += 1
            if i >= len(text):
                break
            n += 1
            try:
                doc, i = decoder.raw_decode(text, i)
            except ValueError as exc:
                raise SourceError(f"{self.path.name}: snapshot {n}: not JSON ({exc})") from None
            if not isinstance(doc, list):
                raise SourceError(f"{self.path.name}: snapshot {n}: expected the list `lanterne monitor --json` prints")
            for k, d in enumerate(doc):
                self._device(d, f"{self.path.name} snapshot {n} device {k}")

    def _device(self, d, where: str) -> None:
        if not isinstance(d, dict) or not isinstance(d.get("device"), str):
            raise SourceError(f"{where}: not a device of `lanterne monitor --json` (no \"device\")")
        dev = self._devices.setdefault(d["device"], _Device(str(d.get("site", "default"))))
        if isinstance(d.get("status"), dict):
            dev.status = d["status"]
        r = d.get("reading")
        if not isinstance(r, dict):
            return
        if "reading_at" in d:
            t = parse_time(d["reading_at"], where)
            p = _point(dict(r, age=0), t)
        else:  # an older monitor: its last message time, less the reading's age
            p = _point(r, parse_time(d.get("last_seen"), where))
        if p is not None and not any(q.seq == p.seq and q.t == p.t for q in dev.points):
            dev.points.append(p)

    def series(self) -> list[LampSeries]:
        return [LampSeries(name, d.site, sorted(d.points, key=lambda p: p.t), d.status)
                for name, d in sorted(self._devices.items()) if d.points]


class BridgeSource:
    """The bridge's database: readings in sampling-time order, the devices' last statuses."""

    def __init__(self, spec: str, since: float | None = None, until: float | None = None, site: str | None = None):
        from host_tools.backoffice.bridge.database import Database, DatabaseError

        self.problems: list[str] = []
        self.spec = spec
        try:
            db = Database(spec, migrate=False)
        except (DatabaseError, OSError, ValueError) as exc:
            raise SourceError(f"the bridge's database {spec}: {exc}") from None
        try:
            self._load(db, since, until, site)
        except Exception as exc:  # the driver's errors: a database that is not the bridge's, a server gone
            raise SourceError(f"the bridge's database {spec}: {exc}") from None
        finally:
            db.close()

    def _load(self, db, since, until, site) -> None:
        import datetime as _dt

        def when(t):
            return None if t is None else _dt.datetime.fromtimestamp(t, _dt.timezone.utc)

        # a day of margin each side: the interval across the window's edge needs its other end
        lo = when(None if since is None else since - 86400)
        hi = when(None if until is None else until + 86400)
        states = db.states()
        self._devices: dict[str, _Device] = {}
        for r in db.readings(lo, hi):
            if site is not None and r.get("site") != site:
                continue
            p = _point(dict(r, age=0), r["sampled_at"].timestamp())
            if p is None:
                continue
            dev = self._devices.get(r["device"])
            if dev is None:
                dev = self._devices[r["device"]] = _Device(r.get("site") or "default")
                dev.status = (states.get(r["device"]) or {}).get("status")
            dev.points.append(p)

    def series(self) -> list[LampSeries]:
        return [LampSeries(name, d.site, sorted(d.points, key=lambda p: (p.t, p.seq or 0)), d.status)
                for name, d in sorted(self._devices.items()) if d.points]


def is_database(spec: str) -> bool:
    return "://" in spec or spec.endswith((".sqlite", ".sqlite3", ".db"))


def open_source(path: str | Path, since: float | None = None, until: float | None = None,
                site: str | None = None) -> CaptureSource | SnapshotSource | BridgeSource:
    """The reader for a file (snapshots: a JSON list; a capture: JSON lines) or the bridge's database."""
    if isinstance(path, str) and is_database(path):
        return BridgeSource(path, since, until, site)
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SourceError(f"cannot read {p}: {exc.strerror or exc}") from None
    if text.lstrip().startswith("["):
        return SnapshotSource(p, text)
    return CaptureSource(p, text)
