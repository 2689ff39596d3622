"""`lanterne decode HEX|-`: payload frames (hex or base64) -> JSON, one line per frame; `--fport` for LoRaWAN payloads."""

from __future__ import annotations

import base64
import binascii
import json
import sys

from host_tools.cli import CommandError


def configure(p):
    p.add_argument("frame", metavar="HEX|-", help="a frame in hex (spaces allowed), or - to read frames from stdin, one per line")
    p.add_argument("--base64", action="store_true", help="frames are base64, as network servers show them (frm_payload)")
    p.add_argument(
        "--fport",
        type=int,
        default=None,
        metavar="N",
        help="LoRaWAN payloads received on FPort N, which carries the format version (102 for v2); "
        "default: MQTT frames, whose byte 0 is the version",
    )
    p.add_argument("--indent", type=int, default=None, metavar="N", help="pretty-print the JSON with N spaces")


def _parse(text: str, as_base64: bool) -> bytes:
    text = text.strip()
    try:
        if as_base64:
            return base64.b64decode(text, validate=True)
        cleaned = "".join(text.split())
        if cleaned[:2].lower() == "0x":
            cleaned = cleaned[2:]
        return bytes.fromhex(cleaned)
    except (ValueError, binascii.Error) as exc:
        kind = "base64" if as_base64 else "hex"
        raise CommandError(f"{text[:40]!r} is not {kind}: {exc}", hint="give the frame as printed by `lanterne encode`") from None


def run(args) -> int:
    from host_tools.codec import PayloadError, decode

    lines = sys.stdin.read().splitlines() if args.frame == "-" else [args.frame]
    frames = [line for line in lines if line.strip()]
    if not frames:
        raise CommandError("no frame given", hint="lanterne decode 02a6... or: lanterne encode < r.json | lanterne decode -")
    failed = 0
    for number, text in enumerate(frames, 1):
        data = _parse(text, args.base64)
        try:
            result = decode(data, args.fport)
        except PayloadError as exc:
            if len(frames) == 1:
                raise CommandError(f"invalid payload: {exc}") from None
            print(f"lanterne decode: frame {number}: invalid payload: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(json.dumps(result, indent=args.indent, ensure_ascii=False))
    return 1 if failed else 0
