"""`lanterne verify --port PORT`: read a board back and report its drift from the fleet registry.

Exit status 0 when the board matches the registry, 1 when it differs (each difference
listed: changed/missing/extra files, config fields, hardware), like `diff`.
"""

from __future__ import annotations

import json

from host_tools.cli import CommandError


def configure(p):
    p.add_argument("--port", required=True, help="serial port of the board")
    p.add_argument("--registry", default="fleet.sqlite", metavar="FILE", help="fleet registry (default ./fleet.sqlite)")
    p.add_argument("--no-restart", action="store_true", help="leave the board at its REPL instead of restarting the application")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args):
    from pathlib import Path

    from host_tools.fleet import ProvisionError
    from host_tools.fleet.registry import Registry, RegistryError
    from host_tools.fleet.verify import verify

    if not Path(args.registry).exists():
        raise CommandError(f"no registry at {args.registry}", hint="run where the fleet was provisioned, or pass --registry")
    try:
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
