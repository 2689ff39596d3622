"""The `lanterne` command as a person uses it: emulate + world + mpremote, demo, bench registry."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import lanterne, lanterne_emulate

from host_tools import boards


def test_help_lists_commands():
    r = lanterne("--help")
    assert r.returncode == 0
    for name in ("emulate", "world", "broker", "demo", "bench", "boards"):
        assert name in r.stdout
    # It speaks to the person who typed it: what Lanterne does and where to start, not how it is built.
    assert "library" not in r.stdout and "tests call" not in r.stdout
    assert "street assets" in r.stdout and "lanterne demo" in r.stdout and "--version" in r.stdout


def test_version_names_the_host_tools_and_the_firmware():
    from importlib.metadata import version

    from host_tools.runtime import firmware_module

    r = lanterne("--version")
    assert r.returncode == 0
    assert r.stdout.splitlines() == [
        f"lanterne {version('lanterne')} (host tools)",
        f"firmware {firmware_module('__init__').__version__} (what `lanterne provision` puts on a board)",
    ]


@pytest.mark.integration
def test_emulate_world_and_mpremote_from_a_shell(tmp_path):
    port = tmp_path / "ttyV"
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text("print('hello from the virtual board')\n")
    with lanterne_emulate("--board", "esp32-devkitc", "--fs", flash, "--port", port, "--set", "temperature_c=30") as line:
        assert "virtual esp32-devkitc on" in line, line
        r = subprocess.run(
            [sys.executable, "-m", "mpremote", "connect", str(port), "exec", "print(6 * 7)"],
            capture_output=True, text=True, timeout=30,
        )
        assert r.returncode == 0 and "42" in r.stdout, r.stderr
        r = lanterne("world", "--port", str(port), "get")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["values"]["temperature_c"] == 30.0
        assert lanterne("world", "--port", str(port), "set", "illuminance_lx=5", "link_up=off").returncode == 0
        values = json.loads(lanterne("world", "--port", str(port), "get").stdout)["values"]
        assert values["illuminance_lx"] == 5.0 and values["link_up"] is False
        r = lanterne("world", "--port", str(port), "set", "colour=3")
        assert r.returncode == 1 and "unknown world quantity 'colour'" in r.stderr
        r = lanterne("world", "--port", str(port), "fault", "bme280", "melted")
        assert r.returncode == 1 and "unknown fault 'melted'" in r.stderr
        assert lanterne("world", "--port", str(port), "power-cut").returncode == 0
        assert lanterne("world", "--port", str(port), "power-on").returncode == 0
    assert not Path(str(port) + ".ctl").exists()
    r = lanterne("world", "--port", str(port), "get")
    assert r.returncode == 1 and "is `lanterne emulate --port PATH` running?" in r.stderr


@pytest.mark.integration
def test_emulate_broker_proxy_takes_its_faults_from_lanterne_world(tmp_path):
    import re
    import socket
    import threading

    echo = socket.socket()
    echo.bind(("127.0.0.1", 0))
    echo.listen(4)

    def serve():
        while True:
            try:
                conn, _ = echo.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: [c.sendall(d) for d in iter(lambda: c.recv(4096), b"")], daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    port, flash = tmp_path / "ttyP", tmp_path / "flash"
    flash.mkdir()
    upstream = f"127.0.0.1:{echo.getsockname()[1]}"
    with lanterne_emulate("--board", "esp32-devkitc", "--fs", flash, "--port", port, "--broker-proxy", upstream, lines=2) as out:
        m = re.search(r"broker fault proxy mqtt://127\.0\.0\.1:(\d+) -> " + re.escape(upstream), out)
        assert m, out
        c = socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=3)
        c.sendall(b"ping")
        assert c.recv(10) == b"ping"
        assert lanterne("world", "--port", str(port), "fault", "broker", "silent").returncode == 0
        time.sleep(0.2)
        c.sendall(b"ping")
        c.settimeout(0.5)
        with pytest.raises(TimeoutError):
            c.recv(10)
        r = lanterne("world", "--port", str(port), "fault", "broker", "melted")
        assert r.returncode == 1 and "choose from silent, half_open, slow, slow_tls" in r.stderr
    echo.close()
def test_world_refuses_nonsense_and_names_what_is_valid(tmp_path):
    port = tmp_path / "ttyV"
    (tmp_path / "flash").mkdir()
    with lanterne_emulate("--board", "esp32-devkitc", "--fs", tmp_path / "flash", "--port", port) as line:
        assert "virtual esp32-devkitc on" in line, line

        def world(*args):
            return lanterne("world", "--port", port, *args)

        refused = {
            ("fault", "bme208", "nack"): "this board has no part 'bme208' (did you mean 'bme280'?); its parts: bh1750,"
                                         " bme280, button, lamp, supply",
            ("fault", "ultrasonic", "stuck"): "this board has no part 'ultrasonic'; its parts: bh1750, bme280, button, lamp, supply",
            ("fault", "bme280", "nak"): "unknown fault 'nak' for bme280 (did you mean 'nack'?); choose from missing, nack, stuck",
            ("fault", "lamp", "nack"): "lamp cannot be given the fault 'nack'; it can be: dead_module, failing_driver, stuck",
            ("clear", "bme208"): "this board has no part 'bme208' (did you mean 'bme280'?)",
            ("set", "illuminance_lx=-50"): "illuminance_lx=-50 is out of range: 0 .. 1000000",
            ("set", "humidity_pct=120"): "humidity_pct=120 is out of range: 0 .. 100",
            ("set", "temprature_c=20"): "unknown world quantity 'temprature_c' (did you mean 'temperature_c'?); known: ",
            ("set", "link_up=maybe"): "link_up: not a number: 'maybe'",
            ("set", "temperature_c=21", "lamp_failed=2"): "lamp_failed is on or off (true/false, up/down, 1/0), got 2.0",
        }
        for args, message in refused.items():
            r = world(*args)
            assert r.returncode == 1 and message in r.stderr, (args, r.stderr)
        state = json.loads(world("get").stdout)
        assert state["faults"] == {} and state["values"]["illuminance_lx"] == 250.0
        assert state["values"]["temperature_c"] == 15.0  # a refused set changes nothing, not even its valid part
        assert state["parts"]["lamp"] == ["dead_module", "failing_driver", "stuck"] and state["parts"]["bme280"] == ["missing", "nack", "stuck"]
        # What is valid still is.
        assert world("fault", "bme280", "nack").returncode == 0 and world("set", "illuminance_lx=0").returncode == 0
        assert json.loads(world("get").stdout)["faults"] == {"bme280": ["nack"]}
    r = lanterne("emulate", "--board", "esp32-devkitc", "--fs", tmp_path / "flash", "--port", port, "--set", "supply_v=-3")
    assert r.returncode == 1 and "supply_v=-3 is out of range: 0 .. 100" in r.stderr


def test_emulate_rejects_unknown_board(tmp_path):
    r = lanterne("emulate", "--board", "esp8266-nodemcu", "--fs", str(tmp_path), "--port", str(tmp_path / "t"))
    assert r.returncode == 1
    assert "unknown board 'esp8266-nodemcu'" in r.stderr and "hint:" in r.stderr


@pytest.mark.integration
def test_demo_tells_the_whole_story(tmp_path):
    t = time.monotonic()
    r = lanterne("demo", "--duration", "2", "--dir", str(tmp_path), timeout=240)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "embedded MQTT broker on mqtt://127.0.0.1:" in out
    n = len(boards.names())  # one board of each board file (the environmental station made it four)
    assert out.count("flashed: MicroPython written and verified") == n  # esptool through the virtual ROM
    assert out.count("provisioned: demo-") == n
    assert "warning:" not in out, out
    # The LoRaWAN board delivers its readings through the network server's ChirpStack integration, and
    # obeys a command sent as a class-A downlink: its compact ack verifies.
    lora = re.search(r"esp32-rak3172 +provisioned: (demo-\d\d)", out).group(1)
    assert re.search(rf"lorawan uplinks +{lora} reading \(FCnt \d+\): temperature=", out), out
    assert re.search(rf"set_period {lora}: ack ok after [\d.]+ s \(compact LoRaWAN ack, verified\)", out), out
    assert "lanterne/v1/demo/demo-01/status  state=online" in out
    assert "lanterne/v1/demo/demo-01/up  1 reading(s)" in out
    assert "dim demo-01 to 40 %: ack ok" in out
    assert "lanterne monitor (fleet table)" in out and "demo-03" in out
    assert (tmp_path / "fleet.sqlite").stat().st_mode & 0o077 == 0  # registry owner-only
    assert time.monotonic() - t < 200


def test_bench_list_and_unknown():
    r = lanterne("bench", "--list")
    assert r.returncode == 0 and "boot" in r.stdout
    r = lanterne("bench", "nosuch")
    assert r.returncode == 1 and "unknown benchmark nosuch" in r.stderr


def test_provision_help_and_readme_give_the_default_periods_and_how_to_change_them():
    from host_tools.runtime import firmware_module
    from host_tools.runtime.paths import REPO

    schema = firmware_module("config").SCHEMA
    sample, status = schema["sample_period_s"][1], schema["status_period_s"][1]
    r = lanterne("provision", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert f"samples its sensors every {sample} s and sends its status every {status} s" in text
    assert "--set sample_period_s=10" in text and "lanterne command DEVICE set-period sample 10" in text
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"samples its sensors every {sample} s and sends its status every {status} s" in readme
    assert "set-period" in readme
