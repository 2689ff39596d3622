"""`lanterne command DEVICE ACTION [ARGS]`: sign a command with the registry's key, send it, print the ack.

The actions, their arguments and ranges are in host_tools.backoffice.actions (the ranges are the
firmware's own checks); `lanterne command --help` prints them all, `lanterne command ACTION --help`
one. A value the board would refuse is refused here, before anything is sent. An acknowledged
`set-period` or `set-config` is recorded in the registry, so `lanterne verify` sees no drift.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3

from host_tools.cli import CommandError


class _Help(argparse.Action):
    """-h/--help: one action's help when an action is named (`lanterne command dim --help`), else all."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, help="show this help (with an ACTION: that action's) and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from host_tools.backoffice.actions import ACTIONS, action_help, actions_table

        word = namespace.action or namespace.device
        if word in ACTIONS:
            print(action_help(ACTIONS[word]))
        else:
            print(parser.format_help() + "\n" + actions_table())
        parser.exit()


OWN_HELP = True  # -h/--help below: with an action, that action's help


def configure(p):
    p.add_argument("-h", "--help", action=_Help)
    p.add_argument("device", nargs="?", metavar="DEVICE", help="device id, as in the fleet registry")
    p.add_argument("action", nargs="?", metavar="ACTION", help="what to do (below)")
    p.add_argument("args", nargs="*", metavar="ARGS", help="the action's arguments")
    p.add_argument("--broker", default=os.environ.get("LANTERNE_BROKER", "mqtt://127.0.0.1:1883"), help="broker URL")
    p.add_argument("--registry", default="fleet.sqlite", help="fleet registry file (default ./fleet.sqlite)")
    p.add_argument("--ramp", type=int, default=0, help="dim: ramp time in seconds")
    p.add_argument("--duration", type=int, default=0, help="dim: minutes before the profile resumes (0: until told)")
    p.add_argument("--timeout", type=float, help="seconds to wait for the ack (default 10; a LoRaWAN device: 3 sampling periods + 60)")
    p.add_argument("--lorawan", choices=("chirpstack", "tts"), default="chirpstack",
                   help="a LoRaWAN device: the network server's MQTT integration on --broker (default chirpstack)")
    p.add_argument("--lorawan-application", metavar="ID", help="ChirpStack application id / TTS application (default: the emulated network server's)")
    p.add_argument("--lorawan-tenant", metavar="T", help="TTS tenant (default: the emulated network server's)")
    p.add_argument("--tls-ca", help="CA file for mqtts://")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args):
    import difflib

    from host_tools import boards
    from host_tools.backoffice.actions import ACTIONS, ActionError, config_change, parse
    from host_tools.backoffice.command_client import cmd, next_counter
    from host_tools.fleet.config import board_transport
    from host_tools.fleet.registry import Registry, RegistryError

    if args.device in ACTIONS and args.action not in ACTIONS:  # the device was left out: `lanterne command dim 40`
        typed = " ".join(w for w in (args.device, args.action, *args.args) if w)
        raise CommandError(f"{args.device!r} is an action: which device? lanterne command DEVICE {typed}",
                           hint="device ids are in the fleet registry (`lanterne monitor` shows them online)")
    if not args.device or not args.action:
        raise CommandError("which device, and what to do? lanterne command DEVICE ACTION [ARGS]",
                           hint="`lanterne command --help` lists the actions and their arguments")
    try:  # what was typed is checked first, before the registry and the broker
        action, params = parse(args.action, args.args, ramp=args.ramp, duration=args.duration)
    except ActionError as exc:
        raise CommandError(str(exc), hint=exc.hint) from None
    if not os.path.exists(args.registry):
        raise CommandError(f"no fleet registry at {args.registry}", hint="provision the fleet first, or pass --registry")
    try:
        reg = Registry(args.registry)
    except (RegistryError, sqlite3.Error) as exc:
        raise CommandError(f"cannot open the registry {args.registry}: {exc}") from None
    rec = reg.get(args.device)
    if rec is None:
        close = difflib.get_close_matches(args.device, [d.id for d in reg.devices()], n=1)
        raise CommandError(f"device {args.device!r} is not in the registry {args.registry}"
                           + (f": did you mean {close[0]!r}?" if close else ""),
                           hint="`lanterne verify --port PORT` tells which device a board is; or provision it")
    if action.opcode == cmd.SET_CONFIG:  # again, against the device's config (bin_full_mm < bin_empty_mm)
        try:
            action, params = parse(args.action, args.args, config=rec.config)
        except ActionError as exc:
            raise CommandError(str(exc), hint=exc.hint) from None
    key = reg.command_key(args.device)
    user, password = reg.backoffice_credentials()
    counter = next_counter(reg.command_counter(args.device))
    reg.set_command_counter(args.device, counter)  # used up even if the ack never comes
    transport = rec.config.get("transport") or board_transport(boards.load(rec.board))
    if transport == "lorawan":
        res = _send_lorawan(args, reg, rec, counter, action, params, user, password)
    else:
        res = _send_mqtt(args, rec, key, counter, action, params, user, password, transport)
    if res.ok:
        if action.opcode == cmd.ROTATE_KEY:
            reg.set_secret(args.device, "command_key", cmd.rotated_key(key, params["nonce"]).hex())
        changed = config_change(action, params)
        if changed:  # the board stored it: the registry follows, so verify sees no drift
            reg.update_config(args.device, changed)
    out = {
        "device": args.device,
        "command": action.word,
        "counter": res.counter,
        "status": res.reason,
        "data": res.data.hex(),
        "rtt_ms": round(res.rtt_ms, 1),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.device}: {action.word} {res.reason} (counter {res.counter}, {res.rtt_ms:.0f} ms)")
    return 0 if res.ok else 1


def _send_mqtt(args, rec, key, counter, action, params, user, password, transport):
    from host_tools.backoffice.command_client import CommandClient
    from host_tools.fleet.config import transport_gap

    try:
        client = CommandClient(args.broker, username=user, password=password, tls_ca=args.tls_ca)
    except (OSError, TimeoutError) as exc:
        raise CommandError(f"cannot reach the broker {args.broker}: {exc}", hint="check --broker and the network") from None
    try:
        return client.send(rec.site, args.device, key, counter, action.opcode, params, timeout=args.timeout or 10.0)
    except TimeoutError as exc:
        gap = transport_gap(transport)
        hint = f"{args.device} ({rec.board}): {gap}" if gap else "is the device online? `lanterne monitor` shows it"
        raise CommandError(str(exc), hint=hint) from None
    finally:
        client.close()


def _send_lorawan(args, reg, rec, counter, action, params, user, password):
    # Queued on the network server as a class-A downlink: it goes after the device's next uplink.
    from host_tools.backoffice.lorawan_command import LorawanCommandClient
    from host_tools.backoffice.lorawan_fleet import uplink_devices
    from host_tools.codec import lns_json as J

    try:
        (dev,) = uplink_devices(reg, [args.device])
    except KeyError as exc:
        raise CommandError(str(exc).strip("'\""), hint="provision it on a LoRaWAN board (esp32-rak3172)") from None
    app = J.Application()
    if args.lorawan_application:
        app.application_id = app.tts_application = args.lorawan_application
    if args.lorawan_tenant:
        app.tts_tenant = args.lorawan_tenant
    period = int(rec.config.get("sample_period_s") or 60)
    timeout = args.timeout or 3 * period + 60
    try:
        client = LorawanCommandClient(args.broker, args.lorawan, app, username=user, password=password, tls_ca=args.tls_ca)
    except (OSError, TimeoutError) as exc:
        raise CommandError(f"cannot reach the broker {args.broker}: {exc}", hint="check --broker and the network") from None

    def queued(topic, n):
        if not args.json:
            print(f"{args.device}: {action.word} queued on the network server ({args.lorawan}: {topic}, {n} bytes on FPort 10);"
                  f" class A: it goes down after the board's next uplink (it samples every {period} s, and its airtime"
                  f" budget may hold an uplink back), its ack comes up in the one after; waiting up to {timeout:.0f} s",
                  flush=True)

    def requeued(times, uplinks):
        if not args.json:
            print(f"{args.device}: no ack after {uplinks} uplinks: the downlink or its ack was lost on the air; queued again"
                  f" ({times}; the board acks a repeat of its last command without executing it twice)", flush=True)

    try:
        return client.send(dev, counter, action.opcode, params, timeout=timeout, on_queued=queued, on_requeued=requeued)
    except TimeoutError as exc:
        raise CommandError(str(exc), hint=f"{args.device} is a LoRaWAN device: is it joined and sending (`lanterne uplinks`)?"
                           " The downlink stays queued on the network server until its next uplink") from None
    finally:
        client.close()
