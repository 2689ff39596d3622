"""`lanterne monitor [--broker URL] [--json] [--duration S] [--capture FILE]`: a live table of the fleet.

Subscribes to every device's status and readings (lanterne/v1/#) and shows, per device:
state, last seen, last decoded reading, store backlog, faults, firmware version. With
--json it prints one JSON document of the fleet after --duration seconds (default 5), for
scripts. With --capture it also appends every message to FILE, one JSON line each (receive
time, topic, payload in hex): the input of `lanterne energy`.
"""

from __future__ import annotations

import json
import os
import time

from host_tools.cli import CommandError


def configure(p):
    p.add_argument("--broker", default=os.environ.get("LANTERNE_BROKER", "mqtt://127.0.0.1:1883"), help="broker URL")
    p.add_argument("--registry", default="fleet.sqlite", help="use the back-office credentials from this registry if present")
    p.add_argument("--json", action="store_true", help="print the fleet as JSON and exit")
    p.add_argument("--duration", type=float, default=None, help="seconds to watch (default: forever, or 5 with --json)")
    p.add_argument("--tls-ca", help="CA file for mqtts://")
    p.add_argument("--capture", metavar="FILE", help="append every message to FILE as a JSON line (for lanterne energy)")


def run(args):
    from host_tools.backoffice.monitor import COLUMNS, FleetView
    from host_tools.backoffice.watcher import Watcher

    user = password = None
    if os.path.exists(args.registry):
        from host_tools.fleet.registry import Registry

        user, password = Registry(args.registry).backoffice_credentials()
    view = FleetView()
    capture = None
    if args.capture:
        from host_tools.backoffice.monitor import capture_line

        try:
            capture = open(args.capture, "a", buffering=1)  # line-buffered: a line per message, whole
        except OSError as exc:
            raise CommandError(f"cannot write the capture {args.capture}: {exc.strerror or exc}") from None

    def on_message(m):
        view.feed(m.topic, m.payload, m.t)
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
    try:
        if args.json:
            time.sleep(duration)
            print(json.dumps(view.snapshot(), indent=1))
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

        end = None if duration is None else time.monotonic() + duration
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
