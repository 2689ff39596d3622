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
    assert bad[0].startswith("config.json: not valid JSON") and "running on defaults" in bad[0]
    assert missing == ["nope.json: missing, running on defaults"]
