"""Commands to LoRaWAN devices through a network server's MQTT integration (ChirpStack v4 or The Things Stack v3).

The signed command frame is the one MQTT boards get (docs/commands.md); it is queued on the network
server as a downlink on FPort 10 (ChirpStack `.../command/down`, TTS `.../down/push`). Class A: the
network server holds it until the device's next uplink opens its receive windows, so the ack takes
up to the device's sampling period plus whatever its airtime budget makes it wait. The ack comes
back on FPort 11 as the compact LoRaWAN ack (firmware/lanterne/ledger.py), checked against the
command in flight: counter, opcode and the device's key.

A downlink or its ack can be lost on the air (class A has no retry of its own for an unconfirmed
downlink). When `requeue_after` uplinks of the device have come up since the command was queued and
none carried its ack, the same frame is queued again: the board acks a repeat of the command it
executed last without executing it again (firmware/lanterne/commands.py, "redelivered"), so a
command is executed at most once however often it is queued.
"""

from __future__ import annotations

import json
import threading
import time

from host_tools.backoffice.command_client import AckResult
from host_tools.backoffice.uplinks import LoraDevice, downlink_message, topics
from host_tools.codec import lns_json as J
from host_tools.codec.lns_devices import tts_id
from host_tools.runtime import firmware_module

cmd = firmware_module("commands")
ledger = firmware_module("ledger")


class LorawanCommandClient:
    """One MQTT connection to the network server's integration: queue commands, collect their compact acks."""

    def __init__(self, url: str, integration: str = "chirpstack", app: J.Application | None = None,
                 username: str | None = None, password: str | None = None, tls_ca: str | None = None):
        from host_tools.backoffice.watcher import Watcher

        self.integration = integration
        self.app = app or J.Application()
        self._lock = threading.Lock()
        self._waiters: dict[str, tuple[LoraDevice, dict, threading.Event, list]] = {}  # device -> in flight
        self.uplinks_seen: dict[str, int] = {}
        self.watcher = Watcher(url, topics(integration, self.app), username=username, password=password, tls_ca=tls_ca,
                               on_message=self._on_up)

    def _on_up(self, m) -> None:
        try:
            body = json.loads(m.payload)
            up = J.parse_chirpstack_up(body) if self.integration == "chirpstack" else J.parse_tts_up(body)
        except (ValueError, J.IntegrationError):
            return
        with self._lock:
            for name, (dev, in_flight, ev, slot) in self._waiters.items():
                if (up.dev_eui or "").lower() != dev.dev_eui.lower() and up.device not in (dev.device, tts_id(dev.device)):
                    continue
                self.uplinks_seen[name] = self.uplinks_seen.get(name, 0) + 1
                if up.fport != ledger.FPORT_ACK:
                    continue
                got = ledger.parse_ack(dev.command_key, dev.device, up.data, in_flight)
                if got is not None:
                    slot.append((time.perf_counter(), got))
                    ev.set()

    def send(self, dev: LoraDevice, counter: int, opcode: int, args: dict | None = None, timeout: float = 600.0,
             on_queued=None, requeue_after: int = 3, on_requeued=None) -> AckResult:
        """Queue the command and wait for its ack; queued again after `requeue_after` uplinks without it (0: never)."""
        frame = cmd.build(dev.command_key, dev.device, counter, opcode, args)
        ev, slot = threading.Event(), []
        with self._lock:
            self._waiters[dev.device] = (dev, {counter: opcode}, ev, slot)
            self.uplinks_seen[dev.device] = 0
        self.requeued = 0
        t0 = time.perf_counter()
        try:
            topic, msg = downlink_message(self.integration, self.app, dev, ledger.FPORT_COMMAND, frame)
            body = json.dumps(msg).encode()
            self.watcher.publish(topic, body, qos=1)
            if on_queued is not None:
                on_queued(topic, len(frame))
            deadline, mark = t0 + timeout, 0
            while not ev.wait(0.2):
                if time.perf_counter() >= deadline:
                    again = f", queued {self.requeued + 1} times" if self.requeued else ""
                    raise TimeoutError(f"no ack from {dev.device} for command {counter} within {timeout:.0f} s "
                                       f"({self.uplinks_seen.get(dev.device, 0)} uplinks from it meanwhile{again})")
                with self._lock:
                    seen = self.uplinks_seen.get(dev.device, 0)
                if requeue_after and seen - mark >= requeue_after:
                    mark = seen  # the downlink, or the ack, was lost: the same frame again
                    self.watcher.publish(topic, body, qos=1)
                    self.requeued += 1
                    if on_requeued is not None:
                        on_requeued(self.requeued, seen)
        finally:
            with self._lock:
                self._waiters.pop(dev.device, None)
        t1, (got_counter, got_opcode, status, data) = slot[0]
        return AckResult(dev.device, got_counter, cmd.NAMES.get(got_opcode, "unknown"), status,
                         cmd.REASONS.get(status, "unknown"), data, (t1 - t0) * 1000)

    def close(self) -> None:
        self.watcher.close()
