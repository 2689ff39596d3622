"""`lanterne encode`: JSON readings on stdin -> payload frames as hex, one per line (MQTT or LoRaWAN framing)."""

from __future__ import annotations

import json
import sys

from host_tools.cli import CommandError


def configure(p):
    p.add_argument(
        "--runtime",
        choices=("micropython", "cpython"),
        default="micropython",
        help="run the firmware encoder on the MicroPython unix port (default: what a board sends) or in CPython",
    )
    p.add_argument(
        "--budget",
        type=int,
        default=51,
        metavar="BYTES",
        help="largest frame in bytes (default 51, EU868 SF10-12; 11, 115, 222, 242 for other data rates, up to 1024 for MQTT)",
    )
    p.add_argument(
        "--lorawan",
        action="store_true",
        help="LoRaWAN framing: no version byte, the frame goes out on FPort 102 (default: MQTT framing, byte 0 = version)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="also say on stderr which readings each frame holds")


def run(args) -> int:
    from host_tools.codec import MAX_FRAME, EncodeError, encode_values
    from host_tools.runtime.unix_port import MicroPythonError

    if not 3 <= args.budget <= MAX_FRAME:
        raise CommandError(f"--budget {args.budget} is out of range", hint=f"use 3..{MAX_FRAME} bytes, e.g. 51 for LoRaWAN SF12")
    text = sys.stdin.read()
    if not text.strip():
        raise CommandError("no input: expected one JSON reading or a JSON list of readings on stdin",
                           hint='echo \'{"temperature": 21.5, "seq": 1}\' | lanterne encode')
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"stdin is not valid JSON: {exc}") from None
    if isinstance(value, dict) and isinstance(value.get("readings"), list):
        value = value["readings"]  # the output of `lanterne decode` encodes back
    if not isinstance(value, (dict, list)):
        raise CommandError("expected a JSON object (one reading) or a list of objects")
    try:
        frames = encode_values(value, budget=args.budget, runtime=args.runtime, lorawan=args.lorawan)
    except EncodeError as exc:
        raise CommandError(str(exc), hint="field names, units and ranges: docs/payload.md") from None
    except FileNotFoundError as exc:
        raise CommandError(str(exc), hint="or use --runtime cpython") from None
    except MicroPythonError as exc:
        raise CommandError(f"the firmware encoder failed on the unix port: {exc}") from None
    for f in frames:
        print(f["frame"].hex())
        if args.verbose:
            last = f["first"] + f["count"] - 1
            port = f", FPort {f['fport']}" if args.lorawan else ""
            print(f"  {len(f['frame'])} bytes{port}, readings {f['first']}..{last}", file=sys.stderr)
    return 0
