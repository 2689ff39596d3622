"""The back office's LoRaWAN uplink service (`lanterne uplinks`): network-server integration in, readings and ledger downlinks out.

It subscribes to a network server's MQTT integration (ChirpStack v4 or The Things Stack v3,
host_tools/codec/lns_json.py), and for each uplink of a known device:
- FPort 102 (103 with extension fields): decodes the readings frame (host_tools/codec, docs/payload.md), gives each reading its
  full seq back and drops the ones seen before (host_tools/codec/seq.py), records them in the
  device's delivery ledger and hands the new ones on (`events`, or the `on_event` callback) in seq
  order within the frame;
- FPort 11: checks a compact command ack against the commands in flight (firmware/lanterne/ledger.py);
- FPort 13: a link test an installer ran from the board's setup page (firmware/lanterne/setup_lorawan.py):
  reported as a `link_test` event with how the network heard it; it carries no reading;
- keeps the radio figures the monitor shows (RSSI, SNR, DR, FCnt, airtime used today), and what it
  can tell of the board's backlog without its status (LoRaWAN carries none): the seqs its ledger lists
  as not arrived, and an estimate of the readings sampled since the newest one that arrived (its age
  and the device's sample period);
- after any uplink, sends the device a signed ledger downlink (FPort 12) when the budget allows
  (host_tools/backoffice/delivery_ledger.py): the network server holds it and delivers it after the
  device's next uplink (class A).

`handle(uplink)` is the whole logic and needs no broker; `start()` wires it to MQTT. With `state`
(a file, host_tools/backoffice/uplink_state.py) each device's ledger, budget and counters survive the
service's restarts: what a ledger acknowledged stays acknowledged.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from host_tools.backoffice.command_client import next_counter
from host_tools.backoffice.delivery_ledger import DAY_S, DeliveryLedger, LedgerBudget
from host_tools.codec import FPORT, FPORT_V3, PayloadError, decode
from host_tools.codec import lns_json as J
from host_tools.codec import lorawan_radio as R
from host_tools.codec.lns_devices import tts_id
from host_tools.codec.seq import SeqTracker
from host_tools.runtime import firmware_module

INTEGRATIONS = ("chirpstack", "tts")
FPORT_LINK_TEST = 13  # version 1, the test's number since the board's boot (docs/lorawan.md)


@dataclass
class LoraDevice:
    device: str
    dev_eui: str
    command_key: bytes
    join_eui: str = "0000000000000000"
    first_seq: int | None = 0  # a provisioned board numbers its readings from 0; None: from the first one seen
    sample_period_s: int | None = None  # its configured period (the registry's): estimates what it sampled since


@dataclass
class DeviceState:
    info: LoraDevice
    tracker: SeqTracker = field(default_factory=SeqTracker)
    ledger: DeliveryLedger = field(default_factory=DeliveryLedger)
    budget: LedgerBudget | None = None
    last: dict = field(default_factory=dict)  # rssi, snr, dr, fcnt, time
    airtime: list = field(default_factory=list)  # (time, seconds) of the last 24 h
    uplinks: int = 0
    readings: int = 0
    duplicates: int = 0
    ledgers_sent: int = 0
    ledger_counter: int = 0
    in_flight: dict = field(default_factory=dict)  # command counter -> opcode
    newest: dict = field(default_factory=dict)  # the newest reading received: its full seq, when it was sampled

    def airtime_today(self, now: float) -> float:
        self.airtime = [(t, s) for t, s in self.airtime if t > now - DAY_S]
        return sum(s for _, s in self.airtime)

    # -- what survives a restart (uplink_state.py) ---------------------------------------------------
    def snapshot(self) -> dict:
        led, bud = self.ledger, self.budget
        return {
            "v": 1, "device": self.info.device,
            "ledger": {"base": led.base, "next": led.next_seq, "highest": led.highest, "have": sorted(led._have)},
            "seq_highest": self.tracker.highest,
            "budget": {"sent": list(bud.sent), "last": bud.last_summary} if bud is not None else None,
            "ledger_counter": self.ledger_counter, "in_flight": {str(k): v for k, v in self.in_flight.items()},
            "airtime": self.airtime, "counts": [self.uplinks, self.readings, self.duplicates, self.ledgers_sent],
            "newest": self.newest,
        }

    def restore(self, d: dict) -> None:
        led = d["ledger"]
        self.ledger.base, self.ledger.next_seq, self.ledger.highest = led["base"], led["next"], led["highest"]
        self.ledger._have = set(led["have"])
        self.tracker = SeqTracker(d["seq_highest"])
        if self.budget is not None and d.get("budget"):
            self.budget.sent.extend(d["budget"]["sent"])
            last = d["budget"]["last"]  # (a summary compares as a tuple with a list of tuples)
            self.budget.last_summary = None if last is None else (*last[:3], [tuple(g) for g in last[3]])
        self.ledger_counter = d["ledger_counter"]
        self.in_flight = {int(k): v for k, v in d["in_flight"].items()}
        self.airtime = [tuple(a) for a in d["airtime"]]
        self.uplinks, self.readings, self.duplicates, self.ledgers_sent = d["counts"]
        self.newest = dict(d.get("newest") or {})  # (a state written before it was kept: none yet)

    def backlog(self, now: float) -> dict:
        """What the back office can tell of the board's backlog without its status: `missing`, the seqs
        its ledger lists as not arrived (between `next` and the highest received); the newest reading
        received (`newest_seq`, `newest_age_s`: since it was sampled); and `sampled_since_est`, the
        readings the board should have sampled since then at its configured period (None when the
        period or a reading is not known). Their sum `backlog_est` is an estimate: the board may have
        lost some (its store full) or sampled at another period (a command changed it)."""
        missing = sum(c for _, c in self.ledger.gaps())
        out = {"missing": missing, "newest_seq": self.newest.get("seq"), "newest_age_s": None,
               "sample_period_s": self.info.sample_period_s, "sampled_since_est": None, "backlog_est": None}
        if self.newest:
            # the estimate from the age as shown: 9.97 s shown as 10.0 with "1 sampled since" at 5 s read wrong
            age = round(max(0.0, now - self.newest["sampled_at"]), 1)
            out["newest_age_s"] = age
            if self.info.sample_period_s:
                out["sampled_since_est"] = int(age // self.info.sample_period_s)
                out["backlog_est"] = missing + out["sampled_since_est"]
        return out


def topics(integration: str, app: J.Application) -> list[str]:
    if integration == "chirpstack":
        return [f"application/{app.application_id}/device/+/event/up"]
    return [f"v3/{app.tts_application}@{app.tts_tenant}/devices/+/up"]


def downlink_message(integration: str, app: J.Application, dev: LoraDevice, fport: int, data: bytes) -> tuple[str, dict]:
    """Topic and JSON that enqueue a downlink on the network server."""
    if integration == "chirpstack":
        return J.chirpstack_topic(app, dev.dev_eui, "command/down"), J.chirpstack_down(dev.dev_eui, fport, data)
    return J.tts_topic(app, dev.device, "down/push"), J.tts_down(fport, data)


class UplinkService:
    def __init__(self, devices: list[LoraDevice], integration: str = "chirpstack", app: J.Application | None = None,
                 ledger_per_day: int = 10, broker_url: str | None = None, clock=time.time, on_event=None,
                 publish=None, state=None):
        if integration not in INTEGRATIONS:
            raise ValueError(f"integration must be one of {', '.join(INTEGRATIONS)}, not {integration!r}")
        self.integration = integration
        self.app = app or J.Application()
        self.broker_url = broker_url
        self.clock = clock
        self.on_event = on_event
        self._publish_fn = publish
        self.ledger_per_day = ledger_per_day
        self.devices = {d.dev_eui.lower(): DeviceState(d, ledger=DeliveryLedger(d.first_seq), budget=LedgerBudget(ledger_per_day))
                        for d in devices}
        # what each device's ledger acknowledged before a restart (`state`: a file path, or an UplinkState)
        self.state = None
        if state is not None:
            from host_tools.backoffice.uplink_state import StateError, UplinkState

            self.state = state if isinstance(state, UplinkState) else UplinkState(state)
            for eui, st in self.devices.items():
                saved = self.state.load(eui)
                if saved is None:
                    continue
                if saved.get("v") != 1 or saved.get("device") != st.info.device:
                    raise StateError(f"{self.state.path}: device {eui}: the state is {saved.get('device')!r}'s "
                                     f"(version {saved.get('v')}), not {st.info.device!r}'s")
                try:
                    st.restore(saved)
                except (KeyError, TypeError, ValueError, IndexError) as exc:
                    raise StateError(f"{self.state.path}: device {eui} ({st.info.device}): damaged state ({exc!r})") from None
        self.by_name = {s.info.device: s for s in self.devices.values()}
        self.by_name.update({tts_id(s.info.device): s for s in self.devices.values()})
        self.events: list[dict] = []
        self._lock = threading.RLock()
        self._client = None
        self.ledger = firmware_module("ledger")

    # -- the logic -------------------------------------------------------------------------------------
    def emit(self, event: dict) -> None:
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def handle(self, up: J.Uplink) -> None:
        with self._lock:
            st = self.devices.get(up.dev_eui.lower()) or self.by_name.get(up.device)
            if st is None:
                self.emit({"event": "unknown_device", "dev_eui": up.dev_eui, "device": up.device})
                return
            now = self.clock()
            st.uplinks += 1
            st.last = {"rssi": up.rssi, "snr": up.snr, "dr": up.dr, "fcnt": up.fcnt, "time": now, "gateways": up.gateways}
            sf = R.EU868_DR_SF.get(up.dr, 12)
            st.airtime.append((now, up.airtime_s or R.time_on_air_s(R.LORAWAN_OVERHEAD + len(up.data), sf)))
            name = st.info.device
            if up.fport in (FPORT, FPORT_V3):  # format 2, or 3 (extension fields: a lamp's energy ...)
                try:
                    decoded = decode(up.data, fport=up.fport)
                except PayloadError as exc:
                    self.emit({"event": "bad_payload", "device": name, "fcnt": up.fcnt, "error": str(exc)})
                    return
                fresh = []
                for r in decoded["readings"]:
                    if "seq" not in r:
                        fresh.append(r)
                        continue
                    full, new = st.tracker.accept(r["seq"])
                    if new and st.ledger.add(full):
                        fresh.append(dict(r, seq=full))
                    else:
                        st.duplicates += 1
                for r in sorted(fresh, key=lambda r: r.get("seq", -1)):
                    st.readings += 1
                    if "seq" in r and r["seq"] > st.newest.get("seq", -1):  # sampled `age` s before it was sent
                        st.newest = {"seq": r["seq"], "sampled_at": round(now - r.get("age", 0), 3)}
                    self.emit({"event": "reading", "device": name, "reading": r, "fcnt": up.fcnt})
            elif up.fport == FPORT_LINK_TEST:
                if len(up.data) != 2 or up.data[0] != 1:
                    self.emit({"event": "bad_payload", "device": name, "fcnt": up.fcnt,
                               "error": f"link test frame of {len(up.data)} bytes, version {up.data[:1].hex() or '-'}: not version 1"})
                else:
                    self.emit({"event": "link_test", "device": name, "number": up.data[1], "fcnt": up.fcnt, "rssi": up.rssi,
                               "snr": up.snr, "dr": up.dr, "gateways": up.gateways, "time": now})
            elif up.fport == self.ledger.FPORT_ACK:
                got = self.ledger.parse_ack(st.info.command_key, name, up.data, st.in_flight)
                if got is None:
                    self.emit({"event": "bad_ack", "device": name, "fcnt": up.fcnt})
                else:
                    counter, opcode, status, data = got
                    st.in_flight.pop(counter, None)
                    self.emit({"event": "ack", "device": name, "counter": counter, "opcode": opcode, "status": status,
                               "data": data.hex()})
            self.maybe_send_ledger(st, now)

    def _save(self, st: DeviceState) -> None:
        # (in the lock: the row is what this uplink left, before the next one is handled)
        if self.state is not None:
            self.state.save(st.info.dev_eui.lower(), st.snapshot())

    def maybe_send_ledger(self, st: DeviceState, now: float) -> bool:
        """Save the device's state, then send it a ledger downlink if one is due. In that order: a
        ledger frees on the board what it acknowledges, so the state must hold those readings before the
        frame leaves. A crash between the two then costs one ledger (counted as spent, never sent), where
        the other order could leave a freed reading the restarted service lists as missing for good."""
        summary = st.ledger.summary()
        due = st.ledger.base is not None and st.budget.due(now, summary)
        if due:
            st.ledger_counter = next_counter(st.ledger_counter)
            frame = self.ledger.build(st.info.command_key, st.info.device, st.ledger_counter, *summary)
            st.budget.spend(now, summary)
            st.ledgers_sent += 1
        self._save(st)
        if not due:
            return False
        self.send_downlink(st.info, self.ledger.FPORT_LEDGER, frame)
        self.emit({"event": "ledger", "device": st.info.device, "next": summary[0], "span": summary[1],
                   "seen": summary[2], "missing": summary[3], "bytes": len(frame), "time": now})
        return True

    def send_command(self, device: str, frame: bytes) -> dict:
        """Queue a signed command frame (docs/commands.md) for `device` as a downlink on FPort 10; its
        compact ack (FPort 11) is matched when it comes up. Class A: the network server holds the
        downlink until the device's next uplink opens its receive windows."""
        with self._lock:
            st = self.by_name.get(device)
            if st is None:
                raise KeyError(f"{device}: not a device of this uplink service")
            frame = bytes(frame)
            counter, opcode = int.from_bytes(frame[5:9], "big"), frame[9]
            st.in_flight[counter] = opcode
            self._save(st)
        self.send_downlink(st.info, self.ledger.FPORT_COMMAND, frame)
        event = {"event": "command_queued", "device": st.info.device, "counter": counter, "opcode": opcode, "bytes": len(frame)}
        self.emit(event)
        return event

    def send_downlink(self, dev: LoraDevice, fport: int, data: bytes) -> None:
        topic, msg = downlink_message(self.integration, self.app, dev, fport, data)
        if self._publish_fn is not None:
            self._publish_fn(topic, msg)
        elif self._client is not None:
            self._client.publish(topic, json.dumps(msg), qos=1)

    def stats(self) -> dict[str, dict]:
        now = self.clock()
        with self._lock:
            return {
                st.info.device: dict(st.last, uplinks=st.uplinks, readings=st.readings, duplicates=st.duplicates,
                                     airtime_today_s=round(st.airtime_today(now), 3), ledgers_today=st.budget.used_today(now),
                                     next_seq=st.ledger.next_seq, **st.backlog(now))
                for st in self.devices.values()
            }

    # -- MQTT ------------------------------------------------------------------------------------------
    def start(self) -> UplinkService:
        import paho.mqtt.client as paho

        from host_tools.fleet.config import parse_broker_url

        host, port, _tls = parse_broker_url(self.broker_url)
        ready = threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"lanterne-uplinks-{time.time_ns()}")

        def on_connect(client, userdata, flags, reason, properties=None):
            for t in topics(self.integration, self.app):
                client.subscribe(t, qos=1)
            ready.set()

        c.on_connect = on_connect
        c.on_message = self._on_message
        u = urllib.parse.urlparse(self.broker_url)  # mqtt://user:password@host:port: a broker with logins
        if u.username is not None:
            c.username_pw_set(urllib.parse.unquote(u.username), None if u.password is None else urllib.parse.unquote(u.password))
        c.connect(host, port, keepalive=30)
        c.loop_start()
        self._client = c
        if not ready.wait(10):
            raise ConnectionError(f"uplink service: no connection to {self.broker_url}")
        return self

    def _on_message(self, client, userdata, msg) -> None:
        try:
            body = json.loads(msg.payload)
            up = J.parse_chirpstack_up(body) if self.integration == "chirpstack" else J.parse_tts_up(body)
        except (ValueError, J.IntegrationError) as exc:
            self.emit({"event": "bad_message", "topic": msg.topic, "error": str(exc)})
            return
        self.handle(up)

    def stop(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None
        if self.state is not None:
            self.state.close()
            self.state = None
