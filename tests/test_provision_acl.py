"""Fleet registry and broker lock-down: owner-only registry, secrets kept out of sight, and a real
Mosquitto with the generated password + ACL files refusing what a device may not do."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time

import paho.mqtt.client as paho
import pytest

from host_tools.backoffice.brokers import Mosquitto
from host_tools.fleet import broker_files
from host_tools.fleet.registry import Registry, RegistryError


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
    for p in files.values():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
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
