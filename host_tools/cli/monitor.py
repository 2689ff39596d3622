"""`lanterne monitor [--broker URL] [--json] [--duration S] [--every S] [--capture FILE]`: the fleet, live.

Subscribes to every device's status and readings (lanterne/v1/#) and shows, per device:
state, last seen, last decoded reading, when the next reading and the next status are due
(from the periods in its status, else the registry's config, else the firmware's defaults:
60 s and 300 s), store backlog, faults, firmware version. On a terminal the table is redrawn
in place; piped or redirected, it is printed as plain text with every cell whole, when the
watch ends (and every --every seconds meanwhile). With --json it prints one JSON document of
the fleet after --duration seconds (default 5), for scripts.
With --capture it also appends every message to FILE, one JSON line each (receive time, topic,
payload in hex): the input of `lanterne energy`.
"""

from __future__ import annotations

import json
import os
import sys
import time

from host_tools.cli import CommandError


def configure(p):
    p.add_argument("--broker", default=os.environ.get("LANTERNE_BROKER", "mqtt://127.0.0.1:1883"), help="broker URL")
    p.add_argument("--registry", default="fleet.sqlite",
                   help="back-office credentials and each device's configured periods from this registry, if present")
    p.add_argument("--json", action="store_true", help="print the fleet as JSON and exit")
    p.add_argument("--duration", type=float, default=None, help="seconds to watch (default: until Ctrl-C, or 5 with --json)")
    p.add_argument("--every", type=float, default=0, metavar="S",
                   help="piped or redirected: also print the table every S seconds (default: once, when the watch ends)")
    p.add_argument("--tls-ca", help="CA file for mqtts://")
    p.add_argument("--capture", metavar="FILE", help="append every message to FILE as a JSON line (for lanterne energy)")


def run(args):
    from host_tools.backoffice.monitor import COLUMNS, FleetView, plain_table
    from host_tools.backoffice.watcher import Watcher

    user = password = None
    configs = {}
    if os.path.exists(args.registry):
        from host_tools.fleet.registry import Registry

        reg = Registry(args.registry)
        user, password = reg.backoffice_credentials()
        configs = {d.id: d.config for d in reg.devices()}
        reg.close()
    view = FleetView(configs)
    capture = None
    if args.capture:
        from host_tools.backoffice.monitor import capture_line

        try:
            capture = open(args.capture, "a", buffering=1)  # line-buffered: a line per message, whole
        except OSError as exc:
            raise CommandError(f"cannot write the capture {args.capture}: {exc.strerror or exc}") from None

    def on_message(m):
        view.feed(m.topic, m.payload, m.t, m.retain)
        if capture is not None:
            capture.write(capture_line(m.topic, m.payload, m.t) + "\n")

    try:
        w = Watcher(args.broker, ["lanterne/v1/#"], username=user, password=password, tls_ca=args.tls_ca,
                    on_message=on_message)
    except (OSError, TimeoutError) as exc:
        if capture is not None:
            capture.close()
        raise CommandError(f"cannot reach the broker {args.broker}: {exc}", hint="check --broker") from None
    duration = args.duration if args.duration is not None else (5.0 if args.json else None)
    end = None if duration is None else time.monotonic() + duration
    try:
        if args.json:
            time.sleep(duration)
            print(json.dumps(view.snapshot(), indent=1))
            return 0
        if not sys.stdout.isatty():
            _plain(view, end, args.every, plain_table)
            return 0
        from rich.console import Console
        from rich.live import Live
        from rich.table import Table

        def render():
            t = Table(title=f"Lanterne fleet on {args.broker}")
            for c in COLUMNS:
                t.add_column(c)
            for row in view.rows():
                t.add_row(*row)
            return t

        with Live(render(), console=Console(), refresh_per_second=2) as live:
            while end is None or time.monotonic() < end:
                time.sleep(0.5)
                live.update(render())
    except KeyboardInterrupt:
        pass
    finally:
        w.close()
        if capture is not None:
            capture.close()
    return 0


def _plain(view, end, every, plain_table):
    """Piped or redirected: whole cells, no colours, no redrawing; printed at the end (Ctrl-C too)."""
    def show():
        print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}")
        print(plain_table(view.rows()), flush=True)

    next_print = time.monotonic() + every if every > 0 else None
    try:
        while end is None or time.monotonic() < end:
            time.sleep(0.2)
            if next_print is not None and time.monotonic() >= next_print:
                show()
                next_print += every
    finally:
        show()
