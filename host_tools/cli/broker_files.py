"""`lanterne broker-files --out DIR`: the broker's password and ACL files, from the fleet registry.

Writes DIR/mosquitto.passwd (hashed, Mosquitto 2 `$7$` format), DIR/mosquitto.acl and
DIR/emqx-acl.conf (the same rules for EMQX), each owner-only. Reload Mosquitto with
SIGHUP after writing them; a device can log in once its line is there.
"""

from __future__ import annotations

import json

from host_tools.cli import CommandError


def configure(p):
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the files into")
    p.add_argument("--registry", default="fleet.sqlite", metavar="FILE", help="fleet registry (default ./fleet.sqlite)")
    p.add_argument("--json", action="store_true", help="print the paths as JSON")


def run(args):
    from pathlib import Path

    from host_tools.fleet.broker_files import mosquitto_conf_lines, write_broker_files
    from host_tools.fleet.registry import Registry, RegistryError

    if not Path(args.registry).exists():
        raise CommandError(f"no registry at {args.registry}", hint="provision or register devices first (lanterne provision)")
    try:
        registry = Registry(args.registry)
        paths = write_broker_files(registry, args.out)
        count = len(registry.devices())
    except (RegistryError, OSError, ValueError) as exc:
        raise CommandError(f"cannot write the broker files: {exc}") from None
    if args.json:
        print(json.dumps({k: str(v) for k, v in paths.items()} | {"devices": count}))
        return 0
    print(f"{count} device(s) and the back-office role written to {args.out}:")
    for p in paths.values():
        print(f"  {p}")
    print("mosquitto.conf:")
    for line in mosquitto_conf_lines(paths):
        print(f"  {line}")
    print("then reload Mosquitto: kill -HUP <its pid> (systemctl reload mosquitto)")
    return 0
