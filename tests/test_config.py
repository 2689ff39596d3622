"""The device config: one schema, clear errors naming file and field, safe defaults; same on both VMs."""

from __future__ import annotations

import json

import pytest

from host_tools.runtime.parity import both

CASES = [
    {"device": "lamp-0001", "site": "lyon-3", "broker": "mqtt://10.1.2.3:1883", "lat": 45.75, "lon": 4.85},
    {"device": "bad device!", "keepalive_s": 5, "broker": "http://x", "colour": "red"},
    {"bin_empty_mm": 100, "bin_full_mm": 400},
    {"lat": "north", "sample_period_s": 2.5, "watchdog_ms": True},
    [],
]


def _code(data):
    return (
        "import json\nfrom lanterne import config\n"
        f"cfg, errors = config.validate(json.loads({json.dumps(json.dumps(data))}))\n"
        "print(json.dumps([cfg, errors]))\n"
    )


@pytest.mark.parametrize("data", CASES)
def test_validation_is_identical_on_cpython_and_micropython(data):
    cp, mp = both(_code(data))
    assert cp == mp


def test_errors_name_the_file_and_field_and_keep_defaults():
    (cfg, errors), _ = both(_code(CASES[1]))
    joined = "\n".join(errors)
    assert "config.json: field 'device': may only hold letters" in joined
    assert "config.json: field 'keepalive_s': must be between 10 and 3600" in joined
    assert "config.json: field 'broker': must start with mqtt:// or mqtts://" in joined
    assert "config.json: field 'colour': unknown field" in joined
    assert cfg["device"] == "unprovisioned" and cfg["keepalive_s"] == 60  # defaults kept


def test_good_config_has_no_errors():
    (cfg, errors), _ = both(_code(CASES[0]))
    assert errors == []
    assert cfg["site"] == "lyon-3" and cfg["lat"] == 45.75


def test_missing_and_malformed_file_on_the_unix_port(micropython, tmp_path):
    (tmp_path / "config.json").write_text('{"device": "x",')
    out = micropython(
        "import json\nfrom lanterne import config\n"
        "print(json.dumps([config.load('config.json')[1], config.load('nope.json')[1]]))\n",
        cwd=tmp_path,
    )
    bad, missing = json.loads(out.strip().splitlines()[-1])
    assert bad[0].startswith("config.json: not valid JSON") and "not provisioned, no broker to connect to" in bad[0]
    assert missing == ["nope.json: missing, and config.lkg.json is missing: not provisioned, no broker to connect to"]


GOOD = {"device": "lamp-0042", "site": "lyon-3", "broker": "mqtt://10.1.2.3:1883", "mqtt_user": "lamp-0042",
        "mqtt_password": "p" * 32, "command_key": "ab" * 32, "lat": 45.75, "lon": 4.85, "sample_period_s": 30}


def _load(micropython, folder, code):
    out = micropython("import json\nfrom lanterne import config\n" + code, cwd=folder)
    return json.loads(out.strip().splitlines()[-1])


def test_a_broken_config_runs_on_the_last_known_good(micropython, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(GOOD))
    cfg, errors = _load(micropython, tmp_path, "print(json.dumps(config.load()))")
    assert errors == [] and cfg["device"] == "lamp-0042"
    assert json.loads((tmp_path / "config.lkg.json").read_text()) == GOOD  # kept once it validated
    kept = (tmp_path / "config.lkg.json").read_bytes()
    secrets = ("device", "broker", "mqtt_user", "mqtt_password", "command_key")

    # A write cut short: not JSON. Identity, broker and secrets come from the last known good.
    (tmp_path / "config.json").write_text(json.dumps(GOOD)[:40])
    cfg, errors = _load(micropython, tmp_path, "print(json.dumps(config.load()))")
    assert {k: cfg[k] for k in secrets} == {k: GOOD[k] for k in secrets} and cfg["sample_period_s"] == 30
    assert len(errors) == 1 and errors[0].startswith("config.json: not valid JSON (")
    assert errors[0].endswith("running on config.lkg.json (last known good)")

    # One bad field: the rest of config.json applies, the bad field keeps its last good value.
    (tmp_path / "config.json").write_text(json.dumps(dict(GOOD, lat=95, sample_period_s=10)))
    cfg, errors = _load(micropython, tmp_path, "print(json.dumps(config.load()))")
    assert cfg["lat"] == 45.75 and cfg["sample_period_s"] == 10 and cfg["mqtt_password"] == GOOD["mqtt_password"]
    assert errors == ["config.json: field 'lat': must be between -90 and 90",
                      "config.json: running on config.lkg.json (last known good) for the fields above"]

    # Valid JSON that names no device (an empty object written by mistake): not taken as a config.
    (tmp_path / "config.json").write_text("{}")
    cfg, errors = _load(micropython, tmp_path, "print(json.dumps(config.load()))")
    assert {k: cfg[k] for k in secrets} == {k: GOOD[k] for k in secrets}
    assert errors[0] == "config.json: field 'device': missing"

    # Gone (a cut between the atomic write's remove and rename).
    (tmp_path / "config.json").unlink()
    cfg, errors = _load(micropython, tmp_path, "print(json.dumps(config.load()))")
    assert cfg["device"] == "lamp-0042" and errors == ["config.json: missing, running on config.lkg.json (last known good)"]
    assert (tmp_path / "config.lkg.json").read_bytes() == kept  # no bad version ever replaced it


def test_no_config_and_no_last_known_good_means_no_broker(micropython, tmp_path):
    (tmp_path / "config.lkg.json").write_text('{"device": "x", "lat": 95}')  # a copy that does not validate either
    cfg, errors = _load(micropython, tmp_path, "print(json.dumps(config.load()))")
    assert cfg["broker"] == "" and cfg["device"] == "unprovisioned"
    assert errors == ["config.json: missing, and config.lkg.json is not valid (config.lkg.json: field 'lat': must be"
                      " between -90 and 90): not provisioned, no broker to connect to"]


def test_save_keeps_a_last_known_good_only_of_a_usable_config(micropython, tmp_path):
    out = _load(micropython, tmp_path, (
        f"config.save({GOOD!r})\n"
        "a = open('config.lkg.json').read()\n"
        "config.save({'device': 'lamp-0042', 'lat': 95})\n"
        "print(json.dumps([a, open('config.lkg.json').read(), open('config.json').read()]))\n"
    ))
    first, lkg, now = out
    assert json.loads(first) == GOOD and lkg == first and json.loads(now)["lat"] == 95
