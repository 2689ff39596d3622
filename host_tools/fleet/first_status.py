"""A provisioned board's first status: awaited on the broker, or explained from its console.

`StatusWaiter` is a back-office MQTT client on `lanterne/v1/+/+/status` that keeps live
(not retained) messages, so only a status sent after the reset counts. `diagnose` reads the
board's console when none came: a crash, a refusal by the broker, an unreachable broker.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Callable

from host_tools.fleet import ProvisionError
from host_tools.fleet.config import parse_broker_url


class StatusWaiter:
    """A back-office MQTT client watching `lanterne/v1/+/+/status`; keeps live (not stored) messages."""

    def __init__(self, url: str, username: str | None, password: str | None, *, ca_cert: str | None = None, timeout: float = 10.0):
        import paho.mqtt.client as paho

        try:
            host, port, tls = parse_broker_url(url)
        except ValueError as exc:
            raise ProvisionError(str(exc), field="broker") from None
        self.url = url
        self._cond = threading.Condition()
        self._live: dict[str, list[tuple[float, bytes]]] = {}
        self._ready = threading.Event()
        self._error: str | None = None
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"lanterne-provision-{secrets.token_hex(4)}")
        if username:
            c.username_pw_set(username, password)
        if tls:
            c.tls_set(ca_certs=ca_cert)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.client = c
        try:
            c.connect(host, port, keepalive=30)
        except OSError as exc:
            raise ProvisionError(
                f"cannot reach the broker {url} from this host: {exc.strerror or exc}",
                hint="check --broker, or provision without waiting for the board (--no-wait)",
                field="broker",
            ) from None
        c.loop_start()
        if not self._ready.wait(timeout) or self._error:
            self.close()
            raise ProvisionError(
                self._error or f"the broker {url} did not answer within {timeout:g} s",
                hint="give the broker the registry's files (lanterne broker-files --out DIR, then reload it), or use --no-wait",
                field="broker",
            )

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._error = f"the broker {self.url} refused the back-office login: {reason_code}"
            self._ready.set()
            return
        client.subscribe("lanterne/v1/+/+/status", qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        if any(rc.is_failure for rc in reason_codes):
            self._error = f"the broker {self.url} does not let the back office read lanterne/v1/+/+/status"
        self._ready.set()

    def _on_message(self, client, userdata, msg):
        if msg.retain:
            return  # a stored status from before: only a live one proves the board is up now
        with self._cond:
            self._live.setdefault(msg.topic, []).append((time.monotonic(), bytes(msg.payload)))
            self._cond.notify_all()

    def wait(self, topic: str, since: float, timeout: float, poll: Callable[[], None] | None = None) -> dict | None:
        """The first live online status on `topic` received after `since` (monotonic), or None at timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, payload in self._live.get(topic, []):
                    if t < since:
                        continue
                    try:
                        doc = json.loads(payload)
                    except ValueError:
                        continue
                    if isinstance(doc, dict) and doc.get("state") == "online":
                        return doc
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.1))
                if poll:
                    poll()

    def close(self) -> None:
        self.client.disconnect()  # first: wakes the network loop, so loop_stop returns at once
        self.client.loop_stop()


_MQTT_REFUSALS = {
    "4": ("bad user name or password", "run `lanterne broker-files --out DIR` and reload the broker (SIGHUP)"),
    "5": ("not authorized", "run `lanterne broker-files --out DIR` and reload the broker (SIGHUP)"),
}


def diagnose(console: str, device: str) -> tuple[str, str]:
    """What the board's console says went wrong after the reset: (message, hint)."""
    lines = [ln.strip() for ln in console.splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith("[lanterne]")]
    if any(ln.startswith("Traceback") for ln in lines):
        errors = [ln for ln in lines if re.match(r"^\w*(Error|Exception)\b", ln)]
        crash = errors[-1] if errors else lines[-1]
        return f"the board crashed after the reset: {crash}", "see it with `mpremote connect PORT repl`, then `lanterne verify`"
    if said:
        last = said[-1]
        # "CONNACK refused, code 5" (current firmware) or "MQTTException(5" (umqtt.simple's, before)
        m = re.search(r"(?:CONNACK refused, code |MQTTException\()(\d+)", last)
        if m and m.group(1) in _MQTT_REFUSALS:
            why, hint = _MQTT_REFUSALS[m.group(1)]
            return f"the broker refused {device}: {why} (board says: {last[11:]})", hint
        if "mqtt connect" in last:
            return f"the board cannot reach the broker (board says: {last[11:]})", "check --broker from the board's network"
        return f"no status from the board (it last said: {last[11:]})", "check its network settings (wifi_ssid ...) and --broker"
    return "no status from the board and nothing on its console", "check the board (mpremote connect PORT repl)"


