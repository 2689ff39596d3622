"""`lanterne bins`: bins to collect, their predicted time to full, and the collection rounds.

    lanterne bins [--threshold 80] [--within H] [--trucks N] [--capacity BINS] [--depot LAT,LON]
                  [--time-limit S] [--history H] [--json] [--geojson FILE]

Reads the bridge's database (fill readings) and the fleet registry (locations); plans the
rounds with Google OR-Tools (capacitated vehicle routing, great-circle distances: no road
network); compares them with collecting every bin on a fixed round. See docs/bridge.md.
"""

from __future__ import annotations

import json
import os

from host_tools.cli import CommandError


def configure(p):
    p.add_argument("--threshold", type=float, default=80, help="collect bins at or over this fill %% (default 80)")
    p.add_argument("--within", type=float, default=0, help="also bins predicted to reach it within H hours")
    p.add_argument("--trucks", type=int, default=1, help="trucks available (default 1)")
    p.add_argument("--capacity", type=float, help="what one truck empties, in full bins (default: no limit)")
    p.add_argument("--depot", help="LAT,LON where rounds start and end (default: the bins' centroid)")
    p.add_argument("--time-limit", type=float, default=10, help="seconds the solver may search (default 10)")
    p.add_argument("--history", type=float, default=72, help="hours of readings for the fill trend (default 72)")
    p.add_argument("--db", default="bridge.sqlite", help="the bridge's database (file or postgresql://...)")
    p.add_argument("--registry", default="fleet.sqlite", help="fleet registry, for the bins' locations")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--geojson", metavar="FILE", help="write the bins and rounds as GeoJSON")


def _depot(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(v) for v in text.split(","))
    except ValueError:
        raise CommandError(f"--depot {text!r}: LAT,LON, e.g. 45.76,4.83") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise CommandError(f"--depot {text!r}: latitude -90..90, longitude -180..180")
    return lat, lon


def run(args):
    from sqlalchemy.exc import SQLAlchemyError

    from host_tools.backoffice import bins
    from host_tools.backoffice.bridge.database import Database, DatabaseError
    from host_tools.backoffice.bridge.devices import Directory

    depot = _depot(args.depot) if args.depot else None
    if args.trucks < 1 or (args.capacity is not None and args.capacity <= 0) or args.time_limit <= 0:
        raise CommandError("--trucks, --capacity and --time-limit must be positive")
    if not 0 < args.threshold <= 100:
        raise CommandError(f"--threshold {args.threshold}: 1..100 %")
    for what, path in (("bridge database", args.db), ("fleet registry", args.registry)):
        if "://" not in path and not os.path.exists(path):
            raise CommandError(f"no {what} at {path}", hint="pass --db / --registry")
    try:
        db = Database(args.db, migrate=False)
        all_bins = bins.load_bins(db, Directory(args.registry), history_h=args.history)
        result = bins.plan(all_bins, threshold=args.threshold, within_h=args.within, trucks=args.trucks,
                           capacity=args.capacity, depot=depot, time_limit_s=args.time_limit)
    except (DatabaseError, ValueError, RuntimeError) as exc:
        raise CommandError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise CommandError(f"{args.db} is not a bridge database ({str(exc).splitlines()[0]})",
                           hint="run `lanterne bridge --db` on it first") from None
    if args.geojson:
        with open(args.geojson, "w") as f:
            json.dump(bins.geojson(result), f)
    if args.json:
        print(json.dumps(bins.as_json(result)))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"{len(result.to_collect)} of {len(result.bins)} bins to collect (≥ {args.threshold:g} %"
                    f"{f' or within {args.within:g} h' if args.within else ''})")
    for col in ("bin", "fill", "filling", "full in", "round"):
        t.add_column(col, justify="right" if col != "bin" else "left")
    order = {d: f"{r.truck}.{i + 1}" for r in result.rounds for i, d in enumerate(r.stops)}
    for b in sorted(result.to_collect, key=lambda b: -(b.fill or 0)):
        t.add_row(b.device, f"{b.fill} %", "-" if b.rate_per_h is None else f"{b.rate_per_h:+.1f} %/h",
                  "-" if b.hours_to_full is None else f"{b.hours_to_full:.1f} h", order.get(b.device, "-"))
    console.print(t)
    r = Table(title="rounds")
    for col in ("truck", "stops", "km", "load (bins)"):
        r.add_column(col, justify="right")
    for rd in result.rounds:
        r.add_row(str(rd.truck), str(len(rd.stops)), f"{rd.distance_m / 1000:.1f}", f"{rd.load:.1f}")
    console.print(r)
    print(f"planned {result.distance_m / 1000:.1f} km vs {result.fixed_distance_m / 1000:.1f} km for every bin "
          f"on a fixed round ({result.fixed_trucks} truck{'s' if result.fixed_trucks > 1 else ''}): "
          f"{result.saving:.0%} shorter; solver: {result.status} in {result.solve_s:.1f} s")
    print("distances are great-circle between coordinates (no road network): real rounds are longer, both alike")
    if args.geojson:
        print(f"GeoJSON: {args.geojson}")
    return 0
