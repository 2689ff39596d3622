"""`lanterne broker-files --out DIR [--owner USER[:GROUP]] ...`: the broker's files, from the fleet registry.

Writes DIR/mosquitto.passwd (hashed, Mosquitto 2 `$7$` format), DIR/mosquitto.acl,
DIR/emqx-acl.conf (the same rules for EMQX), each unreadable to others, and DIR/mosquitto.conf,
a complete config using them. A system Mosquitto runs as user `mosquitto` and reads the files
as that user: pass --owner mosquitto (run as root). Then `mosquitto -c DIR/mosquitto.conf`;
after a change, SIGHUP (systemctl reload mosquitto) reloads the password and ACL files.
"""

from __future__ import annotations

import json
import os

from host_tools.cli import CommandError


def configure(p):
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the files into")
    p.add_argument("--owner", metavar="USER[:GROUP]",
                   help="give the files to the broker's user (e.g. mosquitto; needs root): owner-only 0600, or 0640 with"
                        " GROUP; mosquitto.conf then says `user USER`")
    p.add_argument("--listen", default="1883", metavar="[HOST:]PORT", help="the plain MQTT listener (default 1883, every interface)")
    p.add_argument("--tls-cert", metavar="FILE", help="the broker's certificate (PEM): adds a TLS listener")
    p.add_argument("--tls-key", metavar="FILE", help="its private key (PEM), readable by the broker's user")
    p.add_argument("--tls-ca", metavar="FILE", help="CA certificate (PEM) of the chain, if the certificate needs it")
    p.add_argument("--tls-listen", default="8883", metavar="[HOST:]PORT", help="the TLS listener (default 8883)")
    p.add_argument("--persistence-dir", metavar="DIR",
                   help="where Mosquitto keeps retained messages and queued commands (default Debian's /var/lib/mosquitto/;"
                        " created for --owner if missing)")
    p.add_argument("--registry", default="fleet.sqlite", metavar="FILE", help="fleet registry (default ./fleet.sqlite)")
    p.add_argument("--json", action="store_true", help="print the paths as JSON")


def run(args):
    from pathlib import Path

    from host_tools.fleet.broker_files import Listener, access_problems, parse_owner, write_broker_files
    from host_tools.fleet.registry import Registry, RegistryError

    if not Path(args.registry).exists():
        raise CommandError(f"no registry at {args.registry}", hint="provision or register devices first (lanterne provision)")
    try:
        owner = parse_owner(args.owner) if args.owner else None
        listen = Listener.parse(args.listen)
        tls = None
        if args.tls_cert or args.tls_key:
            if not (args.tls_cert and args.tls_key):
                raise ValueError("a TLS listener needs both --tls-cert and --tls-key")
            tls = {"certfile": os.path.abspath(args.tls_cert), "keyfile": os.path.abspath(args.tls_key),
                   "cafile": os.path.abspath(args.tls_ca) if args.tls_ca else None, "listen": Listener.parse(args.tls_listen)}
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if owner and os.geteuid() != 0 and owner.uid != os.geteuid():
        raise CommandError(f"only root can give files to {owner.user}", hint=f"run it with sudo: sudo lanterne broker-files ... --owner {args.owner}")
    persistence = os.path.abspath(args.persistence_dir) if args.persistence_dir else None
    try:
        registry = Registry(args.registry)
        paths = write_broker_files(registry, os.path.abspath(args.out), owner=owner, listen=listen, tls=tls,
                                   persistence_dir=persistence)
        count = len(registry.devices())
    except (RegistryError, OSError, ValueError) as exc:
        raise CommandError(f"cannot write the broker files: {exc}") from None
    problems = access_problems(paths, owner, persistence, tls)
    if owner is None and os.geteuid() == 0:
        problems.insert(0, "the files are root's only: a Mosquitto started as root drops to user mosquitto and cannot read"
                           " them; pass --owner mosquitto")
    if args.json:
        print(json.dumps({k: str(v) for k, v in paths.items()} | {"devices": count, "problems": problems}))
        return 0
    who = (f"{owner.user}:{owner.group}" if owner.group else owner.user) if owner else "this user"
    mode = f"{owner.secret_mode:o}" if owner else "600"
    print(f"{count} device(s) and the back-office role written to {args.out}:")
    for name, p in paths.items():
        print(f"  {p}" + ("  (644: no secret in it)" if name == "mosquitto_conf" else f"  ({mode}, {who})"))
    print(f"start the broker: mosquitto -c {paths['mosquitto_conf']}"
          + (f"  (as root it drops to user {owner.user})" if owner else ""))
    print("after a change (new devices): systemctl reload mosquitto, or kill -HUP its pid")
    for problem in problems:
        print(f"warning: {problem}")
    return 0
