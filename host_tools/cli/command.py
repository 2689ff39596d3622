"""`lanterne command DEVICE ACTION [ARGS]`: sign a command with the registry's key, send it, print the ack.

Actions:
  dim LEVEL [--ramp S] [--duration MIN]    lamp level 0..100 %
  resume-profile                           back to the lamp profile
  set-profile START-END:LEVEL ...          night dimming steps, local time, e.g. 23:00-05:00:50
  bollard raise|lower
  set-period sample|status SECONDS
  status                                   ask for a status message
  reboot [DELAY_S]
  set-config KEY VALUE                     allow-listed keys only (see docs/commands.md)
  rotate-key                               derive a new command key on both sides
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3

from host_tools.cli import CommandError


def configure(p):
    p.add_argument("device", help="device id, as in the fleet registry")
    p.add_argument("action", help="dim, resume-profile, set-profile, bollard, set-period, status, reboot, set-config, rotate-key")
    p.add_argument("args", nargs="*", help="the action's arguments")
    p.add_argument("--broker", default=os.environ.get("LANTERNE_BROKER", "mqtt://127.0.0.1:1883"), help="broker URL")
    p.add_argument("--registry", default="fleet.sqlite", help="fleet registry file (default ./fleet.sqlite)")
    p.add_argument("--ramp", type=int, default=0, help="dim: ramp time in seconds")
    p.add_argument("--duration", type=int, default=0, help="dim: minutes before the profile resumes (0: until told)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the ack")
    p.add_argument("--tls-ca", help="CA file for mqtts://")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _hhmm(text: str) -> int:
    h, _, m = text.partition(":")
    v = int(h) * 60 + int(m or 0)
    if not 0 <= v < 1440:
        raise ValueError
    return v


def parse_action(action: str, args: list[str], ramp: int = 0, duration: int = 0) -> tuple[str, dict]:
    """CLI words -> (action name, argument dict for lanterne.commands.encode_args)."""
    try:
        if action == "dim":
            (level,) = args
            return "dim", {"level": int(level), "ramp_s": ramp, "duration_min": duration}
        if action in ("resume-profile", "status", "rotate-key") and not args:
            if action == "rotate-key":
                return action, {"nonce": secrets.token_bytes(16)}
            return action, {}
        if action == "set-profile":
            steps = []
            for step in args:
                window, _, level = step.rpartition(":")
                start, _, end = window.partition("-")
                steps.append((_hhmm(start), _hhmm(end), int(level)))
            return action, {"steps": steps}
        if action == "bollard":
            (what,) = args
            if what not in ("raise", "lower"):
                raise ValueError
            return action, {"action": what}
        if action == "set-period":
            what, seconds = args
            if what not in ("sample", "status"):
                raise ValueError
            return action, {"what": what, "seconds": int(seconds)}
        if action == "reboot":
            return action, {"delay_s": int(args[0]) if args else 1}
        if action == "set-config":
            key, value = args
            for conv in (int, float):
                try:
                    return action, {"key": key, "value": conv(value)}
                except ValueError:
                    pass
            return action, {"key": key, "value": value}
    except ValueError:
        pass
    raise CommandError(f"bad arguments for {action}: {' '.join(args) or '(none)'}", hint="see `lanterne command --help`")


def run(args):
    from host_tools.backoffice.command_client import ACTIONS, CommandClient, cmd, next_counter
    from host_tools.fleet.registry import Registry, RegistryError

    if args.action not in ACTIONS:
        raise CommandError(f"unknown action {args.action!r}", hint="actions: " + ", ".join(sorted(ACTIONS)))
    action, params = parse_action(args.action, args.args, args.ramp, args.duration)
    if not os.path.exists(args.registry):
        raise CommandError(f"no fleet registry at {args.registry}", hint="provision the fleet first, or pass --registry")
    try:
        reg = Registry(args.registry)
    except (RegistryError, sqlite3.Error) as exc:
        raise CommandError(f"cannot open the registry {args.registry}: {exc}") from None
    rec = reg.get(args.device)
    if rec is None:
        raise CommandError(f"device {args.device!r} is not in the registry", hint="`lanterne verify` or provision it")
    key = reg.command_key(args.device)
    user, password = reg.backoffice_credentials()
    counter = next_counter(reg.command_counter(args.device))
    reg.set_command_counter(args.device, counter)  # used up even if the ack never comes
    try:
        client = CommandClient(args.broker, username=user, password=password, tls_ca=args.tls_ca)
    except (OSError, TimeoutError) as exc:
        raise CommandError(f"cannot reach the broker {args.broker}: {exc}", hint="check --broker and the network") from None
    try:
        res = client.send(rec.site, args.device, key, counter, action, params, timeout=args.timeout)
    except TimeoutError as exc:
        raise CommandError(str(exc), hint="is the device online? `lanterne monitor` shows it") from None
    finally:
        client.close()
    if action == "rotate-key" and res.ok:
        reg.set_secret(args.device, "command_key", cmd.rotated_key(key, params["nonce"]).hex())
    out = {
        "device": args.device,
        "command": res.command,
        "counter": res.counter,
        "status": res.reason,
        "data": res.data.hex(),
        "rtt_ms": round(res.rtt_ms, 1),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.device}: {res.command} {res.reason} (counter {res.counter}, {res.rtt_ms:.0f} ms)")
    return 0 if res.ok else 1
