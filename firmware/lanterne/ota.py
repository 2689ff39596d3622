# The application's side of over-the-air updates: the seam between the app (its link, its tasks)
# and the OTA code on the filesystem (lanterne_ota, loaded only while an update, a trial or a
# rollback report needs it). What the app calls (see app.py):
#   info = boot_info(); ota = Ota(app) if info["pending"]   at start: is anything on?
#   ota.start(args)          the ota_start command: fetch, verify, write, reboot into the trial
#   ota.on_message(t, m)     a message on ota/data (True when it was one)
#   ota.step()               from the link loop while connected: requests, reboot, health deadline
#   ota.sampled(), ota.status_sent(), ota.task_failed(name, e)   the trial's health signals
#   ota.status()             the "ota" field of the status
# The link is reached only through link.publish(topic, payload, retain=, qos=) and a subscribe
# (link.subscribe(topic) when the link has one, else its MQTT client's).
import json
import os
import sys
import time

TRIAL_DEADLINE_MS = 300000  # a trial must be healthy within 5 minutes, or it is rolled back
TOPIC = "lanterne/v1/%s/%s/ota/"


def _load_state():
    # The slot state as the boot selector left it (lanterne_ota/state.py has the format): read
    # here directly, so a normal boot loads none of the OTA code.
    raw = None
    try:
        import esp32

        buf = bytearray(1024)
        raw = buf[: esp32.NVS("lanterne").get_blob("ota", buf)]
    except Exception:
        try:
            with open("ota/state.json") as f:
                raw = f.read()
        except OSError:
            return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def boot_info():
    """{"slot", "release", "version", "pending"}: what runs, and whether the OTA seam is needed."""
    st = _load_state()
    if not st:
        return {"slot": None, "release": None, "version": None, "pending": _exists("ota/job.json")}
    t = st.get("trial")
    slot = t["slot"] if t else st.get("active", 0)
    s = (st.get("slots") or [None, None])[slot]
    fw_trial = st.get("fw_trial")
    return {
        "slot": "AB"[slot],
        "release": s["n"] if s else None,
        "version": s["ver"] if s else None,
        "trial": bool(t),
        "fw_trial": fw_trial,  # a MicroPython image on trial (second tier)
        "image": st.get("fw"),  # the MicroPython image an update put there, confirmed
        "pending": bool(t or fw_trial or st.get("event") or st.get("unhealthy") or _exists("ota/job.json")),
        "event": st.get("event"),
        "unhealthy": st.get("unhealthy", 0),
    }


def _unload():
    # Loaded from /lib (a MicroPython image without the frozen package): give the heap back.
    for name in [n for n in sys.modules if n.startswith("lanterne_ota")]:
        if getattr(sys.modules[name], "__file__", "").startswith("/lib/"):
            del sys.modules[name]


class Ota:
    def __init__(self, app, info):
        self.app = app
        self.info = info
        self.base = TOPIC % (app.cfg["site"], app.cfg["device"])
        self.updater = None
        self.subscribed = None
        self.event_sent = False
        self.checking = bool(info.get("trial") or info.get("unhealthy"))
        self.fw_checking = False
        if info.get("fw_trial"):
            self._image_trial(info["fw_trial"])
        self.started = time.ticks_ms()
        self.have_sample = self.have_status = False
        self.failure = None
        self.last = None
        if _exists("ota/job.json"):
            self._updater().resume()
            self.app.log("ota: resuming the update under way")

    def _image_trial(self, t):
        # A MicroPython image was put on trial: running it means the bootloader booted it, and the
        # health check confirms it; running another means the bootloader rolled it back.
        from lanterne_ota import firmware
        from lanterne_ota import state as S

        running = firmware.running_label()
        if running == t["label"]:
            self.checking = self.fw_checking = True
            return
        store = S.Store()
        st = store.load()
        st["fw_trial"] = None
        st["event"] = {"kind": "rolled_back", "image": True, "from": t["ver"], "from_n": t["n"], "to": running,
                       "reason": "MicroPython image %s did not confirm itself: the bootloader went back to %s" % (t["ver"], running)}  # fmt: skip
        store.save(st)
        self.info["fw_trial"] = None
        self.info["event"] = st["event"]
        self.app.log("ota: " + st["event"]["reason"])

    # -- updates ------------------------------------------------------------------------------
    def _updater(self):
        if self.updater is None:
            from lanterne_ota.updater import Updater

            self.updater = Updater(self._send)
        return self.updater

    def _send(self, kind, payload, retain):
        link = self.app.link
        if link is None or not link.connected:
            raise OSError("link down")
        link.publish(self.base + kind, payload, retain=retain, qos=1 if retain else 0)
        if kind == "progress":
            self.last = payload

    def start(self, args):
        """The ota_start command. Returns (accepted, line)."""
        if self.info.get("fw_trial"):
            return False, "a MicroPython image is on trial: it must confirm itself before another update"
        if self.info.get("trial"):
            if args["counter"] == self.info.get("release"):
                return True, "release %d is on trial here already" % args["counter"]
            return False, "release %s is on trial: it must commit before another update" % self.info.get("release")
        try:
            return self._updater().start(args["digest"], args["counter"], args["force"])
        except OSError as e:  # no ROMFS partition, or its flash unreadable
            self.updater = None
            return False, "no library slots on this board (%r)" % (e,)

    def on_message(self, topic, msg):
        if self.updater is None or topic != (self.base + "data").encode():
            return False
        self.updater.on_data(msg)
        return True

    def _subscribe(self):
        link = self.app.link
        client = getattr(link, "client", None)
        if self.subscribed is client:
            return
        sub = getattr(link, "subscribe", None)
        if sub is not None:
            sub(self.base + "data")
        else:
            client.subscribe(self.base + "data", qos=1)
        self.subscribed = client

    def step(self):
        """From the link loop, while connected."""
        if self.event_sent is False and self.info.get("event"):
            ev = dict(self.info["event"])
            ev["state"] = "rolled_back"
            try:
                self._send("progress", json.dumps(ev), True)
                self.event_sent = True
            except OSError:
                pass
        u = self.updater
        if u is not None:
            if u.active:
                self._subscribe()
            u.poll()  # never raises: a failed update is refused, reported, and the board goes on
            if u.reboot_due:
                self.app.log("ota: release written and verified, rebooting into its trial")
                self.app.link.close()
                import machine

                time.sleep_ms(200)
                machine.reset()
            if not u.active:
                self.updater = None
                self.subscribed = None
                _unload()
        if self.checking and self.failure is None and time.ticks_diff(time.ticks_ms(), self.started) > TRIAL_DEADLINE_MS:
            self._failed("not healthy within %d s (sensors read: %s, status sent: %s)"
                         % (TRIAL_DEADLINE_MS // 1000, self.have_sample, self.have_status))  # fmt: skip

    # -- the trial's health ---------------------------------------------------------------------
    def sampled(self):
        if self.checking and not self.have_sample:
            self.have_sample = True
            self._check()

    def status_sent(self):
        if self.checking and not self.have_status:
            self.have_status = True
            self._check()

    def task_failed(self, name, exc):
        if self.checking:
            self._failed("%s task failed: %r" % (name, exc))

    def _check(self):
        if not (self.have_sample and self.have_status):
            return
        if self.fw_checking:
            return self._confirm_image()
        from lanterne_ota import boot

        line = boot.confirm()
        self.checking = False
        _unload()
        if line:
            self.app.log("ota: " + line)
            if self.info.get("trial"):
                self.info["trial"] = False
                self.info["event"] = None
                try:
                    self._send("progress", json.dumps({"state": "committed", "release": self.info["version"], "n": self.info["release"]}), True)
                except OSError:
                    pass
                self.app.status_due = True

    def _confirm_image(self):
        from lanterne_ota import firmware
        from lanterne_ota import state as S

        store = S.Store()
        st = store.load()
        t = st["fw_trial"]
        line = firmware.confirm(st, store)
        self.checking = self.fw_checking = False
        self.info["fw_trial"] = None
        self.info["image"] = st["fw"]
        self.app.log("ota: " + line)
        try:
            self._send("progress", json.dumps({"state": "committed", "release": t["ver"], "n": t["n"], "image": True}), True)
        except OSError:
            pass
        self.app.status_due = True

    def _failed(self, why):
        # The trial failed while running: recorded, then the reset returns to the previous slot.
        self.failure = why
        self.app.log("ota: trial failed: %s: rolling back" % why)
        if not self.fw_checking:  # an image on trial: the reset alone makes the bootloader roll back
            from lanterne_ota import boot

            boot.record("trial failed: " + why)
        import machine

        time.sleep_ms(200)
        machine.reset()

    def status(self):
        doc = {"slot": self.info.get("slot"), "release": self.info.get("release"), "trial": bool(self.info.get("trial"))}
        if self.info.get("event"):
            doc["rolled_back"] = self.info["event"]
        if self.updater is not None and self.updater.last:
            doc["update"] = self.updater.last.get("state")
        if self.info.get("image") or self.info.get("fw_trial"):
            from lanterne_ota import firmware

            doc["image"] = {"label": firmware.running_label(), "trial": bool(self.info.get("fw_trial"))}
            doc["image"].update({"release": (self.info.get("image") or {}).get("n"), "version": (self.info.get("image") or {}).get("ver")})
        return doc
