"""The RAK3172 (RUI3) modem twin, the gateways and the emulated network server, driven as the firmware will
drive them: raw AT bytes on the UART, answers and events read back from it; frames checked by lora-packet."""

from __future__ import annotations

import json
import os
import threading
import time

import paho.mqtt.client as paho
import pytest
from test_lorawan_codec import lora_packet_check

from host_tools.codec import lns_json as J
from host_tools.codec import lorawan as L
from host_tools.emulator.devices.lorawan_modem import ModemTwin
from host_tools.emulator.network_server import Device, NetworkServer
from host_tools.emulator.world import World

pytestmark = pytest.mark.integration
SPEED = 5.0  # the modem's clock runs 5x: RX1 after 0.2 s, join accept after 1 s


def rx_events(tail: str) -> tuple[str, str]:
    """The RX event of a class-A downlink, heard in the first window or the second."""
    return (f"+EVT:RX_1:{tail}", f"+EVT:RX_2:{tail}")


class AtClient:
    """What the firmware's driver does: write a command, read lines until a status line or an event."""

    def __init__(self, twin: ModemTwin):
        self.twin = twin
        self.buf = b""
        self.lines: list[str] = []

    def _pump(self):
        self.buf += self.twin.uart_read(256)
        while b"\r\n" in self.buf:
            line, self.buf = self.buf.split(b"\r\n", 1)
            self.lines.append(line.decode("latin-1"))

    def cmd(self, text: str, timeout: float = 2.0) -> list[str]:
        self.lines.clear()
        self.twin.uart_write(text.encode() + b"\r\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._pump()
            if self.lines and (self.lines[-1] == "OK" or self.lines[-1].startswith("AT_")):
                return list(self.lines)
            time.sleep(0.005)
        return list(self.lines)

    def send(self, text: str, timeout: float = 10.0) -> list[str]:
        """`cmd`, waiting out a duty-cycle refusal (`Restricted_Wait_<ms>_ms`, AT_BUSY_ERROR) as the
        firmware's driver does: how long the modem's clock needs is its business, not the test's."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.cmd(text)
            wait = [ln for ln in lines if ln.startswith("Restricted_Wait_")]
            if not (wait and lines[-1] == "AT_BUSY_ERROR") or time.monotonic() > deadline:
                return lines
            time.sleep(int(wait[0].split("_")[2]) / 1000 + 0.01)

    def until(self, prefixes: tuple[str, ...], timeout: float = 15.0) -> list[str]:
        """Lines read until one starts with any of `prefixes` (events)."""
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.lines.clear()
            self._pump()
            got += self.lines
            if any(line.startswith(prefixes) for line in self.lines):
                return got
            time.sleep(0.01)
        raise AssertionError(f"no {prefixes} within {timeout} s; got {got}")


def make_twin(tmp_path, broker_url, name="bin-1", **world):
    w = World(seed=1, lorawan_speedup=SPEED, **world)
    twin = ModemTwin(w, uart="uart2")
    flash = tmp_path / name / "flash"
    flash.mkdir(parents=True)
    twin.attach_board(flash, broker_url)
    return twin, w


def provision(at: AtClient, dev: Device) -> None:
    for c in ("AT+NWM=1", "AT+NJM=1", "AT+CLASS=A", "AT+BAND=4", f"AT+DEVEUI={dev.dev_eui.upper()}",
              f"AT+APPEUI={dev.join_eui.upper()}", f"AT+APPKEY={dev.app_key}", "AT+DR=5"):
        assert at.cmd(c) == ["OK"], c


def new_device(name="bin-1") -> Device:
    return Device(dev_eui=os.urandom(8).hex(), app_key=os.urandom(16).hex().upper(), name=name, join_eui="70b3d57ed0000001")


class Listener:
    def __init__(self, broker_url, topics):
        host, port = broker_url.split("//")[1].split(":")
        self.msgs: list[tuple[str, dict]] = []
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        ready = threading.Event()
        self.c.on_connect = lambda c, *a: ([c.subscribe(t) for t in topics], ready.set())
        self.c.on_message = lambda c, u, m: self.msgs.append((m.topic, json.loads(m.payload)))
        self.c.connect(host, int(port))
        self.c.loop_start()
        assert ready.wait(5)
        time.sleep(0.1)

    def on(self, suffix, prefix=""):
        return [m for t, m in self.msgs if t.endswith(suffix) and t.startswith(prefix)]

    def wait(self, suffix, n=1, timeout=10.0, prefix=""):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.on(suffix, prefix)) >= n:
                return self.on(suffix, prefix)
            time.sleep(0.02)
        raise AssertionError(f"{n} x {suffix} not seen; topics: {[t for t, _ in self.msgs]}")

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def test_at_dialect_answers_without_a_network(tmp_path):
    twin, world = make_twin(tmp_path, None)
    at = AtClient(twin)
    assert at.cmd("AT") == ["OK"]
    assert at.cmd("AT+DEVEUI=0011") == ["AT_PARAM_ERROR"]
    assert at.cmd("AT+DEVEUI=0016c001ff00abcd") == ["OK"]
    assert at.cmd("AT+DEVEUI=?") == ["AT+DEVEUI=0016C001FF00ABCD", "OK"]
    assert at.cmd("AT+NJS=?") == ["AT+NJS=0", "OK"]
    assert at.cmd("AT+SEND=102:0102") == ["AT_NO_NETWORK_JOINED"]
    assert at.cmd("AT+SEND=0:0102") == ["AT_PARAM_ERROR"]  # FPort 0 is the MAC's
    assert at.cmd("AT+FOO=1") == ["AT_COMMAND_NOT_FOUND"]
    assert at.cmd("AT+JOIN=1:0:10:1") == ["OK"]
    assert at.cmd("AT+JOIN=1:0:10:1") == ["AT_BUSY_ERROR"]  # a join is under way
    assert at.until(("+EVT:JOIN",))[-1] == "+EVT:JOIN_FAILED_RX_TIMEOUT"  # no gateway in range
    world.inject("lorawan", "missing")
    assert at.cmd("AT", timeout=0.3) == []  # an absent modem never answers
    world.clear("lorawan")
    world.set(lorawan_resets=1)
    lines = at.cmd("AT+NJS=?")
    assert lines[0] == "AT_" and any("RAK3172" in x for x in lines)  # banner in the middle of the reply
    assert at.cmd("AT+DEVEUI=?") == ["AT+DEVEUI=0016C001FF00ABCD", "OK"]  # NVM kept


def test_join_after_failures_uplinks_downlink_and_lora_packet(tmp_path, mosquitto):
    dev = new_device()
    app = J.Application()
    listen = Listener(mosquitto.url, ["application/#", "v3/#", "eu868/#"])
    with NetworkServer(mosquitto.url, [dev], integrations=("chirpstack", "tts"), app=app) as ns:
        twin, world = make_twin(tmp_path, mosquitto.url, lorawan_join_failures=2)
        at = AtClient(twin)
        provision(at, dev)
        for _ in range(2):  # two injected failures: each join request goes unanswered
            assert at.send("AT+JOIN=1:0:8:1") == ["OK"]
            assert at.until(("+EVT:JOIN",))[-1] == "+EVT:JOIN_FAILED_RX_TIMEOUT"
        assert at.send("AT+JOIN=1:0:8:1") == ["OK"]
        assert at.until(("+EVT:JOIN",))[-1] == "+EVT:JOINED"
        assert at.cmd("AT+NJS=?") == ["AT+NJS=1", "OK"]
        assert ns.counts["joins"] == 1
        # an unconfirmed uplink: TX_DONE, and the uplink in both integrations
        assert at.cmd("AT+SEND=102:a675bdee57d55023d181ce77") == ["OK"]
        assert at.cmd("AT+SEND=102:00") == ["AT_BUSY_ERROR"]  # the first one's RX windows are still open
        assert at.until(("+EVT:TX_DONE",))[-1] == "+EVT:TX_DONE"
        cs = listen.wait("/event/up", prefix="application/")[0]
        assert (cs["fPort"], J.unb64(cs["data"], "data").hex(), cs["deviceInfo"]["devEui"]) == (102, "a675bdee57d55023d181ce77", dev.dev_eui)
        assert "fCnt" not in cs  # FCnt 0: left out, as ChirpStack's JSON does
        assert cs["dr"] == 5 and cs["rxInfo"][0]["crcStatus"] == "CRC_OK" and cs["txInfo"]["modulation"]["lora"]["codeRate"] == "CR_4_5"
        tts = J.parse_tts_up(listen.wait("/devices/bin-1/up")[0])
        assert (tts.fport, tts.fcnt, tts.data.hex(), tts.dr) == (102, 0, "a675bdee57d55023d181ce77", 5)
        # a downlink queued through ChirpStack's command topic arrives after the next uplink (class A)
        listen.c.publish(J.chirpstack_topic(app, dev.dev_eui, "command/down"), json.dumps(J.chirpstack_down(dev.dev_eui, 10, b"\x01\x02\x03")))
        assert ns.wait(lambda s: s.queues[dev.dev_eui])
        assert at.send("AT+SEND=102:0b") == ["OK"]
        events = at.until(("+EVT:TX_DONE",))
        # RX1, or RX2 when the network server answers too late for RX1 (a loaded machine): both are class A
        assert events[-1] == "+EVT:TX_DONE" and events[-2] in rx_events("-95:7:UNICAST:10:010203")
        # a confirmed uplink is ACKed (no RX event for an ACK-only downlink)
        assert at.cmd("AT+CFM=1") == ["OK"]
        assert at.send("AT+SEND=102:0c") == ["OK"]
        assert at.until(("+EVT:SEND_CONFIRMED",)) == ["+EVT:SEND_CONFIRMED_OK"]
        # TTS's down/push works the same way
        listen.c.publish(J.tts_topic(app, "bin-1", "down/push"), json.dumps(J.tts_down(12, b"hi")))
        assert ns.wait(lambda s: s.queues[dev.dev_eui])
        assert at.cmd("AT+CFM=0") == ["OK"]
        assert at.send("AT+SEND=102:0d") == ["OK"]
        assert at.until(("+EVT:TX_DONE",))[-2] in rx_events("-95:7:UNICAST:12:6869")
        assert listen.wait("/event/txack") and listen.wait("/down/sent") and listen.wait("/down/queued")
        assert listen.wait("/event/join") and listen.wait("/devices/bin-1/join")
        gw_up = listen.wait("/event/up", n=4, prefix="eu868/")
        assert any("phyPayload" in m for m in gw_up) and listen.on("/command/down", prefix="eu868/")
        frames = [bytes.fromhex(f["phy"]) for f in ns.captured]
    listen.close()
    twin.detach_board()
    # lora-packet reads every frame of the run from the AppKey alone
    seen = lora_packet_check(L.key_bytes(dev.app_key), frames)
    kinds = [s["mtype"] for s in seen]
    assert kinds.count("Join Request") == 1 and kinds.count("Join Accept") == 1  # the two lost ones never reached the NS
    assert all(s.get("mic_ok") for s in seen), seen
    ups = [s for s in seen if s["mtype"].endswith("Data Up")]
    assert [(u["fcnt"], u["payload"]) for u in ups] == [(0, "a675bdee57d55023d181ce77"), (1, "0b"), (2, "0c"), (3, "0d")]
    downs = [s for s in seen if s["mtype"].endswith("Data Down")]
    assert [(d["fport"], d["payload"], d["ack"]) for d in downs] == [(10, "010203", False), (None, "", True), (12, "6869", False)]


def test_replayed_and_forged_frames_are_dropped(tmp_path, mosquitto):
    dev = new_device("lamp-7")
    listen = Listener(mosquitto.url, ["application/#"])
    with NetworkServer(mosquitto.url, [dev]) as ns:
        twin, world = make_twin(tmp_path, mosquitto.url, name="lamp-7", lorawan_gateways=2)
        at = AtClient(twin)
        provision(at, dev)
        assert at.send("AT+JOIN=1:0:8:1") == ["OK"]
        assert at.until(("+EVT:JOIN",))[-1] == "+EVT:JOINED"
        assert at.cmd("AT+SEND=102:01") == ["OK"]
        at.until(("+EVT:TX_DONE",))
        up = listen.wait("/event/up")[0]
        assert len(up["rxInfo"]) == 2  # heard by two gateways, published once
        phy = twin.radio.published[-1]
        meta = J.RadioMeta("0016c001f0000001", 868100000, 7, rssi=-80, snr=5, context=b"x")
        pub = listen.c.publish
        pub("eu868/gateway/0016c001f0000001/event/up", json.dumps(J.gateway_uplink(phy, meta)))  # replay
        forged = bytearray(phy)
        forged[-6] ^= 0xFF  # payload changed: the MIC no longer holds
        pub("eu868/gateway/0016c001f0000001/event/up", json.dumps(J.gateway_uplink(bytes(forged), meta)))
        assert ns.wait(lambda s: s.dropped["replay"] == 1 and s.dropped["mic"] == 1), ns.dropped
        time.sleep(0.3)
        assert len(listen.on("/event/up")) == 1 and ns.counts["uplinks"] == 1
        # the twin's counters survive its restart (the module's NVM beside the flash)
        twin.detach_board()
        again = ModemTwin(world, uart="uart2")
        again.attach_board(tmp_path / "lamp-7" / "flash", mosquitto.url)
        at = AtClient(again)
        assert at.cmd("AT+NJS=?") == ["AT+NJS=1", "OK"]
        assert at.cmd("AT+SEND=102:02") == ["OK"]
        at.until(("+EVT:TX_DONE",))
        assert len(listen.wait("/event/up", n=2)) == 2 and listen.on("/event/up")[1]["fCnt"] == 1
        again.detach_board()
    listen.close()


def test_duty_cycle_refuses_with_the_wait(tmp_path, mosquitto):
    dev = new_device("bin-9")
    with NetworkServer(mosquitto.url, [dev]):
        twin, world = make_twin(tmp_path, mosquitto.url, name="bin-9")
        at = AtClient(twin)
        provision(at, dev)
        assert at.cmd("AT+DR=0") == ["OK"]  # SF12: a join request is ~1.2 s on air -> ~2 min closed
        assert at.send("AT+JOIN=1:0:8:1") == ["OK"]
        assert at.until(("+EVT:JOIN",))[-1] == "+EVT:JOINED"
        sent = 0
        while True:
            lines = at.cmd("AT+SEND=102:" + "00" * 51)
            if lines != ["OK"]:
                break
            sent += 1
            at.until(("+EVT:TX_DONE",), timeout=30)
        # 8 channels in two 1 % sub-bands: after a few SF12 frames every channel is closed
        assert lines[0].startswith("Restricted_Wait_") and lines[0].endswith("_ms") and lines[-1] == "AT_BUSY_ERROR"
        wait_ms = int(lines[0].split("_")[2])
        assert 0 < wait_ms <= 280_000 and sent >= 1
        assert at.cmd("AT+SEND=102:" + "00" * 52) == ["AT_PARAM_ERROR"]  # over DR0's 51 bytes
        world.set(lorawan_busy_refusals=1)
        assert at.cmd("AT+SEND=102:00") == ["AT_BUSY_ERROR"]  # injected: refused before the duty cycle is asked
        assert world.get("lorawan_busy_refusals") == 0
        twin.detach_board()


def test_the_firmware_reaches_the_twin_through_machine_uart(tmp_path):
    """The esp32-rak3172 board file wires the twin on UART2: MicroPython's machine.UART talks to it."""
    from host_tools import boards
    from host_tools.emulator import ROM
    from host_tools.emulator.hal import StandaloneHal
    from host_tools.runtime import unix_port

    world = World(lorawan_speedup=SPEED)
    with StandaloneHal(boards.load("esp32-rak3172").data, world) as hal:
        (twin,) = [p for p in hal.parts.parts if isinstance(p, ModemTwin)]
        twin.attach_board(tmp_path / "flash", None)
        code = (
            "import machine, time, json\n"
            "u = machine.UART(2, baudrate=115200, tx=17, rx=16, timeout=500)\n"
            "out = []\n"
            "for c in (b'AT\\r\\n', b'AT+DEVEUI=0016C001FF00ABCD\\r\\n', b'AT+DEVEUI=?\\r\\n', b'AT+SEND=102:01\\r\\n'):\n"
            "    u.write(c)\n"
            "    while True:\n"
            "        line = u.readline()\n"
            "        if not line:\n"
            "            break\n"
            "        out.append(line.decode())\n"
            "        if line.startswith(b'OK') or line.startswith(b'AT_'):\n"
            "            break\n"
            "print(json.dumps(out))\n"
        )
        out = json.loads(unix_port.run(code, path=[ROM], env=hal.env()).strip().splitlines()[-1])
    assert out == ["OK\r\n", "OK\r\n", "AT+DEVEUI=0016C001FF00ABCD\r\n", "OK\r\n", "AT_NO_NETWORK_JOINED\r\n"]
    assert (tmp_path / "flash.rak3172.json").exists()
