"""The back office's side of commands: build, sign, send over MQTT, wait for the signed ack.

Uses the firmware's own `lanterne.commands` module (it runs on CPython too), so the
host and the board cannot disagree on the format.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from host_tools.backoffice.actions import ACTIONS, cmd

# 2025-01-01T00:00:00Z: counters are deciseconds since then unless the last one is higher,
# so several back-office hosts without shared state still send increasing counters.
_EPOCH = 1735689600


def next_counter(last: int) -> int:
    return max(last + 1, int((time.time() - _EPOCH) * 10))


@dataclass
class AckResult:
    device: str
    counter: int
    command: str
    status: int
    reason: str
    data: bytes
    rtt_ms: float

    @property
    def ok(self) -> bool:
        return self.status == cmd.OK


def topics(site: str, device: str) -> dict[str, str]:
    base = f"lanterne/v1/{site}/{device}/"
    return {"cmd": base + "cmd", "ack": base + "ack", "status": base + "status", "up": base + "up"}


class CommandClient:
    """One MQTT connection for sending commands to many devices and collecting their acks."""

    def __init__(self, url: str, username: str | None = None, password: str | None = None, tls_ca: str | None = None,
                 timeout: float = 10.0):
        from host_tools.backoffice.watcher import Watcher

        self.timeout = timeout  # how long send() waits for an ack unless told otherwise
        self._waiters: dict[tuple[str, int], tuple[threading.Event, list]] = {}
        self._lock = threading.Lock()
        self._keys: dict[str, bytes] = {}
        self.rejected_acks = 0
        self.watcher = Watcher(
            url, ["lanterne/v1/+/+/ack"], username=username, password=password, tls_ca=tls_ca, on_message=self._on_ack
        )

    def _on_ack(self, m):
        device = m.topic.split("/")[3]
        key = self._keys.get(device)
        if key is None:
            return
        try:
            ack = cmd.parse_ack(key, device, m.payload)
        except cmd.CommandError:
            self.rejected_acks += 1  # forged or for an older key: never trusted
            return
        with self._lock:
            waiter = self._waiters.get((device, ack["counter"]))
        if waiter:
            waiter[1].append((time.perf_counter(), ack))
            waiter[0].set()

    def send(self, site: str, device: str, key: bytes, counter: int, action: str | int, args: dict | None = None,
             timeout: float | None = None, frame: bytes | None = None) -> AckResult:
        opcode = ACTIONS[action].opcode if isinstance(action, str) else action  # a word of `lanterne command`
        self._keys[device] = key
        if frame is None:
            frame = cmd.build(key, device, counter, opcode, args)
        ev = threading.Event()
        slot: list = []
        with self._lock:
            self._waiters[(device, counter)] = (ev, slot)
        t0 = time.perf_counter()
        try:
            self.watcher.publish(topics(site, device)["cmd"], frame, qos=1)
            if timeout is None:
                timeout = self.timeout
            if not ev.wait(timeout):
                raise TimeoutError(f"no ack from {device} for command {counter} within {timeout} s")
        finally:
            with self._lock:
                self._waiters.pop((device, counter), None)
        t1, ack = slot[0]
        return AckResult(device, ack["counter"], ack["command"], ack["status"], ack["reason"], ack["data"], (t1 - t0) * 1000)

    def close(self):
        self.watcher.close()
