"""LoRaWAN into the bridge: a network server's MQTT integration, through the back office's uplink service.

`lanterne bridge --lorawan chirpstack|tts` subscribes (shared, like the data topics) to the
integration's uplink topics on the bridge's broker (point ChirpStack's or The Things Stack's MQTT
integration at it), and hands each message to `host_tools/backoffice/uplinks.py`'s `UplinkService`
(the same service `lanterne uplinks` runs: parsing, decoding FPort 102, full seqs, the delivery
ledger and its signed downlinks, compact acks). Its `reading` events go into the bridge's
ingest with the **network server's receive time** (`time` / `received_at` of the uplink event),
so a LoRaWAN reading's sampling time does not depend on when the bridge read the message; its
`bad_payload` and `unknown_device` events become bad frames. The database's unique key is still
what de-duplicates: the service's own trackers start afresh with each bridge process.
"""

from __future__ import annotations

import datetime as dt
import json

from host_tools.backoffice import uplinks
from host_tools.codec import lns_json as J


def _time(text: str, fallback: float) -> float:
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return fallback
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()


class LorawanInput:
    def __init__(self, bridge, integration: str, app: J.Application, ledger_per_day: int = 10, state: str | None = None):
        from host_tools.backoffice.lorawan_fleet import uplink_devices
        from host_tools.fleet.registry import Registry

        with Registry(bridge.directory.path) as reg:
            devices = uplink_devices(reg)
        self.bridge = bridge
        self.integration = integration
        self.service = uplinks.UplinkService(
            devices, integration=integration, app=app, ledger_per_day=ledger_per_day, on_event=self._event, state=state,
            publish=lambda topic, msg: bridge.input.publish(topic, json.dumps(msg)))
        self.topics = tuple(uplinks.topics(integration, app))
        self._prefix = tuple(t.split("+")[0] for t in self.topics)
        self._events: list[dict] = []

    def accepts(self, topic: str) -> bool:
        return topic.startswith(self._prefix) and topic.endswith("/up")

    def _event(self, event: dict) -> None:
        self._events.append(event)

    def handle(self, ingestor, topic: str, payload: bytes, received_at: float) -> None:
        """One integration message (on the bridge's worker): readings into `ingestor`, or a bad frame."""
        try:
            body = json.loads(payload)
            up = J.parse_chirpstack_up(body) if self.integration == "chirpstack" else J.parse_tts_up(body)
        except (ValueError, J.IntegrationError) as exc:
            ingestor.bad(topic, "lorawan", None, None, "undecodable", f"{self.integration} uplink event: {exc}",
                         payload, received_at)
            return
        received = _time(up.time, received_at)
        self._events = []
        self.service.handle(up)
        readings, device = [], None
        for ev in self._events:
            kind = ev["event"]
            if kind == "reading":
                device = ev["device"]
                readings.append(ev["reading"])
            elif kind == "bad_payload":
                ingestor.bad(topic, "lorawan", None, ev["device"], "undecodable", f"FPort {up.fport}: {ev['error']}",
                             up.data, received)
            elif kind == "unknown_device":
                ingestor.bad(topic, "lorawan", None, up.device or None, "unknown_device",
                             f"DevEUI {up.dev_eui} ({up.device or 'no name'}) is not a LoRaWAN device of the registry",
                             up.data, received)
        if readings:
            ingestor.decoded(device, readings, received, source="lorawan", topic=topic, raw=up.data)
