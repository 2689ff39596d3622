"""Provisioning writes a LoRaWAN board's identity to its modem over AT and reads it back
(host_tools/fleet/modem.py), and the firmware then joins with it without writing it again
(firmware/lanterne/transport/lorawan_join.py).

Three tiers: the board's script on the MicroPython unix port against a scripted RUI3 modem behind
a fake `machine.UART` (absent, refusing, resetting, busy, noisy, hiding its AppKey); the firmware's
join decision on the unix port (the state file's rejoin mark); and `lanterne provision` against
virtual boards (`esp32-rak3172`, the dual `olimex-esp32-poe-rak3172`) with the RAK3172 twin, the
gateways and the emulated network server on Mosquitto."""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import lanterne
from test_lorawan_driver import SCRIPTED_MODEM, run_modem

from host_tools.emulator.network_server import Device, NetworkServer
from host_tools.fleet import ProvisionError
from host_tools.fleet import modem as M
from host_tools.fleet.registry import Registry
from host_tools.runtime import unix_port

DEVEUI, APPKEY = "70B3D57ED0000001", "000102030405060708090A0B0C0D0E0F"
CONFIG = {"transport": "lorawan", "lorawan_deveui": DEVEUI, "lorawan_appkey": APPKEY, "lorawan_joineui": ""}

# A RUI3 module behind the board's machine.UART (MicroPython: the board script's only seam).
FAKE_MACHINE = "import time\n" + SCRIPTED_MODEM + r'''
class Rui3(ScriptedModem):
    def __init__(self, **script):
        nvm = {"NWM": "1", "NJM": "1", "CLASS": "A", "BAND": "4", "ADR": "1", "CFM": "0", "DEVEUI": "AC1F09FFFE000001",
               "APPEUI": "0000000000000000", "APPKEY": "00000000000000000000000000000000", "NJS": "0"}
        nvm.update(script.pop("nvm", {}))
        super().__init__(nvm, script)

    def command(self, text):
        self.log.append(text)
        if self.script.get("absent"):
            return
        if self.take("reset"):  # restarts in the middle of its reply: the banner
            self.out += b"AT_\r\nRAKwireless RAK3172 Example\r\nCurrent Work Mode: LoRaWAN.\r\n"
            return
        if self.take("garbage"):
            self.out += bytes([0xFF, 0x00, 0x7E, 0x21]) + b"\r\n+EVT:TX_DONE\r\n"
        if text == "AT":
            return self.emit("OK")
        name, _, arg = text[3:].partition("=")
        if name != "NJS" and self.take("busy"):
            return self.emit("AT_BUSY_ERROR")
        if arg == "?":
            if name == "APPKEY" and self.script.get("hide_key"):
                return self.emit(*self.script["hide_key"])
            return self.emit("AT+%s=%s" % (name, self.nvm[name]), "OK")
        if name in self.script.get("refuse", ()):
            return self.emit("AT_PARAM_ERROR")
        if name in self.script.get("ignore", ()):
            return self.emit("OK")  # says OK, keeps what it had
        if name in self.nvm:
            self.nvm[name] = arg.upper()
            return self.emit("OK")
        self.emit("AT_COMMAND_NOT_FOUND")


MODEM = None


def UART(id, **kw):
    global MODEM
    MODEM = Rui3(**SCRIPT)
    MODEM.opened = (id, kw)
    return MODEM
'''


class UnixPortLink:
    """Runs the board script on the unix port with `machine` as above: a BoardLink's `exec`."""

    def __init__(self, tmp_path, **script):
        self.dir = tmp_path
        (tmp_path / "machine.py").write_text(f"SCRIPT = {script!r}\n" + FAKE_MACHINE)
        self.code = ""

    def exec(self, code, what="", timeout=None):
        self.code = code
        code = code.replace("'/lorawan.json'", repr(str(self.dir / "lorawan.json")))
        tail = "\nimport machine\nprint('MODEM', repr((machine.MODEM.log, machine.MODEM.nvm, machine.MODEM.opened)))\n"
        out = unix_port.run(code + tail, heapsize=64 * 1024, path=[self.dir])
        self.out, _, self.seen = out.partition("MODEM ")  # what the board printed; the fake modem's record
        return self.out.encode()

    def modem(self):
        log, nvm, opened = eval(self.seen)  # noqa: S307 (our own repr)
        return log, nvm, opened

    def state(self):
        p = self.dir / "lorawan.json"
        return json.loads(p.read_text()) if p.exists() else None


BOARD = {"network": {"kind": "lorawan", "modem": "rak3172", "bus": "uart2"},
         "buses": {"uart2": {"kind": "uart", "id": 2, "tx": 17, "rx": 16, "baudrate": 115200}}}


def write(tmp_path, config=CONFIG, **script):
    link = UnixPortLink(tmp_path, **script)
    rep = M.write_modem(link, "bin-7", BOARD, config, cmd_ms=150, busy_ms=2000)
    return rep, link


def outcomes(rep):
    return {f.name: f.outcome for f in rep.fields}


def test_writes_what_differs_reads_it_back_and_marks_a_held_session(tmp_path):
    rep, link = write(tmp_path, nvm={"NJS": "1", "CFM": "1"})
    log, nvm, opened = link.modem()
    assert opened == (2, {"baudrate": 115200, "tx": 17, "rx": 16, "timeout": 0, "rxbuf": 1024})  # the board file's bus
    assert (nvm["DEVEUI"], nvm["APPEUI"], nvm["APPKEY"], nvm["CFM"]) == (DEVEUI, "0000000000000000", APPKEY, "0")
    assert outcomes(rep) == {"NWM": "same", "NJM": "same", "CLASS": "same", "BAND": "same", "ADR": "same", "CFM": "written",
                             "DEVEUI": "written", "APPEUI": "same", "APPKEY": "written"}
    # each write is followed by its read-back; nothing is written that the modem already held
    assert [c for c in log if "=" in c and not c.endswith("=?")] == ["AT+CFM=0", f"AT+DEVEUI={DEVEUI}", f"AT+APPKEY={APPKEY}"]
    assert log[log.index(f"AT+DEVEUI={DEVEUI}") + 1] == "AT+DEVEUI=?"
    # the module held a session under the old identity: the firmware is told to join again
    assert rep.session == "1" and rep.rejoin and link.state() == {"rejoin": 1, "join_failures": 0}
    # the AppKey never comes back over the serial link, nor into the report
    assert APPKEY not in link.out and APPKEY not in json.dumps(rep.to_json()) and APPKEY not in rep.summary()
    assert "DevEUI 70B3D57ED0000001: written and verified" in rep.summary()
    assert "AppKey: written and verified" in rep.summary()

    # again: all is there, nothing written, no mark (no needless join)
    (tmp_path / "lorawan.json").write_text('{"join_failures": 2}')
    again = UnixPortLink(tmp_path, nvm={"NJS": "1", "DEVEUI": DEVEUI, "APPKEY": APPKEY})
    rep = M.write_modem(again, "bin-7", BOARD, CONFIG, cmd_ms=150, busy_ms=2000)
    log, nvm, _ = again.modem()
    assert set(outcomes(rep).values()) == {"same"} and not [c for c in log if "=" in c and not c.endswith("=?")]
    assert not rep.rejoin and again.state() == {"join_failures": 2}


def test_a_fresh_module_is_written_without_a_mark_and_survives_noise_busy_and_a_restart(tmp_path):
    rep, link = write(tmp_path, nvm={"NWM": "0", "BAND": "5"}, garbage=4, busy=3, reset=1)
    log, nvm, _ = link.modem()
    assert (nvm["NWM"], nvm["BAND"], nvm["DEVEUI"], nvm["APPKEY"]) == ("1", "4", DEVEUI, APPKEY)
    assert outcomes(rep)["NWM"] == outcomes(rep)["BAND"] == outcomes(rep)["DEVEUI"] == "written"
    assert rep.session == "0" and not rep.rejoin and link.state() is None  # not joined: its first connect joins anyway
    assert log.count("AT") >= 2  # the restart was waited out


def test_an_absent_modem_names_the_device_and_what_to_check(tmp_path):
    t = time.monotonic()
    with pytest.raises(ProvisionError) as e:
        write(tmp_path, absent=1)
    assert time.monotonic() - t < 10
    assert str(e.value) == ("bin-7: the LoRaWAN modem (rak3172 on uart2) does not answer: no reply to AT within 150 ms"
                            " (3 tries); the board's files are written, its modem is not")
    assert "ESP32 TX GPIO17 -> modem RX, ESP32 RX GPIO16 <- modem TX, 115200 8N1" in e.value.hint
    assert "--skip-modem" in e.value.hint and e.value.field == "lorawan"


def test_a_refusal_names_the_field_and_the_modem_answer_never_the_key(tmp_path):
    with pytest.raises(ProvisionError) as e:
        write(tmp_path, refuse=("DEVEUI",))
    assert str(e.value).startswith(f"bin-7: the LoRaWAN modem (rak3172 on uart2) refused the DevEUI: AT+DEVEUI={DEVEUI}:"
                                   " AT_PARAM_ERROR;")
    assert e.value.field == "lorawan_deveui"
    with pytest.raises(ProvisionError) as e:
        write(tmp_path, refuse=("APPKEY",))
    assert "refused the AppKey: AT+APPKEY=<key>: AT_PARAM_ERROR" in str(e.value) and APPKEY not in str(e.value) + e.value.hint
    with pytest.raises(ProvisionError) as e:  # says OK but keeps its old value: the read-back catches it
        write(tmp_path, ignore=("APPEUI",), nvm={"APPEUI": "0102030405060708"})
    assert "did not take the JoinEUI (AT+APPEUI): read back 0102030405060708" in str(e.value)
    with pytest.raises(ProvisionError) as e:
        write(tmp_path, ignore=("APPKEY",))
    assert "did not take the AppKey: read back another key" in str(e.value)


@pytest.mark.parametrize("answer", [("AT_ERROR",), ("AT+APPKEY=" + "*" * 32, "OK")])
def test_a_module_that_does_not_show_its_appkey_gets_it_written_unverified(tmp_path, answer):
    rep, link = write(tmp_path, hide_key=answer, nvm={"NJS": "1", "DEVEUI": DEVEUI})
    _, nvm, _ = link.modem()
    (key,) = [f for f in rep.fields if f.name == "APPKEY"]
    assert nvm["APPKEY"] == APPKEY and key.outcome == "unread"
    assert "AppKey: written, not read back (AT+APPKEY=?: " in rep.summary() and "the first join proves it" in rep.summary()
    assert rep.rejoin  # whether it changed is unknown: the firmware joins with it


# -- the firmware: a rejoin mark in its state file -------------------------------------------------------------------
def test_the_firmware_joins_once_on_the_mark_and_not_again(tmp_path):
    # The module holds a session and the config's identity (provisioning wrote it): without a mark, no join;
    # with the mark, one join, then the mark is gone and a reboot does not join again.
    got = run_modem(tmp_path, r"""
async def main():
    out = {}
    ident = {"DEVEUI": CFG["lorawan_deveui"], "APPKEY": CFG["lorawan_appkey"]}
    m = Modem(joined=True)
    m.nvm.update(ident)
    link, _ = link_for(m)
    out["plain"] = [await link.connect(), [c for c in m.log if c.startswith("AT+JOIN") or "=" in c and "?" not in c]]
    with open(STATE, "w") as f:
        f.write('{"rejoin": 1, "join_failures": 0}')
    m.log.clear()
    link, _ = link_for(m)
    link.cmd_ms = 150
    out["marked"] = [await link.connect(), [c for c in m.log if c.startswith("AT+JOIN") or "=" in c and "?" not in c]]
    out["file"] = json.loads(open(STATE).read())
    m.log.clear()
    link, _ = link_for(m)
    out["reboot"] = [await link.connect(), [c for c in m.log if c.startswith("AT+JOIN")]]
    # a join that fails keeps the mark (the module may still hold the old session)
    with open(STATE, "w") as f:
        f.write('{"rejoin": 1, "join_failures": 0}')
    m.script["join_fail"] = 1
    link, _ = link_for(m)
    out["failed"] = [await link.connect(), json.loads(open(STATE).read())]
    print(json.dumps(out))
asyncio.run(main())
""")
    assert got["plain"] == [True, []]
    assert got["marked"] == [True, ["AT+JOIN=1:0:8:1"]]  # no identity written: it was already right
    assert got["file"] == {"join_failures": 0}
    assert got["reboot"] == [True, []]
    assert got["failed"] == [False, {"join_failures": 1, "rejoin": 1}]


# -- lanterne provision on virtual boards with the modem twin --------------------------------------------------------
SPEED = 5.0


def twin_of(h):
    (twin,) = [p for p in h.board.parts.parts if getattr(p, "name", None) == "lorawan"]
    return twin


def record_commands(twin):
    """Every AT line the twin receives, from now on (the twin's `command`, wrapped)."""
    seen = []
    command = twin.command

    def recording(text):
        seen.append(text.strip())
        command(text)

    twin.command = recording
    return seen


def identity_writes(lines):
    return [c for c in lines if re.match(r"AT\+(DEVEUI|APPEUI|JOINEUI|APPKEY)=(?!\?)", c)]


def registered(path, name, board, transport):
    with Registry(path) as reg:
        reg.add_or_update(name, site="north", board=board, config={"transport": transport, "sample_period_s": 5}, lorawan=True)
        return reg.secret(name, "lorawan_deveui"), reg.secret(name, "lorawan_appkey")



@pytest.mark.integration
def test_provisioning_writes_the_identity_and_the_board_joins_without_writing_it_again(virtual_boards, mosquitto, tmp_path):
    registry = tmp_path / "fleet.sqlite"
    eui_a, key_a = registered(registry, "bin-a", "esp32-rak3172", "lorawan")
    eui_b, key_b = registered(registry, "bin-b", "esp32-rak3172", "lorawan")
    devices = [Device(dev_eui=eui_a, app_key=key_a, name="bin-a"), Device(dev_eui=eui_b, app_key=key_b, name="bin-b")]
    with NetworkServer(mosquitto.url, devices, integrations=("chirpstack",)) as ns:
        (h,) = virtual_boards(1, board="esp32-rak3172", firmware=False, radio=mosquitto.url,
                              world_values={"lorawan_speedup": SPEED, "lorawan_dr": 5})
        h.wait_for(">>> ")
        twin = twin_of(h)
        seen = record_commands(twin)
        args = ["provision", "--port", h.port, "--device", "bin-a", "--registry", registry]
        r = lanterne(*args, cwd=tmp_path, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"modem DevEUI {eui_a}: written and verified" in r.stdout
        assert "modem AppKey: written and verified" in r.stdout and key_a not in r.stdout + r.stderr
        # the module's NVM holds the registry's identity
        assert (twin.nvm["deveui"], twin.nvm["appeui"], twin.nvm["appkey"]) == (eui_a, "0000000000000000", key_a)
        # the firmware boots, finds the identity there and joins with it: one join, no identity written
        at_boot = len(seen)
        h.wait_for(r"connected to the LoRaWAN network as bin-a", timeout=90)
        assert identity_writes(seen[at_boot:]) == [] and ns.counts["joins"] == 1

        # re-provisioned (a config change): the modem is read, nothing written, and the board does not join again
        since = h.console_offset()
        r = lanterne(*args, "--set", "sample_period_s=7", "--json", cwd=tmp_path, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        report = json.loads(r.stdout)["modem"]
        assert {f["name"]: f["outcome"] for f in report["fields"]} == dict.fromkeys(
            ("NWM", "NJM", "CLASS", "BAND", "ADR", "CFM", "DEVEUI", "APPEUI", "APPKEY"), "same")
        assert report["session"] == "1" and report["rejoin"] is False and key_a not in r.stdout
        h.wait_for(r"connected to the LoRaWAN network as bin-a", since=since, timeout=90)
        assert identity_writes(seen[at_boot:]) == [] and ns.counts["joins"] == 1

        # the same board becomes bin-b (--replace): the new identity goes to the module, which held bin-a's session;
        # the firmware joins again, as bin-b
        since = h.console_offset()
        r = lanterne("provision", "--port", h.port, "--device", "bin-b", "--registry", registry, "--replace",
                     cwd=tmp_path, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "held a session under another identity: the board joins again" in r.stdout
        assert (twin.nvm["deveui"], twin.nvm["appkey"]) == (eui_b, key_b)
        h.wait_for(r"connected to the LoRaWAN network as bin-b", since=since, timeout=90)
        assert ns.counts["joins"] == 2
        assert json.loads((h.flash / "lorawan.json").read_text()) == {"join_failures": 0}  # the mark is gone


@pytest.mark.integration
def test_the_dual_board_absent_modem_fails_clearly_then_provisions_once_plugged(virtual_boards, mosquitto, tmp_path):
    registry = tmp_path / "fleet.sqlite"
    eui, key = registered(registry, "cab-1", "olimex-esp32-poe-rak3172", "failover")
    (h,) = virtual_boards(1, board="olimex-esp32-poe-rak3172", firmware=False, world_values={"lorawan_speedup": SPEED})
    h.wait_for(">>> ")
    h.world.inject("lorawan", "missing")  # the module unplugged: no byte ever comes back
    args = ["provision", "--port", h.port, "--device", "cab-1", "--registry", registry, "--broker", mosquitto.url]
    r = lanterne(*args, cwd=tmp_path, timeout=180)
    assert r.returncode == 1, r.stdout + r.stderr
    (err, hint) = r.stderr.strip().splitlines()[-2:]
    assert err.endswith("cab-1: the LoRaWAN modem (rak3172 on uart2) does not answer: no reply to AT within 1500 ms (3 tries);"
                        " the board's files are written, its modem is not"), r.stderr
    assert "ESP32 TX GPIO2 -> modem RX, ESP32 RX GPIO5 <- modem TX" in hint and "--skip-modem" in hint
    with Registry(registry) as reg:
        assert reg.get("cab-1").state == "modem-unwritten"

    # plugged in: provisioning again sends no file, writes the modem and awaits the status over MQTT
    h.world.clear("lorawan")
    r = lanterne(*args, "--json", cwd=tmp_path, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["files_sent"] == [] and rep["status"]["device"] == "cab-1"
    # (written now, or already by the firmware, which ran meanwhile and may have reached the module once it was back)
    assert {f["name"] for f in rep["modem"]["fields"] if f["outcome"] in ("written", "same")} == {
        "NWM", "NJM", "CLASS", "BAND", "ADR", "CFM", "DEVEUI", "APPEUI", "APPKEY"}
    twin = twin_of(h)
    assert (twin.nvm["deveui"], twin.nvm["appeui"], twin.nvm["appkey"]) == (eui, "0000000000000000", key)
    assert key not in r.stdout + r.stderr

    # --skip-modem: a modem not fitted yet; provisioned, with a warning
    h.world.inject("lorawan", "missing")
    r = lanterne(*args, "--skip-modem", "--set", "sample_period_s=9", cwd=tmp_path, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning: cab-1: LoRaWAN modem not checked (--skip-modem)" in r.stdout
