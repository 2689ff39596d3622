"""`lanterne registry accept DEVICE [--port PORT | --broker URL]`: adopt the changes an installer made on site.

The setup page records what it changed on the board (field.json), and the board's status carries
it; `lanterne verify` (over serial with --port, or from the statuses on the broker with --broker)
reads that into the registry and reports those fields as field changes. `accept` makes them the
registry's values, so verify no longer reports them and a later provisioning keeps them. With
--port the board is read first (as verify does); with --broker its status on the broker is.
"""

from __future__ import annotations

from host_tools.cli import CommandError


def configure(p):
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    acc = sub.add_parser("accept", help="adopt a device's field changes (made with its setup page) into the registry")
    acc.add_argument("device", help="device id")
    src = acc.add_mutually_exclusive_group()
    src.add_argument("--port", help="read the board on this serial port first (else: what lanterne verify last read)")
    src.add_argument("--broker", metavar="URL", help="read the device's status on this broker first (mqtt://host:port), no cable")
    acc.add_argument("--tls-ca", metavar="FILE", help="with --broker mqtts://: the CA file")
    acc.add_argument("--wait", type=float, default=5.0, metavar="S", help="with --broker: how long to wait for its status (default 5)")
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
            elif args.broker:
                _read_status(reg, args)
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


def _read_status(reg, args) -> None:
    """The device's field record from its status on the broker, into the registry; or why not."""
    from host_tools.fleet.field_status import fleet_field_status

    try:
        (st,), _ = fleet_field_status(reg, args.broker, [args.device], ca_cert=args.tls_ca, wait=args.wait)
    except KeyError:
        raise CommandError(f"no device {args.device!r} in the registry {args.registry}") from None
    if st.problem:
        raise CommandError(f"{args.device}: {st.state_text()}", hint="nothing was accepted; check the board with lanterne verify --port PORT")
    if not st.known:
        raise CommandError(f"{args.device}: {st.state_text()}", hint="nothing was accepted")
    if not (st.field_doc and st.field_doc.get("fields")):
        raise CommandError(f"{args.device}: its status says no field changes were made on site: nothing to accept")
