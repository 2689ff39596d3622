"""`lanterne monitor [--broker URL] [--json] [--duration S] [--every S] [--capture FILE] [--lorawan chirpstack|tts]`: the fleet, live.

Subscribes to every device's status and readings (lanterne/v1/#) and shows, per device:
state, last seen, last decoded reading, when the next reading and the next status are due
(from the periods in its status, else the registry's config, else the firmware's defaults:
60 s and 300 s), store backlog, faults, firmware version. On a terminal the table is redrawn
in place; piped or redirected, it is printed as plain text with every cell whole, when the
watch ends (and every --every seconds meanwhile). With --json it prints one JSON document of
the fleet after --duration seconds (default 5), for scripts.
With --capture it also appends every message to FILE, one JSON line each (receive time, topic,
payload in hex): the input of `lanterne energy`.
With --lorawan it also reads the network server's MQTT integration (ChirpStack or TTS) on the same
broker, passively (it sends no ledger), and shows the registry's LoRaWAN devices in a table of their
own: last uplink, RSSI, SNR, data rate, FCnt, airtime used in the last 24 h, readings, the seqs the
ledger lists as not arrived (missing), the newest reading received (seq, how long ago it was sampled),
and an estimate of the backlog: missing + the readings sampled since the newest one at the registry's
sample period (LoRaWAN does not carry the board's status, so its own backlog count is not known here).
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
    p.add_argument("--lorawan", choices=("chirpstack", "tts"),
                   help="also show the registry's LoRaWAN devices from this network-server integration on --broker")

LORAWAN_COLUMNS = ["device", "last uplink", "RSSI dBm", "SNR dB", "DR", "FCnt", "airtime 24 h (s)", "readings", "missing",
                   "duplicates", "newest reading", "backlog (est.)"]


def _lorawan_rows(svc) -> list[list[str]]:
    from host_tools.backoffice.monitor import span

    rows = []
    for name, st in sorted(svc.stats().items()):
        seen = f"{svc.clock() - st['time']:.0f} s ago" if st.get("time") else "never"
        rows.append([name, seen, *(str(st.get(k, "-")) for k in ("rssi", "snr", "dr", "fcnt")), f"{st['airtime_today_s']:.2f}",
                     str(st["readings"]), str(st["missing"]), str(st["duplicates"]), _newest(st, span), _backlog(st, span)])
    return rows


def _newest(st: dict, span) -> str:
    if st["newest_seq"] is None:
        return "-"
    return f"seq {st['newest_seq']}, sampled {span(st['newest_age_s'])} ago"


def _backlog(st: dict, span) -> str:
    """"~5 (2 missing + ~3 sampled since, every 5m)": an estimate, labelled as one."""
    if st["backlog_est"] is None:
        why = "no reading yet" if st["newest_seq"] is None else "sample period unknown"
        return f"{st['missing']} missing ({why})"
    return (f"~{st['backlog_est']} ({st['missing']} missing + ~{st['sampled_since_est']} sampled since, "
            f"every {span(st['sample_period_s'])})")


def run(args):
    from host_tools.backoffice.monitor import COLUMNS, FleetView, plain_table
    from host_tools.backoffice.watcher import Watcher

    user = password = None
    configs = {}
    lora_devices = []
    if os.path.exists(args.registry):
        from host_tools.fleet.registry import Registry

        reg = Registry(args.registry)
        user, password = reg.backoffice_credentials()
        configs = {d.id: d.config for d in reg.devices()}
        if args.lorawan:
            import dataclasses

            from host_tools.backoffice.lorawan_fleet import uplink_devices

            # the watch starts mid-stream: what came before the first uplink it sees is not "missing"
            lora_devices = [dataclasses.replace(d, first_seq=None) for d in uplink_devices(reg)]
        reg.close()
    svc = None
    if args.lorawan:
        if not lora_devices:
            raise CommandError(f"--lorawan: no LoRaWAN device in the registry {args.registry}")
        from host_tools.backoffice.uplinks import UplinkService

        try:  # passive: its ledger downlinks go nowhere
            svc = UplinkService(lora_devices, integration=args.lorawan, broker_url=args.broker,
                                publish=lambda topic, msg: None).start()
        except (OSError, ConnectionError) as exc:
            raise CommandError(f"cannot reach the broker {args.broker}: {exc}", hint="check --broker") from None
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
            fleet = view.snapshot()
            if svc is not None:
                fleet += [{"device": name, "transport": "lorawan", "lorawan": st} for name, st in sorted(svc.stats().items())]
            print(json.dumps(fleet, indent=1))
            return 0
        if not sys.stdout.isatty():
            _plain(view, end, args.every, plain_table, svc)
            return 0
        from rich.console import Console, Group
        from rich.live import Live
        from rich.table import Table

        def render():
            t = Table(title=f"Lanterne fleet on {args.broker}")
            for c in COLUMNS:
                t.add_column(c)
            for row in view.rows():
                t.add_row(*row)
            if svc is None:
                return t
            lt = Table(title=f"LoRaWAN devices ({args.lorawan} integration)")
            for c in LORAWAN_COLUMNS:
                lt.add_column(c)
            for row in _lorawan_rows(svc):
                lt.add_row(*row)
            return Group(t, lt)

        with Live(render(), console=Console(), refresh_per_second=2) as live:
            while end is None or time.monotonic() < end:
                time.sleep(0.5)
                live.update(render())
    except KeyboardInterrupt:
        pass
    finally:
        w.close()
        if svc is not None:
            svc.stop()
        if capture is not None:
            capture.close()
    return 0


def _plain(view, end, every, plain_table, svc=None):
    """Piped or redirected: whole cells, no colours, no redrawing; printed at the end (Ctrl-C too)."""
    def show():
        print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}")
        print(plain_table(view.rows()), flush=True)
        if svc is not None:
            print(plain_table(_lorawan_rows(svc), LORAWAN_COLUMNS), flush=True)

    next_print = time.monotonic() + every if every > 0 else None
    try:
        while end is None or time.monotonic() < end:
            time.sleep(0.2)
            if next_print is not None and time.monotonic() >= next_print:
                show()
                next_print += every
    finally:
        show()
