"""`lanterne network-server --broker URL [--integration chirpstack|tts|both] [--registry F | --devices F]`.

Runs the emulated LoRaWAN network server (host_tools/emulator/network_server.py) on a broker:
the virtual boards' gateways (`lanterne emulate --radio URL`) reach it there, and it publishes as
ChirpStack v4's and/or The Things Stack v3's MQTT integration. Devices come from the fleet registry,
or from a ChirpStack/TTS export written by `lanterne lorawan export`.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from host_tools.cli import CommandError


def configure(p):
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="the broker gateways and applications use")
    p.add_argument("--integration", choices=["chirpstack", "tts", "both"], default="chirpstack")
    p.add_argument("--registry", default="fleet.sqlite", help="fleet registry holding the LoRaWAN identities")
    p.add_argument("--devices", metavar="FILE", help="a `lanterne lorawan export` file instead of the registry")
    p.add_argument("--application", help="ChirpStack application id (UUID) / TTS application id")
    p.add_argument("--tenant", default="ttn", help="TTS tenant id (topics v3/{application}@{tenant}/...)")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds (default: until interrupted)")


def run(args):
    from host_tools.codec import lns_devices
    from host_tools.codec.lns_json import Application
    from host_tools.emulator.network_server import Device, NetworkServer

    try:
        if args.devices:
            ids = lns_devices.read_devices(Path(args.devices).read_text())
        else:
            from host_tools.backoffice.lorawan_fleet import identities
            from host_tools.fleet.registry import Registry

            if not Path(args.registry).exists():
                raise CommandError(f"no fleet registry at {args.registry}", hint="give --devices FILE or --registry PATH")
            with Registry(args.registry) as reg:
                ids = identities(reg)
        devices = [Device(i.dev_eui, i.app_key, i.device, i.join_eui) for i in ids]
    except (OSError, ValueError, KeyError) as exc:
        raise CommandError(f"devices: {exc}") from None
    app = Application(tts_tenant=args.tenant)
    if args.application:
        app.application_id = app.tts_application = args.application
    integrations = ("chirpstack", "tts") if args.integration == "both" else (args.integration,)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    try:
        ns = NetworkServer(args.broker, devices, integrations=integrations, app=app).start()
    except (OSError, ConnectionError) as exc:
        raise CommandError(f"network server: {exc}", hint="is the broker running? (`lanterne broker`)") from None
    print(f"network server on {args.broker}: {len(devices)} devices, integration {', '.join(integrations)}, "
          f"gateways on eu868/gateway/+/...", flush=True)
    try:
        stop.wait(args.duration) if args.duration else stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        ns.stop()
        time.sleep(0.05)
    print(f"joins {ns.counts['joins']}, uplinks {ns.counts['uplinks']}, dropped {dict(ns.dropped) or 0}")
    return 0
