"""Ingest: frames in, rows out. Decode, give each reading its full seq and its sampling time,
check the frame came from the device it claims, de-duplicate, and batch for the database.

One entry point per kind of input, all feeding the same batch:
- `decoded(device, readings, received_at, ...)`: readings already decoded — the call a
  LoRaWAN network-server integration (ChirpStack, The Things Stack) makes with the output
  of `host_tools/codec/formatter.js` or `decode(payload, fport)` and the network server's
  receive time. Every other path ends here.
- `uplink(device, payload, received_at, fport=None, ...)`: a raw frame (MQTT framing, or a
  LoRaWAN payload with its FPort);
- `mqtt(topic, payload, received_at, retained)`: anything under `lanterne/v1/{site}/{device}/`
  (up, status, ack, cmd).
`flush()` writes the batch in one transaction and returns what was new; on a database error
the batch is kept, so the caller retries it and acknowledges nothing meanwhile.

Sampling time = receive time − age (docs/payload.md): readings sent late after an outage
keep the time they were taken. The seq is the board's reading counter; a frame carries its
low 16 bits and `host_tools.codec.seq.extend_seq` gives it back its high bits from the
highest seq seen for the device (kept in the database, so a restart and a second instance
start from the same reference). De-duplication is the database's unique key (device, seq):
a reading the broker delivers twice, or that reaches two instances, is written once.

What cannot be stored as data goes to `bad_frames` with a reason code (`REASONS`) and a
sentence, its payload kept byte for byte. Nothing here raises on bad input.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from host_tools.backoffice.bridge.database import Batch, Database
from host_tools.backoffice.bridge.devices import Device, Directory
from host_tools.backoffice.bridge.schema import READING_COLUMNS
from host_tools.codec.decoder import FPORT_BASE, STATUS_NAMES, VERSIONS, PayloadError, decode
from host_tools.codec.seq import extend_seq
from host_tools.runtime import firmware_module

cmd = firmware_module("commands")
UTC = dt.timezone.utc
TOPIC_ROOT = ("lanterne", "v1")
KINDS = ("up", "status", "ack", "cmd")

REASONS = {
    "bad_topic": "the topic is not lanterne/v1/{site}/{device}/{up,status,ack,cmd}",
    "unknown_device": "the device is not in the fleet registry",
    "wrong_site": "the device is registered at another site",
    "unknown_version": "a payload format version this bridge does not read",
    "undecodable": "the frame does not decode (random bytes, truncated, check mismatch)",
    "no_seq": "a reading without a seq cannot be ordered or de-duplicated",
    "impersonation": "the message did not come from the device it names (fields its board lacks, "
                     "a status naming another device, a tag that does not verify with its key)",
    "bad_status": "the status message is not a JSON object",
}
STATUS_BITS = {name: 1 << i for i, name in enumerate(STATUS_NAMES)}
_KNOWN = frozenset(READING_COLUMNS) | {"status", "seq", "age"}


@dataclass
class Committed:
    """What one flush wrote, for the outputs (NGSI-LD, Home Assistant): only what is new."""

    new_readings: dict[str, dict] = field(default_factory=dict)  # device -> its newest new reading
    statuses: dict[str, dict] = field(default_factory=dict)  # device -> status (parsed)
    acks: list[dict] = field(default_factory=list)
    written: int = 0
    duplicates: int = 0
    bad: int = 0


def command_row(device: str, key: bytes, frame: bytes, seen_at: float, source: str) -> dict:
    """The `commands` row of a command frame for `device`; raises cmd.CommandError if it does not verify."""
    opcode, counter, args = cmd.Verifier(device, key).check(frame)
    return {"device": device, "counter": counter, "command": cmd.NAMES.get(opcode, "unknown"),
            "args": json.dumps(args, default=lambda v: v.hex() if isinstance(v, (bytes, bytearray)) else str(v)),
            "frame": bytes(frame), "source": source, "seen_at": dt.datetime.fromtimestamp(seen_at, UTC)}


class Ingestor:
    """Single-threaded: one worker feeds it and flushes it."""

    def __init__(self, db: Database, directory: Directory, *, listeners: list[Callable[[Committed], None]] | None = None):
        self.db = db
        self.directory = directory
        self.listeners = list(listeners or [])
        self.batch = Batch()
        self.highest: dict[str, int] = db.highest_seqs()
        self.counts: Counter = Counter()

    # -- inputs ------------------------------------------------------------------------------
    def mqtt(self, topic: str, payload: bytes, received_at: float, retained: bool = False) -> None:
        parts = topic.split("/")
        if len(parts) != 5 or tuple(parts[:2]) != TOPIC_ROOT or parts[4] not in KINDS or not parts[2] or not parts[3]:
            self.bad(topic, "up", None, None, "bad_topic", f"topic {topic!r} is not lanterne/v1/SITE/DEVICE/KIND",
                     payload, received_at)
            return
        site, device, kind = parts[2], parts[3], parts[4]
        if kind == "up":
            self.uplink(device, payload, received_at, site=site, topic=topic)
        elif kind == "status":
            self.status(site, device, payload, received_at, topic=topic, retained=retained)
        elif kind == "ack":
            self.ack(site, device, payload, received_at, topic=topic)
        else:
            self.command(site, device, payload, received_at, topic=topic)

    def _device(self, kind, topic, site, device, payload, received_at) -> Device | None:
        dev = self.directory.get(device)
        if dev is None:
            self.bad(topic, kind, site, device, "unknown_device",
                     f"device {device!r} is not in the fleet registry", payload, received_at)
            return None
        if site is not None and dev.site != site:
            self.bad(topic, kind, site, device, "wrong_site",
                     f"device {device} is registered at site {dev.site!r}, this came under site {site!r}",
                     payload, received_at)
            return None
        return dev

    def uplink(self, device: str, payload: bytes, received_at: float, *, fport: int | None = None,
               site: str | None = None, source: str = "mqtt", topic: str | None = None) -> None:
        """A raw frame: MQTT framing (fport None) or a LoRaWAN payload received on `fport`."""
        topic = topic or f"{source}:{device}"
        kind = "up" if source == "mqtt" else source
        payload = bytes(payload)
        dev = self._device(kind, topic, site, device, payload, received_at)
        if dev is None:
            return
        version = (payload[0] if payload else None) if fport is None else fport - FPORT_BASE
        if version is not None and version not in VERSIONS and (fport is None or FPORT_BASE < fport < FPORT_BASE + 100):
            where = f"byte 0 is {version}" if fport is None else f"FPort {fport}"
            known = " and ".join(str(v) for v in VERSIONS)
            ports = " and ".join(str(FPORT_BASE + v) for v in VERSIONS)
            self.bad(topic, kind, site, device, "unknown_version",
                     f"{where}: payload format version {version}, this bridge reads versions {known}"
                     f"{'' if fport is None else f' (FPorts {ports})'}", payload, received_at)
            return
        try:
            frame = decode(payload, fport)
        except PayloadError as exc:
            self.bad(topic, kind, site, device, "undecodable", str(exc), payload, received_at)
            return
        self.decoded(device, frame["readings"], received_at, site=site, source=source, topic=topic, raw=payload,
                     known=dev)

    def decoded(self, device: str, readings: list[dict], received_at: float, *, site: str | None = None,
                source: str = "lorawan", topic: str | None = None, raw: bytes = b"", known: Device | None = None) -> int:
        """Decoded readings of one frame from `device`, received at `received_at` (Unix seconds).

        Each reading has its 16-bit `seq` and its `age` (s), as the decoders return them.
        Returns the number of readings added to the batch (duplicates within it excluded).
        """
        topic = topic or f"{source}:{device}"
        kind = "up" if source == "mqtt" else source
        dev = known or self._device(kind, topic, site, device, raw, received_at)
        if dev is None:
            return 0
        if dev.fields is not None:
            foreign = sorted({k for r in readings for k in r} - dev.fields)
            if foreign:
                self.bad(topic, kind, site, device, "impersonation",
                         f"the frame carries {', '.join(foreign)}, which board {dev.board} of {device} cannot "
                         "measure: another device publishing as it?", raw, received_at)
                return 0
        if not readings or any(not isinstance(r.get("seq"), int) for r in readings):
            self.bad(topic, kind, site, device, "no_seq", "a reading without a seq cannot be ordered or de-duplicated",
                     raw, received_at)
            return 0
        received = dt.datetime.fromtimestamp(received_at, UTC)
        highest = self.highest.get(device)
        added = 0
        for r in readings:
            seq = extend_seq(r["seq"] & 0xFFFF, highest)
            if highest is None or seq > highest:
                highest = seq
            key = (device, seq)
            if key in self.batch.readings:
                continue
            age = r.get("age")
            row = {c: r.get(c) for c in READING_COLUMNS}
            row["device"] = device
            row["seq"] = seq
            row["site"] = dev.site
            row["source"] = source
            row["received_at"] = received
            row["age_s"] = age
            row["sampled_at"] = received if age is None else dt.datetime.fromtimestamp(received_at - age, UTC)
            flags = r.get("status")
            row["status"] = None if flags is None else sum(STATUS_BITS.get(f, 0) for f in flags)
            extra = {k: v for k, v in r.items() if k not in _KNOWN}
            row["extra"] = json.dumps(extra, sort_keys=True) if extra else None
            self.batch.readings[key] = row
            added += 1
        self.highest[device] = highest
        st = self.batch.states.setdefault(device, {"site": dev.site, "first_seen": received})
        st["highest_seq"] = max(highest, st.get("highest_seq") or highest)
        st["last_seen"] = received
        self.counts["frames"] += 1
        return added

    def status(self, site: str, device: str, payload: bytes, received_at: float, *, topic: str,
               retained: bool = False) -> None:
        dev = self._device("status", topic, site, device, payload, received_at)
        if dev is None:
            return
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            doc = None
        if not isinstance(doc, dict):
            self.bad(topic, "status", site, device, "bad_status", "the status message is not a JSON object",
                     payload, received_at)
            return
        claimed = doc.get("device")
        if claimed is not None and claimed != device:
            self.bad(topic, "status", site, device, "impersonation",
                     f"a status on {device}'s topic says it is device {claimed!r}", payload, received_at)
            return
        at = dt.datetime.fromtimestamp(received_at, UTC)
        self.batch.statuses[device] = {"site": dev.site, "state": str(doc.get("state"))[:16], "status": json.dumps(doc),
                                       "status_at": at, "doc": doc}
        if not retained:  # a retained status is the broker's copy: it says nothing of when the device was seen
            st = self.batch.states.setdefault(device, {"site": dev.site, "first_seen": at})
            st["last_seen"] = at

    def _key_check(self, dev: Device, check):
        """Run `check(key)`; on a bad tag, read the registry again once (the key may have rotated)."""
        try:
            return check(dev.key)
        except cmd.CommandError as exc:
            if exc.reason != cmd.BAD_TAG:
                raise
            fresh = self.directory.fresh_key(dev.id)
            if fresh is None or fresh == dev.key:
                raise
            return check(fresh)

    def ack(self, site: str, device: str, payload: bytes, received_at: float, *, topic: str) -> None:
        dev = self._device("ack", topic, site, device, payload, received_at)
        if dev is None:
            return
        if dev.key is None:
            self.bad(topic, "ack", site, device, "impersonation", f"no command key for {device}: the ack cannot be verified",
                     payload, received_at)
            return
        try:
            a = self._key_check(dev, lambda key: cmd.parse_ack(key, device, payload))
        except cmd.CommandError as exc:
            code = "impersonation" if exc.reason == cmd.BAD_TAG else "undecodable"
            self.bad(topic, "ack", site, device, code, f"ack: {exc}",
                     payload, received_at)
            return
        row = {"device": device, "counter": a["counter"], "command": a["command"], "status": a["status"],
               "reason": a["reason"], "data": bytes(a["data"]), "received_at": dt.datetime.fromtimestamp(received_at, UTC)}
        self.batch.acks.append(row)

    def command(self, site: str, device: str, payload: bytes, received_at: float, *, topic: str,
                source: str = "broker") -> None:
        """A command seen on a device's cmd topic (or sent by the bridge itself): recorded once."""
        dev = self._device("cmd", topic, site, device, payload, received_at)
        if dev is None:
            return
        if dev.key is None:
            self.bad(topic, "cmd", site, device, "impersonation", f"no command key for {device}: cannot verify",
                     payload, received_at)
            return
        try:
            row = self._key_check(dev, lambda key: command_row(device, key, payload, received_at, source))
        except cmd.CommandError as exc:
            code = "impersonation" if exc.reason in (cmd.BAD_TAG, cmd.WRONG_DEVICE) else "undecodable"
            self.bad(topic, "cmd", site, device, code, f"command: {exc}", payload, received_at)
            return
        self.batch.commands.append(row)

    def bad(self, topic: str, kind: str, site: str | None, device: str | None, code: str, reason: str,
            payload: bytes, received_at: float) -> None:
        self.counts[code] += 1
        self.batch.bad.append({"received_at": dt.datetime.fromtimestamp(received_at, UTC), "topic": topic[:256],
                               "kind": kind, "site": site, "device": device, "reason_code": code,
                               "reason": reason, "payload": bytes(payload)})

    # -- output ------------------------------------------------------------------------------
    def pending(self) -> int:
        return len(self.batch)

    def flush(self) -> Committed | None:
        """Write the batch (one transaction). Raises on a database error, keeping the batch."""
        batch = self.batch
        if not len(batch):
            return None
        result = self.db.write(batch)
        self.batch = Batch()
        done = Committed(written=len(result.new), duplicates=result.duplicates, bad=len(batch.bad))
        for device, seq in result.new:
            # Only what is now the device's newest reading: late backlog does not become its state.
            if seq >= self.highest.get(device, seq):
                done.new_readings[device] = batch.readings[(device, seq)]
        done.statuses = {d: s["doc"] for d, s in batch.statuses.items()}
        done.acks = batch.acks
        self.counts["readings"] += done.written
        self.counts["duplicates"] += done.duplicates
        for fn in self.listeners:
            fn(done)
        return done
