"""LoRaWAN into the bridge: ChirpStack's MQTT integration -> the back office's uplink service ->
the bridge's database, readings placed at the network server's receive time minus their age."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from bridge_helpers import BridgeProcess, wait_until

from host_tools.backoffice.bridge.database import Database
from host_tools.backoffice.watcher import Watcher
from host_tools.codec import encode_values
from host_tools.codec import lns_json as J
from host_tools.fleet.registry import Registry

pytestmark = pytest.mark.integration
UTC = dt.timezone.utc


def test_chirpstack_uplinks_reach_the_database(mosquitto, tmp_path):
    registry = tmp_path / "fleet.sqlite"
    with Registry(registry) as reg:
        reg.add_or_update("station-1", site="north", board="esp32-rak3172", lorawan=True,
                          config={"lat": 45.77, "lon": 4.85})
        dev_eui = reg.secret("station-1", "lorawan_deveui").lower()
    app = J.Application()
    readings = [{"temperature": 7.5 + i / 10, "humidity": 80.0, "pressure": 1001.0, "illuminance": 12.0,
                 "voltage": 3.6, "status": [], "seq": 40 + i, "age": 1200 - 600 * i} for i in range(3)]
    (payload,) = [f["frame"] for f in encode_values(readings, budget=51, runtime="cpython", lorawan=True)]
    ns_time = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(minutes=10)  # the server's clock, not ours
    radio = [J.RadioMeta("0016c001ff10a235", 868100000, 9, rssi=-97, snr=6.5)]

    def event(data: bytes, fport: int = 102, eui: str = dev_eui, name: str = "station-1") -> bytes:
        up = J.Uplink(dev_eui=eui, device=name, fport=fport, fcnt=7, data=data, dr=3,
                      time=ns_time.isoformat().replace("+00:00", "Z"))
        return json.dumps(J.chirpstack_up(app, up, radio, adr=True)).encode()

    topic = J.chirpstack_topic(app, dev_eui, "event/up")
    db_path = tmp_path / "bridge.sqlite"
    bridge = BridgeProcess("--broker", mosquitto.url, "--db", db_path, "--registry", registry, "--http", "off",
                           "--group", f"lw{time.time_ns()}", "--client-id", f"lw{time.time_ns()}",
                           "--lorawan", "chirpstack", "--lorawan-state", tmp_path / "lorawan-state.sqlite")
    try:
        with Watcher(mosquitto.url, [J.chirpstack_topic(app, dev_eui, "command/down")]) as ns:
            ns.publish(topic, event(payload))
            ns.publish(topic, event(payload))  # the network server delivered it twice
            ns.publish(topic, event(b"\x00\x01\x02\x03"))
            ns.publish(J.chirpstack_topic(app, "70b3d57ed0000000", "event/up"),
                       event(payload, eui="70b3d57ed0000000", name="stranger"))
            ns.publish(topic, b"{not json")
            db = Database(str(db_path))
            wait_until(lambda: db.count("readings") >= 3 and len([b for b in db.rows("bad_frames")
                                                                  if b["kind"] == "lorawan"]) >= 3, 30, "the uplinks stored")
            # The uplink service's delivery ledger went back to the device through the network server.
            down = json.loads(ns.wait_for("application/*/command/down", timeout=10)[0].payload)
            assert down["devEui"] == dev_eui and down["fPort"] == 12
        final = bridge.stop()
    finally:
        bridge.kill()
    rows = db.rows("readings", order_by="seq")
    assert [(r["seq"], r["source"], r["temperature"]) for r in rows] == [(40, "lorawan", 7.5), (41, "lorawan", 7.6),
                                                                         (42, "lorawan", 7.7)]
    got = {r["seq"]: r for r in db.readings()}
    # Ages 1200 (coded within 0.8 %: 1200 exactly), 600, 0 before the network server's receive time.
    assert [got[s]["sampled_at"] for s in (40, 41, 42)] == [ns_time - dt.timedelta(seconds=a) for a in (1200, 600, 0)]
    assert all(got[s]["received_at"] == ns_time for s in got)
    # (The session's broker also carries other tests' retained statuses: only the LoRaWAN ones are ours.)
    lorawan_bad = [b["reason_code"] for b in db.rows("bad_frames") if b["kind"] == "lorawan"]
    assert sorted(lorawan_bad) == ["undecodable", "undecodable", "unknown_device"]
    assert final["readings"] == 3
    db.close()
