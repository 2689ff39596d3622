"""A fleet from a CSV, as an installer runs it: register, hand the broker its files, provision 20
virtual boards in one command; every board comes online on Mosquitto under its own credentials.
Bad rows are reported by line and never stop the good ones."""

from __future__ import annotations

import json
import stat

import pytest
from conftest import lanterne

from host_tools import boards
from host_tools.backoffice.brokers import Mosquitto
from host_tools.backoffice.watcher import Watcher
from host_tools.fleet.registry import Registry

pytestmark = pytest.mark.integration



def test_twenty_boards_from_one_csv_come_online_with_their_own_credentials(virtual_boards, tmp_path):
    handles = virtual_boards(20, firmware=False)
    for h in handles:
        h.wait_for(">>> ")
    csv_path = tmp_path / "fleet.csv"
    rows = [f"{h.port},esp32-devkitc,lamp-{i:02d},centre,{48.85 + i / 1000:.3f},{2.35 + i / 1000:.3f}" for i, h in enumerate(handles)]

    # 1. At the office: register the fleet (secrets generated here) and give the broker its files.
    csv_path.write_text("port,board,device,site,lat,lon\n" + "\n".join(rows) + "\n")
    r = lanterne("provision", "--fleet", str(csv_path), "--register-only", cwd=tmp_path, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "20 of 20 rows registered" in r.stdout
    r = lanterne("broker-files", "--out", "broker", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    reg = Registry(tmp_path / "fleet.sqlite")
    with Mosquitto(password_file=tmp_path / "broker" / "mosquitto.passwd", acl_file=tmp_path / "broker" / "mosquitto.acl") as broker, \
            Watcher(broker.url, ["lanterne/v1/centre/+/status"], username=reg.backoffice_credentials()[0],
                    password=reg.backoffice_credentials()[1]) as office:
        # 2. On site: one command provisions all twenty.
        csv_path.write_text("port,board,device,site,lat,lon,broker\n" + "\n".join(f"{row},{broker.url}" for row in rows) + "\n")
        r = lanterne("provision", "--fleet", str(csv_path), cwd=tmp_path, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "20 of 20 rows provisioned" in r.stdout
        online = office.wait_for("lanterne/v1/centre/*/status", lambda m: b'"online"' in m.payload, count=20, timeout=30)
        devices = {json.loads(m.payload)["device"] for m in online}
        assert devices == {f"lamp-{i:02d}" for i in range(20)}
        for m in online:  # the ACL lets a device publish only its own status: each logged in as itself
            assert m.topic == f"lanterne/v1/centre/{json.loads(m.payload)['device']}/status"
    out = r.stdout + r.stderr

    # 3. The registry matches the boards; secrets are per device and were never printed.
    records = reg.devices()
    assert [d.id for d in records] == [f"lamp-{i:02d}" for i in range(20)]
    assert all(d.state == "online" for d in records)
    assert len({d.hw_id for d in records}) == 20 and len({d.firmware_hash for d in records}) == 1
    passwords = {reg.secret(d.id, "mqtt_password") for d in records}
    keys = {reg.secret(d.id, "command_key") for d in records}
    assert len(passwords) == 20 and len(keys) == 20
    assert not any(s in out for s in passwords | keys)
    for i, (h, d) in enumerate(zip(handles, records, strict=True)):
        cfg = json.loads((h.flash / "config.json").read_text())
        assert cfg["device"] == d.id and cfg["mqtt_password"] == reg.secret(d.id, "mqtt_password")
        assert d.port == h.port and d.config["lat"] == pytest.approx(48.85 + i / 1000)
    assert stat.S_IMODE((tmp_path / "fleet.sqlite").stat().st_mode) == 0o600

    # verify from the shell: a board matches, exit 0; after tampering, exit 1 with the difference.
    r = lanterne("verify", "--port", handles[3].port, cwd=tmp_path)
    assert r.returncode == 0 and "lamp-03" in r.stdout and "matches the registry" in r.stdout, r.stderr
    # One byte of net.mpy changed in the board's ROMFS partition (flash the board reads in place).
    rom = boards.romfs_path(handles[3].flash)
    image = bytearray(rom.read_bytes())
    at = image.index(b"net.mpy") + len("net.mpy") + 16  # inside the file's data, past its record header
    image[at] ^= 0xFF
    rom.write_bytes(bytes(image))
    r = lanterne("verify", "--port", handles[3].port, cwd=tmp_path)
    assert r.returncode == 1 and "changed: /rom/lib/lanterne/net.mpy" in r.stdout
    # Re-provisioning rewrites only what differs in the partition: that block, and the header last.
    r = lanterne("provision", "--port", handles[3].port, "--device", "lamp-03", "--json", "--no-wait", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["romfs_blocks"] == 2 and "/rom/lib/lanterne/net.mpy" in report["files_sent"]
    assert lanterne("verify", "--port", handles[3].port, cwd=tmp_path).returncode == 0


def test_bad_rows_are_reported_by_line_and_the_others_provisioned(virtual_boards, tmp_path, mosquitto):
    good = virtual_boards(4, firmware=False)
    for h in good:
        h.wait_for(">>> ")
    p = [h.port for h in good]
    csv_path = tmp_path / "fleet.csv"
    csv_path.write_text(
        "port,board,device,site,lat,lon,bin_empty_mm,bin_full_mm\n"  # line 1
        f"{p[0]},esp32-devkitc,bin-01,north,45.76,4.83,1200,150\n"  # 2: fine
        f"{p[1]},esp32-devkitc,bin-02,north,45.76\n"  # 3: malformed (too few fields)
        f"{tmp_path}/tty4,esp32-devkitc,bin-03,north,145.0,4.83,1200,150\n"  # 4: latitude out of range
        f"{tmp_path}/tty5,esp32-devkitc,bin-04,north,45.77,east,1200,150\n"  # 5: longitude not a number
        f"{tmp_path}/ttyGONE,esp32-devkitc,bin-05,north,45.78,4.83,1200,150\n"  # 6: unreachable port
        "# a comment and a blank line\n\n"  # 7, 8
        f"{p[1]},esp32-devkitc,bin-06,north,45.79,4.83,1200,150\n"  # 9: fine
        f"{p[2]},esp32-devkitc,bin-07,north,45.80,4.83,1200,150\n"  # 10: duplicate id (with 11)
        f"{p[3]},esp32-devkitc,bin-07,north,45.81,4.83,1200,150\n"  # 11
    )
    r = lanterne("provision", "--fleet", str(csv_path), "--broker", mosquitto.url, "--registry", "reg.sqlite", cwd=tmp_path, timeout=180)
    assert r.returncode == 1
    err = r.stderr
    assert "line 3: expected 8 fields (port, board, device, site, lat, lon, bin_empty_mm, bin_full_mm), got 5" in err
    assert "line 4: config rejected: field 'lat': must be between -90 and 90 (got 145.0)" in err
    assert "line 5: field 'lon': not a number: 'east'" in err
    assert f"line 6: no serial port {tmp_path}/ttyGONE" in err
    assert "line 10: duplicate device id 'bin-07' (also on line 11)" in err
    assert "line 11: duplicate device id 'bin-07' (also on line 10)" in err
    assert "2 of 8 rows provisioned in" in r.stdout and "failed: line 3, 4, 5, 6, 10, 11" in r.stdout
    assert "line 2: bin-01 on" in r.stdout and "line 9: bin-06 on" in r.stdout
    reg = Registry(tmp_path / "reg.sqlite")
    assert [(d.id, d.state) for d in reg.devices()] == [("bin-01", "online"), ("bin-06", "online")]
    assert json.loads((good[1].flash / "config.json").read_text())["device"] == "bin-06"
    assert not (good[2].flash / "config.json").exists() and not (good[3].flash / "config.json").exists()


def test_a_duplicate_device_id_refuses_every_row_that_has_it_valid_or_not(tmp_path):
    # The row that is otherwise fine is refused too: which of the two rows is the real bin-07 is
    # the installer's call, not the tool's (docs/provisioning.md, "A fleet").
    csv_path = tmp_path / "fleet.csv"
    csv_path.write_text(
        "port,board,device,site,lat,lon\n"  # line 1
        "/dev/ttyUSB0,esp32-devkitc,bin-07,north,45.80,4.83\n"  # 2: fine on its own
        "/dev/ttyUSB1,esp32-devkitc,bin-07,north,145.0,4.83\n"  # 3: same id, latitude out of range
        "/dev/ttyUSB2,esp32-devkitc,bin-08,north,45.81,4.83\n"  # 4: fine, same port as 5
        "/dev/ttyUSB2,esp32-devkitc,bin-09,north,45.82,4.83\n"  # 5
        "/dev/ttyUSB3,esp32-devkitc,bin-10,north,45.83,4.83\n"  # 6: fine
    )
    r = lanterne("provision", "--fleet", csv_path, "--register-only", "--registry", "reg.sqlite", cwd=tmp_path)
    assert r.returncode == 1
    assert "line 2: duplicate device id 'bin-07' (also on line 3)" in r.stderr
    assert ("line 3: duplicate device id 'bin-07' (also on line 2); the row is also invalid:"
            " config rejected: field 'lat': must be between -90 and 90 (got 145.0)") in r.stderr
    assert "line 4: duplicate port '/dev/ttyUSB2' (also on line 5)" in r.stderr
    assert "line 5: duplicate port '/dev/ttyUSB2' (also on line 4)" in r.stderr
    assert "1 of 5 rows registered" in r.stdout and "failed: line 2, 3, 4, 5" in r.stdout
    assert [d.id for d in Registry(tmp_path / "reg.sqlite").devices()] == ["bin-10"]
