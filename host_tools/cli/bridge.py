"""`lanterne bridge`: the back-office bridge, uplinks into the city's database and standard models.

Subscribes to every device's uplinks, statuses, acks and commands on the broker, decodes
and stores them (SQLite file by default, PostgreSQL with --db postgresql://...), serves the
NGSI-LD read API, and optionally pushes to a context broker (--ngsi-ld) and announces the
fleet to Home Assistant (--home-assistant). Runs until Ctrl-C / SIGTERM (or --duration),
then commits and acknowledges what it holds. See docs/bridge.md.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from host_tools.cli import CommandError


def configure(p):
    p.add_argument("--broker", default=os.environ.get("LANTERNE_BROKER", "mqtt://127.0.0.1:1883"), help="broker URL")
    p.add_argument("--db", default="bridge.sqlite",
                   help="database: an SQLite file (default ./bridge.sqlite) or postgresql://USER@HOST:PORT/DB")
    p.add_argument("--registry", default="fleet.sqlite", help="fleet registry (default ./fleet.sqlite)")
    p.add_argument("--group", default="",
                   help="shared-subscription group: instances with the same group split the load (default: none, "
                        "plain subscriptions, which a crashed Mosquitto 2.0 restores; docs/bridge.md, Scale-out)")
    p.add_argument("--client-id", help="MQTT client id, one per instance, stable across restarts "
                                       "(default lanterne-bridge-HOSTNAME)")
    p.add_argument("--username", help="MQTT user (default: the registry's back-office role)")
    p.add_argument("--password", help="MQTT password (default: the registry's back-office role)")
    p.add_argument("--tls-ca", help="CA file for mqtts://")
    p.add_argument("--http", default="127.0.0.1:8026", help="NGSI-LD read API address HOST:PORT, or 'off'")
    p.add_argument("--ngsi-ld", metavar="URL", help="push entities to this NGSI-LD context broker (batch upsert)")
    p.add_argument("--home-assistant", action="store_true", help="publish Home Assistant MQTT discovery and "
                                                                 "accept its lamp and bollard commands")
    p.add_argument("--ha-prefix", default="homeassistant", help="Home Assistant discovery prefix")
    p.add_argument("--lorawan", choices=("chirpstack", "tts"),
                   help="also take the LoRaWAN uplinks of this network server's MQTT integration (same broker)")
    p.add_argument("--lorawan-application", help="ChirpStack application id (UUID) / TTS application id")
    p.add_argument("--lorawan-tenant", default="ttn", help="TTS tenant id")
    p.add_argument("--ledger-per-day", type=int, default=10, metavar="N",
                   help="LoRaWAN: at most N delivery-ledger downlinks per device a day")
    p.add_argument("--lorawan-state", default="lorawan-state.sqlite", metavar="FILE",
                   help="LoRaWAN: what each device's delivery ledger acknowledged, kept across restarts "
                        "(default ./lorawan-state.sqlite; 'off': in memory only)")
    p.add_argument("--location-precision", type=int, default=5,
                   help="decimal places of published coordinates (5: ~1 m, 3: ~100 m)")
    p.add_argument("--batch", type=int, default=1000, help="messages per database transaction at most")
    p.add_argument("--batch-wait", type=float, default=0.05, help="seconds a message may wait for its batch")
    p.add_argument("--session-expiry", type=int, default=86400,
                   help="seconds the broker keeps this instance's messages while it is away")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: run until stopped)")
    p.add_argument("--stats", type=float, default=60.0, help="print the counters every S seconds (0: never)")
    p.add_argument("--json", action="store_true", help="print the start line and the final counters as JSON")
    p.add_argument("--print-schema", choices=("sqlite", "postgresql"), help="print the database DDL and exit")


def _print_schema(dialect: str) -> None:
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.schema import CreateIndex, CreateTable

    from host_tools.backoffice.bridge.schema import metadata

    d = postgresql.dialect() if dialect == "postgresql" else sqlite.dialect()
    for table in metadata.sorted_tables:
        print(str(CreateTable(table).compile(dialect=d)).strip() + ";")
        for index in sorted(table.indexes, key=lambda i: i.name):
            print(str(CreateIndex(index).compile(dialect=d)).strip() + ";")
        print()


def run(args):
    if args.print_schema:
        _print_schema(args.print_schema)
        return 0
    from host_tools.backoffice.bridge.database import DatabaseError
    from host_tools.backoffice.bridge.service import Bridge, BridgeConfig
    from host_tools.fleet.registry import Registry, RegistryError

    if not os.path.exists(args.registry):
        raise CommandError(f"no fleet registry at {args.registry}", hint="provision the fleet first, or pass --registry")
    if not 0 <= args.location_precision <= 7:
        raise CommandError(f"--location-precision {args.location_precision}: 0..7 decimal places")
    if args.batch < 1 or args.batch_wait < 0:
        raise CommandError("--batch must be at least 1 and --batch-wait not negative")
    user, password = args.username, args.password
    if user is None:
        try:
            with Registry(args.registry) as reg:
                user, password = reg.backoffice_credentials()
        except RegistryError as exc:
            raise CommandError(str(exc)) from None
    out = (lambda line: print(json.dumps({"log": line}), flush=True)) if args.json else (
        lambda line: print(f"bridge: {line}", flush=True))
    cfg = BridgeConfig(
        broker=args.broker, db=args.db, registry=args.registry, group=args.group or None, client_id=args.client_id,
        username=user, password=password, tls_ca=args.tls_ca, http=None if args.http == "off" else args.http,
        ngsi_ld=args.ngsi_ld, home_assistant=args.home_assistant, ha_prefix=args.ha_prefix,
        lorawan=args.lorawan, lorawan_application=args.lorawan_application, lorawan_tenant=args.lorawan_tenant,
        ledger_per_day=args.ledger_per_day, lorawan_state=None if args.lorawan_state == "off" else args.lorawan_state,
        location_precision=args.location_precision, batch_max=args.batch, batch_wait_s=args.batch_wait,
        session_expiry_s=args.session_expiry, log=out)
    try:
        bridge = Bridge(cfg)
    except DatabaseError as exc:
        raise CommandError(str(exc), hint="check --db") from None
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot start: {exc}") from None
    except KeyError as exc:  # the registry's LoRaWAN identities
        raise CommandError(f"LoRaWAN: {exc.args[0]}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        bridge.start()
    except (OSError, TimeoutError) as exc:
        bridge.stop()
        raise CommandError(f"cannot reach the broker {args.broker}: {exc}", hint="check --broker") from None
    started = {
        "broker": args.broker, "db": bridge.db.display, "engine": bridge.db.dialect, "registry": args.registry,
        "devices": len(bridge.directory.all()), "client_id": bridge.input.client_id, "group": cfg.group,
        "api": bridge.api.url if bridge.api else None, "ngsi_ld": args.ngsi_ld, "home_assistant": args.home_assistant,
        "lorawan": args.lorawan,
    }
    if args.json:
        print(json.dumps({"started": started}), flush=True)
    else:
        group = f" (group {cfg.group})" if cfg.group else ""
        api = f", NGSI-LD API {started['api']}/ngsi-ld/v1/entities" if started["api"] else ""
        print(f"bridge: {started['devices']} devices in {args.registry}, broker {args.broker} as "
              f"{started['client_id']}{group}, database {started['db']}{api}", flush=True)
    deadline = time.monotonic() + args.duration if args.duration else None
    next_stats = time.monotonic() + args.stats if args.stats else None
    try:
        while not stop.is_set():
            if deadline and time.monotonic() >= deadline:
                break
            stop.wait(0.2)
            if next_stats and time.monotonic() >= next_stats:
                next_stats += args.stats
                out(json.dumps(bridge.stats()) if not args.json else bridge.stats())
    finally:
        bridge.stop()
    final = bridge.stats()
    if args.json:
        print(json.dumps({"stopped": final}), flush=True)
    else:
        bad = ", ".join(f"{k} {v}" for k, v in final["bad"].items()) or "none"
        print(f"bridge: stopped: {final['readings']} readings written, {final['duplicates']} duplicates, bad: {bad}",
              file=sys.stdout, flush=True)
    return 0
