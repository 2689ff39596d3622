# Lanterne setup mode: when the board serves its setup page, and for how long.
#
# Entered only
# - by holding the board's button (board.json "setup_button") for 1 s within the first 5 s
#   after power-up: the board restarts into setup mode (on boards where the button is GPIO0,
#   press it after power-up: held *during* power-up it starts the ESP32's ROM loader instead);
# - for the first `setup_window_min` minutes of running after a fresh provisioning (Wi-Fi
#   access point only, never on an Ethernet link), counted across power cycles.
# Wi-Fi boards (and LoRaWAN ones, whose ESP32 still has its radio) open a WPA2 access point
# whose name and passphrase derive from the provisioned setup_key (lanterne/setup_credentials),
# and the server binds the AP's address only: the site's network never reaches it. Ethernet
# boards serve the page on their link, and the page asks for the same passphrase.
# It leaves by itself: 10 minutes without a request (30 at most) after the button, at the end
# of the window after provisioning, or when the page says so; then the board restarts into
# normal operation, so nothing of setup mode stays on the heap or on the air. Sampling, the
# lamp profile and the uplink keep running meanwhile. A normal boot imports none of the
# server's modules: the boot decision and the button are lanterne/field.py's.
import time

import asyncio

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


IDLE_MS = const(600000)  # button: leave after 10 min with no request
MAX_MS = const(1800000)  # button: 30 min at most
_SPEND_MS = const(30000)  # the window's use is written down every 30 s


def deadline(via, since_start_ms, since_request_ms, window_ms):
    """(ms left, why it ends): the rule for leaving (pure, tested on both interpreters)."""
    if via == "button":
        idle = IDLE_MS - since_request_ms
        cap = MAX_MS - since_start_ms
        return (idle, "10 minutes without a request") if idle < cap else (cap, "30 minutes, the longest a session lasts")
    return window_ms - since_start_ms, "the setup window after provisioning is over"


async def task(app):
    """The app's hook task at a setup boot: serve the page, then restart into normal operation."""
    import machine

    kind = app.board.get("network", {}).get("kind", "wlan")
    window_ms = max(0, app.cfg["setup_window_min"] * 60 - app.setup_used_s) * 1000
    mode = SetupMode(app, app.setup_via, kind, window_ms, app.setup_used_s)
    app.setup = mode
    try:
        served = await mode.run()
    finally:
        app.setup = None
    if not served:
        return  # could not open (reported in the faults): carry on in normal operation
    app.log("restarting into normal operation")
    if app.link is not None:
        app.link.close()
    machine.reset()


class SetupMode:
    def __init__(self, app, via, kind, window_ms, used_s):
        self.app = app
        self.via = via
        self.kind = kind
        self.window_ms = window_ms
        self.used_s = used_s  # of the window, before this boot
        self.need_password = kind == "lan"
        self.started = time.ticks_ms()
        self.api = None
        self.turn = None  # a coroutine function the app's uplink task runs once, in its turn (lanterne/setup_lorawan.py)
        self.address = None
        self.ssid = None
        self._leave = None
        self._ends = None

    def leave(self, why):
        self._leave = why

    def window_used_s(self):
        return self.used_s + time.ticks_diff(time.ticks_ms(), self.started) // 1000

    def left_ms(self):
        now = time.ticks_ms()
        last = self.api.last_request if self.api else self.started
        return deadline(self.via, time.ticks_diff(now, self.started), time.ticks_diff(now, last), self.window_ms)

    def summary(self):
        left, _why = self.left_ms()
        return {"via": self.via, "left_s": max(0, left // 1000), "address": self.address, "ssid": self.ssid,
                "session": bool(self.api and self.api.token)}

    async def run(self):
        a = self.app
        cfg = a.cfg
        from lanterne import setup_credentials as cred

        try:
            password = cred.passphrase(cfg["device"], cfg["setup_key"])
            ssid = cred.ssid(cfg["device"], cfg["setup_key"])
        except ValueError as e:
            a.faults["setup"] = "setup: %s" % e
            a.log(a.faults["setup"])
            return False
        ap = None
        import network

        if self.kind == "lan":
            if not await a.net.wait_up(30000):
                a.faults["setup"] = "setup: the Ethernet link is down: no setup page"
                a.log(a.faults["setup"])
                return False
            address = a.net.nic.ifconfig()[0]
        else:
            ap = network.WLAN(network.AP_IF)
            ap.active(True)
            ap.config(essid=ssid, password=password, authmode=network.AUTH_WPA2_PSK, max_clients=2)
            address = ap.ifconfig()[0]
            self.ssid = ssid
        self.address = address
        from lanterne.setup_api import SetupApi
        from lanterne.setup_server import Server

        self.api = SetupApi(a, self, password)
        server = Server(self.api, address, 80)
        why = "stopped"
        try:
            await server.start()
            a.faults.pop("setup", None)
            left, _ = self.left_ms()
            a.log("setup mode (%s): http://%s/%s, %d min at most"
                  % (self.via, address, " on Wi-Fi " + ssid if ap else " on Ethernet", left // 60000))
            a.status_due = True
            spent = time.ticks_ms()
            while True:
                await asyncio.sleep_ms(250)
                if self._leave:
                    why = self._leave
                    break
                left, why = self.left_ms()
                if left <= 0:
                    break
                if self.via == "provisioned" and time.ticks_diff(time.ticks_ms(), spent) >= _SPEND_MS:
                    spent = time.ticks_ms()
                    from lanterne import config, field

                    field.spend_window(config.CONFIG_FILE, self.window_used_s())
        finally:
            await server.stop()
            self.api.close()
            if self.via == "provisioned":
                from lanterne import config, field

                # used up, whatever ended it: the window does not come back at the next boot
                field.spend_window(config.CONFIG_FILE, self.used_s + self.window_ms // 1000)
            if ap is not None:
                ap.active(False)
            a.log("setup mode ended: %s (%d requests served, %d refused)" % (why, server.served, server.refused))
        return True
