# The application's side of over-the-air updates: the seam between the app (its link, its tasks)
# and the OTA code on the filesystem (lanterne_ota, loaded only while an update, a trial or a
# rollback report needs it). This module is loaded at boot only when something is on (app.py);
# otherwise the ota_start command loads it (execute.py).
# What the app calls:
#   info = lanterne_ota.state.boot_info(); ota = Ota(app, info) if info.get("pending")   at start
#   ota.run()                its task (app.guard("ota", ota.run)): the update's messages applied,
#                            its requests (throttled), its reboot, the trial's deadline
#   ota.start(args)          the ota_start command: fetch, verify, write, reboot into the trial
#   ota.frame()              for the app's uplink task: (kind, payload) to send next, or None;
#   ota.sent(kind, payload)  ... and once the link took it
#   ota.sampled(), ota.status_sent(), ota.task_failed(name, e)   the trial's health signals
#   ota.status()             the "ota" field of the status
# Nothing here writes to the network: requests and progress records wait in a two-frame outbox
# (the newest of each kind) for the uplink task, the one sender (link.py: OTA_REQ, OTA_PROGRESS),
# and the update's messages reach the updater through the link's update channel
# (link.updates(on_update, nbytes)), opened while a transfer runs. A link without an update
# channel (no updates(): LoRaWAN) sends none of it; ota_start is refused on it (execute.py).
# Once nothing is left to do (no transfer, no trial, the outbox empty), the task ends and the
# seam lets go of itself (Ota.release): at 64 KB the heap has no room for an idle seam.
import json
import os
import sys
import time

TRIAL_DEADLINE_MS = 300000  # a trial must be healthy within 5 minutes, or it is rolled back
REBOOT_WAIT_MS = 5000  # at most this long for the "trial" record to go out before the reboot


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _unload():
    # The OTA package goes back to the heap once used: frozen into the image (its bytecode in
    # flash) or on /lib, each imported module's dict and functions are objects in RAM.
    for name in [n for n in sys.modules if n.split(".")[0] == "lanterne_ota"]:
        del sys.modules[name]


class Ota:
    def __init__(self, app, info):
        self.app = app
        self.info = info
        self.updater = None
        self.channel = False  # the link's update channel is open (a transfer runs)
        self.req = None  # the outbox: the request to send, and the progress record
        self.progress = None
        self.reboot_from = None
        self.event_sent = False
        # the link's OTA frames, before any goes out (link.py); a link without an update
        # channel (LoRaWAN) carries none: what would go is dropped (_send)
        self.link = app.link if app.link is not None and hasattr(app.link, "updates") else None
        if self.link is not None:
            self.link.updates(None, 0)
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
        # The updater's send: into the outbox, for the uplink task. A request needs the link up
        # now (the updater asks again later); a progress record waits for it, the newest kept.
        link = self.link
        if kind == "req":
            if link is None or not link.up:
                raise OSError("link down")
            self.req = payload
        elif link is not None:
            self.progress = self.last = payload
        self.app.uplink_due.set()

    def frame(self):
        """(kind, payload) for the uplink task to send next, or None."""
        from lanterne.transport.link import OTA_PROGRESS, OTA_REQ

        if self.progress is not None:
            return OTA_PROGRESS, self.progress
        if self.req is not None:
            return OTA_REQ, self.req
        return None

    def sent(self, kind, payload):
        # (a newer record queued while this one was on its way stays)
        if self.progress is payload:
            self.progress = None
        elif self.req is payload:
            self.req = None

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

    async def run(self):
        """The OTA task: a step every 20 ms while a transfer runs (its messages wait in the
        updater's inbox meanwhile), every second otherwise. Nothing in a step waits."""
        import asyncio

        while True:
            self.step()
            if self.updater is not None and self.updater.reboot_due:
                await self._reboot()
            if self.idle():
                self.release()
                return
            await asyncio.sleep_ms(20 if self.updater is not None else 1000)

    def release(self):
        # Nothing left to do: the app keeps the status field only, and this module goes back to
        # the heap (the ota_start command loads it again, execute.py).
        doc = self.status()
        doc.pop("update", None)
        self.app.ota_info = doc
        type(self.app).ota = None  # (on the class: app.py, App.ota)
        sys.modules.pop("lanterne.ota", None)
        try:
            delattr(sys.modules["lanterne"], "ota")
        except (KeyError, AttributeError):
            pass

    def idle(self):
        """Nothing to do: no transfer, no trial to watch, nothing left to send."""
        return (self.updater is None and not self.checking and self.failure is None and self.progress is None
                and self.req is None and (self.event_sent or not self.info.get("event")))  # fmt: skip

    async def _reboot(self):
        # The release is written and verified: once its "trial" record went out (or after
        # REBOOT_WAIT_MS), into its trial.
        if self.reboot_from is None:
            self.reboot_from = time.ticks_ms()
            self.app.log("ota: release written and verified, rebooting into its trial")
        if self.progress is not None and time.ticks_diff(time.ticks_ms(), self.reboot_from) < REBOOT_WAIT_MS:
            return
        import asyncio
        import machine

        if self.link is not None:
            self.link.last_error = "closed: rebooting into the release's trial"  # (said once, link_task)
            self.link.close()
        await asyncio.sleep_ms(200)
        machine.reset()

    def step(self):
        """One step of the OTA task: the rollback report, the update's messages and requests,
        the trial's deadline."""
        if self.event_sent is False and self.info.get("event"):
            ev = dict(self.info["event"])
            ev["state"] = "rolled_back"
            self._send("progress", json.dumps(ev), True)
            self.event_sent = True
        u = self.updater
        if u is not None:
            link = self.link
            if u.active and not self.channel and link is not None:
                from lanterne_ota.updater import MAX_MESSAGE

                link.updates(u.on_data, MAX_MESSAGE)  # ota/data, subscribed before the next request
                self.channel = True
            if not u.reboot_due:
                u.poll()  # never raises: a failed update is refused, reported, and the board goes on
            if not u.active and not u.reboot_due:
                if self.channel:
                    link.updates(None, 0)
                    self.channel = False
                self.updater = None
                self.req = None
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
                self._send("progress", json.dumps({"state": "committed", "release": self.info["version"], "n": self.info["release"]}), True)
                self.app.ask_status()

    def _confirm_image(self):
        from lanterne_ota import firmware
        from lanterne_ota import state as S

        store = S.Store()
        st = store.load()
        t = st["fw_trial"]
        line = firmware.confirm(st, store)
        self.checking = self.fw_checking = False
        self.info["fw_trial"] = None
        self.info["image"] = {"release": st["fw"]["n"], "version": st["fw"]["ver"]}
        self.app.log("ota: " + line)
        self._send("progress", json.dumps({"state": "committed", "release": t["ver"], "n": t["n"], "image": True}), True)
        self.app.ask_status()

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

            img = self.info.get("image") or {}
            doc["image"] = {"label": firmware.running_label(), "trial": bool(self.info.get("fw_trial")),
                            "release": img.get("release"), "version": img.get("version")}  # fmt: skip
        return doc
