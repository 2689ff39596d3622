"""`lanterne label DEVICE [--out FILE.png|FILE.pdf]`: the label for a board's enclosure.

Two QR codes (join the board's setup Wi-Fi; open its setup page) and the same in print: the
access point's name and passphrase derive from the device's setup key in the registry, as the
board derives them. See docs/field.md.
"""

from __future__ import annotations

from host_tools.cli import CommandError


def configure(p):
    p.add_argument("device", help="device id")
    p.add_argument("--out", metavar="FILE", help="where to write the label: .png or .pdf (default DEVICE-label.png)")
    p.add_argument("--registry", default="fleet.sqlite", metavar="FILE", help="fleet registry (default ./fleet.sqlite)")


def run(args):
    from pathlib import Path

    from host_tools.fleet import ProvisionError
    from host_tools.fleet.label import render, setup_credentials
    from host_tools.fleet.registry import Registry, RegistryError

    if not Path(args.registry).exists():
        raise CommandError(f"no registry at {args.registry}", hint="run where the fleet was provisioned, or pass --registry")
    out = Path(args.out or f"{args.device}-label.png")
    try:
        with Registry(args.registry) as reg:
            label = setup_credentials(reg, args.device)
        render(label, out)
    except ProvisionError as exc:
        raise CommandError(str(exc), hint=exc.hint) from None
    except RegistryError as exc:
        raise CommandError(str(exc), hint="check --registry") from None
    where = f"Wi-Fi {label.ssid}, page {label.url}" if label.wifi else "Ethernet: password on the label"
    print(f"{out}: label for {label.device} ({where})")
    return 0
