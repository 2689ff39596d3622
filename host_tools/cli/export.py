"""`lanterne export --since DATE [--until DATE] --format csv|parquet --out DIR`: open data from the bridge.

One file per UTC day (`DIR/date=YYYY-MM-DD/readings.csv|parquet`) and a README.md beside them with
the licence, the columns, their units and the Smart Data Models they feed. See docs/bridge.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os

from host_tools.cli import CommandError


def _when(text: str, name: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"--{name} {text!r}: a date or time, e.g. 2026-11-01 or 2026-11-01T06:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def configure(p):
    p.add_argument("--since", required=True, help="first sampling time exported (date or ISO time, UTC if no zone)")
    p.add_argument("--until", help="exclusive end (default: now)")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv", help="file format (default csv)")
    p.add_argument("--out", default="open-data", help="output folder (default ./open-data)")
    p.add_argument("--db", default="bridge.sqlite", help="the bridge's database (file or postgresql://...)")
    p.add_argument("--registry", default="fleet.sqlite", help="fleet registry, for the locations")
    p.add_argument("--precision", type=int, default=3, help="decimal places of published coordinates (default 3)")
    p.add_argument("--licence", help="licence line for the README (default: Licence Ouverte 2.0)")
    p.add_argument("--publisher", help="publisher named in the README")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args):
    from sqlalchemy.exc import SQLAlchemyError

    from host_tools.backoffice.bridge.database import Database, DatabaseError
    from host_tools.backoffice.bridge.devices import Directory
    from host_tools.backoffice.bridge.export import DEFAULT_LICENCE, export

    since = _when(args.since, "since")
    until = _when(args.until, "until") if args.until else None
    if until and until <= since:
        raise CommandError("--until must be after --since")
    if not 0 <= args.precision <= 7:
        raise CommandError(f"--precision {args.precision}: 0..7 decimal places")
    if "://" not in args.db and not os.path.exists(args.db):
        raise CommandError(f"no bridge database at {args.db}", hint="run `lanterne bridge` first, or pass --db")
    try:
        db = Database(args.db, migrate=False)
        directory = Directory(args.registry) if os.path.exists(args.registry) else None
        res = export(db, args.out, since, until, args.format, directory, args.precision,
                     args.licence or DEFAULT_LICENCE, args.publisher)
    except DatabaseError as exc:
        raise CommandError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise CommandError(f"{args.db} is not a bridge database ({str(exc).splitlines()[0]})",
                           hint="run `lanterne bridge --db` on it first") from None
    out = {"rows": res.rows, "days": res.days, "files": [str(f) for f in res.files],
           "readme": os.path.join(args.out, "README.md")}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"exported {res.rows} readings, {len(res.days)} days, into {args.out} (README.md beside the files)")
        if directory is None:
            print(f"  note: no registry at {args.registry}: lat/lon columns are empty")
    return 0
