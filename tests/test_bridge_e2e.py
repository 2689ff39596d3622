"""End to end: virtual boards running the real firmware -> Mosquitto -> `lanterne bridge` -> SQLite and
PostgreSQL. A board cut off from the network keeps sampling; when it comes back its backlog lands
with the times the readings were taken. The NGSI-LD entities validate against the official schemas,
Home Assistant's discovery matches the states, and a lamp dims from a Home Assistant command."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.request

import pytest
from bridge_helpers import BridgeProcess, wait_until
from smart_data_models import errors

from host_tools.backoffice.bridge.database import Database
from host_tools.backoffice.watcher import Watcher
from host_tools.fleet.registry import Registry

pytestmark = pytest.mark.integration
SITE = "lyon"
LAMP = ("lamp-1", "esp32-devkitc", 45.764043, 4.835659)
BIN = ("bin-1", "olimex-esp32-poe", 45.762311, 4.833377)
OUTAGE_S = 8


def duty(h) -> int:
    p = h.world.pwm(25)
    return 0 if p is None else round(p["duty_u16"] * 100 / 65535)


def test_boards_to_sqlite_and_postgresql_with_ngsi_ld_and_home_assistant(virtual_boards, mosquitto, pg_url, tmp_path):
    registry = tmp_path / "fleet.sqlite"
    with Registry(registry) as reg:
        for device, board, lat, lon in (LAMP, BIN):
            reg.add_or_update(device, site=SITE, board=board, config={"lat": lat, "lon": lon, "sample_period_s": 1})
        keys = {d: reg.command_key(d).hex() for d, *_ in (LAMP, BIN)}
    boards = {}
    for device, board, lat, lon in (LAMP, BIN):
        (boards[device],) = virtual_boards(1, board=board, config={
            "device": device, "site": SITE, "broker": mosquitto.url, "sample_period_s": 1, "status_period_s": 5,
            "keepalive_s": 10, "command_key": keys[device], "lat": lat, "lon": lon})
    boards["bin-1"].world.set(distance_mm=500)  # bin 1200 mm deep, full at 150 mm: about 67 %
    sqlite_db = tmp_path / "bridge.sqlite"
    stamp = time.time_ns()
    # Two bridges, each its own group, so each sees everything: one writes SQLite and talks to
    # Home Assistant, the other writes PostgreSQL.
    lite = BridgeProcess("--broker", mosquitto.url, "--db", sqlite_db, "--registry", registry, "--http", "127.0.0.1:0",
                         "--group", f"lite{stamp}", "--client-id", f"lite{stamp}", "--home-assistant")
    pg = BridgeProcess("--broker", mosquitto.url, "--db", pg_url, "--registry", registry, "--http", "127.0.0.1:0",
                       "--group", f"pg{stamp}", "--client-id", f"pg{stamp}")
    dbs = {"sqlite": Database(str(sqlite_db)), "postgresql": Database(pg_url)}
    try:
        def seen(device, n):
            return all(len([r for r in db.readings(device=device)]) >= n for db in dbs.values())

        wait_until(lambda: seen("lamp-1", 3) and seen("bin-1", 3), 60, "readings from both boards in both databases")

        # -- the outage: the lamp board is cut off; it keeps sampling into its store ---------------
        lamp = boards["lamp-1"]
        lamp.world.set(link_up=False)
        down_at = time.time()
        lamp.wait_for(r"\[lanterne\] link down", timeout=15)
        time.sleep(OUTAGE_S)
        up_at = time.time()
        lamp.world.set(link_up=True)

        def backlog_in(db):
            return [r for r in db.readings(device="lamp-1")
                    if down_at + 2 < r["sampled_at"].timestamp() < up_at - 1]

        wait_until(lambda: all(len(backlog_in(db)) >= OUTAGE_S - 4 for db in dbs.values()), 60,
                   "the backlog stored in both databases")
        for name, db in dbs.items():
            rows = list(db.readings(device="lamp-1"))
            seqs = [r["seq"] for r in rows]
            assert seqs == sorted(seqs) and seqs == list(range(seqs[0], seqs[0] + len(seqs))), name  # no gap
            backlog = backlog_in(db)
            for r in backlog:
                # Received after the link came back, sampled when it was down, a second apart.
                assert r["received_at"].timestamp() >= up_at - 0.5, name
                assert r["received_at"] - r["sampled_at"] >= dt.timedelta(seconds=1), name
            gaps = [(b["sampled_at"] - a["sampled_at"]).total_seconds() for a, b in zip(backlog, backlog[1:], strict=False)]
            assert all(0.5 <= g <= 2.5 for g in gaps), (name, gaps)  # the board samples every second
        # Both engines hold the same readings at the same times (each bridge timed its own receipt).
        snap = {name: {(r["device"], r["seq"]): r for r in db.readings()} for name, db in dbs.items()}
        common = snap["sqlite"].keys() & snap["postgresql"].keys()
        assert len(common) > 20
        for k in common:
            a, b = snap["sqlite"][k], snap["postgresql"][k]
            assert abs((a["sampled_at"] - b["sampled_at"]).total_seconds()) < 0.5, k
            assert (a["temperature"], a["fill"], a["lamp"], a["age_s"]) == (b["temperature"], b["fill"], b["lamp"], b["age_s"])

        # -- NGSI-LD, from each bridge's API ----------------------------------------------------------
        for bridge in (lite, pg):
            url = bridge.started["api"] + "/ngsi-ld/v1/entities?type=WasteContainer,Streetlight,WeatherObserved"
            with urllib.request.urlopen(url, timeout=10) as resp:
                entities = json.loads(resp.read())
            assert {e["id"] for e in entities} == {
                "urn:ngsi-ld:Streetlight:lamp-1", "urn:ngsi-ld:WeatherObserved:lamp-1",
                "urn:ngsi-ld:WasteContainer:bin-1", "urn:ngsi-ld:WeatherObserved:bin-1"}
            for e in entities:
                assert errors(e) == [], (e["id"], errors(e))
            fill = next(e for e in entities if e["type"] == "WasteContainer")["fillingLevel"]["value"]
            assert 0.6 <= fill <= 0.72

        # -- Home Assistant: discovery consistent with the states ------------------------------------
        with Watcher(mosquitto.url, ["homeassistant/#", "lanterne-bridge/ha/#", f"lanterne/v1/{SITE}/+/status"]) as ha:
            light_cfg = json.loads(ha.wait_for("homeassistant/light/lanterne_lamp-1_lamp/config")[0].payload)
            assert light_cfg["availability"][0]["topic"] == f"lanterne/v1/{SITE}/lamp-1/status"
            assert light_cfg["brightness_scale"] == 100 and light_cfg["schema"] == "json"
            cover = json.loads(ha.wait_for("homeassistant/cover/lanterne_bin-1_bollard/config")[0].payload)
            assert cover["device_class"] == "gate" and cover["device"]["model"] == "olimex-esp32-poe"
            fill_cfg = json.loads(ha.wait_for("homeassistant/sensor/lanterne_bin-1_fill/config")[0].payload)
            temp_cfg = json.loads(ha.wait_for("homeassistant/sensor/lanterne_lamp-1_temperature/config")[0].payload)
            assert (temp_cfg["device_class"], temp_cfg["unit_of_measurement"]) == ("temperature", "°C")
            assert fill_cfg["unit_of_measurement"] == "%"
            assert not ha.matching("homeassistant/light/lanterne_bin-1*")  # a bin has no lamp
            # The state the sensors read is the newest reading in the database.
            state = json.loads(ha.wait_for(fill_cfg["state_topic"], count=1)[-1].payload)
            latest = dbs["sqlite"].latest_readings(["bin-1"])["bin-1"]
            assert state["seq"] <= latest["seq"] and 60 <= state["fill"] <= 72
            # Availability is the board's own status: online, as the template reads it.
            avail = light_cfg["availability"][0]
            status = json.loads(ha.wait_for(avail["topic"])[-1].payload)
            assert status[avail["value_template"].split(".")[1].split()[0]] == avail["payload_available"]

            # -- a lamp dimmed from Home Assistant's command topic ---------------------------------------
            before = duty(lamp)
            target = 30 if before != 30 else 45
            ha.publish(light_cfg["command_topic"], json.dumps({"state": "ON", "brightness": target}).encode())
            wait_until(lambda: abs(duty(lamp) - target) <= 1, 20, f"the lamp at {target} %")
            light = ha.wait_for(light_cfg["state_topic"], lambda m: json.loads(m.payload).get("brightness") == target,
                                timeout=20)
            assert json.loads(light[-1].payload)["state"] == "ON"

            # -- and a bollard raised from its cover (closed = raised: the way is shut) --------------
            ha.publish(cover["command_topic"], b"CLOSE")
            ha.wait_for(cover["state_topic"], lambda m: m.payload == b"closed", timeout=30)
            assert boards["bin-1"].world.pin_level(32) is not None  # the relay was driven
        db = dbs["sqlite"]
        wait_until(lambda: any(a["command"] == "set_lamp" for a in db.rows("acks")), 20, "the ack stored")
        wait_until(lambda: any(a["command"] == "bollard" for a in db.rows("acks")), 20, "the bollard's ack stored")
        (raised,) = [c for c in db.rows("commands") if c["command"] == "bollard"]
        assert raised["source"] == "home-assistant" and json.loads(raised["args"]) == {"action": "raise"}
        (command,) = [c for c in db.rows("commands") if c["command"] == "set_lamp"]
        assert command["source"] == "home-assistant" and json.loads(command["args"])["level"] == target
        (ack,) = [a for a in db.rows("acks") if (a["device"], a["counter"]) == (command["device"], command["counter"])]  # (counters are per device)
        assert ack["reason"] == "ok" and ack["data"] == bytes([target])
        lite.stop()
        # Nothing of ours was refused (the session's broker also carries other tests' devices).
        ours = (f"lanterne/v1/{SITE}/lamp-1/", f"lanterne/v1/{SITE}/bin-1/")
        assert [b for b in db.rows("bad_frames") if b["topic"].startswith(ours)] == []
    finally:
        lite.kill()
        pg.kill()
        for d in dbs.values():
            d.close()
