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
    from host_tools.fleet.config import board_transport, transport_gap

    rows = [("board", "network", "power", "board heap", "parts")]
    notes = []
    for name in boards.names():
        b = boards.load(name)
        parts = ", ".join(p["type"] for p in b.data["sensors"] + b.data["actuators"])
        power = b.data.get("power", {})
        supply = power.get("supply", "mains")
        if supply == "battery":
            supply = f"battery {power['battery']['capacity_mah'] / 1000:g} Ah"
        rows.append((name, b.data["network"]["kind"], supply, f"{b.heap_bytes // 1024} KiB", parts))
        gap = transport_gap(board_transport(b))
        if gap:
            notes.append(f"note: {name}: {gap}")
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4])
    print(
        "\nboard heap: the MicroPython heap the board has (a WROVER board's is in its PSRAM). Without PSRAM the firmware"
        f" needs {boards.FIRMWARE_HEAP_BYTES // 1024} KiB of it, its library running in place from the ROMFS partition as"
        " `lanterne provision` writes it; the rest is headroom."
    )
    for n in notes:
        print(n)
    return 0
