"""`lanterne uplinks --broker URL [--integration chirpstack|tts] [--ledger-per-day N] [--state FILE|off] [--duration S] [--json]`.

The back office's LoRaWAN uplink service (host_tools/backoffice/uplinks.py): readings decoded and
de-duplicated by seq, printed one JSON line each; delivery-ledger downlinks sent at most N a day.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

from host_tools.cli import CommandError


def configure(p):
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="the network server's MQTT integration broker")
    p.add_argument("--integration", choices=["chirpstack", "tts"], default="chirpstack")
    p.add_argument("--registry", default="fleet.sqlite")
    p.add_argument("--application", help="ChirpStack application id (UUID) / TTS application id")
    p.add_argument("--tenant", default="ttn", help="TTS tenant id")
    p.add_argument("--ledger-per-day", type=int, default=10, metavar="N",
                   help="at most N delivery-ledger downlinks per device a day (a public network allows ~10)")
    p.add_argument("--state", default="uplinks-state.sqlite", metavar="FILE",
                   help="what each device's delivery ledger acknowledged, kept across restarts "
                        "(default ./uplinks-state.sqlite; 'off': in memory only)")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p.add_argument("--json", action="store_true", help="every event as a JSON line (default: readings and ledgers)")


def run(args):
    from host_tools.backoffice.lorawan_fleet import uplink_devices
    from host_tools.backoffice.uplinks import UplinkService
    from host_tools.codec.lns_json import Application
    from host_tools.fleet.registry import Registry

    if not Path(args.registry).exists():
        raise CommandError(f"no fleet registry at {args.registry}", hint="provision LoRaWAN boards first")
    if args.ledger_per_day < 1:
        raise CommandError("--ledger-per-day must be at least 1")
    try:
        with Registry(args.registry) as reg:
            devices = uplink_devices(reg)
    except KeyError as exc:
        raise CommandError(str(exc)) from None
    app = Application(tts_tenant=args.tenant)
    if args.application:
        app.application_id = app.tts_application = args.application

    def show(event):
        if args.json or event["event"] in ("reading", "ledger", "ack", "link_test", "bad_payload", "bad_ack"):
            print(json.dumps(event), flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    from host_tools.backoffice.uplink_state import StateError

    try:
        svc = UplinkService(devices, integration=args.integration, app=app, ledger_per_day=args.ledger_per_day,
                            broker_url=args.broker, on_event=show, state=None if args.state == "off" else args.state)
    except StateError as exc:
        raise CommandError(str(exc), hint="point --state at the file this service wrote, or at a new one") from None
    try:
        svc.start()
    except (OSError, ConnectionError, ValueError) as exc:
        raise CommandError(f"uplink service: {exc}", hint="is the broker running?") from None
    try:
        stop.wait(args.duration) if args.duration else stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        svc.stop()
    return 0
