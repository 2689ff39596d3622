"""`lanterne registry accept DEVICE [--port PORT]`: adopt the changes an installer made on site.

The setup page records what it changed on the board (field.json), and `lanterne verify` reads
that into the registry and reports those fields as field changes. `accept` makes them the
registry's values, so verify no longer reports them and a later provisioning keeps them. With
--port the board is read first (as verify does).
"""

from __future__ import annotations

from host_tools.cli import CommandError


def configure(p):
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    acc = sub.add_parser("accept", help="adopt a device's field changes (made with its setup page) into the registry")
    acc.add_argument("device", help="device id")
    acc.add_argument("--port", help="read the board on this serial port first (else: what lanterne verify last read)")
    acc.add_argument("--registry", default="fleet.sqlite", metavar="FILE", help="fleet registry (default ./fleet.sqlite)")


def run(args):
    from pathlib import Path

    from host_tools.fleet import ProvisionError
    from host_tools.fleet.registry import Registry, RegistryError
    from host_tools.runtime import firmware_module

    if not Path(args.registry).exists():
        raise CommandError(f"no registry at {args.registry}", hint="run where the fleet was provisioned, or pass --registry")
    try:
        with Registry(args.registry) as reg:
            if args.port:
                from host_tools.fleet.verify import verify

                report = verify(args.port, reg, check_checkout=False)
                if report.device != args.device:
                    raise CommandError(f"the board on {args.port} is {report.device}, not {args.device}")
            before = reg.get(args.device)
            seen = reg.accept_field_changes(args.device, tuple(firmware_module("field").EDITABLE))
    except ProvisionError as exc:
        raise CommandError(str(exc), hint=exc.hint) from None
    except RegistryError as exc:
        raise CommandError(str(exc)) from None
    for name, value in sorted(seen["fields"].items()):
        old = before.config.get(name) if before else None
        print(f"  {name}: {old!r} -> {value!r}" if old != value else f"  {name}: {value!r} (already)")
    print(f"{args.device}: field changes accepted ({seen.get('n')} save(s), hash {seen.get('hash')})")
    return 0
