"""The bridge's MQTT side: a persistent MQTT 5 session that acknowledges only what is stored.

- Persistent session (clean start off, a session expiry): while the bridge is down or
  restarting, the broker keeps its QoS 1 messages; on reconnect it resends them, and the
  ones that were delivered but never acknowledged, flagged DUP.
- Manual acknowledgements: paho does not PUBACK on receipt; the bridge acknowledges a
  message only after the transaction holding what it carried has committed. A bridge
  killed between the two leaves the message unacknowledged: the broker sends it again and
  the database's unique key drops the copy. So nothing is lost and nothing written twice.
- Receive Maximum (MQTT 5): how many unacknowledged messages the broker may have in
  flight to the bridge at once; batches are at most that big. When the database is down
  the bridge stops acknowledging, and the broker stops sending: back-pressure, not loss.
- Shared subscriptions: with a group name, the data topics (up, ack, cmd, and the Home
  Assistant command topics) are subscribed as `$share/GROUP/...`: instances of the same
  group split the messages between them. Status topics are retained, and brokers send no
  retained message on a shared subscription, so every instance subscribes to them plainly
  (storing a status twice is an idempotent upsert).

Messages are handed over as `Message`s through `take()`, from paho's network thread to the
bridge's single worker, and acknowledged with `ack()` in the order they arrived (MQTT asks
for that). A message from before a reconnect is not acknowledged: its packet id belongs to
the old connection, and the broker sends it again anyway.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from host_tools.fleet.config import parse_broker_url

DATA_TOPICS = ("lanterne/v1/+/+/up", "lanterne/v1/+/+/ack", "lanterne/v1/+/+/cmd")
STATUS_TOPICS = ("lanterne/v1/+/+/status",)
RECEIVE_MAXIMUM = 2000


@dataclass
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    received_at: float  # Unix seconds, when the bridge read it
    generation: int  # connection it came on


class MqttInput:
    def __init__(self, url: str, *, client_id: str | None = None, group: str | None = "lanterne-bridge",
                 username: str | None = None, password: str | None = None, tls_ca: str | None = None,
                 extra_topics: tuple[str, ...] = (), session_expiry_s: int = 86400,
                 receive_maximum: int = RECEIVE_MAXIMUM, log=print):
        self.url = url
        self.host, self.port, tls = parse_broker_url(url)
        self.group = group or None
        self.client_id = client_id or f"lanterne-bridge-{socket.gethostname()}"
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.log = log
        self.topics = [self._shared(t) for t in (*DATA_TOPICS, *extra_topics)] + list(STATUS_TOPICS)
        self._queue: collections.deque[Message] = collections.deque()
        self._cond = threading.Condition()
        self.generation = 0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=paho.MQTTv5, manual_ack=True)
        if username:
            self.client.username_pw_set(username, password)
        if tls or tls_ca:
            self.client.tls_set(ca_certs=tls_ca)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.reconnect_delay_set(1, 30)

    def _shared(self, topic: str) -> str:
        return f"$share/{self.group}/{topic}" if self.group else topic

    # -- connection --------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        # A broker that refuses or is not there fails here (OSError), at once; later losses of the
        # connection are paho's to retry (1 s doubling to 30 s) while the session waits at the broker.
        self.client.connect(self.host, self.port, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            self.client.loop_stop()
            raise TimeoutError(f"could not connect and subscribe to {self.url} within {timeout:.0f} s")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.log(f"broker refused the connection: {reason_code}")
            return
        with self._cond:
            self.generation += 1
        sock = client.socket()
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.topics])
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()
        with self._cond:
            self.generation += 1  # what came before cannot be acknowledged on the next connection
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg):
        m = Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid, time.time(), self.generation)
        with self._cond:
            self._queue.append(m)
            self._cond.notify()

    # -- the worker's side --------------------------------------------------------------------
    def take(self, limit: int, timeout: float) -> list[Message]:
        """Up to `limit` messages, waiting at most `timeout` s for the first."""
        with self._cond:
            if not self._queue:
                self._cond.wait(timeout)
            out = []
            while self._queue and len(out) < limit:
                out.append(self._queue.popleft())
            return out

    def queued(self) -> int:
        return len(self._queue)

    def ack(self, messages: list[Message]) -> int:
        """Acknowledge stored messages, in their order; returns how many were acknowledged."""
        n = 0
        generation = self.generation
        for m in messages:
            if m.qos > 0 and m.generation == generation:
                self.client.ack(m.mid, m.qos)
                n += 1
        return n

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
