"""`lanterne lorawan export --format chirpstack|tts [DEVICES ...] [--out FILE]`: register the fleet on a real network server.

ChirpStack v4: a JSON document whose entries are the REST API's device and device-keys bodies;
The Things Stack v3: JSON lines in its end-device import format. docs/lorawan.md, "Registering the
fleet", shows how to load each. The files hold AppKeys: they are written owner-only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from host_tools.cli import CommandError


def configure(p):
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    e = sub.add_parser("export", help="write device registrations (with AppKeys) for ChirpStack or TTS")
    e.add_argument("--format", required=True, choices=["chirpstack", "tts"])
    e.add_argument("devices", nargs="*", metavar="DEVICE", help="devices to export (default: every LoRaWAN device)")
    e.add_argument("--registry", default="fleet.sqlite")
    e.add_argument("--application", default=None, help="ChirpStack application id (UUID) / TTS application id")
    e.add_argument("--device-profile", default=None, help="ChirpStack device-profile id (UUID)")
    e.add_argument("--frequency-plan", default="EU_863_870_TTN", help="TTS frequency plan id")
    e.add_argument("--out", metavar="FILE", help="write here (mode 0600) instead of stdout")


def run(args):
    from host_tools.backoffice.lorawan_fleet import identities
    from host_tools.codec import lns_devices
    from host_tools.codec.lns_json import Application
    from host_tools.fleet.registry import Registry

    if not Path(args.registry).exists():
        raise CommandError(f"no fleet registry at {args.registry}", hint="provision LoRaWAN boards first")
    try:
        with Registry(args.registry) as reg:
            ids = identities(reg, args.devices or None)
    except KeyError as exc:
        raise CommandError(str(exc).strip("'\"")) from None
    if not ids:
        raise CommandError("no LoRaWAN device in the registry", hint="provision a board whose board file has a lorawan network")
    app = Application()
    if args.format == "chirpstack":
        text = lns_devices.chirpstack(ids, args.application or app.application_id, args.device_profile or app.device_profile_id)
    else:
        text = lns_devices.tts(ids, args.application or app.tts_application, args.frequency_plan)
    if args.out:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        print(f"{len(ids)} devices -> {args.out} ({args.format})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
