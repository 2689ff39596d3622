"""NGSI-LD: the bridge's entities validate against the official Smart Data Models schemas; its read
API answers as the NGSI-LD specification says; the push to a context broker retries and never
holds up the ingest."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from bridge_helpers import FLEET, bin_reading, frames, lamp_reading, make_registry, wait_until
from ngsi_broker import ContextBroker
from smart_data_models import MODELS, errors, example

from host_tools.backoffice.bridge import ngsi
from host_tools.backoffice.bridge.devices import Device, board_parts
from host_tools.backoffice.bridge.ngsi_push import Pusher
from host_tools.backoffice.bridge.service import Bridge, BridgeConfig

T0 = time.time()


def test_the_validator_accepts_upstream_examples_and_catches_bad_entities():
    for model in ("WasteContainer", "Streetlight", "WeatherObserved", "NoiseLevelObserved"):
        assert errors(example(model)) == [], model
    # Upstream's own defect (their README): this example does not match its schema.
    assert any("tsp" in e for e in errors(example("AirQualityObserved")))
    bad = example("WasteContainer")
    bad["fillingLevel"] = {"type": "Property", "value": 1.5}  # a fraction, at most 1
    bad["binLoggedTime"]["value"]["@value"] = "yesterday"  # formats are checked too
    del bad["location"]
    found = errors(bad)
    assert any("fillingLevel" in e for e in found) and any("binLoggedTime" in e for e in found)
    assert any("'location' is a required property" in e for e in found)


def device(name: str, board: str, lat=45.7640434, lon=4.8356591, **kw) -> Device:
    parts, fields = board_parts(board)
    return Device(name, "lyon", board, lat, lon, kw.get("fields", fields), kw.get("parts", parts), None,
                  {"sample_period_s": 60})


def as_row(reading: dict, seq: int = 1) -> dict:
    """A reading as the database hands it back (sampling time, flags)."""
    import datetime as dt

    r = dict(reading, seq=seq, sampled_at=dt.datetime.fromtimestamp(T0 - reading.get("age", 0), dt.timezone.utc))
    r["flags"] = r.pop("status", [])
    return r


def test_every_model_the_fleet_produces_is_valid():
    lamp = ngsi.entities(device("lamp-1", "esp32-devkitc"), as_row(lamp_reading(5, lamp_fault=True)))
    bin_ = ngsi.entities(device("bin-1", "olimex-esp32-poe"), as_row(bin_reading(5, fill=87, status=["tamper"])))
    # An environmental station: particulate matter and sound levels (payload v3's extension fields).
    env = device("env-1", "esp32-envstation")
    station = as_row({"temperature": 21.0, "humidity": 64.5, "pressure": 1004.0, "pm1": 8, "pm2_5": 12, "pm10": 20,
                      "laeq": 61.2, "lamax": 78.0, "voltage": 5.0, "status": ["pm_humid"]})
    env_entities = ngsi.entities(env, station)
    by_type = {e["type"]: e for e in env_entities + bin_ + lamp}  # WeatherObserved: the lamp's
    assert set(by_type) == set(MODELS)
    for e in lamp + bin_ + env_entities:
        assert errors(e) == [], (e["id"], errors(e))
        assert e["@context"][-1] == ngsi.CORE_CONTEXT
    kv = {t: ngsi.key_values(e) for t, e in by_type.items()}
    assert kv["WasteContainer"]["fillingLevel"] == 0.87 and kv["WasteContainer"]["status"] == "moved"
    assert kv["Streetlight"]["powerState"] == "low" and kv["Streetlight"]["illuminanceLevel"] == 0.8
    assert kv["Streetlight"]["status"] == "defectiveLamp"
    assert kv["WeatherObserved"]["relativeHumidity"] == 0.7 and kv["WeatherObserved"]["atmosphericPressure"] == 1002.5
    assert kv["AirQualityObserved"]["pm25"] == 12 and kv["AirQualityObserved"]["reliability"] == 0.5
    assert kv["NoiseLevelObserved"]["LAeq"] == 61.2 and kv["NoiseLevelObserved"]["LAmax"] == 78.0
    assert by_type["WasteContainer"]["fillingLevel"]["observedAt"].endswith("Z")
    # Lamps and bins produce no air-quality or noise entity: those come with the fields.
    assert {e["type"] for e in lamp + bin_} == {"Streetlight", "WasteContainer", "WeatherObserved"}
    assert {e["type"] for e in env_entities} == {"WeatherObserved", "AirQualityObserved", "NoiseLevelObserved"}


def test_an_environmental_station_frame_through_the_ingest(tmp_path):
    """A payload v3 frame (the firmware's encoder) -> the bridge -> AirQualityObserved and NoiseLevelObserved."""
    from host_tools.backoffice.bridge.database import Database
    from host_tools.backoffice.bridge.devices import Directory
    from host_tools.backoffice.bridge.ingest import Ingestor
    from host_tools.fleet.registry import Registry

    registry = tmp_path / "fleet.sqlite"
    with Registry(registry) as reg:
        reg.add_or_update("env-1", site="lyon", board="esp32-envstation", config={"lat": 45.75, "lon": 4.84})
    db = Database(str(tmp_path / "b.sqlite"))
    ingest = Ingestor(db, Directory(registry))
    reading = {"temperature": 18.5, "humidity": 92.0, "pressure": 1003.0, "pm1": 9, "pm2_5": 14, "pm10": 22,
               "laeq": 58.3, "lamax": 71.9, "voltage": 5.0, "status": ["pm_humid"], "seq": 3, "age": 1}
    (frame,) = frames([reading])
    assert frame[0] == 3  # a v3 frame
    ingest.mqtt("lanterne/v1/lyon/env-1/up", frame, T0)
    assert ingest.flush().written == 1
    latest = db.latest_readings()["env-1"]
    assert (latest["pm2_5"], latest["laeq"], latest["flags"]) == (14, 58.3, ["pm_humid"])
    found = {e["type"]: e for e in ngsi.entities(Directory(registry).get("env-1"), latest)}
    assert set(found) == {"WeatherObserved", "AirQualityObserved", "NoiseLevelObserved"}
    assert all(errors(e) == [] for e in found.values())
    assert ngsi.key_values(found["AirQualityObserved"])["pm10"] == 22
    db.close()


def test_publication_precision_and_no_location_no_entity():
    dev = device("bin-1", "olimex-esp32-poe")
    (coarse, *_) = ngsi.entities(dev, as_row(bin_reading(1)), precision=3)
    assert coarse["location"]["value"]["coordinates"] == [4.836, 45.764]
    (fine, *_) = ngsi.entities(dev, as_row(bin_reading(1)), precision=5)
    assert fine["location"]["value"]["coordinates"] == [4.83566, 45.76404]
    assert ngsi.entities(device("bin-9", "olimex-esp32-poe", lat=None, lon=None), as_row(bin_reading(1))) == []


@pytest.fixture
def bridge(tmp_path, mosquitto):
    registry = make_registry(tmp_path / "fleet.sqlite")
    b = Bridge(BridgeConfig(broker=mosquitto.url, db=str(tmp_path / "b.sqlite"), registry=str(registry),
                            http="127.0.0.1:0", location_precision=4, log=lambda line: None))
    b.api.start()  # the API alone: data goes in through the ingestor below
    for device_id, (site, board, *_rest) in FLEET.items():
        r = lamp_reading(10) if board == "esp32-devkitc" else bin_reading(10, fill=55)
        b.ingestor.mqtt(f"lanterne/v1/{site}/{device_id}/up", frames([r])[0], T0)
    b.ingestor.flush()
    yield b
    b.api.stop()
    b.db.close()


def get(url: str, accept: str | None = "application/json", method: str = "GET"):
    req = urllib.request.Request(url, method=method, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def test_read_api(bridge):
    base = bridge.api.url + "/ngsi-ld/v1/entities"
    status, headers, body = get(f"{base}?type=WasteContainer")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert ngsi.SDM_CONTEXT in headers["Link"] and 'rel="http://www.w3.org/ns/json-ld#context"' in headers["Link"]
    assert [e["id"] for e in body] == ["urn:ngsi-ld:WasteContainer:bin-1", "urn:ngsi-ld:WasteContainer:bin-2"]
    assert all("@context" not in e and errors(e) == [] for e in body)
    assert body[0]["location"]["value"]["coordinates"] == [4.8334, 45.7623]  # --location-precision 4
    status, headers, body = get(f"{base}?type=Streetlight,WeatherObserved&count=true", "application/ld+json")
    assert status == 200 and headers["Content-Type"] == "application/ld+json" and "Link" not in headers
    assert headers["NGSILD-Results-Count"] == "6" and all("@context" in e for e in body)  # 2 lamps, 4 weather
    status, _, one = get(f"{base}/urn:ngsi-ld:Streetlight:lamp-2?options=keyValues&attrs=powerState,location")
    assert status == 200 and one == {"id": "urn:ngsi-ld:Streetlight:lamp-2", "type": "Streetlight",
                                     "powerState": "low", "location": {"type": "Point", "coordinates": [4.8369, 45.7651]}}
    status, _, page = get(f"{base}?type=WasteContainer,Streetlight&limit=1&offset=1")
    assert status == 200 and [e["id"] for e in page] == ["urn:ngsi-ld:Streetlight:lamp-2"]
    # Errors: ProblemDetails with the NGSI-LD error types.
    for url, code, kind in [
        (f"{base}", 400, "BadRequestData"),  # no type, no id
        (f"{base}?type=WasteContainer&limit=abc", 400, "BadRequestData"),
        (f"{base}?type=WasteContainer&limit=5000", 400, "BadRequestData"),
        (f"{base}?type=WasteContainer&q=fillingLevel>0.5", 400, "BadRequestData"),
        (f"{base}?type=WasteContainer&options=sysAttrz", 400, "BadRequestData"),
        (f"{base}/not-a-uri", 400, "BadRequestData"),
        (f"{base}/urn:ngsi-ld:WasteContainer:bin-404", 404, "ResourceNotFound"),
        (f"{bridge.api.url}/elsewhere", 404, "ResourceNotFound"),
    ]:
        status, headers, body = get(url)
        assert (status, body["type"]) == (code, "https://uri.etsi.org/ngsi-ld/errors/" + kind), url
        assert headers["Content-Type"] == "application/json" and body["detail"]
    assert get(f"{base}?type=WasteContainer", "text/html")[0] == 406
    status, headers, _ = get(f"{base}?type=WasteContainer", method="DELETE")
    assert status == 405 and headers["Allow"] == "GET"
    assert get(f"{base}?type=Unheard")[2] == []


def test_push_retries_and_never_holds_up_the_ingest(bridge):
    with ContextBroker() as broker:
        broker.fail(3, 503)  # the context broker is restarting
        pusher = Pusher(broker.url, backoff_s=0.05, backoff_max_s=0.2, log=lambda line: None)
        pusher.start()
        t = time.perf_counter()
        pusher.offer(bridge.entities())
        assert time.perf_counter() - t < 0.05  # offer only files them
        # Meanwhile the bridge keeps ingesting (the pusher runs on its own thread).
        bridge.ingestor.mqtt("lanterne/v1/lyon/bin-1/up", frames([bin_reading(11, fill=60)])[0], T0 + 60)
        bridge.ingestor.flush()
        pusher.offer(bridge.entities(["bin-1"]))  # a newer bin-1 replaces the one not yet sent
        total = len(bridge.entities())  # 2 lamps: Streetlight, WeatherObserved; 2 bins: WasteContainer, WeatherObserved
        assert total == 8
        wait_until(lambda: pusher.pending() == 0 and len(broker.entities) == total, 20, "entities pushed")
        pusher.stop()
        assert pusher.retries >= 3 and pusher.rejected == 0
        held = broker.entities["urn:ngsi-ld:WasteContainer:bin-1"]
        assert held["fillingLevel"]["value"] == 0.6
        assert all(errors(e) == [] for e in broker.entities.values())
        assert {r["content_type"] for r in broker.requests} == {"application/ld+json"}
        # A refused entity (bad id) is dropped and counted, the others go through (207).
        bad = dict(bridge.entities(["lamp-1"])[0], id="no-uri")
        good = bridge.entities(["lamp-1"])[0]
        pusher = Pusher(broker.url, log=lambda line: None)
        pusher.start()
        pusher.offer([bad, good])
        wait_until(lambda: pusher.pending() == 0 and pusher.rejected == 1, 10, "207 handled")
        pusher.stop()
        assert pusher.sent == 1
