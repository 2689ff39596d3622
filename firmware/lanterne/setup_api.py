# Lanterne setup page's JSON API: what an installer does on site, against the running app.
#
#   POST /api/session  -> {"token"}: one session at a time (a new one ends the old). Over Wi-Fi
#                         the AP's passphrase was the gate; over Ethernet the body must carry it
#                         ({"password": ...}; 5 wrong -> locked for 60 s).
#   every other call needs the header X-Session: <token> (401 otherwise):
#   GET  /api/state    live readings, faults, link, saved and pending values, time left
#   POST /api/link     link test. MQTT: a status message through the app's own link, acked (answered
#                      when done). LoRaWAN: join (or the session held) + one test uplink, started in
#                      the background (lanterne/setup_lorawan.py): answered at once with its progress
#   GET  /api/link     the LoRaWAN link test's progress, then its result (the page polls it)
#   POST /api/set      {"asset_id"?, "lat"?, "lon"?}: checked by the config schema, kept pending
#   POST /api/bin      {"capture": "empty"|"full"}: three ping cycles, their median pending
#   POST /api/lamp     {"level": 0..100}: lamp test, with the measured current when fitted
#   POST /api/bollard  {"action": "raise"|"lower"}: the interlock decides (409 when it refuses)
#   POST /api/save     pending values into config.json (atomically), recorded in field.json
#   POST /api/leave    end setup mode now
# Values go through config.validate, the same schema provisioning uses; secrets never leave.
import json
import os
import time

import asyncio

from lanterne import config, field
from lanterne.http_request import HttpError

_LINK_TEST_MS = 15000
_LOCK_MS = 60000
_BOLLARD_STATES = ("down", "up", "moving", "unknown")


def _equal(a, b):
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= ord(a[i]) ^ ord(b[i])
    return d == 0


def _round(v, scale):
    return None if v is None else int(v * scale + (0.5 if v >= 0 else -0.5)) / scale


class SetupApi:
    def __init__(self, app, mode, password):
        self.app = app
        self.mode = mode
        self._password = password  # the AP passphrase (also the Ethernet login): never sent out
        self.token = None
        self.sessions = 0
        self.pending = {}
        self.last_request = time.ticks_ms()
        self.lamp_tested = False
        self._fails = 0
        self._locked_at = None
        self._busy = None  # the long action running (one at a time)
        self.link_test = None  # LoRaWAN: the link test running or done (lanterne/setup_lorawan.py)

    def log(self, msg):
        self.app.log(msg)

    def close(self):
        # Leaving setup mode: the lamp goes back to its profile.
        a = self.app.assets
        if self.lamp_tested and a.profile is not None:
            a.profile.override(None)

    # -- dispatch -----------------------------------------------------------------------
    async def handle(self, req, body):
        path = req.path
        if path == "/api/session":
            if req.method != "POST":
                raise HttpError(405, "open a session with POST")
            return self._session(self._args(req, body))
        if not self._authorised(req.session):
            raise HttpError(401, "no valid session: reload the page" if self.token else "open a session first (POST /api/session)")
        self.last_request = time.ticks_ms()
        if path == "/api/state":
            if req.method != "GET":
                raise HttpError(405, "read the state with GET")
            return 200, self.state()
        if path == "/api/link" and req.method == "GET":
            if self.link_test is None:
                raise HttpError(404, "no link test started (POST /api/link)")
            return 200, self.link_test.report()
        if req.method != "POST":
            raise HttpError(405, "%s takes POST" % path)
        args = self._args(req, body)
        if path == "/api/set":
            return self._set(args)
        if path == "/api/save":
            return self._save()
        if path == "/api/leave":
            self.mode.leave("left from the page")
            return 200, {"left": True}
        if path == "/api/lamp":
            return await self._lamp(args)
        if path == "/api/bollard":
            return await self._exclusive("bollard test", self._bollard(args))
        if path == "/api/bin":
            return await self._exclusive("bin calibration", self._bin(args))
        if path == "/api/link":
            if self.app.cfg["transport"] == "lorawan":
                return self._lorawan_link()
            return await self._exclusive("link test", self._link())
        raise HttpError(404, "no such call: %s" % path)

    def _args(self, req, body):
        if not len(body):
            return {}
        if req.content_type != "application/json":
            raise HttpError(415, "send the body as application/json")
        try:
            doc = json.loads(bytes(body))
        except (ValueError, UnicodeError):
            raise HttpError(400, "the body is not valid JSON")
        if not isinstance(doc, dict):
            raise HttpError(400, "the body must be a JSON object")
        return doc

    async def _exclusive(self, name, coro):
        if self._busy is not None:
            coro.close()
            raise HttpError(409, "busy with the %s: wait for its result" % self._busy)
        self._busy = name
        try:
            return await coro
        finally:
            self._busy = None

    # -- session ------------------------------------------------------------------------
    def _session(self, args):
        if self.mode.need_password:
            now = time.ticks_ms()
            if self._locked_at is not None:
                if time.ticks_diff(now, self._locked_at) < _LOCK_MS:
                    raise HttpError(429, "too many wrong passwords: wait a minute")
                self._locked_at = None
                self._fails = 0
            given = args.get("password")
            if not isinstance(given, str) or not _equal(given.strip().lower(), self._password):
                self._fails += 1
                if self._fails >= 5:
                    self._locked_at = now
                raise HttpError(403, "wrong or missing setup password (it is on the board's label)")
            self._fails = 0
        if self.token is not None:
            self.log("setup: a new session replaces the previous one")
        self.token = os.urandom(16).hex()
        self.sessions += 1
        self.last_request = time.ticks_ms()
        return 200, {"token": self.token, "device": self.app.cfg["device"]}

    def _authorised(self, given):
        return self.token is not None and given is not None and _equal(given, self.token)

    # -- state --------------------------------------------------------------------------
    def state(self):
        a = self.app
        s = a.assets
        r = {}
        env = s.env
        if env is not None and env.present and not env.fault and env.pressure_pa:  # read at least once
            r["temperature_c"] = env.temperature / 100
            if env.has_humidity:
                r["humidity_pct"] = _round(env.humidity_centi / 100, 10)
            r["pressure_hpa"] = _round(env.pressure_pa / 100, 10)
        if s.light is not None and not s.light.fault:
            r["illuminance_lx"] = _round(s.light.millilux / 1000, 10)
        if s.fill is not None and s.fill.valid_echoes:
            r["distance_mm"] = s.fill.distance_mm
            r["fill_pct"] = _round(s.fill.level_permille / 10, 1)
        if s.supply is not None and not s.supply.fault:
            r["supply_v"] = _round(s.supply.millivolts / 1000, 100)
        if s.lamp is not None:
            r["lamp_pct"] = s.lamp.level
            if s.lamp.current_adc is not None and s.lamp.current_ma >= 0:
                r["lamp_current_ma"] = s.lamp.current_ma
        if s.bollard is not None:
            r["bollard"] = _BOLLARD_STATES[s.bollard.state]
            r["presence"] = s.bollard.presence()
        faults = dict(a.faults)
        faults.update(s.faults())
        link = a.link
        cfg = a.cfg
        return {
            "device": cfg["device"],
            "site": cfg["site"],
            "board": a.board.get("name"),
            "parts": [k for k in ("env", "light", "fill", "supply", "lamp", "bollard") if getattr(s, k) is not None],
            "readings": r,
            "faults": sorted(faults.values()),
            "link": {"transport": cfg["transport"], "connected": bool(link and link.up)},
            "saved": {k: cfg[k] for k in field.EDITABLE},
            "pending": self.pending,
            "field": a.field,
            "setup": self.mode.summary(),
            "backlog": a.store.pending,
        }

    # -- values -------------------------------------------------------------------------
    def _saved_data(self):
        try:
            with open(config.CONFIG_FILE) as f:
                data = json.loads(f.read())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _check(self, changes):
        """Validate `changes` on top of the saved config and what is pending; raise 422 naming the field."""
        data = self._saved_data()
        data.update(self.pending)
        data.update(changes)
        cfg, errors = config.validate(data)
        for e in errors:
            for k in changes:
                if "'%s'" % k in e or (k.startswith("bin_") and "bin_" in e):
                    raise HttpError(422, e.replace(config.CONFIG_FILE + ": ", ""))
        return cfg

    def _set(self, args):
        changes = {}
        for k in args:
            if k == "accuracy_m":
                continue
            if k not in field.EDITABLE:
                raise HttpError(422, "field '%s' cannot be changed from the setup page" % k)
            changes[k] = args[k]
        if not changes:
            raise HttpError(422, "nothing to set (fields: %s)" % ", ".join(field.EDITABLE))
        cfg = self._check(changes)
        for k in changes:
            self.pending[k] = cfg[k]
        if "lat" in changes or "lon" in changes:
            acc = args.get("accuracy_m")
            self.log("setup: position %s, %s%s" % (cfg["lat"], cfg["lon"], " (+-%s m)" % acc if acc is not None else ""))
        return 200, {"pending": self.pending}

    def _save(self):
        from lanterne.flashfile import write_atomic as _write_atomic

        a = self.app
        if not self.pending:
            return 200, {"saved": [], "field": a.field}
        data = self._saved_data()
        changed = {}
        for k in self.pending:
            if data.get(k) != self.pending[k]:
                changed[k] = self.pending[k]
        data.update(self.pending)
        cfg, errors = config.validate(data)
        for e in errors:
            for k in self.pending:
                if "'%s'" % k in e:
                    raise HttpError(422, e.replace(config.CONFIG_FILE + ": ", ""))
        if changed:
            try:
                _write_atomic(config.CONFIG_FILE, json.dumps(data))
            except OSError as e:
                raise HttpError(500, "could not write config.json: %r (nothing changed)" % (e,))
            # The board wrote this config itself: not a fresh provisioning at the next boot.
            field.spend_window(config.CONFIG_FILE, self.mode.window_used_s())
            a.field = field.record(changed)
        for k in self.pending:
            a.cfg[k] = cfg[k]
        s = a.assets
        if s.fill is not None:
            s.fill.calibrate(cfg["bin_empty_mm"], cfg["bin_full_mm"])
        if s.profile is not None and ("lat" in changed or "lon" in changed):
            s.profile.lat, s.profile.lon = cfg["lat"], cfg["lon"]
            s.profile._day = None  # tonight's dusk and dawn for the new position
        self.pending = {}
        a.ask_status()  # the back office learns the change now
        self.log("setup: saved %s (field change %d)" % (", ".join(sorted(changed)) or "nothing new", a.field["n"] if a.field else 0))
        return 200, {"saved": sorted(changed), "field": a.field}

    # -- tests of the parts -------------------------------------------------------------
    async def _bin(self, args):
        fill = self.app.assets.fill
        if fill is None:
            raise HttpError(404, "this board has no fill-level sensor")
        which = args.get("capture")
        if which not in ("empty", "full"):
            raise HttpError(422, "capture must be 'empty' or 'full'")
        from lanterne.sensors import fault_names

        assets = self.app.assets
        cycles = []
        good = []
        for _ in range(3):
            while assets.fill_busy:  # the sampling loop's cycle first
                await asyncio.sleep_ms(20)
            assets.fill_busy = True
            try:
                ok = await fill.sample_async()
            finally:
                assets.fill_busy = False
            cycles.append({"distance_mm": fill.distance_mm if ok else None, "echoes": fill.agreeing_echoes, "pings": fill.samples})
            if ok:
                good.append(fill.distance_mm)
        if len(good) < 2:
            why = ",".join(fault_names(fill.fault & ~0x08)) or "no echo"
            raise HttpError(422, "no steady echo (%s): check the sensor is clean and aimed at the bottom" % why)
        good.sort()
        median = good[len(good) // 2]
        key = "bin_empty_mm" if which == "empty" else "bin_full_mm"
        cfg = self._check({key: median})
        self.pending[key] = cfg[key]
        return 200, {"field": key, "distance_mm": median, "cycles": cycles, "pending": self.pending}

    async def _lamp(self, args):
        a = self.app.assets
        lamp = a.lamp
        if lamp is None:
            raise HttpError(404, "this board drives no lamp")
        level = args.get("level")
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 100:
            raise HttpError(422, "level must be a whole percentage 0..100")
        a.profile.override(level, None)
        lamp.set(level, ramp_ms=0)
        lamp.update()
        self.lamp_tested = True
        await asyncio.sleep_ms(lamp.settle_ms + 300)  # the driver's soft start, then the current
        lamp.check()
        from lanterne.actuators import FAULT_CURRENT_OFF, FAULT_LAMP_FAILED

        fault = None
        if lamp.fault & FAULT_LAMP_FAILED:
            fault = "no current while on: lamp or driver failed"
        elif lamp.fault & FAULT_CURRENT_OFF:
            fault = "current while off: driver or relay stuck on"
        return 200, {
            "level": lamp.level,
            "current_ma": lamp.current_ma if lamp.current_adc is not None else None,
            "fault": fault,
        }

    async def _bollard(self, args):
        b = self.app.assets.bollard
        if b is None:
            raise HttpError(404, "this board drives no bollard")
        action = args.get("action")
        if action not in ("raise", "lower"):
            raise HttpError(422, "action must be 'raise' or 'lower'")
        from lanterne.actuators import relay

        if b.command(relay.UP if action == "raise" else relay.DOWN) == relay.REFUSED_INTERLOCK:
            raise HttpError(409, "refused by the interlock: the presence detector sees something; clear it first")
        t0 = time.ticks_ms()
        while b.state == relay.MOVING and time.ticks_diff(time.ticks_ms(), t0) < b.timeout_ms + 1000:
            await asyncio.sleep_ms(100)
        return 200, {"state": _BOLLARD_STATES[b.state], "interlock_trips": b.interlock_trips, "fault": b.fault}

    def _lorawan_link(self):
        # Started, and answered at once: a join takes seconds; the page polls GET /api/link.
        t = self.link_test
        if t is None or not t.running:  # (one running: its progress, not a second test)
            if self.app.link is None:
                raise HttpError(409, "this board has no LoRaWAN link configured")
            from lanterne.setup_lorawan import LinkTest

            t = self.link_test = LinkTest(self.app)
            asyncio.create_task(t.run())
            self.log("setup: LoRaWAN link test started")
        return 200, t.report()

    async def _link(self):
        a = self.app
        if a.cfg["transport"] not in ("mqtt", "failover"):
            return 200, {"ok": False, "error": "the %s link cannot be tested from here in this firmware" % a.cfg["transport"]}
        t0 = time.ticks_ms()
        sent = a.status_sent
        # a failover board: its MQTT link (a status goes only over MQTT; its LoRaWAN fallback is not
        # tested from here)
        link = getattr(a.link, "mqtt", a.link)
        if link is not None and not link.up and hasattr(link, "next_try"):
            link.next_try = t0  # try now, not at the end of the reconnect backoff
        a.ask_status()
        while time.ticks_diff(time.ticks_ms(), t0) < _LINK_TEST_MS:
            if a.status_sent != sent:
                return 200, {"ok": True, "broker": "%s:%d" % (link.host, link.port), "tls": link.tls,
                             "ms": time.ticks_diff(time.ticks_ms(), t0),
                             "fallback": "LoRaWAN, not tested from here" if link is not a.link else None}
            await asyncio.sleep_ms(100)
        why = (link.last_error if link is not None else None) or a.faults.get("mqtt") or a.faults.get("network")
        return 200, {"ok": False, "error": why or "no answer from the broker within %d s" % (_LINK_TEST_MS // 1000)}
