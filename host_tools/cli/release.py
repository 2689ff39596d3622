"""`lanterne release keys|build|list|push`: signed over-the-air updates (docs/ota.md).

  release keys new [--name N]          generate a signing key (kept in --keys, owner-only)
  release keys list [--json]           the keys, active and retired
  release keys retire KEY_ID           later releases stop listing it as trusted
  release build [--source DIR] [--counter N] [--min-micropython X.Y.Z]
                                       compile the library, build the slot image, sign the manifest
  release build --firmware BIN         a MicroPython image release (the OTA variant's app partitions)
  release list [--json]                the releases built
  release push RELEASE DEVICE ...      update these boards over MQTT
  release push RELEASE --fleet [--canary PCT] [--wave N] [--resume]
                                       a staged rollout: canaries first, halt on any failure
"""

from __future__ import annotations

import json
import os
import time

from host_tools.cli import CommandError


def configure(p):
    sub = p.add_subparsers(dest="release_cmd", metavar="ACTION")
    common = {"--keys": ("release-keys", "signing key folder (default ./release-keys)"),
              "--releases": ("releases", "release folder (default ./releases)")}  # fmt: skip

    def add_common(q, *names):
        for n in names:
            q.add_argument(n, default=common[n][0], help=common[n][1])

    k = sub.add_parser("keys", help="manage the release signing keys")
    ksub = k.add_subparsers(dest="keys_cmd", metavar="KEYS_ACTION")
    kn = ksub.add_parser("new", help="generate a signing key")
    kn.add_argument("--name", default="", help="a name to remember it by")
    add_common(kn, "--keys")
    kl = ksub.add_parser("list", help="list the keys")
    kl.add_argument("--json", action="store_true")
    add_common(kl, "--keys")
    kr = ksub.add_parser("retire", help="stop trusting a key in later releases")
    kr.add_argument("key_id")
    add_common(kr, "--keys")

    b = sub.add_parser("build", help="build and sign a release of the firmware")
    b.add_argument("--source", help="firmware tree (default: this checkout's firmware/)")
    b.add_argument("--firmware", metavar="BIN", help="release a MicroPython image instead (the OTA variant's .bin)")
    b.add_argument("--counter", type=int, help="release counter (default: the last one + 1)")
    b.add_argument("--min-micropython", default="1.25.0", help="oldest MicroPython the release runs on")
    b.add_argument("--json", action="store_true")
    add_common(b, "--keys", "--releases")

    ls = sub.add_parser("list", help="list the releases built")
    ls.add_argument("--json", action="store_true")
    add_common(ls, "--releases")

    pu = sub.add_parser("push", help="update boards over MQTT (one, several, or the fleet in waves)")
    pu.add_argument("release", help="release: counter, version or 'latest'")
    pu.add_argument("devices", nargs="*", help="device ids")
    pu.add_argument("--fleet", action="store_true", help="every MQTT device of the registry")
    pu.add_argument("--canary", type=float, default=0.0, help="percent of the devices updated first (at least one)")
    pu.add_argument("--wave", type=int, default=0, help="devices per wave after the canaries (default: all)")
    pu.add_argument("--resume", action="store_true", help="continue a halted or interrupted rollout")
    pu.add_argument("--force", action="store_true", help="allow a downgrade (a release older than the one running)")
    pu.add_argument("--timeout", type=float, default=300.0, help="seconds a device has to commit the release")
    pu.add_argument("--broker", default=os.environ.get("LANTERNE_BROKER", "mqtt://127.0.0.1:1883"), help="broker URL")
    pu.add_argument("--registry", default="fleet.sqlite", help="fleet registry (default ./fleet.sqlite)")
    pu.add_argument("--tls-ca", help="CA file for mqtts://")
    pu.add_argument("--json", action="store_true", help="print the report as JSON")
    add_common(pu, "--releases")
    p.set_defaults(_parser=p)


def run(args):
    from host_tools.fleet.release import ReleaseError

    try:
        if args.release_cmd == "keys":
            return _keys(args)
        if args.release_cmd == "build":
            return _build(args)
        if args.release_cmd == "list":
            return _list(args)
        if args.release_cmd == "push":
            return _push(args)
    except ReleaseError as exc:
        raise CommandError(str(exc), hint=exc.hint) from None
    args._parser.print_help()
    return 2


def _keys(args):
    from host_tools.fleet.release.keys import KeyStore

    ks = KeyStore(args.keys)
    if args.keys_cmd == "new":
        k = ks.new(args.name)
        print(f"key {k.key_id} created in {ks.path} (private part owner-only); boards trust it from the next release"
              " signed by an active key they trust, or at their next provisioning")  # fmt: skip
        return 0
    if args.keys_cmd == "retire":
        k = ks.retire(args.key_id)
        print(f"key {k.key_id} retired: releases built from now on no longer list it as trusted")
        return 0
    if args.keys_cmd == "list":
        keys = ks.keys()
        if getattr(args, "json", False):
            print(json.dumps([k.to_json() for k in keys], indent=1))
        else:
            for k in keys:
                print(f"{k.key_id}  {k.state:8s}  {time.strftime('%Y-%m-%d', time.localtime(k.created))}  {k.name}")
            if not keys:
                print(f"no keys in {ks.path}: lanterne release keys new")
        return 0
    raise CommandError("which keys action?", hint="lanterne release keys new|list|retire")


def _version(text: str) -> tuple[int, int, int]:
    try:
        parts = [int(x) for x in text.split(".")]
        return tuple((parts + [0, 0, 0])[:3])
    except ValueError:
        raise CommandError(f"--min-micropython {text!r}: expected X.Y.Z") from None


def _build(args):
    from host_tools.fleet.release.build import build_release
    from host_tools.fleet.release.keys import KeyStore
    from host_tools.fleet.release.store import ReleaseStore

    if args.firmware:
        from host_tools.fleet.release.build import build_firmware_release

        rel = build_firmware_release(ReleaseStore(args.releases), KeyStore(args.keys), args.firmware, counter=args.counter,
                                     log=None if args.json else print)  # fmt: skip
    else:
        rel = build_release(ReleaseStore(args.releases), KeyStore(args.keys), source=args.source, counter=args.counter,
                            micropython=_version(args.min_micropython), log=None if args.json else print)  # fmt: skip
    if args.json:
        print(json.dumps({k: v for k, v in rel.meta.items() if k != "files"} | {"path": str(rel.path)}, indent=1))
    else:
        print(f"release {rel.counter} ({rel.version}) in {rel.path}: {rel.meta['size']} bytes, {rel.meta['blocks']} blocks,"
              f" signed by {rel.meta['key_id']}, manifest {rel.meta['manifest_sha256'][:16]}")  # fmt: skip
    return 0


def _list(args):
    from host_tools.fleet.release.store import ReleaseStore

    rs = ReleaseStore(args.releases).releases()
    if args.json:
        print(json.dumps([{k: v for k, v in r.meta.items() if k != "files"} for r in rs], indent=1))
        return 0
    for r in rs:
        made = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.meta["created"]))
        print(f"{r.counter:6d}  {r.version:12s}  {r.meta['size']:7d} B  {made}  key {r.meta['key_id']}")
    if not rs:
        print(f"no releases in {args.releases}: lanterne release build")
    return 0


def _push(args):
    from host_tools.backoffice.rollout import Rollout, state_file
    from host_tools.fleet.registry import Registry
    from host_tools.fleet.release.store import ReleaseStore

    if not os.path.exists(args.registry):
        raise CommandError(f"no fleet registry at {args.registry}", hint="provision the fleet first, or pass --registry")
    if bool(args.devices) == bool(args.fleet):
        raise CommandError("name the devices, or pass --fleet (not both)")
    store = ReleaseStore(args.releases)
    rel = store.get(args.release)
    reg = Registry(args.registry)
    devices = sorted(d.id for d in reg.devices()) if args.fleet else args.devices
    missing = [d for d in devices if reg.get(d) is None]
    if missing:
        raise CommandError(f"not in the registry: {', '.join(missing)}", hint="lanterne verify, or provision them")
    say = (lambda msg: None) if args.json else (lambda msg: print(msg, flush=True))
    try:
        ro = Rollout(args.broker, reg, store, rel, tls_ca=args.tls_ca, timeout=args.timeout, force=args.force, log=say)
    except (OSError, TimeoutError) as exc:
        raise CommandError(f"cannot reach the broker {args.broker}: {exc}", hint="check --broker") from None
    try:
        say(f"pushing {rel} to {len(devices)} device(s)")
        report = ro.run(devices, canary_pct=args.canary if args.fleet else 0, wave=args.wave if args.fleet else 0,
                        state_file=state_file(store, rel) if args.fleet else None, resume=args.resume)  # fmt: skip
    finally:
        ro.close()
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        for line in report.lines():
            print(line)
    return 0 if report.ok else 1
