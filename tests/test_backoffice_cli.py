"""`lanterne command` and `lanterne monitor` against a provisioned virtual board and Mosquitto with ACLs."""

from __future__ import annotations

import json

import pytest
from conftest import lanterne

from host_tools.backoffice.brokers import Mosquitto
from host_tools.fleet import broker_files
from host_tools.fleet.fleet_csv import provision_fleet
from host_tools.fleet.provision import provision
from host_tools.fleet.registry import Registry

pytestmark = pytest.mark.integration


def test_command_and_monitor_with_registry_keys(virtual_boards, tmp_path):
    reg_path = tmp_path / "fleet.sqlite"
    reg = Registry(reg_path)
    # register first so the broker knows the device, then lock the broker down
    (h,) = virtual_boards(1, firmware=False)
    h.wait_for(">>> ")
    files = tmp_path / "broker"
    csv = tmp_path / "fleet.csv"
    csv.write_text(f"device,port,board,site,lat,lon\nlamp-0007,{h.port},esp32-devkitc,lyon,45.76,4.84\n")
    provision_fleet(csv, registry=reg, register_only=True)  # secrets generated, nothing sent yet
    broker_files.write_broker_files(reg, files)
    with Mosquitto(password_file=files / "mosquitto.passwd", acl_file=files / "mosquitto.acl") as mq:
        rep = provision(h.port, "esp32-devkitc", "lamp-0007", site="lyon", lat=45.76, lon=4.84, broker=mq.url, registry=reg)
        assert rep.status and rep.status["device"] == "lamp-0007"
        r = lanterne("command", "lamp-0007", "dim", "35", "--broker", mq.url, "--registry", str(reg_path), "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["status"] == "ok" and out["command"] == "dim"  # named as typed, not the opcode's set_lamp
        r = lanterne("command", "lamp-0007", "dim", "20", "--broker", mq.url, "--registry", str(reg_path))
        assert r.returncode == 0 and r.stdout.startswith("lamp-0007: dim ok (counter ")
        assert abs(h.world.pwm(25)["duty_u16"] - 0.20 * 65535) < 0.02 * 65535
        # Out of range: refused here with the range, nothing sent (no counter used, the lamp as it was).
        counter = reg.command_counter("lamp-0007")
        r = lanterne("command", "lamp-0007", "dim", "140", "--broker", mq.url, "--registry", str(reg_path))
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.splitlines()[0] == "lanterne command: error: dim: LEVEL 140 is out of range: 0..100 %"
        assert reg.command_counter("lamp-0007") == counter
        assert abs(h.world.pwm(25)["duty_u16"] - 0.20 * 65535) < 0.02 * 65535
        r = lanterne("command", "lamp-0007", "dimm", "40", "--registry", str(reg_path))
        assert r.returncode == 1 and "unknown action 'dimm': did you mean 'dim'?" in r.stderr
        r = lanterne("command", "lamp-007", "status", "--registry", str(reg_path))
        assert r.returncode == 1 and "did you mean 'lamp-0007'?" in r.stderr
        # The host's range is the board's: the board itself refuses the first value past it.
        from host_tools.backoffice.command_client import CommandClient, next_counter

        client = CommandClient(mq.url, *reg.backoffice_credentials())
        try:
            for seconds, reason in ((4, "bad_argument"), (5, "ok")):
                n = next_counter(reg.command_counter("lamp-0007"))
                reg.set_command_counter("lamp-0007", n)
                res = client.send("lyon", "lamp-0007", reg.command_key("lamp-0007"), n, "set-period",
                                  {"what": "status", "seconds": seconds})
                assert res.reason == reason, seconds
        finally:
            client.close()
        r = lanterne("command", "lamp-0007", "set-period", "status", "4", "--registry", str(reg_path))
        assert "set-period status: SECONDS 4 is out of range: 5..86400 s" in r.stderr
        # Changes the board acknowledged are the registry's too: verify sees no drift.
        for words in (["set-period", "status", "120"], ["set-period", "sample", "30"], ["set-config", "lat", "45.5"]):
            r = lanterne("command", "lamp-0007", *words, "--broker", mq.url, "--registry", str(reg_path))
            assert r.returncode == 0, r.stderr
        rec = Registry(reg_path).get("lamp-0007")
        assert (rec.config["status_period_s"], rec.config["sample_period_s"], rec.config["lat"]) == (120, 30, 45.5)
        r = lanterne("command", "lamp-0007", "bollard", "raise", "--broker", mq.url, "--registry", str(reg_path))
        assert r.returncode == 1 and "refused" in r.stdout  # no bollard on a street light
        r = lanterne("command", "lamp-0099", "status", "--broker", mq.url, "--registry", str(reg_path))
        assert r.returncode == 1 and "not in the registry" in r.stderr
        r = lanterne("command", "lamp-0007", "rotate-key", "--broker", mq.url, "--registry", str(reg_path))
        assert r.returncode == 0, r.stderr + r.stdout
        r = lanterne("command", "lamp-0007", "status", "--broker", mq.url, "--registry", str(reg_path))
        assert r.returncode == 0 and "ok" in r.stdout  # signed with the rotated key from the registry
        r = lanterne("monitor", "--broker", mq.url, "--registry", str(reg_path), "--json", "--duration", "3")
        assert r.returncode == 0, r.stderr
        fleet = json.loads(r.stdout)
        (dev,) = [d for d in fleet if d["device"] == "lamp-0007"]
        assert dev["status"]["state"] == "online" and dev["site"] == "lyon"
        # Last (verify restarts the board's application): nothing the back office changed is drift.
        r = lanterne("verify", "--port", h.port, "--registry", str(reg_path))
        assert r.returncode == 0 and "matches the registry" in r.stdout, r.stdout + r.stderr


def test_a_command_that_times_out_says_why_and_a_lorawan_one_goes_through_the_network_server(tmp_path, mosquitto):
    reg_path = tmp_path / "fleet.sqlite"
    for device, board in (("bin-1", "esp32-rak3172"), ("lamp-1", "esp32-devkitc")):
        r = lanterne("provision", "--register-only", "--device", device, "--board", board, "--registry", reg_path)
        assert r.returncode == 0, r.stderr
    # a LoRaWAN board's command goes through the network server's integration, as a class-A downlink
    r = lanterne("command", "bin-1", "status", "--timeout", "1", "--broker", mosquitto.url, "--registry", reg_path)
    assert r.returncode == 1
    assert "bin-1: status queued on the network server (chirpstack: application/" in r.stdout and "class A" in r.stdout
    assert r.stderr.splitlines()[0] == "lanterne command: error: no ack from bin-1 for command " + r.stderr.split("command ")[1].split()[0] + \
        " within 1 s (0 uplinks from it meanwhile)"
    assert r.stderr.splitlines()[1] == ("  hint: bin-1 is a LoRaWAN device: is it joined and sending (`lanterne uplinks`)?"
                                        " The downlink stays queued on the network server until its next uplink")
    r = lanterne("command", "lamp-1", "status", "--timeout", "1", "--broker", mosquitto.url, "--registry", reg_path)
    assert r.returncode == 1 and r.stderr.splitlines()[1] == "  hint: is the device online? `lanterne monitor` shows it"
