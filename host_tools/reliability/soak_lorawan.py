"""The soak's LoRaWAN side: the boards of a `lorawan` kind (soak_profile.BOARD_KINDS) reach the
back office through their modem twin, the gateways, the emulated network server and the uplink
service (host_tools/backoffice/uplinks.py), all on the soak's Mosquitto, as a city runs them.

- `broker_users(...)`: the network server's own login (gateways, network server and uplink
  service use it) added to the broker's generated password and ACL files: its topics are the
  gateway bridge's (`eu868/...`) and ChirpStack's integration (`application/...`), nothing of the
  boards' MQTT tree.
- `LoraSide`: starts the network server (ChirpStack integration) and the uplink service with the
  fleet's LoRaWAN identities from the registry, keeps the readings the uplink service handed on
  after its de-duplication (the figure the ledger counts as delivered), and points each board's
  gateway radio at the broker.
- `LoraCommands`: the command stream (soak_security.CommandStream's bookkeeping) as class-A
  downlinks: a legitimate command queued through the uplink service (`send_command`), its compact
  ack matched there, resent with the same frame while unanswered; forged, replayed, cross-device
  and malformed frames queued on FPort 10 as an attacker holding the integration's access would.

The uplink service's ledger clock runs `LEDGER_CLOCK_SCALE` times the wall clock, so the ten
delivery-ledger downlinks it may send in 24 hours (the default budget) come every ~14 s of the run
instead of every 2.4 hours: a soak of minutes then exercises the ledger (frees, resends of lost
uplinks) as a day of service does. It is in the ledger (`lorawan.ledger_clock_scale`).

The uplink service keeps each device's ledger in a state file (`lanterne uplinks --state`,
host_tools/backoffice/uplink_state.py), so the campaign restarts it as a city's service restarts
(`uplink_service_restart`: `LoraSide.stop_service`, `start_service`): stopped, its state file closed, down for the fault's
duration (the uplinks the network server publishes meanwhile reach no one, as with the real
service's clean session), then a new service on the same file. The injector checks that the new
service starts from exactly the ledgers the old one left; the ledger's counts check the rest
(nothing handed on twice, nothing the boards freed counted as missing).
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import threading
import time

from host_tools.backoffice.command_client import cmd as commands
from host_tools.reliability import soak_security

LNS_USER = "soak-lns"
STATE_FILE = "uplinks-state.sqlite"  # the uplink service's (`lanterne uplinks --state`), beside the fleet's registry
LEDGER_CLOCK_SCALE = 600.0
LEDGERS_PER_DAY = 10
MODEM_SPEEDUP = 5.0  # the modem's clock (join accept in ~1.2 s instead of 6 s)
LORA_WORLD = {"lorawan_speedup": MODEM_SPEEDUP, "lorawan_dr": 5}
RETRY_AFTER_S = 30.0  # a class-A command waits for the board's next uplinks (duty cycle: tens of seconds apart)
DRAIN_EXTRA_S = 60.0  # a class-A command still unanswered at the drain gets this much longer than an MQTT one


def broker_users(paths: dict, password: str) -> None:
    """Give the network server's login to the broker: one line in the password file, one block in the ACL."""
    from host_tools.fleet.broker_files import hash_password

    with open(paths["password_file"], "a") as f:
        f.write(f"{LNS_USER}:{hash_password(password)}\n")
    with open(paths["acl_file"], "a") as f:
        f.write(f"\n# the LoRaWAN network server, its gateways and the uplink service\nuser {LNS_USER}\n"
                "topic readwrite eu868/#\ntopic readwrite application/#\n")


def modem(board_handle):
    (twin,) = [p for p in board_handle.board.parts.parts if getattr(p, "name", None) == "lorawan"]
    return twin


class LoraSide:
    def __init__(self, boards, reg, broker_port: int, password: str):
        from host_tools.backoffice.uplinks import LoraDevice
        from host_tools.emulator.network_server import Device

        self.boards = boards
        self.url = f"mqtt://{LNS_USER}:{password}@127.0.0.1:{broker_port}"
        self.ns_devices, self.lora_devices = [], []
        for b in boards:
            eui, appkey = reg.secret(b.device, "lorawan_deveui"), reg.secret(b.device, "lorawan_appkey")
            self.ns_devices.append(Device(dev_eui=eui, app_key=appkey, name=b.device))
            self.lora_devices.append(LoraDevice(b.device, eui.lower(), reg.command_key(b.device)))
        self.lock = threading.Lock()
        self.seqs: dict[str, list[int]] = {b.device: [] for b in boards}
        self.acks: dict[tuple[str, int], int] = {}
        self.ack_event = threading.Condition(self.lock)
        self.ns = self.svc = None
        self.state_path = reg.path.parent / STATE_FILE  # the uplink service's state file, in the run's folder
        self.svc_lock = threading.RLock()  # held while the service is swapped; its users go through it
        self.svc_down = False
        self.restarts = 0
        self._wire: dict[str, dict[int, dict[str, int]]] = {}  # device -> full seq -> content -> copies received
        self._trackers: dict[str, object] = {}
        t0, m0 = time.time(), time.monotonic()
        self.clock = lambda: t0 + (time.monotonic() - m0) * LEDGER_CLOCK_SCALE

    def _on_event(self, e: dict) -> None:
        with self.lock:
            if e["event"] == "reading" and "seq" in e["reading"]:
                self.seqs.setdefault(e["device"], []).append(e["reading"]["seq"])
            elif e["event"] == "ack":
                self.acks[(e["device"], e["counter"])] = e["status"]
                self.ack_event.notify_all()

    def start(self) -> LoraSide:
        from host_tools.emulator.network_server import NetworkServer

        self.ns = NetworkServer(self.url, self.ns_devices, integrations=("chirpstack",)).start()
        self.svc = self._new_service()
        self.svc.start()
        for b in self.boards:
            modem(b.handle).radio.broker_url = self.url
        return self

    def _new_service(self, publish=None):
        """An uplink service on the side's devices and state file, tapped (not started)."""
        from host_tools.backoffice.uplinks import UplinkService

        svc = UplinkService(self.lora_devices, integration="chirpstack", broker_url=self.url, clock=self.clock,
                            ledger_per_day=LEDGERS_PER_DAY, on_event=self._on_event, publish=publish, state=self.state_path)
        handle = svc.handle

        def tapped(up):  # every uplink the service takes, seen before its de-duplication
            self._tap(up, svc)
            handle(up)

        svc.handle = tapped
        return svc

    # -- the service's restart (the `uplink_service_restart` fault) ------------------------------------
    def stop_service(self) -> dict[str, dict]:
        """Stop the uplink service as its process stops (state file closed); each device's state as it left it."""
        with self.svc_lock:
            self.svc_down = True
            svc = self.svc
            svc.stop()  # (its MQTT loop joined: no uplink is being handled any more)
            with svc._lock:
                return {eui: json.loads(json.dumps(st.snapshot())) for eui, st in svc.devices.items()}

    def start_service(self, left: dict[str, dict] | None = None, connect: bool = True, publish=None) -> int:
        """A new uplink service on the same state file; with `left` (stop_service's), check it starts from
        exactly that state. Returns how many devices' state it restored (RuntimeError when it differs)."""
        with self.svc_lock:
            if not self.svc_down:  # (running: nothing to start)
                return 0
            svc = self._new_service(publish)
            now = {eui: json.loads(json.dumps(st.snapshot())) for eui, st in svc.devices.items()}
            if left is not None and now != left:
                bad = sorted(eui for eui in left if now.get(eui) != left[eui])
                raise RuntimeError(f"the restarted uplink service did not start from its state file for {', '.join(bad)}")
            for attempt in range(30 if connect else 0):  # a loaded machine may take more than its 10 s to connect
                try:
                    svc.start()
                    break
                except ConnectionError:
                    svc.stop()  # (its client and state file closed: opened again for the next try)
                    if attempt == 29:
                        raise
                    svc = self._new_service(publish)
            self.svc, self.svc_down = svc, False
            self.restarts += 1
            return sum(1 for st in now.values() if st["counts"][0])

    def send_command(self, device: str, frame: bytes) -> None:
        with self.svc_lock:
            if self.svc_down:
                raise RuntimeError("the uplink service is down (restarting)")
            self.svc.send_command(device, frame)

    def send_downlink(self, device: str, fport: int, frame: bytes) -> None:
        with self.svc_lock:
            client = self.svc._client
            if self.svc_down or client is None or not client.is_connected():  # (a fault): it reaches no board
                raise RuntimeError("the uplink service is not connected to the broker")
            self.svc.send_downlink(self.svc.by_name[device].info, fport, frame)

    def _tap(self, up, svc) -> None:
        from host_tools.codec import FPORT, FPORT_V3, PayloadError, decode
        from host_tools.codec.seq import SeqTracker
        from host_tools.reliability.soak_ledger import reading_content

        if up.fport not in (FPORT, FPORT_V3):
            return
        try:
            frame = decode(up.data, fport=up.fport)
        except PayloadError:
            return
        with self.lock:
            st = svc.devices.get(up.dev_eui.lower())
            if st is None:
                return
            device = st.info.device
            tracker = self._trackers.setdefault(device, SeqTracker())
            for r in frame["readings"]:
                if "seq" in r:
                    full, _new = tracker.accept(r["seq"])
                    copies = self._wire.setdefault(device, {}).setdefault(full, {})
                    c = reading_content(r)
                    copies[c] = copies.get(c, 0) + 1

    def wire(self) -> dict[str, dict[int, dict[str, int]]]:
        """device -> full seq -> {content: copies}: every reading copy the uplink service received."""
        with self.lock:
            return {d: {q: dict(c) for q, c in seqs.items()} for d, seqs in self._wire.items()}

    def stop(self) -> None:
        for part in (self.svc, self.ns):
            if part is not None:
                part.stop()

    def delivered(self) -> tuple[dict[str, list[int]], int]:
        """device -> seqs the uplink service handed on (one per event), and how many events."""
        with self.lock:
            return {d: list(v) for d, v in self.seqs.items()}, sum(len(v) for v in self.seqs.values())

    def figures(self) -> dict:
        """What the ledger shows of the LoRaWAN side: network server counts, the service's duplicates, the modems' logs."""
        stats = self.svc.stats() if self.svc else {}
        ups = lost = joins_failed = downs = 0
        for b in self.boards:
            log = modem(b.handle).log
            ups += sum(1 for e in log if e["dir"] == "up" and e["kind"] == "data")
            lost += sum(1 for e in log if e["dir"] == "up" and e["kind"] == "data" and e.get("lost"))
            joins_failed += sum(1 for e in log if e["dir"] == "up" and e["kind"] == "join" and e.get("lost"))
            downs += sum(1 for e in log if e["dir"] == "down")
        return {
            "boards": len(self.boards),
            "uplinks_sent": ups, "uplinks_lost_in_the_air": lost, "join_requests_unanswered": joins_failed,
            "downlinks_heard": downs,
            "network_server_joins": self.ns.counts.get("joins", 0) if self.ns else 0,
            "network_server_dropped": dict(self.ns.dropped) if self.ns else {},
            "duplicates_dropped_by_uplink_service": sum(s.get("duplicates", 0) for s in stats.values()),
            "ledgers_sent": sum(st.ledgers_sent for st in self.svc.devices.values()) if self.svc else 0,
            "ledger_clock_scale": LEDGER_CLOCK_SCALE,
            "ledgers_per_day": LEDGERS_PER_DAY,
            "modem_speedup": MODEM_SPEEDUP,
            "uplink_service_restarts": self.restarts,
        }


class LoraCommands(soak_security.CommandStream):
    """Commands and attacks to the LoRaWAN boards, as downlinks (see the module docstring)."""

    def __init__(self, side: LoraSide, devices: dict[str, dict], keys: dict[str, bytes], counters: dict[str, int], rng):
        self.side = side
        self.devices = devices
        self.keys = keys
        self.counters = dict(counters)
        self.rng = rng
        self.log = soak_security.CommandLog()
        self._executed_frames = []
        self._threads = []
        self._lock = threading.Lock()
        self.stopped = threading.Event()

    def _publish(self, device: str, frame: bytes) -> None:
        self.side.send_downlink(device, self.side.svc.ledger.FPORT_COMMAND, frame)  # RuntimeError: reached no board

    def _send_and_retry(self, s, opcode: int) -> None:
        while True:
            try:
                self.side.send_command(s.device, s.frame)
                end = time.monotonic() + RETRY_AFTER_S
            except RuntimeError:  # the service restarting: queued nowhere, tried again shortly
                end = time.monotonic() + 2.0
            with self.side.ack_event:
                while (s.device, s.counter) not in self.side.acks and not self.stopped.is_set():
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self.side.ack_event.wait(min(left, 1.0))
                status = self.side.acks.get((s.device, s.counter))
            if status is not None:
                s.acked = True
                s.status = commands.REASONS.get(status, str(status))
                if status in (commands.OK, commands.REFUSED):
                    with self._lock:
                        self._executed_frames.append(s)
                return
            if self.stopped.is_set():
                return
            s.retried += 1

    def close(self) -> None:
        pass

    def late_acks(self) -> None:
        """Acks the uplink service matched after a command's waiter gave up (the drain's last uplinks)."""
        with self.side.lock:
            for s in self.log.sent:
                status = self.side.acks.get((s.device, s.counter))
                if s.kind == "legit" and not s.acked and status is not None:
                    s.acked, s.status = True, commands.REASONS.get(status, str(status))


class Streams:
    """The MQTT and LoRaWAN command streams as one: joined, counted and their counters kept together."""

    def __init__(self, streams):
        self.streams = streams

    def join(self, timeout: float) -> None:
        threads = [threading.Thread(target=st.join, args=(timeout + (DRAIN_EXTRA_S if isinstance(st, LoraCommands) else 0.0),),
                                    daemon=True) for st in self.streams]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    @property
    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for st in self.streams:
            for d, c in st.counters.items():
                out[d] = max(out.get(d, 0), c)
        return out

    def outcome(self, executed: dict[str, list[int]]) -> dict:
        for st in self.streams:
            if isinstance(st, LoraCommands):
                st.late_acks()
        whole = soak_security.CommandStream.__new__(soak_security.CommandStream)
        whole.log = soak_security.CommandLog([s for st in self.streams for s in st.log.sent])
        got = soak_security.CommandStream.outcome(whole, executed)
        if len(self.streams) > 1:
            lora = self.streams[1].log.sent
            got["commands_lorawan"] = {"sent": sum(s.kind == "legit" for s in lora),
                                       "acked": sum(s.kind == "legit" and s.acked for s in lora),
                                       "attacks": sum(s.kind != "legit" for s in lora)}
        return got


def pick_stream(streams, rng: random.Random):
    """A stream, in proportion to the devices it serves (a LoRaWAN board's weighted by its kind's command_weight)."""
    from host_tools.reliability.soak_profile import BOARD_KINDS

    live = [s for s in streams if s.devices]
    weight = [len(s.devices) * (BOARD_KINDS["lorawan-sensor"].command_weight if isinstance(s, LoraCommands) else 1.0)
              for s in live]
    return rng.choices(live, weights=weight)[0]


_LOGGED_STATUS = re.compile(r"status not sent \(LoRaWAN[^)]*\): (\{[^\r\n]*\})")


def logged_heap(console: str) -> int:
    """The highest heap_alloc among the statuses a LoRaWAN board logged (they are not sent: airtime)."""
    peak = 0
    for m in _LOGGED_STATUS.finditer(console):
        with contextlib.suppress(ValueError):
            v = json.loads(m.group(1)).get("heap_alloc")
            if isinstance(v, int):
                peak = max(peak, v)
    return peak


def join_failure(ctx, p, rng):
    """Injector: the board's power cut, and its module's session lost with it (as after a module
    reset to factory settings, or a network server that forgot the device): at power-on the board
    must join again, and the network leaves its next 1-2 join requests unanswered (the twin's
    `lorawan_join_failures`). Nothing it stored may be lost meanwhile."""
    b = ctx.boards[p.board]
    n = rng.randint(1, 2)
    b.handle.power_cut()
    b.expected_boots += 1
    twin = modem(b.handle)
    twin.nvm["session"] = None
    twin.save()
    b.world.set(lorawan_join_failures=float(n))
    p.arg["join_failures"] = n
    return b.handle.power_on


def uplink_loss(ctx, p, rng):
    """Injector: a share of the board's uplinks reaches no gateway for the duration."""
    w = ctx.boards[p.board].world
    share = round(rng.uniform(0.5, 0.9), 2)
    w.set(lorawan_uplink_loss=share)
    p.arg["loss"] = share
    return lambda: w.set(lorawan_uplink_loss=0.0)


def probe(side: LoraSide, port: int, device: tuple[str, str, str], office) -> dict[str, bool]:
    """The LoRaWAN side's probes; {probe: let in}. An MQTT device's credentials (`device`: site, id,
    password) must not queue a downlink to a LoRaWAN board, pose as a gateway or read the network
    server's integration; the network server's own login must not reach the boards' MQTT tree
    (`office`, the back office's watcher on `lanterne/#`, sees what got through)."""
    from host_tools.codec import lns_json as J
    from host_tools.emulator.lorawan_gateway import GATEWAY_IDS, REGION
    from host_tools.reliability.soak_security import _paho_connect

    out: dict[str, bool] = {}
    site, dev, pw = device
    lora = side.lora_devices[0]
    app = side.svc.app
    user, password = LNS_USER, side.url.split("//", 1)[1].split("@", 1)[0].split(":", 1)[1]
    marker = f"soak-lns-probe-{time.time_ns()}"
    ok, lns = _paho_connect("127.0.0.1", port, user, password)
    if not ok:
        return {"lns_login_refused_unexpectedly": True}  # the probe could not run: reported, not passed
    seen: list[bytes] = []
    lns.on_message = lambda client, userdata, m: seen.append(bytes(m.payload))
    lns.subscribe([(J.chirpstack_topic(app, lora.dev_eui, "command/down"), 1), (f"{REGION}/gateway/+/event/up", 1),
                   (J.chirpstack_topic(app, lora.dev_eui, "event/up"), 1)])
    ok, c = _paho_connect("127.0.0.1", port, dev, pw)
    if not ok:
        lns.loop_stop()
        lns.disconnect()
        return {"device_login_refused_unexpectedly": True}
    got: list[bytes] = []
    c.on_message = lambda client, userdata, m: got.append(bytes(m.payload))
    c.subscribe([(f"application/{app.application_id}/#", 1), (f"{REGION}/#", 1)])
    time.sleep(0.5)
    targets = {
        "device_queues_lorawan_downlink": J.chirpstack_topic(app, lora.dev_eui, "command/down"),
        "device_poses_as_gateway": f"{REGION}/gateway/{GATEWAY_IDS[0]}/event/up",
    }
    for name, topic in targets.items():
        c.publish(topic, json.dumps({"probe": marker + name}), qos=1)
    lns.publish(f"lanterne/v1/{site}/{dev}/cmd", (marker + "lns_commands_mqtt_board").encode(), qos=1)
    lns.publish(J.chirpstack_topic(app, lora.dev_eui, "event/up"), json.dumps({"probe": marker + "read"}), qos=1)
    time.sleep(2.0)
    for name in targets:
        out[name] = any((marker + name).encode() in p for p in seen)
    out["device_reads_lorawan_integration"] = any(marker.encode() in p for p in got)
    # the control: the network server's login saw its own publish, so a probe that saw nothing looked
    out["lorawan_probe_blind"] = not any((marker + "read").encode() in p for p in seen)
    out["lns_commands_mqtt_board"] = any(m.payload == (marker + "lns_commands_mqtt_board").encode() for m in office.messages[-5000:])
    for client in (c, lns):
        client.loop_stop()
        client.disconnect()
    return out
