"""The back office's release server: answers boards fetching an update over MQTT (docs/ota.md).

A board that got an `ota_start` command asks on `lanterne/v1/{site}/{device}/ota/req` and is
answered on `…/ota/data` (QoS 1), at its own pace (one request in flight: the board throttles):

  "M" digest8                   -> "M" digest8 manifest
  "B" digest8 base8 max opts n u16*n
                                -> "B" digest8 last n (u16 index, u8 flags, u16 offset,
                                   u16 out_len, u16 length, recipe)*n, in messages of at most
                                   `max` bytes (a block cut into parts when it must be), `last`
                                   set on the answer's last message; opts bit 0: no deflate
  a release it does not know    -> "E" digest8 reason

digest8 is the start of the manifest's SHA-256, base8 the start of the SHA-256 of the image the
board runs: when the release folder has that image, the recipes are a delta against it
(host_tools.fleet.release.delta), otherwise literals only. Recipes are computed once per
(base, release) and kept. The server keeps per-device counts (messages, wire bytes) for the
benchmark and the rollout report; `transform` lets a test alter what goes out (a tampered block).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from host_tools.fleet.release.delta import parts, plan
from host_tools.fleet.release.store import Release, ReleaseStore

MIN_MESSAGE = 256  # the smallest message size a board may ask for
ENTRY = 9  # bytes framing a part: index, flags, offset, out_len, length
HEADER = 11  # bytes framing a message: "B", digest8, last, n


def publish_bytes(topic: str, payload_len: int, qos: int) -> int:
    """Size of an MQTT 3.1.1 PUBLISH packet on the wire (fixed header, topic, packet id, payload)."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + payload_len
    return 1 + len(_varint(remaining)) + remaining


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


@dataclass
class DeviceStats:
    requests: int = 0
    messages: int = 0
    wire_bytes: int = 0  # ota/req received + ota/data sent, as MQTT packets
    blocks: int = 0
    base: str | None = None  # the image the recipes were a delta against (None: literals)


@dataclass
class ReleaseServer:
    """Serves the releases of `store` to the boards that ask, through `publish(topic, payload)`."""

    store: ReleaseStore
    publish: Callable[[str, bytes], None]
    transform: Callable[[str, int, bytes], bytes] | None = None
    log: Callable[[str], None] = lambda msg: None
    stats: dict[str, DeviceStats] = field(default_factory=dict)
    _recipes: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) != 6 or parts[4:] != ["ota", "req"] or len(payload) < 9:
            return
        site, device = parts[2], parts[3]
        out = f"lanterne/v1/{site}/{device}/ota/data"
        st = self.stats.setdefault(device, DeviceStats())
        st.requests += 1
        st.wire_bytes += publish_bytes(topic, len(payload), 0)
        kind, d8 = payload[:1], payload[1:9]
        rel = self.store.by_digest(d8)
        if rel is None:
            self._send(device, out, b"E" + d8 + b"release unknown to the release server")
            return
        if kind == b"M":
            self._send(device, out, b"M" + d8 + rel.manifest())
        elif kind == b"B" and len(payload) >= 21:
            base8 = payload[9:17]
            limit, opts, n = struct.unpack(">HBB", payload[17:21])
            wanted = [struct.unpack(">H", payload[21 + 2 * i : 23 + 2 * i])[0] for i in range(n)]
            self._blocks(device, out, rel, base8.hex(), max(MIN_MESSAGE, limit), bool(opts & 1), wanted, st)

    def _parts_for(self, rel: Release, base: str, limit: int, plain: bool) -> tuple[list, bool]:
        """Per block, its parts for messages of `limit` bytes (computed once per base and size)."""
        with self._lock:
            key = (rel.counter, base)
            if key not in self._recipes:
                old = self.store.image(base) if base != "00" * 8 else None
                self._recipes[key] = (plan(old, rel.image(), rel.block), old is not None, {})
            ops, delta, by_limit = self._recipes[key]
            if (limit, plain) not in by_limit:
                image_len, b = rel.meta["size"], rel.block
                by_limit[(limit, plain)] = [parts(o, min(b, image_len - b * i), limit - HEADER - ENTRY, plain)
                                            for i, o in enumerate(ops)]  # fmt: skip
            return by_limit[(limit, plain)], delta

    def _blocks(self, device: str, out: str, rel: Release, base: str, limit: int, plain: bool, wanted: list[int],
                st: DeviceStats) -> None:  # fmt: skip
        blocks, delta = self._parts_for(rel, base, limit, plain)
        st.base = base if delta else None
        d8 = rel.digest[:8]
        entries = []
        for i in wanted:
            if not 0 <= i < len(blocks):
                continue
            ps = blocks[i]
            for j, (offset, out_len, flags, recipe) in enumerate(ps):
                if self.transform:
                    recipe = self.transform(device, i, recipe)
                flags |= 2 if j == len(ps) - 1 else 0
                entries.append(struct.pack(">HBHHH", i, flags, offset, out_len, len(recipe)) + recipe)
            st.blocks += 1
        msgs: list[list[bytes]] = [[]]
        size = HEADER
        for e in entries:
            if msgs[-1] and size + len(e) > limit:
                msgs.append([])
                size = HEADER
            msgs[-1].append(e)
            size += len(e)
        for k, msg in enumerate(msgs):
            last = 1 if k == len(msgs) - 1 else 0
            self._send(device, out, b"B" + d8 + bytes((last, len(msg))) + b"".join(msg))

    def _send(self, device: str, topic: str, payload: bytes) -> None:
        st = self.stats.setdefault(device, DeviceStats())
        st.messages += 1
        st.wire_bytes += publish_bytes(topic, len(payload), 1)
        self.publish(topic, payload)
