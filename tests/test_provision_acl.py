"""Fleet registry and broker lock-down: owner-only registry, secrets kept out of sight, and a real
Mosquitto with the generated password + ACL files refusing what a device may not do."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest import lanterne

from host_tools.backoffice.brokers import Mosquitto, SystemMosquitto, free_port
from host_tools.fleet import broker_files
from host_tools.fleet.registry import Registry, RegistryError
from host_tools.runtime.paths import REPO


def test_registry_is_owner_only_and_keeps_secrets_out_of_records(tmp_path):
    path = tmp_path / "fleet.sqlite"
    reg = Registry(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    rec = reg.add_or_update("lamp-1", site="centre", board="esp32-devkitc", config={"lat": 48.85})
    lora = reg.add_or_update("bin-1", site="centre", board="esp32-rak3172", lorawan=True)
    assert reg.secret_names("lamp-1") == ["command_key", "mqtt_password", "setup_key"]
    assert reg.secret_names("bin-1") == ["command_key", "lorawan_appkey", "lorawan_deveui", "mqtt_password", "setup_key"]
    assert len(bytes.fromhex(reg.secret("lamp-1", "setup_key"))) == 16
    assert len(reg.command_key("lamp-1")) == 32
    assert len(bytes.fromhex(reg.secret("bin-1", "lorawan_appkey"))) == 16
    assert int(reg.secret("bin-1", "lorawan_deveui")[:2], 16) & 0x03 == 0x02  # locally administered, unicast
    passwords = {reg.secret(d, "mqtt_password") for d in ("lamp-1", "bin-1")}
    assert len(passwords) == 2 and all(len(p) >= 32 for p in passwords)
    every_secret = [reg.secret(dev, name) for dev in ("lamp-1", "bin-1") for name in reg.secret_names(dev)]
    shown = " ".join((repr(rec), str(rec.to_json()), repr(lora), str(reg.devices())))
    assert not any(secret in shown for secret in every_secret)
    # Updating keeps the secrets; the config never holds one.
    before = reg.secret("lamp-1", "mqtt_password")
    reg.add_or_update("lamp-1", config={"lat": 48.86}, state="provisioned")
    assert reg.secret("lamp-1", "mqtt_password") == before
    assert reg.get("lamp-1").config == {"lat": 48.86} and reg.get("lamp-1").state == "provisioned"
    with pytest.raises(RegistryError, match="secret fields"):
        reg.add_or_update("lamp-1", config={"mqtt_password": "x"})
    with pytest.raises(RegistryError, match="reserved"):
        reg.add_or_update("lanterne-backoffice", site="s", board="esp32-devkitc")
    user, password = reg.backoffice_credentials()
    assert reg.backoffice_credentials() == (user, password)
    assert reg.command_counter("lamp-1") == 0
    reg.set_command_counter("lamp-1", 7)
    reg.set_command_counter("lamp-1", 3)  # never back: the board would refuse it as a replay
    assert reg.command_counter("lamp-1") == 7
    reg.close()
    # Reopened by another process: same content.
    assert Registry(path).secret("lamp-1", "mqtt_password") == before


def test_existing_registry_readable_by_others_is_tightened(tmp_path):
    path = tmp_path / "fleet.sqlite"
    Registry(path).close()
    os.chmod(path, 0o644)
    Registry(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_password_hash_is_mosquittos_format(tmp_path):
    # The same $7$ line mosquitto_passwd writes, checked both ways.
    line = broker_files.hash_password("s3cret", salt=b"0123456789ab")
    assert line.startswith("$7$101$") and broker_files.check_password("s3cret", line) and not broker_files.check_password("other", line)
    if not os.path.exists("/usr/bin/mosquitto_passwd"):
        pytest.skip("mosquitto_passwd not installed")
    pw = tmp_path / "pw"
    pw.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "alice", "s3cret"], check=True, capture_output=True)
    _user, theirs = pw.read_text().strip().split(":", 1)
    assert broker_files.check_password("s3cret", theirs) and not broker_files.check_password("s3cre", theirs)


class Client:
    """A paho client that records what it gets: connect result, subscription grants, messages."""

    def __init__(self, broker, user, password, client_id=None):
        self.rc = None
        self.granted = None
        self.messages = []
        self._ev = threading.Event()
        self._sub = threading.Event()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id or user)
        self.c.username_pw_set(user, password)
        self.c.on_connect = self._connected
        self.c.on_subscribe = self._subscribed
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()
        self._ev.wait(5)

    def _connected(self, client, userdata, flags, rc, props):
        self.rc = rc
        self._ev.set()

    def _subscribed(self, client, userdata, mid, rcs, props):
        self.granted = [not rc.is_failure for rc in rcs]
        self._sub.set()

    def subscribe(self, topic):
        self._sub.clear()
        self.c.subscribe(topic, qos=1)
        assert self._sub.wait(5)
        return self.granted[0]

    def publish(self, topic, payload, retain=False):
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.integration
def test_mosquitto_with_generated_files_confines_each_device(tmp_path):
    reg = Registry(tmp_path / "fleet.sqlite")
    reg.add_or_update("lamp-a", site="centre", board="esp32-devkitc")
    reg.add_or_update("lamp-b", site="centre", board="esp32-devkitc")
    files = broker_files.write_broker_files(reg, tmp_path / "broker")
    for name in ("password_file", "acl_file", "emqx_acl_file"):
        assert stat.S_IMODE(files[name].stat().st_mode) == 0o600
    text = files["password_file"].read_text()
    assert reg.secret("lamp-a", "mqtt_password") not in text and "lamp-a:$7$" in text
    assert "{deny, all}." in files["emqx_acl_file"].read_text()
    a_pw = reg.secret("lamp-a", "mqtt_password")
    a_topics, b_topics = broker_files.device_topics("centre", "lamp-a"), broker_files.device_topics("centre", "lamp-b")
    with Mosquitto(password_file=files["password_file"], acl_file=files["acl_file"]) as broker:
        office = Client(broker, *reg.backoffice_credentials(), client_id="office")
        a = Client(broker, "lamp-a", a_pw)
        wrong = Client(broker, "lamp-b", a_pw, client_id="lamp-b")  # A's password as B
        anonymous = Client(broker, "", None, client_id="anon")
        try:
            assert office.rc == 0 and a.rc == 0
            assert wrong.rc.is_failure and str(wrong.rc) == "Not authorized"
            assert anonymous.rc.is_failure
            assert office.subscribe("lanterne/#")
            # A may not read B's commands. Mosquitto 2.0 grants the SUBACK but never delivers
            # (newer versions refuse the subscription): either way nothing of B's reaches A.
            assert a.subscribe(a_topics["cmd"])
            a.subscribe(b_topics["cmd"])
            a.subscribe("lanterne/#")
            office.publish(b_topics["cmd"], b"for B only")
            office.publish(a_topics["cmd"], b"for A")
            # A may not publish as B (status, readings, acks): the broker drops it.
            a.publish(b_topics["status"], b'{"state":"online","device":"lamp-b"}', retain=True)
            a.publish(b_topics["up"], b"forged reading")
            a.publish(b_topics["ack"], b"forged ack")
            a.publish(a_topics["cmd"], b"A commanding itself")
            a.publish(a_topics["status"], b'{"state":"online","device":"lamp-a"}', retain=True)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and (a_topics["status"], b'{"state":"online","device":"lamp-a"}') not in office.messages:
                time.sleep(0.05)
            time.sleep(0.3)  # anything forged would have arrived before A's own last publish
            seen_by_office = [t for t, _ in office.messages]
            assert a_topics["status"] in seen_by_office
            assert not any(t.startswith("lanterne/v1/centre/lamp-b/") and t != b_topics["cmd"] for t in seen_by_office)
            assert seen_by_office.count(a_topics["cmd"]) == 1  # only the office's command, not A's own
            assert a.messages == [(a_topics["cmd"], b"for A")]
            # The back office may not impersonate a device either.
            office.publish(b_topics["status"], b'{"state":"offline"}')
            late = Client(broker, *reg.backoffice_credentials(), client_id="late")
            assert late.subscribe(b_topics["status"])
            time.sleep(0.3)
            assert late.messages == []  # neither A's forged retained status nor the office's got stored
            late.close()
        finally:
            for c in (office, a, wrong, anonymous):
                c.close()


def documented_steps() -> list[str]:
    """The two commands of docs/mqtt-security.md that this test runs as written."""
    text = (REPO / "docs" / "mqtt-security.md").read_text()
    block = text.split("(test_the_documented_steps_run_a_system_mosquitto)", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="a system Mosquitto is started as root (CI runs as root)")
def test_the_documented_steps_run_a_system_mosquitto(tmp_path):
    try:
        broker_user = pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no user mosquitto (Debian's mosquitto package creates it)")
    # A folder like /etc/mosquitto (0755, root's), holding the generated files and the broker's data.
    base = Path(tempfile.mkdtemp(prefix="lanterne-etc-"))
    base.chmod(0o755)
    try:
        reg = Registry(tmp_path / "fleet.sqlite")
        for dev in ("lamp-a", "lamp-b"):
            reg.add_or_update(dev, site="centre", board="esp32-devkitc")
        port = free_port()
        make, start = documented_steps()
        assert make.startswith("sudo lanterne broker-files ") and start.startswith("sudo mosquitto -c ")
        for_here = {"/etc/mosquitto/lanterne": str(base / "lanterne"), "/var/lib/mosquitto": str(base / "data"),
                    "--listen 1883": f"--listen 127.0.0.1:{port}", "sudo ": ""}
        for old, new in for_here.items():
            make, start = make.replace(old, new), start.replace(old, new)
        r = lanterne(*make.split()[1:], cwd=tmp_path)  # step 1, in the folder that holds fleet.sqlite
        assert r.returncode == 0, r.stderr
        assert "warning" not in r.stdout, r.stdout
        files = {p.name: p for p in (base / "lanterne").iterdir()}
        for name in ("mosquitto.passwd", "mosquitto.acl", "emqx-acl.conf"):
            st = files[name].stat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (broker_user.pw_uid, 0o600), name  # the broker's, nobody else's
        conf = files["mosquitto.conf"].read_text().splitlines()
        for line in ("user mosquitto", f"listener {port} 127.0.0.1", "allow_anonymous false", "set_tcp_nodelay true",
                     f"password_file {files['mosquitto.passwd']}", f"acl_file {files['mosquitto.acl']}",
                     "persistence true", f"persistence_location {base / 'data'}/"):
            assert line in conf, line
        # Step 2: `mosquitto -c CONF` as root, as Debian's service runs it; it drops to user mosquitto.
        assert start.split()[:2] == ["mosquitto", "-c"]
        with SystemMosquitto(start.split()[2], port) as broker:
            assert broker.uid() == broker_user.pw_uid
            office = Client(broker, *reg.backoffice_credentials(), client_id="office")
            a = Client(broker, "lamp-a", reg.secret("lamp-a", "mqtt_password"))
            wrong = Client(broker, "lamp-b", reg.secret("lamp-a", "mqtt_password"), client_id="lamp-b")
            anonymous = Client(broker, "", None, client_id="anon")
            try:
                assert office.rc == 0 and a.rc == 0
                assert wrong.rc.is_failure and anonymous.rc.is_failure
                a_topics, b_topics = (broker_files.device_topics("centre", d) for d in ("lamp-a", "lamp-b"))
                assert office.subscribe("lanterne/#") and a.subscribe(a_topics["cmd"])
                a.subscribe(b_topics["cmd"])
                office.publish(b_topics["cmd"], b"for B only")
                office.publish(a_topics["cmd"], b"for A")
                a.publish(b_topics["status"], b'{"state":"online","device":"lamp-b"}', retain=True)  # as B: dropped
                a.publish(a_topics["status"], b'{"state":"online","device":"lamp-a"}', retain=True)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and not any(t == a_topics["status"] for t, _ in office.messages):
                    time.sleep(0.05)
                time.sleep(0.3)
                assert a.messages == [(a_topics["cmd"], b"for A")]
                assert [t for t, _ in office.messages if t.endswith("/status")] == [a_topics["status"]]
            finally:
                for c in (office, a, wrong, anonymous):
                    c.close()
        # As user mosquitto it kept its data where the conf says (written on shutdown).
        db = base / "data" / "mosquitto.db"
        assert db.exists() and db.stat().st_uid == broker_user.pw_uid, broker.output.decode()[-2000:]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_broker_files_say_what_the_brokers_user_cannot_open(tmp_path):
    reg = Registry(tmp_path / "fleet.sqlite")
    reg.add_or_update("lamp-a", site="centre", board="esp32-devkitc")
    key = tmp_path / "server.key"
    key.write_text("not really a key")
    key.chmod(0o600)
    owner = broker_files.Owner("nobody", 65534, 65534) if os.geteuid() == 0 else None
    files = broker_files.write_broker_files(reg, tmp_path / "lanterne", owner=owner,
                                            tls={"certfile": key, "keyfile": key, "listen": broker_files.Listener(8883)})
    conf = files["mosquitto_conf"].read_text().splitlines()
    assert ["listener 8883", f"certfile {key}", f"keyfile {key}"] == conf[conf.index("listener 8883"):][:3]
    if owner is None:
        pytest.skip("the rest gives files to another user: root only")
    problems = broker_files.access_problems(files, owner, tls={"certfile": key, "keyfile": key})
    # pytest's folders are root's only (0700): the broker's user cannot even reach the files.
    blocked = [p for p in problems if "cannot enter" in p]
    assert blocked and all(any(p.startswith(f"nobody cannot enter {d} (drwx") for d in tmp_path.parents) for p in blocked), problems
