"""The radio between modem twins and the network server: LoRaWAN gateways speaking ChirpStack Gateway Bridge JSON over MQTT.

A twin hands each PHYPayload it transmits to `GatewayRadio.transmit`; every gateway in range
publishes it on `eu868/gateway/{gatewayId}/event/up` (gw.UplinkFrame JSON, base64 `phyPayload`).
The network server (`host_tools.emulator.network_server`, or any ChirpStack v4 behind a Gateway
Bridge on the same broker) answers on `eu868/gateway/{gatewayId}/command/down`; the radio keeps
those downlinks, with the modem-clock time they arrived, for the twin to hear in its receive
windows, and reports each one on `.../event/ack` (OK, or TOO_LATE when it came after its window).

Gateways are shared: every twin in range of gateway G hears what G sends and keeps only the
downlinks that answer its own uplinks (matched by the uplink's context, as a real gateway's
concentrator schedules by timestamp). Without a broker there is no gateway in range: uplinks go
nowhere and joins time out, as in a basement with no coverage.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse

from host_tools.codec import lns_json

REGION = "eu868"
#: Gateway ids the emulator's gateways use (EUI-64, lowercase hex).
GATEWAY_IDS = tuple(f"0016c001f000{n:04x}" for n in range(1, 9))


def _broker_address(url: str) -> tuple[str, int]:
    u = urllib.parse.urlparse(url)
    if u.scheme not in ("mqtt", "tcp"):
        raise ValueError(f"gateway broker must be mqtt://host:port, not {url!r}")
    return u.hostname or "127.0.0.1", u.port or 1883


def broker_login(url: str) -> tuple[str, str | None] | None:
    """The user and password of mqtt://user:password@host:port (percent-decoded), or None: a broker
    with password authentication (the generated Mosquitto files) takes the gateways, the network
    server and the uplink service as users of their own."""
    u = urllib.parse.urlparse(url)
    if u.username is None:
        return None
    return urllib.parse.unquote(u.username), None if u.password is None else urllib.parse.unquote(u.password)


class GatewayRadio:
    """The gateways in range of one modem twin, over one MQTT connection."""

    def __init__(self, broker_url: str | None, clock, n_gateways: int = 1):
        self.broker_url = broker_url
        self.clock = clock  # the twin's modem clock: arrival times are recorded in it
        self.gateway_ids = GATEWAY_IDS[: max(1, min(len(GATEWAY_IDS), n_gateways))]
        self._lock = threading.Lock()
        self._inbox: dict[bytes, list] = {}  # uplink context -> [(arrival, downlink_id, gateway, items)]
        self._client = None
        self._connected = threading.Event()
        self.uplink_id = int.from_bytes(os.urandom(2), "big")
        self.published: list[bytes] = []  # every PHYPayload sent to the air (tests read it)

    # -- connection ----------------------------------------------------------------------------------
    def _ensure(self) -> bool:
        if self.broker_url is None:
            return False
        if self._client is not None:
            return self._connected.is_set()
        import paho.mqtt.client as paho

        host, port = _broker_address(self.broker_url)
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"lanterne-gw-{os.getpid()}-{id(self):x}")
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        if broker_login(self.broker_url):
            c.username_pw_set(*broker_login(self.broker_url))
        self._client = c
        try:
            c.connect(host, port, keepalive=30)
        except OSError:
            self._client = None
            return False
        c.loop_start()
        self._connected.wait(5)
        return self._connected.is_set()

    def _on_connect(self, client, userdata, flags, reason, properties=None):
        for gw in GATEWAY_IDS:
            client.subscribe(lns_json.gateway_topic(REGION, gw, "command/down"), qos=0)
        self._connected.set()

    def close(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None

    # -- air ------------------------------------------------------------------------------------------
    def transmit(self, phy: bytes, frequency: int, sf: int, rssi: float, snr: float, context: bytes) -> bool:
        """Every gateway in range hears `phy`; False when none is (no broker)."""
        if not self._ensure():
            return False
        self.published.append(bytes(phy))
        for i, gw in enumerate(self.gateway_ids):
            self.uplink_id = (self.uplink_id + 1) & 0xFFFFFFFF
            meta = lns_json.RadioMeta(gw, frequency, sf, rssi=int(round(rssi - 3 * i)), snr=round(snr - i, 1),
                                      uplink_id=self.uplink_id, time=time.time(), context=context)
            self._client.publish(lns_json.gateway_topic(REGION, gw, "event/up"),
                                 json.dumps(lns_json.gateway_uplink(phy, meta)), qos=0)
        return True

    def _on_message(self, client, userdata, msg):
        parts = msg.topic.split("/")
        if len(parts) != 5 or parts[3:] != ["command", "down"]:
            return
        try:
            downlink_id, items = lns_json.parse_gateway_downlink(json.loads(msg.payload))
        except (ValueError, lns_json.IntegrationError):
            return
        if not items:
            return
        arrival = self.clock()
        with self._lock:
            self._inbox.setdefault(items[0][4], []).append((arrival, downlink_id, parts[2], items))

    def take(self, context: bytes) -> list:
        """The downlinks answering the uplink with `context` (each: arrival, downlink_id, gateway, items)."""
        with self._lock:
            return self._inbox.pop(bytes(context), [])

    def tx_ack(self, downlink_id: int, gateway: str, status: str, n_items: int, used: int) -> None:
        if self._client is not None:
            self._client.publish(lns_json.gateway_topic(REGION, gateway, "event/ack"),
                                 json.dumps(lns_json.gateway_txack(downlink_id, gateway, status, n_items, used)), qos=0)
