"""A broker started on `lanterne broker-files`' conf that crashes (SIGKILL: out of memory, power lost)
comes back with the back office's session: what a board publishes before the back office reconnects
is queued for it, not dropped for want of a subscriber (the conf saves the broker's state every
second). Measured first by `lanterne soak` (docs/reliability.md, "Findings"). ~5 s."""

from __future__ import annotations

import os
import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from host_tools.backoffice.brokers import SystemMosquitto, free_port
from host_tools.fleet.broker_files import AUTOSAVE_S, Listener, parse_owner, write_broker_files
from host_tools.fleet.registry import Registry

pytestmark = pytest.mark.integration


def _session(port, user, password, topic=None):
    got, subscribed = [], threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="office-bridge", protocol=paho.MQTTv5)
    c.username_pw_set(user, password)
    c.on_message = lambda cl, u, m: got.append(bytes(m.payload))
    c.on_subscribe = lambda *a: subscribed.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    if topic:
        c.subscribe(topic, qos=1)
        assert subscribed.wait(5)
    return c, got


def test_a_crashed_broker_keeps_the_back_office_session(tmp_path):
    reg = Registry(tmp_path / "fleet.sqlite")
    reg.add_or_update("lamp-a", site="centre", board="esp32-devkitc")
    port = free_port()
    owner = parse_owner("root") if os.geteuid() == 0 else None
    paths = write_broker_files(reg, tmp_path / "broker", owner=owner, listen=Listener(port, "127.0.0.1"),
                               persistence_dir=tmp_path / "data")
    assert f"autosave_interval {AUTOSAVE_S}" in paths["mosquitto_conf"].read_text().splitlines()
    user, password = reg.backoffice_credentials()
    broker = SystemMosquitto(paths["mosquitto_conf"], port).start()
    try:
        office, _ = _session(port, user, password, "lanterne/v1/+/+/up")  # connected, as the bridge is
        time.sleep(AUTOSAVE_S + 1.5)
        broker.proc.kill()  # the crash: the office's connection is gone with it
        broker.proc.wait()
        office.loop_stop()
        broker.stop()
        broker.start()
        board = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="lamp-a")
        board.username_pw_set("lamp-a", reg.secret("lamp-a", "mqtt_password"))
        board.connect("127.0.0.1", port)
        board.loop_start()
        board.publish("lanterne/v1/centre/lamp-a/up", b"\x02reading", qos=1).wait_for_publish(5)  # PUBACKed
        board.loop_stop()
        board.disconnect()
        again, got = _session(port, user, password)  # back, without subscribing again
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.1)
        again.loop_stop()
        assert got == [b"\x02reading"]
    finally:
        broker.stop()
