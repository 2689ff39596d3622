"""An emulated LoRaWAN network server: what the city runs (ChirpStack v4, The Things Stack v3), as far as a board and the back office can tell.

It listens to the gateways on MQTT (ChirpStack Gateway Bridge JSON, `eu868/gateway/+/event/up`),
de-duplicates what several gateways heard (one frame, one uplink, every reception in `rxInfo`),
answers OTAA joins of the devices it was given (AppKey, DevEUI, JoinEUI; a DevNonce used before is
refused), checks every data frame's MIC and frame counter (a forged frame, a replay or a frame of
an unknown DevAddr is dropped and counted in `dropped`), keeps a class-A downlink queue per device
(sent in RX1, with RX2 as the alternative, only after an uplink), ACKs confirmed uplinks, answers
LinkCheckReq, and publishes on the broker as ChirpStack's MQTT integration, The Things Stack's, or
both (host_tools/codec/lns_json.py defines the JSON). Downlinks are taken from
`application/{app}/device/{devEui}/command/down` and `v3/{app}@{tenant}/devices/{dev}/down/push|replace`.

It does not do ADR, class B/C, LoRaWAN 1.1, roaming, or MAC commands other than LinkCheck.
`captured` keeps every PHYPayload up and down (tests check them with lora-packet).
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from dataclasses import dataclass, field

from host_tools.codec import lns_json as J
from host_tools.codec import lorawan as L
from host_tools.codec import lorawan_radio as R
from host_tools.codec.lns_devices import tts_id
from host_tools.emulator.lorawan_gateway import REGION, _broker_address, broker_login

INTEGRATIONS = ("chirpstack", "tts")
# Required SNR (dB) to demodulate each SF, for the LinkCheckAns margin (SX1276 datasheet, table 13).
REQUIRED_SNR = {7: -7.5, 8: -10.0, 9: -12.5, 10: -15.0, 11: -17.5, 12: -20.0}


@dataclass
class Device:
    dev_eui: str  # hex, MSB first
    app_key: str  # hex
    name: str  # ChirpStack deviceName / TTS device_id
    join_eui: str = "0000000000000000"

    def __post_init__(self):
        self.dev_eui = self.dev_eui.lower()
        self.join_eui = self.join_eui.lower()
        L.key_bytes(self.app_key)
        L.eui_bytes(self.dev_eui)


@dataclass
class Session:
    device: Device
    dev_addr: int
    nwk: bytes
    app: bytes
    fcnt_up: int | None = None
    fcnt_down: int = 0
    last_phy: bytes = b""
    dr: int = 0
    rssi: int = 0
    snr: float = 0.0
    pending_ack: dict | None = None  # a confirmed downlink waiting for the device's ACK
    session_key_id: bytes = field(default_factory=lambda: os.urandom(16))


@dataclass
class QueueItem:
    fport: int
    data: bytes
    confirmed: bool
    id: str = field(default_factory=J.new_id)


class NetworkServer:
    def __init__(self, broker_url: str, devices: list[Device], integrations=("chirpstack",),
                 app: J.Application | None = None, dedup_window_s: float = 0.05, net_id: int = 0x000013):
        bad = set(integrations) - set(INTEGRATIONS)
        if bad or not integrations:
            raise ValueError(f"integration must be one or both of {', '.join(INTEGRATIONS)}, not {sorted(bad) or 'none'}")
        self.broker_url = broker_url
        self.devices = {d.dev_eui: d for d in devices}
        self.by_name = {tts_id(d.name): d for d in devices}
        self.integrations = tuple(integrations)
        self.app = app or J.Application()
        self.dedup_window_s = dedup_window_s
        self.net_id = net_id
        self.sessions: dict[str, Session] = {}  # dev_eui -> current session
        self.dev_nonces: dict[str, set[int]] = collections.defaultdict(set)
        self.queues: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.captured: list[dict] = []
        self.dropped: collections.Counter = collections.Counter()
        self.counts: collections.Counter = collections.Counter()
        self._pending: dict[bytes, list] = {}
        self._app_nonce = int.from_bytes(os.urandom(3), "big")
        self._downlink_id = int.from_bytes(os.urandom(3), "big")
        self._lock = threading.RLock()
        self._client = None
        self._ready = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> NetworkServer:
        import paho.mqtt.client as paho

        host, port = _broker_address(self.broker_url)
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"lanterne-ns-{os.getpid()}-{id(self):x}")
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        if broker_login(self.broker_url):
            c.username_pw_set(*broker_login(self.broker_url))
        c.connect(host, port, keepalive=30)
        c.loop_start()
        self._client = c
        if not self._ready.wait(10):
            raise ConnectionError(f"network server: no connection to the broker at {self.broker_url}")
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _on_connect(self, client, userdata, flags, reason, properties=None):
        subs = [f"{REGION}/gateway/+/event/up", f"{REGION}/gateway/+/event/ack"]
        if "chirpstack" in self.integrations:
            subs.append(f"application/{self.app.application_id}/device/+/command/down")
        if "tts" in self.integrations:
            base = f"v3/{self.app.tts_application}@{self.app.tts_tenant}/devices/+/down/"
            subs += [base + "push", base + "replace"]
        for s in subs:
            client.subscribe(s, qos=1 if s.startswith(("application/", "v3/")) else 0)
        self._ready.set()

    def _publish(self, topic: str, msg: dict, qos: int = 0) -> None:
        if self._client is not None:
            self._client.publish(topic, json.dumps(msg), qos=qos)

    # -- incoming -----------------------------------------------------------------------------------
    def _on_message(self, client, userdata, msg):
        try:
            body = json.loads(msg.payload)
            parts = msg.topic.split("/")
            if parts[0] == REGION and parts[3:] == ["event", "up"]:
                self._gateway_up(body)
            elif parts[0] == "application" and parts[-2:] == ["command", "down"]:
                dev_eui, fport, data, confirmed = J.parse_chirpstack_down(body)
                self.enqueue(dev_eui, fport, data, confirmed)
            elif parts[0] == "v3" and parts[-2] == "down":
                dev = self.by_name.get(parts[3])
                if dev is None:
                    return
                items = J.parse_tts_down(body)
                if parts[-1] == "replace":
                    with self._lock:
                        self.queues[dev.dev_eui].clear()
                for fport, data, confirmed in items:
                    self.enqueue(dev.dev_eui, fport, data, confirmed)
        except (ValueError, J.IntegrationError, L.FrameError) as exc:
            self.dropped["bad message"] += 1
            self.counts[f"error: {exc}"[:80]] += 1

    def _gateway_up(self, body: dict) -> None:
        phy, meta = J.parse_gateway_uplink(body)
        key = bytes(phy)
        with self._lock:
            if key in self._pending:
                self._pending[key].append(meta)
                self.counts["duplicate receptions"] += 1
                return
            self._pending[key] = [meta]
        threading.Timer(self.dedup_window_s, self._deduplicated, args=(key,)).start()

    def _deduplicated(self, phy: bytes) -> None:
        with self._lock:
            metas = self._pending.pop(phy, [])
            if not metas:
                return
            self.captured.append({"dir": "up", "phy": phy.hex(), "gateways": len(metas)})
            try:
                mtype = L.mtype_of(phy)
                if mtype == L.JOIN_REQUEST:
                    self._join(phy, metas)
                elif mtype in (L.UNCONFIRMED_UP, L.CONFIRMED_UP):
                    self._uplink(phy, metas)
                else:
                    self.dropped["not an uplink"] += 1
            except L.FrameError:
                self.dropped["malformed"] += 1

    # -- join -----------------------------------------------------------------------------------------
    def _join(self, phy: bytes, metas: list[J.RadioMeta]) -> None:
        req = L.parse_join_request(phy)
        dev = self.devices.get(req.dev_eui.hex())
        if dev is None or req.join_eui.hex() != dev.join_eui:
            self.dropped["unknown device"] += 1
            return
        key = L.key_bytes(dev.app_key)
        if not L.verify_join_request(key, phy):
            self.dropped["mic"] += 1
            return
        if req.dev_nonce in self.dev_nonces[dev.dev_eui]:
            self.dropped["dev nonce reused"] += 1
            return
        self.dev_nonces[dev.dev_eui].add(req.dev_nonce)
        self._app_nonce = (self._app_nonce + 1) & 0xFFFFFF
        dev_addr = ((self.net_id & 0x7F) << 25) | (int.from_bytes(os.urandom(4), "big") & 0x1FFFFFF)
        cf = b"".join((f // 100).to_bytes(3, "little") for f in R.EU868_CFLIST_CHANNELS) + b"\x00"
        accept = L.JoinAccept(self._app_nonce, self.net_id, dev_addr, rx1_dr_offset=0, rx2_dr=0, rx_delay=1, cf_list=cf)
        nwk, app = L.session_keys(key, self._app_nonce, self.net_id, req.dev_nonce)
        best = max(metas, key=lambda m: m.rssi)
        self.sessions[dev.dev_eui] = Session(dev, dev_addr, nwk, app, dr=12 - best.sf, rssi=best.rssi, snr=best.snr)
        self.counts["joins"] += 1
        self._send_down(L.join_accept(key, accept), best, (5.0, 6.0))
        addr = L.dev_addr_hex(dev_addr)
        if "chirpstack" in self.integrations:
            self._publish(J.chirpstack_topic(self.app, dev.dev_eui, "event/join"),
                          J.chirpstack_event(self.app, dev.dev_eui, dev.name, devAddr=addr))
        if "tts" in self.integrations:
            s = self.sessions[dev.dev_eui]
            self._publish(J.tts_topic(self.app, dev.name, "join"), J.tts_event(
                self.app, dev.name, dev.dev_eui, dev.join_eui, addr, "join_accept",
                {"session_key_id": J.b64(s.session_key_id), "received_at": J.now_iso()}))

    # -- data ------------------------------------------------------------------------------------------
    def _uplink(self, phy: bytes, metas: list[J.RadioMeta]) -> None:
        head = L.peek_data(phy)
        candidates = [s for s in self.sessions.values() if s.dev_addr == head.dev_addr]
        if not candidates:
            self.dropped["unknown devaddr"] += 1
            return
        for s in candidates:
            try:
                frame = L.open_data(phy, s.nwk, s.app, s.fcnt_up)
                break
            except L.FrameError:
                continue
        else:
            self.dropped["mic"] += 1
            return
        best = max(metas, key=lambda m: m.rssi)
        if s.fcnt_up is not None and frame.fcnt <= s.fcnt_up:
            if frame.fcnt == s.fcnt_up and phy == s.last_phy and frame.confirmed:
                self.counts["retransmissions"] += 1  # the ACK was lost: ACK again, publish nothing
                self._answer(s, frame, best, metas)
            else:
                self.dropped["replay"] += 1
            return
        s.fcnt_up, s.last_phy = frame.fcnt, phy
        s.dr, s.rssi, s.snr = 12 - best.sf, best.rssi, best.snr
        self.counts["uplinks"] += 1
        dev = s.device
        if frame.ack and s.pending_ack is not None:
            self._acked(s, True)
        if frame.fport:
            up = J.Uplink(dev_eui=dev.dev_eui, device=dev.name, fport=frame.fport, fcnt=frame.fcnt, data=frame.payload,
                          dev_addr=L.dev_addr_hex(s.dev_addr), dr=s.dr, confirmed=frame.confirmed, time=J.now_iso(),
                          airtime_s=R.time_on_air_s(len(phy), best.sf))
            if "chirpstack" in self.integrations:
                self._publish(J.chirpstack_topic(self.app, dev.dev_eui, "event/up"), J.chirpstack_up(self.app, up, metas, frame.adr))
            if "tts" in self.integrations:
                self._publish(J.tts_topic(self.app, dev.name, "up"), J.tts_up(self.app, up, dev.join_eui, metas, s.session_key_id))
        self._answer(s, frame, best, metas)

    def _answer(self, s: Session, frame: L.DataFrame, best: J.RadioMeta, metas) -> None:
        """The class-A downlink after an uplink: queued data, the ACK of a confirmed uplink, LinkCheckAns."""
        fopts = b""
        if L.CID_LINK_CHECK in frame.fopts:
            margin = max(0, min(254, int(best.snr - REQUIRED_SNR[best.sf])))
            fopts = bytes([L.CID_LINK_CHECK, margin, min(255, len(metas))])
        queue = self.queues[s.device.dev_eui]
        item = None
        while queue and s.pending_ack is None:
            item = queue[0]
            if len(item.data) <= R.max_payload(s.dr, len(fopts)):
                queue.popleft()
                break
            queue.popleft()
            self._log_error(s, item, f"downlink of {len(item.data)} bytes exceeds {R.max_payload(s.dr, len(fopts))} at DR{s.dr}")
            item = None
        if item is None and not frame.confirmed and not fopts:
            return
        mtype = L.CONFIRMED_DOWN if item is not None and item.confirmed else L.UNCONFIRMED_DOWN
        down = L.DataFrame(mtype, s.dev_addr, s.fcnt_down, item.fport if item else None, item.data if item else b"",
                           fopts=fopts, ack=frame.confirmed, fpending=bool(queue))
        phy = L.build_data(down, s.nwk, s.app)
        fcnt_down = s.fcnt_down
        s.fcnt_down += 1
        downlink_id = self._send_down(phy, best, (1.0, 2.0))
        if item is None:
            return
        dev = s.device
        if item.confirmed:
            s.pending_ack = {"item": item, "fcnt_down": fcnt_down}
        if "chirpstack" in self.integrations:
            self._publish(J.chirpstack_topic(self.app, dev.dev_eui, "event/txack"), J.chirpstack_event(
                self.app, dev.dev_eui, dev.name, downlinkId=downlink_id, queueItemId=item.id, fCntDown=fcnt_down,
                gatewayId=best.gateway_id, txInfo={"frequency": best.frequency, "power": 14,
                                                   "modulation": {"lora": best.lora()}}))
        if "tts" in self.integrations:
            self._publish(J.tts_topic(self.app, dev.name, "down/sent"), J.tts_event(
                self.app, dev.name, dev.dev_eui, dev.join_eui, L.dev_addr_hex(s.dev_addr), "downlink_sent",
                {"f_port": item.fport, "f_cnt": fcnt_down, "frm_payload": J.b64(item.data), "confirmed": item.confirmed,
                 "priority": "NORMAL", "correlation_ids": [f"as:downlink:{item.id}"]}))

    def _acked(self, s: Session, acknowledged: bool) -> None:
        item, fcnt_down = s.pending_ack["item"], s.pending_ack["fcnt_down"]
        s.pending_ack = None
        dev = s.device
        if "chirpstack" in self.integrations:
            self._publish(J.chirpstack_topic(self.app, dev.dev_eui, "event/ack"), J.chirpstack_event(
                self.app, dev.dev_eui, dev.name, queueItemId=item.id, acknowledged=acknowledged, fCntDown=fcnt_down))
        if "tts" in self.integrations:
            self._publish(J.tts_topic(self.app, dev.name, "down/ack" if acknowledged else "down/nack"), J.tts_event(
                self.app, dev.name, dev.dev_eui, dev.join_eui, L.dev_addr_hex(s.dev_addr),
                "downlink_ack" if acknowledged else "downlink_nack",
                {"f_port": item.fport, "f_cnt": fcnt_down, "frm_payload": J.b64(item.data), "confirmed": True}))

    def _log_error(self, s: Session, item: QueueItem, why: str) -> None:
        dev = s.device
        if "chirpstack" in self.integrations:
            self._publish(J.chirpstack_topic(self.app, dev.dev_eui, "event/log"), J.chirpstack_event(
                self.app, dev.dev_eui, dev.name, level="ERROR", code="DOWNLINK_PAYLOAD_SIZE", description=why,
                context={"queueItemId": item.id}))
        if "tts" in self.integrations:
            self._publish(J.tts_topic(self.app, dev.name, "down/failed"), J.tts_event(
                self.app, dev.name, dev.dev_eui, dev.join_eui, L.dev_addr_hex(s.dev_addr), "downlink_failed",
                {"downlink": {"f_port": item.fport, "frm_payload": J.b64(item.data)}, "error": {"message_format": why}}))

    def _send_down(self, phy: bytes, via: J.RadioMeta, delays: tuple[float, float]) -> int:
        self._downlink_id = (self._downlink_id + 1) & 0xFFFFFFFF
        items = [(phy, via.frequency, via.sf, delays[0], via.context),
                 (phy, R.EU868_RX2[0], R.EU868_DR_SF[R.EU868_RX2[1]], delays[1], via.context)]
        self._publish(f"{REGION}/gateway/{via.gateway_id}/command/down", J.gateway_downlink(self._downlink_id, via.gateway_id, items))
        self.captured.append({"dir": "down", "phy": phy.hex()})
        return self._downlink_id

    def forget_session(self, dev_eui: str) -> bool:
        """Lose a device's session as a network server restored from an old backup, or a device
        deleted and created again, does: its uplinks are then dropped (unknown DevAddr) and nothing
        answers it, until it joins again (the device itself stays registered). True if it had one."""
        with self._lock:
            gone = self.sessions.pop(dev_eui.lower(), None)
            self.queues.pop(dev_eui.lower(), None)
        if gone is not None:
            self.counts["sessions_forgotten"] += 1
        return gone is not None

    # -- queue ------------------------------------------------------------------------------------------
    def enqueue(self, dev_eui: str, fport: int, data: bytes, confirmed: bool = False) -> QueueItem | None:
        dev = self.devices.get(dev_eui.lower())
        if dev is None or not 1 <= fport <= 223:
            self.dropped["downlink for unknown device or bad FPort"] += 1
            return None
        item = QueueItem(fport, bytes(data), confirmed)
        with self._lock:
            self.queues[dev.dev_eui].append(item)
        if "tts" in self.integrations:
            s = self.sessions.get(dev.dev_eui)
            self._publish(J.tts_topic(self.app, dev.name, "down/queued"), J.tts_event(
                self.app, dev.name, dev.dev_eui, dev.join_eui, L.dev_addr_hex(s.dev_addr) if s else "", "downlink_queued",
                {"f_port": fport, "frm_payload": J.b64(data), "confirmed": confirmed, "priority": "NORMAL"}))
        return item

    def wait(self, predicate, timeout: float = 30.0) -> bool:
        """Poll `predicate(self)` until true (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(self):
                    return True
            time.sleep(0.02)
        return False
