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
# server's modules.
import time

import asyncio

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


_WATCH_MS = const(5000)
_HOLD_MS = const(1000)
IDLE_MS = const(600000)  # button: leave after 10 min with no request
MAX_MS = const(1800000)  # button: 30 min at most
_SPEND_MS = const(30000)  # the window's use is written down every 30 s
REQUEST_FILE = "setup.req"  # the button was held: the next boot is a setup boot
MODULES = ("lanterne.setup_credentials", "lanterne.http_request", "lanterne.setup_server", "lanterne.setup_api")
# What the app imports after this, by the parts the board has: imported here too at a setup boot.
_PARTS = {
    "bme280": ("lanterne.sensors.bme280",),
    "bh1750": ("lanterne.sensors.light",),
    "veml7700": ("lanterne.sensors.light",),
    "ultrasonic": ("lanterne.sensors.fill_level",),
    "ultrasonic_uart": ("lanterne.sensors.fill_level",),
    "supply": ("lanterne.sensors.supply",),
    "lamp": ("lanterne.actuators.lamp", "lanterne.lamp_profile", "lanterne.sun"),
    "relay": ("lanterne.actuators.relay",),
}
_APP = ("lanterne.assets", "lanterne.control", "lanterne.reading", "lanterne.store", "lanterne.transport.mqtt")


def deadline(via, started, last_request, window_ms, now):
    """(ms left, why it ends): the rule for leaving, apart from the clock (pure, tested on both interpreters)."""
    if via == "button":
        idle = IDLE_MS - time.ticks_diff(now, last_request)
        cap = MAX_MS - time.ticks_diff(now, started)
        return (idle, "10 minutes without a request") if idle < cap else (cap, "30 minutes, the longest a session lasts")
    return window_ms - time.ticks_diff(now, started), "the setup window after provisioning is over"


def entry(cfg, board):
    """At boot, before the app builds anything: (how setup mode was asked for or None, seconds
    of the post-provisioning window used).

    A setup boot imports the setup modules here, first, and with them every module the app is
    about to import: MicroPython keeps the names it interns in pools, and when the setup modules
    push their number past the last pool (1260 names), the next pool is one contiguous block of
    ~9 KB on the ESP32 (14 KB here). Allocated now, the heap still has such a block; later, once
    the app has built its parts, store and link, it may not (a MemoryError in whatever imports
    next)."""
    import os

    from lanterne import config, field

    _fresh, used_s = field.window_state(config.CONFIG_FILE)
    via = None
    try:
        os.remove(REQUEST_FILE)
        via = "button"
    except OSError:
        kind = board.get("network", {}).get("kind", "wlan")
        if kind != "lan" and cfg["setup_key"] and cfg["setup_window_min"] * 60 > used_s:
            via = "provisioned"
    if via is not None:
        import gc

        gc.collect()
        try:
            for name in MODULES:
                __import__(name)
        except Exception as e:  # a firmware image without them: normal operation, said so
            print("[lanterne] setup mode unavailable: %r" % (e,))
            return None, used_s
        names = list(_APP)
        for spec in board.get("sensors", []) + board.get("actuators", []):
            names += _PARTS.get(spec.get("type"), ())
        for name in names:
            try:
                __import__(name)
            except ImportError:
                pass  # the app reports a part it cannot build
    return via, used_s


async def button_held(board, pin_factory=None):
    """True when the button is held for 1 s within the first 5 s (False at once without a button)."""
    gpio = board.get("setup_button")
    if gpio is None:
        return False
    if pin_factory is None:
        from machine import Pin

        pin_factory = Pin
    pin = pin_factory(gpio, pin_factory.IN)  # pulled up on the board: 0 while held
    t0 = time.ticks_ms()
    since = None
    while True:
        now = time.ticks_ms()
        if pin.value() == 0:
            if since is None:
                if time.ticks_diff(now, t0) > _WATCH_MS:
                    return False
                since = now
            elif time.ticks_diff(now, since) >= _HOLD_MS:
                return True
        else:
            since = None
            if time.ticks_diff(now, t0) > _WATCH_MS:
                return False
        await asyncio.sleep_ms(50)


async def task(app):
    """The app's hook task. A normal boot watches the button for 5 s (held: restart into setup
    mode); a setup boot serves the page, then restarts into normal operation."""
    import machine

    if app.setup_via is None:
        if await button_held(app.board):
            with open(REQUEST_FILE, "w") as f:
                f.write("button")
            app.log("setup button held: restarting into setup mode")
            machine.reset()
        return
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
        self.address = None
        self.ssid = None
        self._leave = None
        self._ends = None

    def leave(self, why):
        self._leave = why

    def window_used_s(self):
        return self.used_s + time.ticks_diff(time.ticks_ms(), self.started) // 1000

    def left_ms(self):
        last = self.api.last_request if self.api else self.started
        return deadline(self.via, self.started, last, self.window_ms, time.ticks_ms())

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
