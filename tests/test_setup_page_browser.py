"""The setup page in a real browser: Debian's Chromium, driven by Playwright, on a phone-sized
screen, against the virtual board's setup server over loopback. An installer sets the position
from the phone's GPS, calibrates the bin at two distances, dims the lamp and saves; after a
reboot the board runs on those values. Screenshots go to build/artifacts/."""

from __future__ import annotations

import json
import shutil

import pytest
from test_field_setup import KEY, _board_file

from host_tools.runtime.paths import BUILD

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = BUILD / "artifacts"
PHONE = {"width": 390, "height": 844}  # a common phone's CSS viewport


@pytest.fixture
def phone():
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is not installed: run `make chromium` (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport=PHONE, device_scale_factor=1, is_mobile=True, has_touch=True,
                                      geolocation={"latitude": 45.764043, "longitude": 4.835659, "accuracy": 6},
                                      permissions=["geolocation"])
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


def test_installer_commissions_a_bin_and_lamp_from_a_phone(virtual_boards, tmp_path, mosquitto, phone):
    from host_tools.backoffice.watcher import Watcher
    from host_tools.codec.decoder import decode

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    config = {"device": "web-1", "site": "field", "broker": mosquitto.url, "setup_key": KEY, "setup_window_min": 10,
              "sample_period_s": 1, "status_period_s": 5, "command_key": "11" * 32}
    with Watcher(mosquitto.url, ["lanterne/v1/field/web-1/#"]) as w:
        (h,) = virtual_boards(1, board=_board_file(tmp_path), config=config, world_values={"distance_mm": 900})
        h.wait_for(r"setup mode \(provisioned\)", timeout=40)
        url = h.http_url(timeout=5)
        page = phone
        page.goto(url)
        page.wait_for_selector("#readings dt")
        assert "No faults" in page.inner_text("#faults")
        page.screenshot(path=str(ARTIFACTS / "setup-page-top.png"))

        # position from the phone's GPS, with its accuracy shown
        page.click("#gps")
        page.wait_for_selector("#gps-msg.ok")
        assert "±6 m" in page.inner_text("#gps-msg")
        page.click("#set-pos")
        page.wait_for_selector("#pos-msg.ok")
        page.fill("#asset", "LP-0042")
        page.click("#set-asset")
        page.wait_for_selector("#asset-msg.ok")

        # the bin, empty then full
        h.world.set(distance_mm=1180)
        page.click("#bin-empty")
        page.wait_for_selector("#bin-msg.ok", timeout=20000)
        assert "Empty: 11" in page.inner_text("#bin-msg")
        h.world.set(distance_mm=230)
        page.click("#bin-full")
        page.locator("#bin-msg.ok", has_text="Full:").wait_for(timeout=20000)  # (the page's CSP forbids eval)

        # the lamp at 50 %: the PWM really drives half, and the current is measured
        page.click("#lamp-50")
        page.wait_for_selector("#lamp-msg.ok", timeout=10000)
        assert "Lamp at 50 %, drawing" in page.inner_text("#lamp-msg")
        duty = h.world.pwm(25)["duty_u16"]
        assert abs(duty - 32767) < 700, duty

        # the link
        page.click("#link-test")
        page.wait_for_selector("#link-msg.ok", timeout=20000)

        page.click("#save")
        page.wait_for_selector("#save-msg.ok")
        saved = page.inner_text("#save-msg")
        assert all(f in saved for f in ("asset_id", "bin_empty_mm", "bin_full_mm", "lat", "lon")), saved
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ARTIFACTS / "setup-page-saved.png"))
        page.screenshot(path=str(ARTIFACTS / "setup-page-full.png"), full_page=True)

        # after a reboot: config.json holds the values, the status and the readings follow them
        h.hard_reset()
        cfg = json.loads((h.flash / "config.json").read_text())
        assert cfg["asset_id"] == "LP-0042" and abs(cfg["lat"] - 45.764043) < 1e-6 and abs(cfg["lon"] - 4.835659) < 1e-6
        assert 1160 <= cfg["bin_empty_mm"] <= 1200 and 215 <= cfg["bin_full_mm"] <= 245, cfg
        h.world.set(distance_mm=(cfg["bin_empty_mm"] + cfg["bin_full_mm"]) / 2)  # half full, by the new calibration
        status = w.wait_for("lanterne/v1/field/web-1/status",
                            lambda m: b'"online"' in m.payload and b'"boot": 2' in m.payload, timeout=40)[-1]
        doc = json.loads(status.payload)
        assert doc["field"]["n"] == 1 and doc["field"]["fields"]["asset_id"] == "LP-0042"
        middle = (cfg["bin_empty_mm"] + cfg["bin_full_mm"]) / 2

        def half_full(m):
            # at the middle distance of the new calibration: 50 % (the default calibration said 50 % at 675 mm)
            return any(abs(r.get("distance", 0) - middle) < 15 and 48 <= r.get("fill", -1) <= 52
                       for r in decode(m.payload)["readings"])

        w.wait_for("lanterne/v1/field/web-1/up", half_full, timeout=30)
