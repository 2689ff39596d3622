"""`lanterne bench [NAME ...] [--json] [--quick]`: run registered benchmarks."""

from __future__ import annotations

import json
import sys

from host_tools import bench
from host_tools.cli import CommandError


def configure(p):
    p.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object {name: {metric: value}}")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a fast look")
    p.add_argument("--list", action="store_true", help="list the benchmarks")


def _print_table(title, columns, rows, out):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(str(c))
    for r in rows:
        table.add_row(*[_fmt(v) for v in r])
    Console(file=out, width=120).print(table)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def run(args):
    avail = bench.available()
    if args.list:
        for name, (_, desc) in avail.items():
            print(f"{name:10s} {desc}")
        return 0
    names = args.names or list(avail)
    unknown = [n for n in names if n not in avail]
    if unknown:
        raise CommandError(f"unknown benchmark {', '.join(unknown)}", hint=f"choose from {', '.join(avail)}")
    results = {}
    for name in names:
        res = bench.run(name, quick=args.quick)
        results[name] = res.metrics
        if not args.json:
            for title, columns, rows in res.tables:
                _print_table(f"{name}: {title}", columns, rows, sys.stdout)
            _print_table(f"{name}: metrics", ["metric", "value"], [[k, v] for k, v in res.metrics.items()], sys.stdout)
            for note in res.notes:
                print(f"  note: {note}")
    if args.json:
        print(json.dumps(results))
    return 0
