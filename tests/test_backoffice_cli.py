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
        assert out["status"] == "ok" and out["command"] == "set_lamp"
        assert abs(h.world.pwm(25)["duty_u16"] - 0.35 * 65535) < 0.02 * 65535
        r = lanterne("command", "lamp-0007", "dim", "140", "--broker", mq.url, "--registry", str(reg_path))
        assert r.returncode == 1 and "bad_argument" in r.stdout
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
