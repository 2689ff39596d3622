"""`lanterne energy [--db DB | --input FILE] [--site S] [--since D --until D] [--tariff EUR/kWh] [--co2 g/kWh] [--json|--csv] [--chart FILE.png]`.

The savings report of the street lights (host_tools/backoffice/energy.py, docs/energy.md): per
lamp and per site, the energy used, the baseline the same lamps would have used at 100 % from dusk
to dawn, the savings in kWh, euros and kg CO2, burning hours against the night's hours; then each
night's kWh against the baseline, in the terminal (and as a PNG with --chart). It reads the bridge's
database (`--db`, default ./bridge.sqlite), or a capture of uplinks (`lanterne monitor --capture
FILE`) or `lanterne monitor --json` snapshots (`--input`); positions and rated powers come from the
fleet registry when there is one.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import sys

from host_tools.cli import CommandError


def configure(p):
    src = p.add_mutually_exclusive_group()
    src.add_argument("--db", help="the bridge's database: a file or postgresql://... (default ./bridge.sqlite)")
    src.add_argument("--input", metavar="FILE",
                     help="instead: a capture of uplinks (lanterne monitor --capture) or lanterne monitor --json snapshots")
    p.add_argument("--registry", default="fleet.sqlite", help="positions and rated powers of the lamps, if present")
    p.add_argument("--site", help="only this site")
    p.add_argument("--since", help="first night (YYYY-MM-DD) or instant (ISO 8601, UTC without an offset)")
    p.add_argument("--until", help="last night, inclusive (YYYY-MM-DD) or instant, exclusive (ISO 8601)")
    p.add_argument("--tariff", type=float, default=None, metavar="EUR_PER_KWH",
                   help="price of a kWh (default 0.2016: regulated tarif bleu, option base, 1 Feb 2025)")
    p.add_argument("--co2", type=float, default=None, metavar="G_PER_KWH",
                   help="grid carbon intensity (default 32: French production 2023, RTE)")
    p.add_argument("--twilight", choices=["civil", "sunset"], default="civil",
                   help="dusk and dawn of the baseline: civil twilight (-6 deg, the lamp profile's) or sunset/sunrise")
    p.add_argument("--lat", type=float, help="latitude of lamps the registry has no position for")
    p.add_argument("--lon", type=float, help="longitude of lamps the registry has no position for")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the report as one JSON object")
    out.add_argument("--csv", action="store_true", help="print one CSV row per lamp, then per site")
    p.add_argument("--chart", metavar="FILE.png", help="also draw each night's kWh against the baseline as a PNG")


def _instant(value: str, flag: str) -> float:
    from host_tools.backoffice.energy_sources import SourceError, parse_time

    try:
        return parse_time(value, flag)
    except SourceError as exc:
        raise CommandError(str(exc), hint="e.g. --since 2025-01-01 --until 2025-01-31, or 2025-01-14T17:00:00Z") from None


def _window(args):
    def date(v):
        try:
            return dt.date.fromisoformat(v) if v and len(v) == 10 else None
        except ValueError:
            raise CommandError(f"{v!r} is not a date (YYYY-MM-DD)") from None

    d0, d1 = date(args.since), date(args.until)
    if (args.since and args.until) and (d0 is None) != (d1 is None):
        raise CommandError("--since and --until: give two dates (whole nights) or two instants, not one of each")
    if d0 or d1:
        if not (d0 and d1):
            raise CommandError("whole nights need both --since and --until (YYYY-MM-DD)")
        return None, None, (d0, d1)
    return (_instant(args.since, "--since") if args.since else None,
            _instant(args.until, "--until") if args.until else None, None)


def _registry(path):
    positions, rated = {}, {}
    if not os.path.exists(path):
        return positions, rated
    from host_tools.fleet.registry import Registry

    with Registry(path) as reg:
        for d in reg.devices():
            c = d.config or {}
            if c.get("lat") or c.get("lon"):
                positions[d.id] = (float(c.get("lat", 0.0)), float(c.get("lon", 0.0)))
            if c.get("lamp_rated_w"):
                rated[d.id] = float(c["lamp_rated_w"])
    return positions, rated


def run(args):
    from host_tools.backoffice import energy, energy_chart
    from host_tools.backoffice.energy_sources import SourceError, open_source

    spec = args.input
    if spec is None:
        spec = args.db or "bridge.sqlite"
        if "://" not in spec and not os.path.exists(spec):
            raise CommandError(f"no bridge database at {spec}: give --db, or --input FILE (a capture of uplinks)",
                               hint="lanterne monitor --capture uplinks.jsonl --duration 86400, then --input uplinks.jsonl")
        if "://" not in spec:
            spec = f"sqlite:///{os.path.abspath(spec)}"
    if (args.lat is None) != (args.lon is None):
        raise CommandError("--lat and --lon go together")
    if args.lat is not None and not (-90 <= args.lat <= 90 and -180 <= args.lon <= 180):
        raise CommandError(f"--lat {args.lat} --lon {args.lon}: outside -90..90, -180..180")
    for flag, value in (("--tariff", args.tariff), ("--co2", args.co2)):
        if value is not None and not value >= 0:
            raise CommandError(f"{flag} must be zero or more, got {value}")
    since, until, nights = _window(args)
    if nights is not None:  # whole nights: read from noon the day before to noon the day after
        first = dt.datetime.combine(nights[0], dt.time(), dt.timezone.utc).timestamp() - 43200
        last = dt.datetime.combine(nights[1], dt.time(), dt.timezone.utc).timestamp() + 3 * 43200
        window = (first, last)
    else:
        window = (since, until)
    try:
        source = open_source(spec, *window, args.site) if args.input is None else open_source(spec)
        series = source.series()
    except SourceError as exc:
        raise CommandError(str(exc)) from None
    positions, rated = _registry(args.registry)
    opts = energy.Options(
        since=since, until=until, nights=nights, site=args.site,
        tariff=energy.TARIFF_EUR_KWH if args.tariff is None else args.tariff,
        co2=energy.CO2_G_KWH if args.co2 is None else args.co2,
        twilight=args.twilight, positions=positions, rated_w=rated,
        default_position=(args.lat, args.lon) if args.lat is not None else None,
    )
    try:
        rep = energy.report(series, opts)
    except energy.ReportError as exc:
        raise CommandError(str(exc)) from None
    rep["notes"] += source.problems
    if args.chart:
        energy_chart.png(rep, args.chart, args.site)
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    if args.csv:
        w = csv.writer(sys.stdout)
        w.writerow(energy.CSV_COLUMNS)
        w.writerows(energy.csv_rows(rep))
        return 0
    _print(rep, energy_chart, args)
    return 0


def _cells(r: dict) -> list[str]:
    pct = "" if r["savings_pct"] is None else f" ({r['savings_pct']:g} %)"
    return [f"{r['energy_kwh']:g}", f"{r['baseline_kwh']:g}", f"{r['savings_kwh']:g}{pct}", f"{r['savings_eur']:g}",
            f"{r['savings_co2_kg']:g}", f"{r['burning_h']:g} / {r['night_h']:g}", f"{r['lit_by_day_h']:g}",
            f"{r['dark_by_night_h']:g}"]


HEADS = ["used kWh", "baseline kWh", "saved kWh", "saved EUR", "saved kg CO2", "burning / night h",
         "lit by day h", "dark by night h"]


def _print(rep, energy_chart, args):
    """Tables per site and per lamp (rich on a terminal; plain, every cell whole, piped), the notes,
    then the nights' chart."""
    from host_tools.backoffice.monitor import plain_table

    p = rep["period"]
    print(f"Lighting energy from {p['since']} to {p['until']} (dusk/dawn: {p['twilight']} twilight; "
          f"{rep['tariff_eur_kwh']:g} EUR/kWh; {rep['co2_g_kwh']:g} g CO2/kWh)")
    tables = []
    for title, rows, key in (("Sites", rep["sites"], "site"), ("Lamps", rep["lamps"], "device")):
        columns = [key, "lamps" if key == "site" else "rated W", *HEADS]
        body = [[str(r[key]), str(r["lamps"]) if key == "site" else (f"{r['rated_w']:g}" if r["rated_w"] else "-"),
                 *_cells(r)] for r in rows]
        tables.append((title, columns, body))
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        con = Console()
        for title, columns, body in tables:
            t = Table(title=title)
            for i, c in enumerate(columns):
                t.add_column(c, justify="left" if i == 0 else "right")
            for row in body:
                t.add_row(*row)
            con.print(t)
    else:
        for title, columns, body in tables:
            print(f"\n{title}\n" + plain_table(body, columns))
    print()
    for r in rep["lamps"]:
        if r["rated_source"] not in ("registry", "unknown"):
            print(f"{r['device']}: rated power {r['rated_w']:g} W ({r['rated_source']})")
    for note in rep["notes"]:
        print(f"note: {note}")
    print()
    print(energy_chart.terminal(rep, args.site))
