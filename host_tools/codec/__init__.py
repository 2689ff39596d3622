"""Payload codec on the host: decode frames, and encode JSON readings with the firmware's own encoder.

`decode(frame, fport=None) -> dict` is the library call behind `lanterne decode`;
`encode_values(readings, budget, runtime, lorawan)` runs firmware/lanterne/codec.py
(and codec_values.py) either on the MicroPython unix port (what a board sends) or
in this CPython process, and returns the frames. `seq.SeqTracker` gives readings
their full sequence number back. The wire format is docs/payload.md.
"""

from __future__ import annotations

import importlib
import json
import sys

from host_tools.codec.decoder import (
    FORMAT_V3,
    FORMAT_VERSION,
    FPORT,
    FPORT_BASE,
    FPORT_V3,
    MAX_FRAME,
    PayloadError,
    decode,
)
from host_tools.runtime.paths import FIRMWARE

__all__ = [
    "EU868_BUDGETS",
    "FORMAT_V3",
    "FORMAT_VERSION",
    "FPORT",
    "FPORT_BASE",
    "FPORT_V3",
    "MAX_FRAME",
    "EncodeError",
    "PayloadError",
    "decode",
    "encode_values",
    "firmware_codec",
    "firmware_codec_values",
]

# LoRaWAN application-payload limits: 11 (US915 DR0, AS923 with dwell time), 51 (EU868 DR0-2, SF12-SF10),
# 115 (DR3, SF9), 222 (DR4-5 through a repeater, SF8-SF7), 242 (DR4-7 direct).
EU868_BUDGETS = (11, 51, 115, 222, 242)
RUNTIMES = ("micropython", "cpython")



class EncodeError(ValueError):
    """A reading that cannot be encoded: a bad value, or too large for the budget. `index` names it."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


def _firmware_module(name: str):
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))
    return importlib.import_module(f"lanterne.{name}")


def firmware_codec():
    """firmware/lanterne/codec.py imported into CPython (the very file the board runs)."""
    return _firmware_module("codec")


def firmware_codec_values():
    """firmware/lanterne/codec_values.py (`from_values`: JSON values -> integer reading) in CPython."""
    return _firmware_module("codec_values")


# Runs unchanged on CPython and MicroPython: JSON values -> frames (hex), or the first error.
_PACK_SOURCE = '''
def pack(codec, codec_values, items, budget, lorawan):
    import binascii
    readings = []
    for i in range(len(items)):
        try:
            readings.append(codec_values.from_values(items[i]))
        except ValueError as exc:
            return {"error": str(exc), "index": i}
    enc = codec.Encoder(budget, lorawan)
    frames = []
    start = 0
    while start < len(readings):
        n = enc.encode(readings, start, -1, budget)
        if n == 0:
            alone = codec.Encoder(codec.MAX_FRAME, lorawan)
            alone.encode(readings, start, 1)
            return {"error": "needs %d bytes on its own, more than the %d-byte budget" % (alone.length, budget),
                    "index": start, "needs": alone.length}
        frames.append({"hex": binascii.hexlify(enc.frame()).decode(), "first": start, "count": n,
                       "version": enc.version})
        start += n
    return {"frames": frames}
'''


def _pack_cpython(items: list, budget: int, lorawan: bool) -> dict:
    namespace: dict = {}
    exec(_PACK_SOURCE, namespace)
    return namespace["pack"](firmware_codec(), firmware_codec_values(), items, budget, lorawan)


def _pack_micropython(items: list, budget: int, lorawan: bool, heapsize: int) -> dict:
    from host_tools.runtime import unix_port

    script = _PACK_SOURCE + (
        "\nimport sys, json\nfrom lanterne import codec, codec_values\n"
        f"print(json.dumps(pack(codec, codec_values, json.loads(sys.stdin.read()), {budget}, {lorawan})))\n"
    )
    return unix_port.run_json(script, heapsize=heapsize, stdin=json.dumps(items).encode())


def encode_values(
    readings: dict | list[dict],
    budget: int = 51,
    runtime: str = "micropython",
    heapsize: int | None = None,
    lorawan: bool = False,
) -> list[dict]:
    """Encode JSON readings into frames of at most `budget` bytes.

    `lorawan`: frames without the version byte, to be sent on FPort "fport" (FPORT_BASE +
    the frame's version: 102, or 103 for v3) (else MQTT frames, byte 0 the version).
    Returns one dict per frame: {"frame": bytes, "first": index of its first reading,
    "count": readings packed, "version", "fport"}. Raises
    EncodeError naming the reading for a bad value or a reading larger than the budget.
    """
    items = [readings] if isinstance(readings, dict) else list(readings)
    if not items:
        raise EncodeError("no readings to encode")
    if not 3 <= budget <= MAX_FRAME:
        raise EncodeError(f"budget must be 3..{MAX_FRAME} bytes, got {budget}")
    if runtime == "cpython":
        result = _pack_cpython(items, budget, lorawan)
    elif runtime == "micropython":
        from host_tools.runtime.unix_port import DEFAULT_HEAP

        result = _pack_micropython(items, budget, lorawan, heapsize or DEFAULT_HEAP)
    else:
        raise EncodeError(f"unknown runtime {runtime!r} (choose {' or '.join(RUNTIMES)})")
    if "error" in result:
        raise EncodeError(f"reading {result['index']}: {result['error']}", index=result["index"])
    return [
        {"frame": bytes.fromhex(f["hex"]), "first": f["first"], "count": f["count"], "version": f["version"],
         "fport": FPORT_BASE + f["version"]}
        for f in result["frames"]
    ]
