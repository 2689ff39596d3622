"""The `lanterne` command: a table of subcommands over a library that tests call directly.

Shaped like mpremote: each subcommand lives in `host_tools.cli.<module>`,
which provides `configure(parser)` to declare its arguments and `run(args)` to do
the work and return an exit code. Modules are imported only when their command
runs, so `lanterne --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under host_tools.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the demo: embedded broker + three virtual boards with the real firmware"),
    "emulate": ("emulate", "serve one virtual board on a pty (MicroPython unix port + HAL shims)"),
    "world": ("world", "read or change the simulated world of a running virtual board"),
    "broker": ("broker", "start an embedded MQTT broker (amqtt) on loopback"),
    "boards": ("boards", "list and validate the board files"),
    "bench": ("bench", "run benchmarks and print a table per benchmark (or JSON)"),
    "flash": ("flash", "flash MicroPython onto a board with esptool: detect, erase, write, verify"),
    "provision": ("provision", "provision a board or a fleet (CSV): .mpy firmware, secrets, config, first status"),
    "verify": ("verify", "read a board back and report its drift from the fleet registry"),
    "broker-files": ("broker_files", "write the broker's password and ACL files from the fleet registry"),
    "command": ("command", "sign and send a command to a device, wait for its signed ack"),
    "monitor": ("monitor", "live table of the fleet: last seen, last reading, backlog, faults, firmware, updates"),
    "release": ("release", "signed over-the-air updates: keys, build, list, push (staged rollout)"),
    "network-server": ("network_server", "run the emulated LoRaWAN network server (ChirpStack / TTS MQTT integrations)"),
    "uplinks": ("uplinks", "back-office LoRaWAN uplink service: decode, de-duplicate, send delivery-ledger downlinks"),
    "lorawan": ("lorawan", "LoRaWAN fleet tools: export device registrations for ChirpStack or TTS"),
    "encode": ("encode", "encode JSON readings into payload frames (hex)"),
    "decode": ("decode", "decode a payload frame (hex) into JSON"),
    "sun": ("sun", "sunrise, sunset and civil twilight for a site, computed by the firmware module"),
}


class CommandError(Exception):
    """An error a person can act on: printed as one line (plus hint), exit status 1."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lanterne", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            mod = importlib.import_module(f"host_tools.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("host_tools.cli."):
                p.set_defaults(_missing=True)
                continue
            raise
        mod.configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"lanterne {args.command}: not available in this build", file=sys.stderr)
        return 2
    mod = importlib.import_module(f"host_tools.cli.{args._module}")
    try:
        return int(mod.run(args) or 0)
    except CommandError as exc:
        print(f"lanterne {args.command}: error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
