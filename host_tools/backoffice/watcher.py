"""Host-side MQTT client helpers (paho): watch a fleet's topics, wait for a message, publish."""

from __future__ import annotations

import fnmatch
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as paho

from host_tools.fleet.config import parse_broker_url


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    t: float = field(default_factory=time.time)


class Watcher:
    """Subscribes to `topics` and keeps every message; `wait_for` blocks until one matches."""

    def __init__(
        self,
        url: str,
        topics=("lanterne/#",),
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        tls_ca: str | None = None,
        on_message=None,
    ):
        host, port, tls = parse_broker_url(url)
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._on_message = on_message
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id or f"lanterne-host-{time.time_ns()}"
        )
        if username:
            self.client.username_pw_set(username, password)
        if tls or tls_ca:
            self.client.tls_set(ca_certs=tls_ca)
        self.topics = list(topics)
        self._subscribed = threading.Event()
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"could not subscribe on {url}")

    def _connected(self, client, userdata, flags, reason_code, properties):
        import socket as _socket

        sock = client.socket()
        if sock is not None:
            try:  # commands and acks are small packets: do not let Nagle hold them back
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        for t in self.topics:
            client.subscribe(t, qos=1)

    def _message(self, client, userdata, msg):
        m = Message(msg.topic, bytes(msg.payload), bool(msg.retain))
        with self._cond:
            self.messages.append(m)
            self._cond.notify_all()
        if self._on_message:
            self._on_message(m)

    def matching(self, topic_glob: str, predicate=None) -> list[Message]:
        with self._cond:
            return [
                m for m in self.messages if fnmatch.fnmatch(m.topic, topic_glob) and (predicate is None or predicate(m))
            ]

    def wait_for(self, topic_glob: str, predicate=None, timeout: float = 30.0, count: int = 1) -> list[Message]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    m
                    for m in self.messages
                    if fnmatch.fnmatch(m.topic, topic_glob) and (predicate is None or predicate(m))
                ]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({m.topic for m in self.messages})
                    raise TimeoutError(f"no message on {topic_glob} within {timeout} s (topics seen: {seen})")
                self._cond.wait(min(left, 0.5))

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False):
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(10)
        return info

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
