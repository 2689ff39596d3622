"""Open-data export of the bridge's readings: CSV or Parquet, one file per day, a README beside them.

    export(db, out_dir, since, until=None, fmt="csv", directory=None, precision=3, licence=...)

writes `out_dir/date=YYYY-MM-DD/readings.csv` (or `.parquet`) for every UTC day with readings
in [since, until), in sampling-time order — the partition layout DuckDB, Spark and pyarrow
datasets read as is — and `out_dir/README.md`: what the columns are, their units, which FIWARE
Smart Data Model each column feeds, the licence, and how the file was made. A day's file is
written to a temporary name and renamed, so a reader never sees half a file, and exporting a
day again replaces it. Locations come from the registry at the publication precision (3
decimal places, about 100 m, by default); nothing else about a device is published.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.backoffice.bridge.database import Database
from host_tools.backoffice.bridge.devices import Directory

DEFAULT_LICENCE = "Licence Ouverte / Open Licence 2.0 (etalab-2.0), https://www.etalab.gouv.fr/licence-ouverte-open-licence/"
# (column, unit, description, Smart Data Model attribute it feeds)
COLUMNS = (
    ("device", "", "device id (one board, one street asset)", "name / refDevice"),
    ("site", "", "site the device belongs to", ""),
    ("seq", "", "the device's reading counter: with device, a reading's unique key", ""),
    ("sampled_at", "UTC, ISO 8601", "when the reading was taken (receive time minus its age)",
     "dateObserved / observedAt"),
    ("received_at", "UTC, ISO 8601", "when the back office received it", ""),
    ("age_s", "s", "how long the reading waited on the device before it was sent", ""),
    ("lat", "degrees", "latitude, at the publication precision", "location"),
    ("lon", "degrees", "longitude, at the publication precision", "location"),
    ("temperature", "°C", "air temperature", "WeatherObserved.temperature, WasteContainer.temperature"),
    ("humidity", "% RH", "relative humidity", "WeatherObserved.relativeHumidity (÷ 100)"),
    ("pressure", "hPa", "atmospheric pressure", "WeatherObserved.atmosphericPressure"),
    ("illuminance", "lx", "illuminance", "WeatherObserved.illuminance"),
    ("fill", "%", "waste container fill level", "WasteContainer.fillingLevel (÷ 100)"),
    ("distance", "mm", "raw distance from the fill sensor to the contents", ""),
    ("lamp", "%", "street light output level", "Streetlight.illuminanceLevel (÷ 100), powerState"),
    ("lamp_fault", "true/false", "the lamp draws no current when on", "Streetlight.status (defectiveLamp)"),
    ("voltage", "V", "supply voltage of the device", ""),
    ("pm1", "µg/m³", "particulate matter below 1 µm", "AirQualityObserved.pm1"),
    ("pm2_5", "µg/m³", "particulate matter below 2.5 µm", "AirQualityObserved.pm25"),
    ("pm10", "µg/m³", "particulate matter below 10 µm", "AirQualityObserved.pm10"),
    ("laeq", "dB(A)", "equivalent continuous sound level over the sampling period", "NoiseLevelObserved.LAeq"),
    ("lamax", "dB(A)", "maximum sound level (fast) over the sampling period", "NoiseLevelObserved.LAmax"),
    ("flags", "", "status flags, ';'-separated (docs/payload.md)", "WasteContainer/Streetlight.status (tamper)"),
    ("source", "", "how it arrived: mqtt or lorawan", ""),
)
NAMES = tuple(c[0] for c in COLUMNS)


@dataclass
class ExportResult:
    files: list[Path] = field(default_factory=list)
    rows: int = 0
    days: list[str] = field(default_factory=list)


def _row(r: dict, located: dict) -> dict:
    lat, lon = located.get(r["device"], (None, None))
    out = {k: r.get(k) for k in NAMES}
    out["sampled_at"] = r["sampled_at"].isoformat().replace("+00:00", "Z")
    out["received_at"] = r["received_at"].isoformat().replace("+00:00", "Z")
    out["lat"], out["lon"] = lat, lon
    out["flags"] = ";".join(r.get("flags") or [])
    return out


class _DayWriter:
    def __init__(self, out: Path, day: str, fmt: str):
        self.dir = out / f"date={day}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"readings.{fmt}"
        self.tmp = self.dir / f".readings.{fmt}.tmp"
        self.fmt = fmt
        self.rows = 0
        self._chunk: list[dict] = []
        if fmt == "csv":
            self._file = open(self.tmp, "w", newline="", encoding="utf-8")
            self._csv = csv.DictWriter(self._file, fieldnames=NAMES)
            self._csv.writeheader()
        else:
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(self.tmp, _arrow_schema(), compression="zstd")

    def add(self, row: dict) -> None:
        self.rows += 1
        if self.fmt == "csv":
            self._csv.writerow(row)
            return
        self._chunk.append(row)
        if len(self._chunk) >= 50_000:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._chunk:
            self._writer.write_table(pa.Table.from_pylist(self._chunk, schema=_arrow_schema()))
            self._chunk = []

    def close(self) -> Path:
        if self.fmt == "csv":
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        else:
            self._flush()
            self._writer.close()
        os.replace(self.tmp, self.path)
        return self.path


def _arrow_schema():
    import pyarrow as pa

    types = {"seq": pa.int64(), "age_s": pa.int64(), "fill": pa.int16(), "distance": pa.int32(), "lamp": pa.int16(),
             "lamp_fault": pa.bool_(), "device": pa.string(), "site": pa.string(), "sampled_at": pa.string(),
             "received_at": pa.string(), "flags": pa.string(), "source": pa.string()}
    return pa.schema([(n, types.get(n, pa.float64())) for n in NAMES])


def export(db: Database, out: str | Path, since: dt.datetime, until: dt.datetime | None = None, fmt: str = "csv",
           directory: Directory | None = None, precision: int = 3, licence: str = DEFAULT_LICENCE,
           publisher: str | None = None) -> ExportResult:
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"format {fmt!r}: csv or parquet")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    located = {}
    for dev in directory.all() if directory else ():
        if dev.has_location:
            located[dev.id] = (round(dev.lat, precision), round(dev.lon, precision))
    result = ExportResult()
    writer: _DayWriter | None = None
    for r in db.readings(since=since, until=until):
        day = r["sampled_at"].astimezone(dt.timezone.utc).date().isoformat()
        if writer is None or writer.dir.name != f"date={day}":
            if writer is not None:
                result.files.append(writer.close())
            writer = _DayWriter(out, day, fmt)
            result.days.append(day)
        writer.add(_row(r, located))
        result.rows += 1
    if writer is not None:
        result.files.append(writer.close())
    (out / "README.md").write_text(readme(result, since, until, fmt, precision, licence, publisher))
    return result


def readme(result: ExportResult, since, until, fmt: str, precision: int, licence: str, publisher: str | None) -> str:
    span = f"{since.isoformat()} to {until.isoformat() if until else 'the export time'}"
    lines = [
        "# Street-asset sensor readings (open data)",
        "",
        f"Readings of the city's connected street assets (street lights, waste containers, environmental "
        f"sensors), sampled from {span}: {result.rows} readings in {len(result.files)} daily "
        f"{fmt.upper()} files, `date=YYYY-MM-DD/readings.{fmt}` (days in UTC).",
        "",
        f"- **Licence**: {licence}.",
        f"- **Publisher**: {publisher or 'the city (set with lanterne export --publisher)'}.",
        "- **Personal data**: none. The sensors measure the environment and the assets (temperature, "
        "light, fill level, lamp output); no camera, microphone recording, identifier of a person or of a "
        "person's device is collected.",
        f"- **Locations**: the asset's registered position, rounded to {precision} decimal places.",
        "- **Data models**: the columns feed these FIWARE Smart Data Models (NGSI-LD), served by the "
        "city's bridge: `WasteContainer` (dataModel.WasteManagement), `Streetlight` "
        "(dataModel.Streetlighting), `WeatherObserved` (dataModel.Weather), `AirQualityObserved` and "
        "`NoiseLevelObserved` (dataModel.Environment).",
        "- **Made by**: `lanterne export` (Lanterne, open-source street-asset firmware and back office).",
        "",
        "| column | unit | meaning | Smart Data Model attribute |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{c}` | {u} | {d} | {m} |" for c, u, d, m in COLUMNS]
    lines += ["", "An empty cell: the device has no such sensor, or it had a fault at that moment (see `flags`).",
              "The first age of a batch is exact to 0.8 %, so a reading that waited an hour may be placed up to "
              "about 30 s off; readings sent within two minutes are placed to the second.", ""]
    return "\n".join(lines)
