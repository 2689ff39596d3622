"""The `lanterne` command: argument parsing and printing over the host_tools library.

Shaped like mpremote: each subcommand lives in `host_tools.cli.<module>`,
which provides `configure(parser)` to declare its arguments and `run(args)` to do
the work and return an exit code. Modules are imported only when their command
runs, so `lanterne --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under host_tools.cli, one-line help), in the order a new user meets them
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the demo: embedded broker + one virtual board per board file, running the real firmware"),
    "boards": ("boards", "list and validate the board files"),
    "flash": ("flash", "flash MicroPython onto a board with esptool: detect, erase, write, verify"),
    "provision": ("provision", "provision a board or a fleet (CSV): .mpy firmware, secrets, config, first status"),
    "verify": ("verify", "read a board back and report its drift from the registry; --broker: a fleet's field changes"),
    "label": ("label", "print a board's setup label: QR codes to join its setup Wi-Fi and open its page"),
    "registry": ("registry", "adopt what an installer changed on site (setup page) into the fleet registry"),
    "broker-files": ("broker_files", "write the broker's password and ACL files and a mosquitto.conf, from the fleet registry"),
    "command": ("command", "sign and send a command to a device, wait for its signed ack"),
    "monitor": ("monitor", "live table of the fleet: last seen, last reading, next reading and status due, faults, updates"),
    "release": ("release", "signed over-the-air updates: keys, build, list, push (staged rollout)"),
    "broker": ("broker", "start an embedded MQTT broker (amqtt) on loopback"),
    "bridge": ("bridge", "the back-office bridge: uplinks into SQLite/PostgreSQL, NGSI-LD, Home Assistant"),
    "export": ("export", "open-data export of the bridge's readings: CSV or Parquet, one file per day"),
    "bins": ("bins", "bins to collect, predicted time-to-full, collection rounds planned with OR-Tools"),
    "energy": ("energy", "street lights' savings report: energy used vs full power dusk to dawn, kWh, EUR, CO2, chart"),
    "uplinks": ("uplinks", "back-office LoRaWAN uplink service: decode, de-duplicate, send delivery-ledger downlinks"),
    "network-server": ("network_server", "run the emulated LoRaWAN network server (ChirpStack / TTS MQTT integrations)"),
    "lorawan": ("lorawan", "LoRaWAN fleet tools: export device registrations for ChirpStack or TTS"),
    "decode": ("decode", "decode a payload frame (hex) into JSON"),
    "sound-level": ("sound_level", "A-weighted sound levels of a WAV recording, computed by the firmware's meter"),
    "encode": ("encode", "encode JSON readings into payload frames (hex)"),
    "sun": ("sun", "sunrise, sunset and civil twilight for a site, computed by the firmware module"),
    "emulate": ("emulate", "serve one virtual board on a pty (MicroPython unix port + HAL shims)"),
    "world": ("world", "read or change the simulated world of a running virtual board"),
    "bench": ("bench", "run benchmarks and print a table per benchmark (or JSON)"),
    "soak": ("soak", "fleet soak and chaos campaign: faults, commands, attacks, probes; the ledger of what was lost"),
}


# What `lanterne --help` says to the person who typed it.
DESCRIPTION = (
    "Lanterne: flash, provision, command and monitor ESP32 gateways on street assets\n"
    "(lamps, bins, bollards, environmental stations), or run them as virtual boards on this machine."
)
EPILOG = """\
first steps:
  lanterne demo                  the whole story here: a broker, virtual boards, readings, a command
  lanterne boards                the boards Lanterne supports
  lanterne flash --port PORT     MicroPython onto a new board
  lanterne provision --port PORT --board BOARD --device ID
                                 the firmware, the device's secrets and its config; waits until it is online
  lanterne monitor               the fleet live; `lanterne command DEVICE ACTION` to act on a device

Each command has its own --help. README.md lists every command with its flags; docs/ is the reference.
"""


def version_text() -> str:
    """`lanterne --version`: the host tools' package version and the firmware's."""
    import re
    from importlib.metadata import PackageNotFoundError, version

    from host_tools.runtime.paths import FIRMWARE

    try:
        host = version("lanterne")
    except PackageNotFoundError:
        host = "(not installed: run from a checkout)"
    m = re.search(r'^__version__ = "([^"]+)"', (FIRMWARE / "lanterne" / "__init__.py").read_text(), re.MULTILINE)
    return f"lanterne {host} (host tools)\nfirmware {m.group(1) if m else '?'} (what `lanterne provision` puts on a board)"


class _Version(argparse.Action):
    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, help="print the host tools' and the firmware's versions and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


class CommandError(Exception):
    """An error a person can act on: printed as one line (plus hint), exit status 1."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lanterne", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(f"host_tools.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("host_tools.cli."):
                sub.add_parser(name, help=help_text, description=help_text).set_defaults(_module=module, _missing=True)
                continue
            raise
        # A module with OWN_HELP declares its own -h/--help (`lanterne command dim --help`: that action's help).
        p = sub.add_parser(name, help=help_text, description=help_text, add_help=not getattr(mod, "OWN_HELP", False))
        p.set_defaults(_module=module)
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
