"""The setup page's link test on a LoRaWAN board (firmware/lanterne/setup_lorawan.py): the RAK3172 twin,
the emulated network server and the back office's uplink service on Mosquitto, the board in setup mode.
What an installer sees: a join that fails (failures injected with `lanterne world`), a modem that does
not answer, then a join, a test uplink the network answers and the back office reports, the duty cycle
refusing a test too soon with its wait, and the session kept (no new join) at the next test; the board
sampling throughout. The same button pressed in Chromium on a phone-sized page."""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import lanterne
from test_field_setup import KEY, call
from test_lorawan_board import SPEED, board_config, events, identity, wait
from test_setup_page_browser import ARTIFACTS, phone  # noqa: F401 (the phone fixture)

from host_tools.backoffice.uplinks import LoraDevice, UplinkService
from host_tools.codec import lns_json as J
from host_tools.emulator.network_server import Device, NetworkServer

pytestmark = pytest.mark.integration
CONTROLS = []


@pytest.fixture(autouse=True)
def _stop_controls():
    yield
    while CONTROLS:
        CONTROLS.pop().stop()


def test_the_uplink_service_reports_link_tests_and_refuses_malformed_ones():
    key = bytes(range(32))
    svc = UplinkService([LoraDevice("bin-7", "00aa00aa00aa00aa", key)], publish=lambda topic, msg: None)
    up = dict(dev_eui="00aa00aa00aa00aa", device="bin-7", fport=13, dr=3, rssi=-117, snr=-4.5, gateways=2)
    svc.handle(J.Uplink(fcnt=5, data=bytes([1, 4]), **up))
    svc.handle(J.Uplink(fcnt=6, data=bytes([2, 4]), **up))
    svc.handle(J.Uplink(fcnt=7, data=bytes([1]), **up))
    (ev,) = [e for e in svc.events if e["event"] == "link_test"]
    assert {k: ev[k] for k in ("device", "number", "fcnt", "rssi", "snr", "dr", "gateways")} == {
        "device": "bin-7", "number": 4, "fcnt": 5, "rssi": -117, "snr": -4.5, "dr": 3, "gateways": 2}
    bad = [e["error"] for e in svc.events if e["event"] == "bad_payload"]
    assert bad == ["link test frame of 2 bytes, version 02: not version 1", "link test frame of 1 bytes, version 01: not version 1"]
    # not readings: nothing entered the delivery ledger (it still acknowledges nothing, misses nothing)
    st = svc.by_name["bin-7"]
    assert st.readings == 0 and st.uplinks == 3 and st.ledger.next_seq == 0 and st.ledger.gaps() == []


def link_test(url, token, timeout=60):
    """POST /api/link, then GET /api/link every half second until it is done, as the page does."""
    status, r = call(url, "/api/link", {}, token)
    assert status == 200 and r["transport"] == "lorawan", r
    deadline = time.monotonic() + timeout
    while r["running"]:
        assert time.monotonic() < deadline, r
        time.sleep(0.5)
        status, r = call(url, "/api/link", token=token)
        assert status == 200, r
    return r


def world(h, *args):
    r = lanterne("world", "--port", h.port, *args)
    assert r.returncode == 0, r.stderr


def start(virtual_boards, mosquitto, name, ident, *world_args, **world_values):
    """The board in setup mode (the window after provisioning), `lanterne world ARGS` run on it before
    it powers up: (handle, page URL, session token)."""
    cfg = board_config(name, ident, setup_key=KEY, setup_window_min=10, sample_period_s=120)
    (h,) = virtual_boards(1, board="esp32-rak3172", config=cfg, radio=mosquitto.url, power_on=False,
                          world_values={"lorawan_speedup": SPEED, "lorawan_dr": 5, **world_values})
    # the control socket `lanterne emulate` serves, so that `lanterne world --port` reaches this board
    from host_tools.emulator.control import ControlServer

    ctl = ControlServer(h, h.port + ".ctl")
    ctl.start()
    CONTROLS.append(ctl)
    for args in world_args:
        world(h, *args)
    h.power_on()
    h.wait_for(r"setup mode \(provisioned\)", timeout=60)
    url = h.http_url(timeout=5)
    status, doc = call(url, "/api/session", {})
    assert status == 200, doc
    return h, url, doc["token"]


def test_link_test_on_a_lorawan_board_join_failures_no_modem_then_joined_and_answered(virtual_boards, mosquitto):
    name = "Env_Setup"
    ident = identity(name)
    dev = Device(dev_eui=ident["dev_eui"], app_key=ident["app_key"], name=name)
    with NetworkServer(mosquitto.url, [dev], integrations=("chirpstack",), app=J.Application()) as ns:
        svc = UplinkService([LoraDevice(name, ident["dev_eui"].lower(), bytes.fromhex(ident["command_key"]))],
                            integration="chirpstack", broker_url=mosquitto.url).start()
        try:
            # the modem does not answer at all (absent, unpowered, miswired)
            h, url, token = start(virtual_boards, mosquitto, name, ident, ("fault", "lorawan", "missing"),
                                  ("set", "lorawan_join_failures=1000"))
            assert call(url, "/api/link", token=token)[0] == 404  # nothing started yet
            r = link_test(url, token)
            assert (r["ok"], r["joined"], r["reason"]) == (False, False, "no modem"), r
            assert r["error"] == "lorawan: modem not answering (no reply to AT within 1500 ms)" and r["devaddr"] is None, r

            # the modem back, but every join request goes unanswered: the test says the join failed, and why
            world(h, "clear", "lorawan")
            r = link_test(url, token)
            assert (r["ok"], r["joined"], r["reason"]) == (False, False, "join failed"), r
            assert r["error"] == "lorawan: join failed (JOIN_FAILED_RX_TIMEOUT)" and r["devaddr"] is None, r
            assert ns.counts["joins"] == 0

            # the network in range: joined now, the test uplink answered by the network (LinkCheckAns)
            world(h, "set", "lorawan_join_failures=0")
            r = link_test(url, token)
            assert (r["ok"], r["joined"], r["join"], r["confirmed"]) == (True, True, "joined now", True), json.dumps(r) + h.console()[-3000:]
            assert ns.counts["joins"] == 1
            (session,) = ns.sessions.values()
            assert r["devaddr"] == f"{session.dev_addr:08X}", r  # the address the network gave it
            assert (r["dr"], r["sf"], r["gateways"], r["rssi"], r["snr"]) == (5, 7, 1, -95, 7), r
            assert 0 < r["airtime_ms"] < 100 and r["airtime_day_s"] > 0 and r["airtime_cap_s"] == 30, r
            assert r["margin_db"] > 0 and r["error"] is None, r
            # pressed again at once: the test's own uplink keeps the sub-band closed for ~5 s at SF7; that
            # is waited out, ahead of the reading queued since boot, on the session the modem holds
            r = link_test(url, token)
            assert (r["ok"], r["joined"], r["join"], r["confirmed"]) == (True, True, "session kept", True), json.dumps(r) + h.console()[-3000:]
            assert 1 <= r["waited_s"] <= 6 and ns.counts["joins"] == 1, r
            # the back office knows them for link tests, not readings; the reading came after them,
            # numbered from 0 (the test frames take no seq)
            tests = wait(lambda: len(events(svc, "link_test")) == 2 and events(svc, "link_test"), 20, "the link tests at the uplink service")
            assert [t["device"] for t in tests] == [name, name] and tests[0]["rssi"] == -95 and tests[0]["dr"] == 5
            assert tests[1]["number"] > tests[0]["number"] and tests[1]["fcnt"] > tests[0]["fcnt"]
            readings = wait(lambda: events(svc, "reading"), 30, "the reading kept since boot")
            assert readings[0]["reading"]["seq"] == 0 and readings[0]["fcnt"] > tests[1]["fcnt"]

            # the modem busy (AT_BUSY_ERROR on every try): said so, nothing sent
            world(h, "set", "lorawan_busy_refusals=3")
            r = link_test(url, token)
            assert (r["ok"], r["joined"], r["reason"]) == (False, True, "busy"), r
            assert r["error"] == "lorawan: AT+SEND: modem busy 3 times", r
            assert len(events(svc, "link_test")) == 2
            assert not events(svc, "bad_payload") and ns.counts["joins"] == 1
            console = h.console()
            assert "MemoryError" not in console and "Traceback" not in console and "(restarted)" not in console, console[-2000:]
        finally:
            svc.stop()


def test_installer_tests_the_lorawan_link_from_a_phone(virtual_boards, mosquitto, phone):  # noqa: F811
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = "Env_Phone"
    ident = identity(name)
    dev = Device(dev_eui=ident["dev_eui"], app_key=ident["app_key"], name=name)
    with NetworkServer(mosquitto.url, [dev], integrations=("chirpstack",), app=J.Application()) as ns:
        svc = UplinkService([LoraDevice(name, ident["dev_eui"].lower(), bytes.fromhex(ident["command_key"]))],
                            integration="chirpstack", broker_url=mosquitto.url).start()
        try:
            h, url, _token = start(virtual_boards, mosquitto, name, ident, lorawan_dr=0)  # SF12, the far end of the range
            page = phone
            page.goto(url)
            page.wait_for_selector("#readings dt")
            assert page.inner_text("#link-now").startswith("LORAWAN: ")
            page.click("#link-test")
            page.wait_for_selector("#link-msg.ok", timeout=60000)
            text = page.inner_text("#link-msg")
            (session,) = ns.sessions.values()
            assert re.search(r"^(Joined the network|Session kept \(no new join\)), DevAddr %08X\. " % session.dev_addr, text), text
            assert "Test uplink sent at DR0 (SF12), 1319 ms on air." in text, text
            assert re.search(r"The network answered: heard by 1 gateway, margin \d+ dB\. RSSI -95 dBm, SNR 7 dB\.", text), text
            assert re.search(r"Airtime in the last 24 h: 1\.3 s of 30 s\.$", text), text
            page.locator("#link-now", has_text=re.compile(r"^LORAWAN: connected$")).wait_for(timeout=5000)
            page.evaluate("document.getElementById('link-msg').parentElement.scrollIntoView()")
            page.screenshot(path=str(ARTIFACTS / "setup-page-lorawan-link.png"), clip={"x": 0, "y": 0, "width": 390, "height": 400})
            wait(lambda: events(svc, "link_test"), 20, "the link test at the uplink service")
            # pressed again at once: at SF12 the 1 % duty cycle keeps the sub-band closed for about two
            # minutes after that uplink; the test is refused, and the page says how long to wait
            page.click("#link-test")
            page.wait_for_selector("#link-msg.warn", timeout=30000)
            text = page.inner_text("#link-msg")
            m = re.search(r"Not sent: the duty cycle allows the next uplink in (\d+) s: try again then\.", text)
            assert m and 100 <= int(m.group(1)) <= 132, text
            assert ns.counts["joins"] == 1 and len(events(svc, "link_test")) == 1
            assert "MemoryError" not in h.console() and "Traceback" not in h.console()
        finally:
            svc.stop()
