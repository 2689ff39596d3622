"""`lanterne boards [--check FILE ...]`: list the supported boards, or validate board files."""

from __future__ import annotations

from host_tools import boards
from host_tools.cli import CommandError


def configure(p):
    p.add_argument("--check", nargs="+", metavar="FILE", help="validate these board files")


def run(args):
    if args.check:
        for path in args.check:
            try:
                b = boards.load_file(path)
            except boards.BoardError as exc:
                raise CommandError(str(exc), hint="see docs/boards.md for the board file format") from None
            print(f"{path}: ok ({b.name})")
        return 0
    for name in boards.names():
        b = boards.load(name)
        net = b.data["network"]["kind"]
        parts = ", ".join(p["type"] for p in b.data["sensors"] + b.data["actuators"])
        print(f"{name:18s} {net:8s} heap {b.heap_bytes // 1024} KiB  {parts}")
    return 0
