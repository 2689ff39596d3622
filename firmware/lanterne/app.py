# Lanterne application: one asyncio loop on the board.
#   sample (per period) -> reading -> record -> store (durable) -> uplink (codec batch,
#   MQTT QoS 1) -> store.ack only after the PUBACK; commands authenticated and acked;
#   lamp profile and bollard run locally whatever the link does; retained status; the
#   watchdog is fed only while the loop is healthy. Faults go to the status, never up.
import asyncio
import gc
import json
import time

import machine

from lanterne import __version__, boardinfo, codec, config
from lanterne import commands as cmd
from lanterne.net import Network

RESET_CAUSES = {1: "power_on", 2: "hard_reset", 3: "watchdog", 4: "deepsleep", 5: "soft_reset"}
CMD_QUEUE = 8
STATUS_GAP_MS = 5000  # a status on news (a fault raised or cleared ...) at most this often


def _bump_boot_count(path="boot.count"):
    n = 0
    try:
        with open(path) as f:
            n = int(f.read())
    except (OSError, ValueError):
        pass
    n += 1
    try:
        with open(path, "w") as f:
            f.write(str(n))
    except OSError:
        pass
    return n


class App:
    def __init__(self):
        self.cfg, self.config_errors = config.load()
        self.board, board_error = boardinfo.load()
        # field setup hook: is this a setup boot (button held at the last power-up, or the
        # window after a fresh provisioning)? Decided first, while the heap is still whole.
        from lanterne import field

        self.setup_via, self.setup_used_s = field.setup_entry(self.cfg, self.board)
        self.faults = {}
        for i, err in enumerate(self.config_errors):
            self.faults["config%d" % i] = err
        if board_error:
            self.faults["board"] = board_error
        self.started = time.ticks_ms()
        self.boot = _bump_boot_count()
        self.reset_cause = RESET_CAUSES.get(machine.reset_cause(), "unknown")
        self.net = Network(self.board, self.cfg)
        self.link = None
        self.wdt = None
        self.status_due = True
        self.status_at = time.ticks_ms()  # when the last status was built
        self.status_seen = None  # what it said that matters between periods (_status_key)
        self.clock_synced = False
        self.sample_period = self.cfg["sample_period_s"]
        self.status_period = self.cfg["status_period_s"]
        self.cmd_queue = []
        self.acks = []
        self.reboot_at = None
        self.no_uplink = None  # why nothing can be sent (no transport, no broker): statuses go to the console
        self.sent = 0
        # -- field setup hook (lanterne/setup_mode.py): the setup page while it is up; the
        # changes made on site with it (field.json), reported in the status; status messages
        # acked by the broker (the page's link test waits for one).
        self.setup = None
        self.field = field.load()
        self.status_sent = 0
        self._build()
        # Over-the-air updates (lanterne/ota.py): the OTA seam is loaded only when an update, a
        # trial or a rollback report needs it; otherwise only which slot and release run is kept.
        from lanterne import ota

        self.ota_info = ota.boot_info()
        self.ota = ota.Ota(self, self.ota_info) if self.ota_info["pending"] else None

    def _build(self):
        from lanterne.assets import Assets
        from lanterne.control import CommandHandler
        from lanterne.reading import RecordPacker
        from lanterne.store import Store
        from lanterne.uplink import Uplink

        self.assets = Assets(self.board, self.cfg)
        self.store = Store("store", capacity_bytes=self.cfg["store_bytes"])
        self.packer = RecordPacker()
        self.reading = codec.new_reading()
        self.uplink = Uplink(self.store, self.faults)
        self.commands = CommandHandler(self.cfg["device"], self.cfg["command_key"], self.execute)

    # -- time ---------------------------------------------------------------------
    def now(self):
        return int(time.time())  # float on the unix port, int on the ESP32

    def now_utc(self):
        # Wall-clock time (Unix seconds, UTC) from the RTC, only once NTP set it.
        if not self.clock_synced:
            return None
        from lanterne.sun import days_from_civil

        d = machine.RTC().datetime()
        return days_from_civil(d[0], d[1], d[2]) * 86400 + d[4] * 3600 + d[5] * 60 + d[6]

    # -- status ---------------------------------------------------------------------
    def _status_key(self):
        # What a status says that the back office should not wait a whole period for: the
        # faults, the lamp's decision, the bollard, the periods.
        a = self.assets
        return (
            tuple(self.faults),
            a.fault_key(),
            a.lamp.level if a.lamp else None,
            a.profile.reason if a.profile else None,
            a.bollard.state if a.bollard else None,
            self.sample_period,
            self.status_period,
        )

    def status(self, state="online"):
        self.status_at = time.ticks_ms()
        self.status_seen = self._status_key()
        gc.collect()
        faults = dict(self.faults)
        faults.update(self.assets.faults())
        st = self.store
        return json.dumps(
            {
                "state": state,
                "device": self.cfg["device"],
                "board": self.board.get("name"),
                "fw": __version__,
                "uptime_s": time.ticks_diff(time.ticks_ms(), self.started) // 1000,
                "reset_cause": self.reset_cause,
                "boot": self.boot,
                "heap_free": gc.mem_free(),
                "heap_alloc": gc.mem_alloc(),
                "backlog": st.pending,
                "dropped": st.dropped,
                "sent": self.sent,
                "sample_period_s": self.sample_period,
                "status_period_s": self.status_period,
                "faults": sorted(faults.values()),
                "rssi": self.net.rssi(),
                "clock": self.clock_synced,
                "lamp": self.assets.lamp.level if self.assets.lamp else None,
                "lamp_reason": self.assets.profile.reason if self.assets.profile else None,
                "bollard": self.assets.bollard.state if self.assets.bollard else None,
                "cmd_counter": self.commands.verifier.last_counter,
                "tls_heap": getattr(self.link, "tls_heap", None) if self.link else None,
                # field setup hook: on-site changes (field.json) and the setup page, if up
                "field": self.field,
                "setup": self.setup.summary() if self.setup else None,
                "env": self.assets.extra.status() if self.assets.extra else None,
                # OTA hook: the library slot and release running (an update, a trial, a rollback)
                "ota": self.ota.status() if self.ota else {"slot": self.ota_info["slot"], "release": self.ota_info["release"]},
            }
        )

    def log(self, msg):
        print("[lanterne] " + msg)

    # -- sampling ---------------------------------------------------------------------
    async def sample_task(self):
        from lanterne.assets import F_CONFIG, F_OVERFLOW, F_UNSYNCED

        r = self.reading
        while True:
            t0 = time.ticks_ms()
            flags = await self.assets.sample(r)
            if self.store.overflow:
                flags |= F_OVERFLOW
            if self.config_errors:
                flags |= F_CONFIG
            if not self.clock_synced:
                flags |= F_UNSYNCED
            r[codec.STATUS] = flags
            if flags & F_OVERFLOW:
                self.faults["overflow"] = "store: full, oldest readings dropped (buffer_overflow)"
            else:
                self.faults.pop("overflow", None)
            seq = self.store.append(self.packer.pack(r, self.now(), self.boot, self.clock_synced))
            if seq < 0:
                self.faults["store"] = "store: append failed: %s" % self.store.last_error
            else:
                self.faults.pop("store", None)
                if self.ota:
                    self.ota.sampled()  # a trial's health: sensors read
            # Sleep out the period a second at a time: a period changed by command applies at once.
            while True:
                left = self.sample_period * 1000 - time.ticks_diff(time.ticks_ms(), t0)
                await asyncio.sleep_ms(max(10, min(left, 1000)))
                if left <= 1000:
                    break

    # -- uplink ----------------------------------------------------------------------
    async def drain(self):
        """Send what the store holds, frame by frame, committing each after its PUBACK
        (lanterne.uplink: only the readings a frame carried, only once publish returned)."""
        while self.link.connected and self.store.pending:
            try:
                self.sent += self.uplink.send(self.link, self.now(), self.boot, self.clock_synced)
            except OSError as e:
                self.log(str(e))
                return
            await asyncio.sleep_ms(0)  # let the lamp, commands and sampling run between frames
            if self.cmd_queue:
                return

    # -- commands ---------------------------------------------------------------------
    def on_message(self, topic, msg):
        if self.ota and self.ota.on_message(topic, msg):
            return  # a block of an update (ota/data)
        # Only our own command topic is ever a command (some brokers have delivered other
        # topics to a subscriber: never treat those as commands).
        if self.link is None or topic != self.link.topics["cmd"].encode():
            self.log("ignored a message on %s: not our command topic" % (topic,))
            return
        if len(self.cmd_queue) < CMD_QUEUE:
            self.cmd_queue.append(bytes(msg))
        else:
            self.log("command queue full: command dropped (the back office will retry)")

    def handle_commands(self):
        while self.cmd_queue:
            frame = self.cmd_queue.pop(0)
            ack, line = self.commands.handle(frame)
            self.log(line)
            if ack is not None:
                self.acks.append(ack)
        while self.acks and self.link and self.link.connected:
            try:
                self.link.publish(self.link.topics["ack"], self.acks[0], qos=1)
                self.acks.pop(0)
            except OSError as e:
                self.log(str(e))
                return

    def execute(self, opcode, args):
        a = self.assets
        if opcode == cmd.SET_LAMP:
            if a.lamp is None:
                return cmd.REFUSED, b""
            until = None
            if args["duration_min"] and self.clock_synced:
                until = self.now_utc() + args["duration_min"] * 60
            a.profile.override(args["level"], until)
            a.lamp.set(args["level"], ramp_ms=args["ramp_s"] * 1000)
            a.lamp.update()
            return cmd.OK, bytes((a.lamp.level,))
        if opcode == cmd.RESUME_PROFILE:
            if a.profile is None:
                return cmd.REFUSED, b""
            a.profile.override(None)
            return cmd.OK, b""
        if opcode == cmd.SET_PROFILE:
            if a.profile is None:
                return cmd.REFUSED, b""
            p = a.profile
            p.steps = tuple(args["steps"])
            p.dusk_offset_min = args["dusk_offset_min"]
            p.dawn_offset_min = args["dawn_offset_min"]
            p._day = None  # recompute tonight's events with the new offsets
            return cmd.OK, b""
        if opcode == cmd.BOLLARD:
            if a.bollard is None:
                return cmd.REFUSED, b""
            from lanterne.actuators import relay

            r = a.bollard.command(relay.UP if args["action"] == "raise" else relay.DOWN)
            return (cmd.OK if r == relay.OK else cmd.REFUSED), bytes((a.bollard.state,))
        if opcode == cmd.SET_PERIOD:
            if args["what"] == "sample":
                return self.set_config("sample_period_s", args["seconds"])
            return self.set_config("status_period_s", args["seconds"])
        if opcode == cmd.SET_CONFIG:
            return self.set_config(args["key"], args["value"])
        if opcode == cmd.REQUEST_STATUS:
            self.status_due = True
            return cmd.OK, b""
        if opcode == cmd.REBOOT:
            self.reboot_at = time.ticks_add(time.ticks_ms(), max(1, args["delay_s"]) * 1000)
            return cmd.OK, b""
        if opcode == cmd.OTA_START:
            return self.ota_start(args)
        return cmd.UNKNOWN_COMMAND, b""

    def ota_start(self, args):
        # Accepted means the transfer started; its outcome goes to ota/progress and the status.
        from lanterne import ota

        if self.ota is None:
            self.ota = ota.Ota(self, self.ota_info)
        ok, line = self.ota.start(args)
        self.log("ota: " + line)
        return (cmd.OK if ok else cmd.REFUSED), b""

    def set_config(self, key, value):
        """Validate with the config schema, then write config.json (and its last known good) atomically; refuse otherwise."""
        data = config.file_data()
        data[key] = value
        cfg, errors = config.validate(data)
        if any("'%s'" % key in e for e in errors):
            self.log("config %s=%r refused: %s" % (key, value, "; ".join(e for e in errors if "'%s'" % key in e)))
            return cmd.BAD_ARGUMENT, b""
        try:
            config.save(data)
        except OSError as e:
            return cmd.FAILED, b""
        self.cfg[key] = cfg[key]
        self.sample_period = self.cfg["sample_period_s"]
        self.status_period = self.cfg["status_period_s"]
        if self.assets.fill is not None and key in ("bin_empty_mm", "bin_full_mm"):
            self.assets.fill.calibrate(self.cfg["bin_empty_mm"], self.cfg["bin_full_mm"])
        if self.assets.extra is not None:
            self.assets.extra.reconfigure(key, self.cfg)
        return cmd.OK, b""

    # -- link ------------------------------------------------------------------------
    async def link_task(self):
        from lanterne.transport.mqtt import MqttLink

        if self.cfg["transport"] != "mqtt":
            self.no_uplink = self.faults["transport"] = "transport %s: not available in this firmware yet" % self.cfg["transport"]
            self.log(self.faults["transport"])
            return
        if not self.cfg["broker"]:
            self.no_uplink = self.faults["broker"] = "config: no broker configured: offline, readings kept in the store"
            return
        if not self.net.start():
            self.no_uplink = self.faults["network"] = self.net.error
            self.log(self.net.error)
            return
        self.link = MqttLink(self.cfg, self.on_message)
        last_sync = None
        while True:
            if not self.net.up():
                if self.link.connected:
                    self.link.close()
                    self.log("link down")
                await asyncio.sleep_ms(200)
                continue
            if not self.clock_synced or time.ticks_diff(time.ticks_ms(), last_sync) > 3600000:
                last_sync = time.ticks_ms()
                self.sync_clock()
            if not self.link.connected:
                if not self.link.due():
                    await asyncio.sleep_ms(100)
                    continue
                if self.link.connect(self.status()):
                    self.status_sent += 1  # field setup hook: the online status was acked
                    self.faults.pop("mqtt", None)
                    self.log("connected to %s:%d as %s" % (self.link.host, self.link.port, self.cfg["device"]))
                    self.status_due = False
                    if self.ota:
                        self.ota.status_sent()  # a trial's health: a status went out
                else:
                    self.faults["mqtt"] = self.link.last_error
                    self.log(self.link.last_error)
                continue
            if self.status_due:
                self.status_due = False
                try:
                    self.link.publish(self.link.topics["status"], self.status(), retain=True, qos=1)
                    self.status_sent += 1  # field setup hook: acked (QoS 1)
                except OSError as e:
                    self.log(str(e))
                    continue
                if self.ota:
                    self.ota.status_sent()
            self.handle_commands()
            if self.ota:
                self.ota.step()  # an update's requests (throttled), its reboot, a trial's deadline
            await self.drain()
            if self.reboot_at is not None and time.ticks_diff(time.ticks_ms(), self.reboot_at) >= 0:
                self.log("rebooting on command")
                self.link.close()
                machine.reset()
            if not self.link.poll():
                continue
            if not self.cmd_queue and not self.store.pending:
                await self.link.wait_readable(100)

    def sync_clock(self):
        try:
            import ntptime

            ntptime.settime()
            self.clock_synced = True
            self.faults.pop("clock", None)
            self.lamp_update()  # the schedule applies now, before the next status says otherwise
        except Exception as e:  # no NTP: the lamp profile falls back to its photocell
            self.faults["clock"] = "clock: not synced (%r)" % (e,)

    async def status_task(self):
        # Checked every second: a status is due one status period after the last one (so a
        # period changed by command applies at once), or as soon as what it says changed (a
        # fault raised or cleared, the lamp's decision, the periods), at most every STATUS_GAP_MS.
        while True:
            await asyncio.sleep_ms(1000)
            since = time.ticks_diff(time.ticks_ms(), self.status_at)
            if since >= self.status_period * 1000 or (since >= STATUS_GAP_MS and self._status_key() != self.status_seen):
                if self.no_uplink:  # nothing can deliver it: the console is where someone may see it
                    self.log("status not sent (%s): %s" % (self.no_uplink, self.status()))
                else:
                    self.status_due = True

    def lamp_update(self, photocell=False):
        # Follow the lamp profile now (reading the photocell first when asked): at boot before
        # the first status is built, after a clock sync, and every 100 ms from actuator_task.
        a = self.assets
        if a.lamp is None:
            return
        try:
            if photocell and a.light is not None:
                a.light.sample()
            a.lamp_tick(self.now_utc(), bool(self.link and self.link.connected))
        except Exception as e:  # never let an actuator stop the board
            self.faults["actuator"] = "actuator: %r" % (e,)

    async def actuator_task(self):
        a = self.assets
        tick = 0
        while True:
            try:
                # the photocell every 2 s (every 100 ms until its first reading), not only at the sampling period
                self.lamp_update(a.light is not None and (tick % 20 == 0 or not a.light.has_value))
                tick += 1
                if a.bollard is not None:
                    a.bollard.update()
            except Exception as e:  # never let an actuator stop the loop
                self.faults["actuator"] = "actuator: %r" % (e,)
            await asyncio.sleep_ms(100)

    async def heartbeat_task(self):
        # The watchdog is fed only from here: if the loop stalls, the board resets.
        while True:
            if self.wdt:
                self.wdt.feed()
            await asyncio.sleep_ms(1000)

    async def run(self):
        offline = not self.cfg["broker"] and self.cfg["transport"] == "mqtt"
        if offline:  # loud: a board that will never send anything says so where a technician looks
            self.log("*" * 60)
            self.log("NOT PROVISIONED: no broker in its config, this board stays OFFLINE")
            self.log("(it tries no broker; its readings are kept in the store)")
        for err in self.config_errors:
            self.log(err)
        if offline:
            self.log("provision it: lanterne provision --port PORT --board BOARD --device ID")
            self.log("*" * 60)
        for err in self.assets.errors.values():
            self.log(err)
        if self.cfg["watchdog_ms"]:
            self.wdt = machine.WDT(timeout=self.cfg["watchdog_ms"])
        self.lamp_update(True)  # the lamp decides before anything reports it
        self.log(
            "lanterne %s on %s, device %s, reset cause %s, boot %d, backlog %d"
            % (__version__, self.board.get("name"), self.cfg["device"], self.reset_cause, self.boot, self.store.pending)
        )
        await asyncio.gather(
            self.guard("link", self.link_task),
            self.guard("sampling", self.sample_task),
            self.guard("status", self.status_task),
            self.guard("actuators", self.actuator_task),
            self.guard("setup", self.setup_task),  # field setup hook
            self.heartbeat_task(),
            *self.assets.tasks(),
        )

    async def setup_task(self):
        # field setup hook: a setup boot serves the setup page, then restarts
        # (lanterne/setup_mode.py); a normal boot watches the button for 5 s (lanterne/field.py).
        from lanterne import field

        if self.setup_via is None:
            await field.watch_button(self)
            return
        from lanterne import setup_mode

        await setup_mode.task(self)

    async def guard(self, name, task):
        # A bug or an unexpected error in one task is reported and the task restarted; the
        # rest of the board keeps going (the watchdog still resets a wedged loop).
        while True:
            try:
                await task()
                return
            except Exception as e:
                self.faults["task_" + name] = "%s task failed: %r (restarted)" % (name, e)
                self.log(self.faults["task_" + name])
                if self.ota:
                    self.ota.task_failed(name, e)  # on trial: rolls the release back
                import sys

                sys.print_exception(e)
                await asyncio.sleep_ms(1000)


def main():
    app = App()
    try:
        asyncio.run(app.run())
    except KeyboardInterrupt:
        # Ctrl-C from a technician: stop, and give the REPL an hour before the watchdog bites
        # (the ESP32's watchdog cannot be stopped once started, only reconfigured).
        if app.wdt:
            machine.WDT(timeout=3600000)
        if app.link:
            app.link.close()
        raise
