"""`lanterne verify --port PORT` | `lanterne verify --broker URL [DEVICE ...]`: a board (or a fleet) against the registry.

With --port: read the board back over serial and report its drift from the fleet registry
(changed/missing/extra files, config fields, hardware, and the field changes made on site with
its setup page). With --broker: no cable; read the field changes each device's status carries
on the broker (every device of the registry that sends a status, or those named) and report
those not accepted yet. Either way the field changes read are recorded in the registry, for
`lanterne registry accept DEVICE`.

Exit status 0 when the board matches the registry (--broker: every device's status was read and
holds no field change left to accept), 1 otherwise, each difference listed, like `diff`.
"""

from __future__ import annotations

import json

from host_tools.cli import CommandError


def configure(p):
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--port", help="serial port of the board: read it back whole")
    how.add_argument("--broker", metavar="URL",
                     help="read the field changes from each device's status on this broker (mqtt://host:port), no cable")
    p.add_argument("devices", nargs="*", metavar="DEVICE",
                   help="with --broker: these devices (default: every device of the registry that sends a status)")
    p.add_argument("--registry", default="fleet.sqlite", metavar="FILE", help="fleet registry (default ./fleet.sqlite)")
    p.add_argument("--tls-ca", metavar="FILE", help="with --broker mqtts://: the CA file")
    p.add_argument("--wait", type=float, default=5.0, metavar="S",
                   help="with --broker: how long to wait for the statuses the broker has not sent yet (default 5)")
    p.add_argument("--no-restart", action="store_true", help="leave the board at its REPL instead of restarting the application")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args):
    from pathlib import Path

    from host_tools.fleet import ProvisionError
    from host_tools.fleet.registry import Registry, RegistryError

    if not Path(args.registry).exists():
        raise CommandError(f"no registry at {args.registry}", hint="run where the fleet was provisioned, or pass --registry")
    if args.port and args.devices:
        raise CommandError(f"verify --port reads the one board on the port: no DEVICE ({' '.join(args.devices)})",
                           hint="name devices with --broker URL")
    try:
        if args.broker:
            return _from_broker(args)
        from host_tools.fleet.verify import verify

        report = verify(args.port, Registry(args.registry), restart=not args.no_restart)
    except ProvisionError as exc:
        raise CommandError(str(exc), hint=exc.hint) from None
    except RegistryError as exc:
        raise CommandError(str(exc), hint="check --registry") from None
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _from_broker(args):
    from host_tools.fleet.field_status import fleet_field_status
    from host_tools.fleet.registry import Registry

    with Registry(args.registry) as reg:
        try:
            reports, left_out = fleet_field_status(reg, args.broker, args.devices or None, ca_cert=args.tls_ca, wait=args.wait)
        except KeyError as exc:
            raise CommandError(f"no device {exc.args[0]!r} in the registry {args.registry}", hint="check the device id and --registry") from None
    if not reports and not left_out:
        raise CommandError(f"no device in the registry {args.registry}", hint="run where the fleet was provisioned, or pass --registry")
    if args.json:
        print(json.dumps({"broker": args.broker, "devices": [r.to_json() for r in reports], "lorawan_not_read": left_out}, indent=1))
    else:
        for r in reports:
            print("\n".join(r.lines()))
        if left_out:
            print(f"not read: {', '.join(left_out)}: LoRaWAN boards send no status; read their field changes over serial"
                  " (lanterne verify --port PORT)")
    return 0 if reports and all(r.ok for r in reports) else 1
