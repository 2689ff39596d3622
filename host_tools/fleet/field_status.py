"""Field changes as the back office learns them: from each device's status on the broker.

A board reports the changes an installer saved with its setup page (its field.json: `{"n", "hash",
"fields"}`) in every status (`"field"`), and the status is retained on
`lanterne/v1/{site}/{device}/status`. So an operator with no serial cable reads a fleet's field
changes from the broker: `read_statuses` subscribes as the back office to the status topic of
each device and keeps what the broker holds (the retained status, or a live one that comes
meanwhile); `field_status` compares a status's field record with the registry, as
`lanterne verify --port` does with the board's config.json, and records a valid record in the
registry, so that `lanterne registry accept DEVICE` adopts it.

What a status cannot tell: a board that is offline (its last will, `{"state": "offline"}`,
replaced its status), one whose status never reached this broker, and a LoRaWAN board (it sends
no status at all) are listed as unknown; `lanterne verify --port` reads them over serial.
A field record is checked before it is recorded: a JSON object with a count, a hash and the
fields, only fields the setup page may change, values the firmware's config schema accepts;
anything else is refused with the reason, and the registry keeps what it had.
The broker's ACL (`lanterne broker-files`) lets only the device itself publish on its status
topic, so a record read there is the device's own word, as over serial.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.fleet import ProvisionError
from host_tools.fleet.config import firmware_config, parse_broker_url
from host_tools.fleet.registry import DEFAULT_PATH, Registry
from host_tools.fleet.verify import ConfigDiff, _config_diffs
from host_tools.runtime import firmware_module

TOPIC = "lanterne/v1/{site}/{device}/status"
SERIAL_HINT = "lanterne verify --port PORT"


def status_topic(site: str, device: str) -> str:
    return TOPIC.format(site=site, device=device)


def sends_status(config: dict) -> bool:
    """Whether a device with this (registry) config sends statuses over MQTT: a LoRaWAN-only board
    does not (its uplink carries readings only); the dual board does while its MQTT link is up."""
    return config.get("transport", "mqtt") != "lorawan"


def read_statuses(url: str, topics: dict[str, str], *, username: str | None = None, password: str | None = None,
                  ca_cert: str | None = None, wait: float = 5.0) -> dict[str, bytes]:
    """The status the broker holds for each device (device -> topic): device -> payload, for those
    with one. Returns as soon as every device has one, else after `wait` seconds. Raises
    `ProvisionError` when the broker cannot be reached, refuses the login or the subscription."""
    import paho.mqtt.client as paho

    try:
        host, port, tls = parse_broker_url(url)
    except ValueError as exc:
        raise ProvisionError(str(exc), field="broker") from None
    by_topic = {t: d for d, t in topics.items()}
    got: dict[str, bytes] = {}
    cond = threading.Condition()
    state = {"subscribed": False, "error": None}

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            with cond:
                state["error"] = f"the broker {url} refused the back-office login: {reason_code}"
                cond.notify_all()
            return
        client.subscribe([(t, 1) for t in by_topic])

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        with cond:
            refused = [t for t, rc in zip(by_topic, reason_codes, strict=False) if rc.is_failure]
            if refused:
                state["error"] = f"the broker {url} does not let the back office read {refused[0]}"
            state["subscribed"] = True
            cond.notify_all()

    def on_message(client, userdata, msg):
        device = by_topic.get(msg.topic)
        if device is not None:
            with cond:
                got[device] = bytes(msg.payload)  # the latest: a live status after the retained one wins
                cond.notify_all()

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"lanterne-verify-{secrets.token_hex(4)}")
    if username:
        c.username_pw_set(username, password)
    if tls or ca_cert:
        c.tls_set(ca_certs=ca_cert)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    try:
        c.connect(host, port, keepalive=30)
    except OSError as exc:
        raise ProvisionError(f"cannot reach the broker {url} from this host: {exc.strerror or exc}",
                             hint="check --broker", field="broker") from None
    c.loop_start()
    try:
        deadline = time.monotonic() + max(wait, 0.0) + 10.0  # (the login and the subscription: 10 s at most)
        with cond:
            while not (state["subscribed"] or state["error"]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProvisionError(f"the broker {url} did not answer within 10 s", hint="check --broker", field="broker")
                cond.wait(min(left, 0.1))
            if state["error"]:
                raise ProvisionError(state["error"], hint="give the broker the registry's files (lanterne broker-files --out DIR)",
                                     field="broker")
            # Retained statuses follow the subscription's acknowledgement at once; a device with
            # none keeps the wait going until `wait` is over.
            until = time.monotonic() + max(wait, 0.0)
            while len(got) < len(by_topic):
                left = until - time.monotonic()
                if left <= 0:
                    break
                cond.wait(min(left, 0.1))
            return dict(got)
    finally:
        c.disconnect()  # first: wakes the network loop, so loop_stop returns at once
        c.loop_stop()


@dataclass
class FieldStatus:
    """One device's field changes as its status on the broker tells them."""

    device: str
    site: str
    source: str  # what the broker held: "online status", "last will (offline)", "no status", "LoRaWAN (sends no status)"
    field_doc: dict | None = None  # the status's field record, when valid
    changes: list[ConfigDiff] = field(default_factory=list)  # made on site, not the registry's yet
    known: bool = False  # the status said what was changed on site (or that nothing was)
    accepted: bool = False  # the record is the one `lanterne registry accept` adopted
    problem: str | None = None  # why the status's field record was not used
    registry_flag: str = ""

    @property
    def ok(self) -> bool:
        """Nothing left to accept, as far as the status can tell (an unknown device is not ok)."""
        return self.known and not self.changes and not self.problem

    def state_text(self) -> str:
        if self.problem:
            return f"field record refused: {self.problem}"
        if not self.known:
            if self.source.startswith("LoRaWAN"):
                return f"field changes unknown: a LoRaWAN board sends no status; read them over serial: {SERIAL_HINT}"
            if self.source.startswith("last will"):
                return ("field changes unknown: the board is offline (its last will replaced its status); "
                        f"again once it is back, or {SERIAL_HINT}")
            if self.source == "no status":
                return f"field changes unknown: no status on the broker; check that the board is up, or {SERIAL_HINT}"
            return f"field changes unknown: its status carries no field record; {SERIAL_HINT}"
        if self.changes:
            return f"{len(self.changes)} field change(s) made on site, not accepted yet"
        if self.field_doc and self.field_doc.get("fields"):
            names = ", ".join(sorted(self.field_doc["fields"]))
            how = "accepted into the registry" if self.accepted else "the registry's values already"
            return f"matches the registry; field changes made on site ({names}; {self.field_doc.get('n')} save(s)) {how}"
        return "matches the registry; no field changes made on site"

    def lines(self) -> list[str]:
        out = [f"{self.device} (site {self.site}, {self.source}): {self.state_text()}"]
        for d in self.changes:
            out.append(f"  field change (setup page): {d.text()[len('config field '):]}")
        if self.changes:
            out.append(f"    run: lanterne registry accept {self.device}{self.registry_flag} (intended: adopt it), or"
                       f" lanterne provision --port PORT --device {self.device}{self.registry_flag}"
                       " (the registry's value back onto the board)")
        return out

    def to_json(self) -> dict:
        return {"device": self.device, "site": self.site, "source": self.source, "ok": self.ok, "known": self.known,
                "field": self.field_doc, "field_changes": [d.to_json() for d in self.changes], "accepted": self.accepted,
                "problem": self.problem, "state": self.state_text()}


def _check_record(doc, config: dict) -> str | None:
    """Why a status's field record cannot be used (None: it can)."""
    editable = firmware_module("field").EDITABLE
    if not isinstance(doc, dict):
        return f"not a JSON object ({type(doc).__name__})"
    fields, n, digest = doc.get("fields"), doc.get("n"), doc.get("hash")
    if not isinstance(fields, dict) or not isinstance(n, int) or isinstance(n, bool) or n < 0 or not isinstance(digest, str):
        return "not a field record ({\"n\": saves, \"hash\": ..., \"fields\": {...}})"
    others = sorted(set(fields) - set(editable))
    if others:
        return f"names fields the setup page cannot change: {', '.join(map(str, others))}"
    schema = firmware_config()
    _cfg, errors = schema.validate({**config, **fields})
    bad = [e.split(": ", 1)[-1] for e in errors if any(f"field '{k}'" in e for k in fields)]
    if bad:
        return bad[0]
    return None


def field_status(registry: Registry, device: str, payload: bytes | None) -> FieldStatus:
    """What `payload` (the device's status on the broker, None: none) says of its field changes,
    against the registry; a valid record with changes is recorded in the registry (as verify
    over serial records it), for `lanterne registry accept`."""
    rec = registry.get(device)
    if rec is None:
        raise KeyError(device)
    out = FieldStatus(device, rec.site, "no status")
    if registry.path != Path(DEFAULT_PATH):
        out.registry_flag = f" --registry {registry.path}"
    if not sends_status(rec.config):
        out.source = "LoRaWAN (sends no status)"
        return out
    if payload is None:
        return out
    try:
        doc = json.loads(payload)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        out.source = "status"
        out.problem = "its status on the broker is not a JSON object"
        return out
    state = doc.get("state")
    out.source = "last will (offline)" if state == "offline" else f"{state or 'unknown'} status"
    if "field" not in doc:
        return out  # the last will, or a short status (no room on the board's heap for the whole one)
    record = doc["field"]
    if record is None:
        out.known = True
        return out
    why = _check_record(record, rec.config)
    if why:
        out.problem = f"{why} (in the status on {status_topic(rec.site, device)})"
        return out
    out.known = True
    out.field_doc = record
    fields = record["fields"]
    diffs = _config_diffs({**rec.config, **fields}, rec.config)
    out.changes = [d for d in diffs if d.field in fields]
    if fields:
        registry.record_field_changes(device, record)
        _seen, accepted = registry.field_changes(device)
        out.accepted = accepted == record.get("hash")
    return out


def fleet_field_status(registry: Registry, url: str, devices: list[str] | None = None, *, ca_cert: str | None = None,
                       wait: float = 5.0) -> tuple[list[FieldStatus], list[str]]:
    """The field changes of `devices` (None: every device of the registry that sends a status), from
    their statuses on the broker at `url`, read with the registry's back-office login. Returns the
    reports and, when all were asked, the LoRaWAN devices left out (they send no status).
    Raises KeyError naming a device not in the registry, `ProvisionError` for the broker."""
    left_out = []
    if devices is None:
        recs = registry.devices()
        left_out = [r.id for r in recs if not sends_status(r.config)]
        recs = [r for r in recs if sends_status(r.config)]
    else:
        recs = []
        for name in devices:
            rec = registry.get(name)
            if rec is None:
                raise KeyError(name)
            recs.append(rec)
    topics = {r.id: status_topic(r.site, r.id) for r in recs if sends_status(r.config)}
    payloads = {}
    if topics:
        user, password = registry.backoffice_credentials()
        payloads = read_statuses(url, topics, username=user, password=password, ca_cert=ca_cert, wait=wait)
    return [field_status(registry, r.id, payloads.get(r.id)) for r in recs], left_out
