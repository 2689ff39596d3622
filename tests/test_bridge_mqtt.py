"""`lanterne bridge` against a real Mosquitto, into SQLite and a real PostgreSQL: a bridge killed
mid-stream and started again loses and duplicates nothing; two instances on a shared
subscription write each reading exactly once; malformed uplinks never stop it."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho
import pytest
from bridge_helpers import FLEET, BridgeProcess, bin_reading, frames, lamp_reading, make_registry, wait_until

from host_tools.backoffice.bridge.database import Database

pytestmark = pytest.mark.integration
PER_DEVICE = 150  # readings per device; one frame each, as boards send live readings


def stream(broker_port: int) -> tuple[list[tuple[str, bytes]], set[tuple[str, int]]]:
    """(topic, frame) for every reading of the fleet, interleaved, and the (device, seq) expected."""
    out, expected = [], set()
    for i in range(PER_DEVICE):
        for device, (site, board, _lat, _lon) in FLEET.items():
            seq = 1000 + i
            r = lamp_reading(seq) if board == "esp32-devkitc" else bin_reading(seq, fill=i % 100)
            out.append((f"lanterne/v1/{site}/{device}/up", frames([r])[0]))
            expected.add((device, seq))
    return out, expected


class Publisher:
    """Devices publishing at a steady pace (QoS 1), in a thread, while the test does its thing."""

    def __init__(self, port: int, messages: list[tuple[str, bytes]], per_s: float = 400):
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"devices-{time.time_ns()}")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.messages, self.per_s = messages, per_s
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        t0 = time.monotonic()
        for i, (topic, payload) in enumerate(self.messages):
            self.client.publish(topic, payload, qos=1).wait_for_publish(10)
            ahead = t0 + i / self.per_s - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        self.done.set()

    def close(self):
        self.done.wait(120)
        self.client.loop_stop()
        self.client.disconnect()


def uplinks_refused(db: Database) -> list[str]:
    """Reason codes of refused uplinks (the session's broker also holds other tests' retained statuses)."""
    return [r["reason_code"] for r in db.rows("bad_frames") if r["kind"] == "up"]


def keys(db: Database) -> list[tuple[str, int]]:
    return [(r["device"], r["seq"]) for r in db.rows("readings", order_by="device,seq")]


def test_killed_mid_stream_and_restarted_loses_and_duplicates_nothing(mosquitto, bridge_db, tmp_path):
    registry = make_registry(tmp_path / "fleet.sqlite")
    messages, expected = stream(mosquitto.port)
    # Its own group: a group's offline members keep their share of the messages (their sessions).
    group = f"kill{time.time_ns()}"
    args = ("--broker", mosquitto.url, "--db", bridge_db, "--registry", registry, "--http", "off",
            "--group", group, "--client-id", f"{group}-a")
    bridge = BridgeProcess(*args)
    db = Database(bridge_db)
    pub = Publisher(mosquitto.port, messages)
    try:
        wait_until(lambda: db.count("readings") >= len(expected) // 4, 60, "a quarter of the stream stored")
        bridge.kill()  # mid-stream: batches taken, some committed and not acknowledged, some neither
        at_kill = db.count("readings")
        assert 0 < at_kill < len(expected)
        time.sleep(1.0)  # devices keep publishing to a bridge that is not there
        bridge = BridgeProcess(*args)
        pub.close()
        wait_until(lambda: db.count("readings") >= len(expected), 90, "every reading stored")
        final = bridge.stop()
    finally:
        bridge.kill()
        pub.close()
    got = keys(db)
    assert len(got) == len(set(got)) == len(expected)  # nothing twice
    assert set(got) == expected  # nothing lost
    assert final["readings"] == len(expected) - at_kill  # the restarted bridge wrote exactly the rest
    states = db.states()
    assert {d: states[d]["highest_seq"] for d in FLEET} == {d: 1000 + PER_DEVICE - 1 for d in FLEET}
    db.close()


def test_two_instances_on_a_shared_subscription_write_each_reading_once(mosquitto, bridge_db, tmp_path):
    registry = make_registry(tmp_path / "fleet.sqlite")
    messages, expected = stream(mosquitto.port)
    group = f"g{time.time_ns()}"
    common = ("--broker", mosquitto.url, "--db", bridge_db, "--registry", registry, "--http", "off", "--group", group)
    a = BridgeProcess(*common, "--client-id", f"{group}-a")
    b = BridgeProcess(*common, "--client-id", f"{group}-b")
    db = Database(bridge_db)
    try:
        # Malformed uplinks in the stream, from outside and inside the fleet: counted, stored, no crash.
        good = messages[0][1]
        lamp_frame = next(p for t, p in messages if "/lamp-1/" in t)
        bad = [("lanterne/v1/lyon/ghost/up", good), ("lanterne/v1/lyon/bin-1/up", b"\x02" + bytes(19)),
               ("lanterne/v1/lyon/bin-1/up", lamp_frame), ("lanterne/v1/lyon/bin-1/up", b"\x07" + good[1:])]
        pub = Publisher(mosquitto.port, messages[:50] + bad + messages[50:])
        pub.close()
        wait_until(lambda: db.count("readings") >= len(expected) and len(uplinks_refused(db)) >= 4, 90,
                   "every reading stored")
        time.sleep(0.5)
        stats_a, stats_b = a.stop(), b.stop()
    finally:
        a.kill()
        b.kill()
    got = keys(db)
    assert len(got) == len(set(got)) == len(expected) and set(got) == expected
    # Each reading written by exactly one of them: their counts add up, and both took a share.
    assert stats_a["readings"] + stats_b["readings"] == len(expected)
    assert stats_a["readings"] > len(expected) // 5 and stats_b["readings"] > len(expected) // 5
    reasons = sorted(uplinks_refused(db))
    assert reasons == ["impersonation", "undecodable", "unknown_device", "unknown_version"]
    assert stats_a["bad"].get("impersonation", 0) + stats_b["bad"].get("impersonation", 0) == 1
    db.close()
