# Lanterne application: one asyncio loop on the board, and nothing in it ever waits on the network.
#   sample (per period) -> reading -> record -> store (durable) -> uplink (codec batch over the
#   link, transport/link.py) -> store.ack only after the link took the frame (MQTT: the PUBACK);
#   commands authenticated and acked; lamp profile and bollard run locally whatever the link
#   does (the bollard's interlock even runs from its pin interrupt); retained status; the
#   watchdog is fed only while the loop is healthy, and the loop measures its own lateness
#   (loop_lag_max_ms). Faults go to the status, never up.
import asyncio
import gc
import json
import time

# asyncio loads these on first use: load them now, with the rest of the code, before the heap
# fills with objects (a module's names may grow MicroPython's qstr pool, in one piece)
from asyncio import gather, wait_for_ms  # noqa: F401

import machine

from micropython import const

from lanterne import __version__, codec
from lanterne import commands as cmd
from lanterne.net import Network
from lanterne.transport.link import ACK, READINGS, STATUS, Flag

CMD_QUEUE = 8
STATUS_GAP_MS = 5000  # a status on news (a fault raised or cleared ...) at most this often
GC_EVERY = 2048  # bytes allocated between two automatic collections
TICK_MS = const(100)  # the actuator task's period: the loop's heartbeat
_MOVING = const(2)  # actuators.relay.MOVING (not imported: a board without a bollard never loads relay.py)


def _unload(name):
    # Drop a module the board no longer needs (nothing else may hold on to it): its functions,
    # tables and globals are garbage at the next collection.
    import sys

    sys.modules.pop(name, None)
    parent, _, child = name.rpartition(".")
    try:
        delattr(sys.modules[parent], child)
    except (KeyError, AttributeError):
        pass


def _print_json(doc):
    # A dict as one JSON line on the console, a field at a time.
    sep = "{"
    for k in doc:
        print(sep + json.dumps(k) + ": " + json.dumps(doc[k]), end="")
        sep = ", "
    print("}")


def _errno_name(e):
    # "ENOSPC (errno 28)": the errors a flash gives named, others as they are.
    name = {28: "ENOSPC", 5: "EIO", 30: "EROFS"}.get(e) if isinstance(e, int) else None
    return "%s (errno %d)" % (name, e) if name else "errno %s" % (e,)


def _bump_boot_count(path="boot.count"):
    from lanterne.flashfile import bump_counter  # (a battery board's cold start counts with it too)

    return bump_counter(path)


class App:
    # The OTA seam (lanterne/ota.py) while an update, a trial or a report needs it, else None. Set
    # on the class (App.ota = ...; one App per board): the instance's attribute table holds 37
    # entries, and a 38th would grow it to 47 (a new 752-byte table, in one piece, on a 64 KB heap).
    ota = None
    # The status's dict (status()), every key at once: made with the class, at import while the
    # heap is whole, in one piece of exactly its size (a dict filled key by key at the first status
    # grows through seven tables to a 37-entry one, in the tightest moment of the boot: the
    # connection's). On the class: the instance's attribute table is full (above).
    _status_doc = {
        "state": None, "device": None, "board": None, "fw": None, "uptime_s": None, "reset_cause": None, "boot": None,
        "heap_free": None, "heap_alloc": None, "backlog": None, "dropped": None, "sent": None, "sample_period_s": None,
        "status_period_s": None, "faults": None, "rssi": None, "clock": None, "lamp": None, "lamp_reason": None,
        "bollard": None, "interlock_trips": None, "cmd_counter": None, "tls_heap": None, "loop_lag_max_ms": None,
        "loop_lag_max_ms_boot": None, "field": None, "setup": None, "env": None, "energy": None, "ota": None,
    }  # fmt: skip

    def __init__(self, ota_info=None):
        # Collect after every few KB allocated from the start (run() keeps it): boot's garbage left
        # to pile up until the heap is full would scatter the objects built here across it.
        gc.threshold(GC_EVERY)
        # OTA hook: which slot and release run, and whether an update, a trial or a rollback
        # needs the OTA seam (below): what the boot selector found, from main.py (boot.py), else
        # read here (lanterne_ota.state.boot_info), the OTA package dropped again at once. A board
        # with nothing pending keeps only its status field.
        if ota_info is None:
            try:
                from lanterne_ota.state import boot_info

                ota_info = boot_info()
            except ImportError:  # (a firmware without the OTA package)
                ota_info = {"slot": None, "release": None}
            boot_info = None
            _unload("lanterne_ota.state")
            _unload("lanterne_ota")
            gc.collect()
        self.ota_info = ota_info
        # config, boardinfo and field are needed at boot only: dropped once the app is built,
        # their heap goes back to the board (set_config imports config again, for the moment
        # it takes).
        from lanterne import boardinfo, config

        self.cfg, self.config_errors = config.load()
        self.board, board_error = boardinfo.load()
        del boardinfo, config
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
        # machine.reset_cause() 1..5 (a tuple read once: a module-level dict would stay on the heap)
        c = machine.reset_cause()
        self.reset_cause = ("power_on", "hard_reset", "watchdog", "deepsleep", "soft_reset")[c - 1] if 1 <= c <= 5 else "unknown"
        self.net = Network(self.board, self.cfg)
        self.link = None
        self.wdt = None
        self.status_due = False  # a status is to go now (asked for, due, or news): the uplink task sends it
        self.status_at = time.ticks_ms()  # when the last status was built
        self.status_seen = None  # what it said that matters between periods (_status_key)
        self.clock_synced = False
        self.sample_period = self.cfg["sample_period_s"]
        self.status_period = self.cfg["status_period_s"]
        self.cmd_queue = []
        self.acks = []
        self.reboot_at = None
        self.no_uplink = None  # why no status can be sent (no broker, LoRaWAN): statuses go to the console
        self.sent = 0
        self.lag_max = 0  # the loop's worst lateness since the last status (ms)
        self.lag_max_boot = 0  # ... since boot
        self._lag_reported = 0
        self.uplink_due = Flag()  # something to send: a reading, a command's ack, a status; the link came up
        # -- field setup hook (lanterne/setup_mode.py): the setup page while it is up; the
        # changes made on site with it (field.json), reported in the status; status messages
        # the link took (the page's link test waits for one).
        self.setup = None
        self.field = field.load()
        self.status_sent = 0
        del field
        # the lamp's dimming curve (the energy meter's), read while config is loaded
        from lanterne import config

        lamp_curve = config.parse_curve(self.cfg["lamp_curve"])
        del config
        if self.setup_via is None:  # (setup mode uses them all)
            for name in ("lanterne.field", "lanterne.config", "lanterne.config_fields", "lanterne.boardinfo"):
                _unload(name)
        self._build(lamp_curve)  # (a local: the App's attribute table is full, see App.ota)
        # Over-the-air updates: which slot and release run is kept; the OTA seam (lanterne/ota.py)
        # is loaded only when an update, a trial or a rollback report needs it (the ota_start
        # command loads it otherwise, execute.py), and the OTA code (lanterne_ota) only while used;
        # the seam lets go of itself once it has nothing left to do (Ota.release).
        if self.ota_info.get("pending"):
            from lanterne import ota

            App.ota = ota.Ota(self, self.ota_info)

    def _build(self, lamp_curve):
        # All the code this board runs is imported first, then the objects are built: importing
        # a module may grow MicroPython's qstr pool, each new pool twice the last and in one
        # piece, which the heap still has before it fills with objects (assets.load_drivers).
        from lanterne.assets import Assets, load_drivers
        from lanterne.control import CommandHandler
        from lanterne.reading import RecordPacker
        from lanterne.store import Store
        from lanterne.uplink import Uplink

        # One transport's code only: a LoRaWAN board never loads MQTT's, nor an MQTT board LoRaWAN's.
        # A failover board (an IP link and a LoRaWAN modem) loads both, and transport/failover.py.
        MqttLink = LorawanLink = Failover = None
        transport = self.cfg["transport"]
        if transport != "mqtt" and self.cfg["broker"] or transport == "lorawan":
            from lanterne.delivery import LedgerDelivery
            from lanterne.transport.lorawan import LorawanLink, open_uart
        if transport != "lorawan" and not self.cfg["broker"]:
            self.no_uplink = self.faults["broker"] = "config: no broker configured: offline, readings kept in the store"
        elif transport != "lorawan":
            from lanterne.transport.mqtt import MqttLink
        if transport == "failover" and MqttLink is not None:
            from lanterne.transport.failover import Failover
        load_drivers(self.board)
        gc.collect()
        self.assets = Assets(self.board, self.cfg, lamp_curve)
        self.store = Store("store", capacity_bytes=self.cfg["store_bytes"])
        self.packer = RecordPacker()
        self.reading = codec.new_reading()
        self.commands = CommandHandler(self.cfg["device"], self.cfg["command_key"], self.execute)
        outbox = self.store
        if Failover is not None:
            # MQTT while it is up, LoRaWAN while it is not: one object is the link and the outbox
            # (the link a frame goes over decides how it is committed: transport/failover.py)
            uart, why = open_uart(self.board)
            lora = LorawanLink(self.cfg, uart, self.on_downlink, why)
            delivery = LedgerDelivery(self.store, self.cfg["device"], lambda: self.commands.verifier.key, self.faults, bool(self.cfg["lorawan_confirmed"]))
            lora.on_ledger = delivery.ledger
            lora.app_faults = self.faults
            self.link = outbox = Failover(MqttLink(self.cfg, self.on_downlink), lora, self.store, delivery, self.net, self.faults, self.uplink_due.set)
        elif MqttLink is not None:
            self.link = MqttLink(self.cfg, self.on_downlink)
        elif LorawanLink is not None:
            # unconfirmed uplinks: the readings stay in the store until the delivery ledger says
            # they arrived (lanterne/delivery.py, docs/lorawan.md)
            uart, why = open_uart(self.board)
            self.link = LorawanLink(self.cfg, uart, self.on_downlink, why)
            outbox = LedgerDelivery(self.store, self.cfg["device"], lambda: self.commands.verifier.key, self.faults, bool(self.cfg["lorawan_confirmed"]))
            self.link.on_ledger = outbox.ledger
            self.link.app_faults = self.faults
            # the status JSON is too costly in airtime (docs/lorawan.md): it goes to the console
            self.no_uplink = "LoRaWAN: the status stays on the board"
        if LorawanLink is None:
            self.uplink = Uplink(outbox, self.faults)
        else:
            # LoRaWAN batches by airtime, so its frames are always full: 12 readings fill the largest
            # (DR4-5, 222 bytes) well enough, and 24 reusable readings would not fit a 64 KB heap
            self.uplink = Uplink(outbox, self.faults, batch_max=12)

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

    def ask_status(self):
        # A status goes out now (a command asked, the setup page changed something, news).
        self.status_due = True
        self.uplink_due.set()

    def status(self, state="online", console=False):
        # The status as JSON text; or printed on the console field by field (no string of it all
        # is made, which a fragmented 64 KB heap may not have room for in one piece; print, not a
        # stream write: a console that is busy may take a write only in part).
        self.status_at = time.ticks_ms()
        self.status_seen = self._status_key()
        gc.collect()
        faults = dict(self.faults)
        faults.update(self.assets.faults())
        st = self.store
        # One dict for every status, made with the class (App._status_doc): a table of ~30 entries
        # is one block of ~500 bytes, which a fragmented 64 KB heap may no longer have in one piece
        # hours later.
        d = App._status_doc
        d["state"] = state
        d["device"] = self.cfg["device"]
        d["board"] = self.board.get("name")
        d["fw"] = __version__
        d["uptime_s"] = time.ticks_diff(time.ticks_ms(), self.started) // 1000
        d["reset_cause"] = self.reset_cause
        d["boot"] = self.boot
        d["heap_free"] = gc.mem_free()
        d["heap_alloc"] = gc.mem_alloc()
        d["backlog"] = st.pending + st.held
        d["dropped"] = st.dropped
        d["sent"] = self.sent
        d["sample_period_s"] = self.sample_period
        d["status_period_s"] = self.status_period
        d["faults"] = sorted(faults.values())
        d["rssi"] = self.net.rssi()
        d["clock"] = self.clock_synced
        d["lamp"] = self.assets.lamp.level if self.assets.lamp else None
        d["lamp_reason"] = self.assets.profile.reason if self.assets.profile else None
        d["bollard"] = self.assets.bollard.state if self.assets.bollard else None
        d["interlock_trips"] = self.assets.bollard.interlock_trips if self.assets.bollard else None
        d["cmd_counter"] = self.commands.verifier.last_counter
        d["tls_heap"] = getattr(self.link, "tls_heap", None) if self.link else None
        d["loop_lag_max_ms"] = self.lag_max
        d["loop_lag_max_ms_boot"] = self.lag_max_boot
        # field setup hook: on-site changes (field.json) and the setup page, if up
        d["field"] = self.field
        d["setup"] = self.setup.summary() if self.setup else None
        d["env"] = self.assets.extra.status() if self.assets.extra else None
        d["energy"] = self.assets.energy.status() if self.assets.energy else None  # the lamp's counters
        # OTA hook: the library slot and release running (an update, a trial, a rollback)
        d["ota"] = self.ota.status() if self.ota else self.ota_info
        return (_print_json if console else json.dumps)(d)

    def status_payload(self):
        # The status to send now; its loop-lag window restarts (given back if the send fails).
        try:
            s = self.status()
        except MemoryError as e:
            # no room for the whole status now (a fragmented heap): say so briefly rather than
            # not at all (a connection needs one); the full one goes at the next period
            gc.collect()
            self.log("status: %r: sent short" % (e,))
            s = '{"state": "online", "device": "%s", "heap_free": %d, "heap_alloc": %d, "faults": ["status: out of memory"]}' % (
                self.cfg["device"], gc.mem_free(), gc.mem_alloc())
        self._lag_reported = self.lag_max
        self.lag_max = 0
        return s

    def status_not_sent(self):
        if self._lag_reported > self.lag_max:
            self.lag_max = self._lag_reported

    def log(self, msg):
        print("[lanterne] " + msg)

    # -- sampling ---------------------------------------------------------------------
    async def sample_task(self):
        from lanterne.assets import ALARM_FLAGS, F_CONFIG, F_OVERFLOW, F_UNSYNCED

        r = self.reading
        # LoRaWAN (its delivery ledger, or a failover board's link): alarm readings go first
        alarm = getattr(self.uplink.store, "alarm", None)
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
            st = self.store
            seq = st.append(self.packer.pack(r, self.now(), self.boot, self.clock_synced))
            if seq < 0:
                # (the reading waits in RAM, st.held, and goes to flash first once it takes writes)
                self.faults["store"] = "store: flash refused a write (%s): %d held in RAM, %d dropped" % (
                    _errno_name(st.last_error), st.held, st.dropped)
            else:
                self.faults.pop("store", None)
                if alarm is not None and flags & ALARM_FLAGS:
                    alarm(seq)
                self.uplink_due.set()
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
        """Send what the store holds, frame by frame, committing each only after the link took it
        (MQTT: its PUBACK; lanterne.uplink: only the readings a frame carried). A frame the link
        did not take stays in the store and goes again."""
        link = self.link
        outbox = self.uplink.store  # the store, or LoRaWAN's delivery ledger in front of it
        while link.up and outbox.pending:
            n = await self.uplink.send(link, self.now(), self.boot, self.clock_synced)
            if n < 0:
                return  # the link went down on the way, or over its airtime budget: later
            self.sent += n
            if self.cmd_queue or self.acks or self.status_due or (self.ota and self.ota.frame()):
                return  # those go first

    async def uplink_task(self):
        # Everything the board sends goes through here, one frame at a time: the acks of the
        # commands received first, then the status when due, then an update's progress record and
        # request (lanterne/ota.py), then readings.
        link = self.link
        while True:
            self.handle_commands()  # commands run as they arrive, whatever the link does
            if link.up:
                if self.acks:
                    if await link.send(ACK, self.acks[0]):
                        self.acks.pop(0)
                    continue
                s = self.setup  # field setup hook: the page's LoRaWAN link test sends in this task's turn
                if s is not None and s.turn is not None:
                    t = s.turn
                    s.turn = None
                    await t(link)
                    t = None
                    continue
                if self.status_due:
                    if await link.send(STATUS, self.status_payload()):
                        self.status_due = False
                        self.status_sent += 1  # field setup hook: the link took it (MQTT: PUBACK)
                        if self.ota:
                            self.ota.status_sent()  # a trial's health: a status went out
                    else:
                        self.status_not_sent()
                    continue
                f = self.ota.frame() if self.ota else None
                if f is not None:
                    if await link.send(f[0], f[1]):
                        self.ota.sent(f[0], f[1])
                    f = None
                    continue
                if self.uplink.store.pending:
                    await self.drain()
                    if self.uplink.store.pending and link.up:
                        await asyncio.sleep_ms(1000)  # the link would not take more now
                    continue
            await self.uplink_due.wait()
            self.uplink_due.clear()

    # -- commands ---------------------------------------------------------------------
    def on_downlink(self, frame):
        # From the link (only frames meant for this board): run by the uplink task, which acks it.
        if len(self.cmd_queue) < CMD_QUEUE:
            self.cmd_queue.append(frame)
            self.uplink_due.set()
        else:
            self.log("command queue full: command dropped (the back office will retry)")

    def handle_commands(self):
        while self.cmd_queue:
            frame = self.cmd_queue.pop(0)
            key = self.commands.verifier.key  # the ack's key (a rotate_key is acked with the old one)
            ack, line = self.commands.handle(frame)
            self.log(line)
            e = self.commands.unsaved
            if e is None:
                self.faults.pop("commands", None)
            else:
                self.faults["commands"] = "commands: counter not saved (%s): not run" % _errno_name(e)
            if ack is not None:
                f = getattr(self.link, "ack_frame", None)  # (LoRaWAN's compact ack; MQTT sends it whole)
                self.acks.append(f(ack, key) if f else ack)

    def execute(self, opcode, args):
        # What an authenticated command does (lanterne/execute.py), loaded for the moment it runs:
        # commands are rare, the heap is not.
        from lanterne import execute

        try:
            return execute.run(self, opcode, args)
        finally:
            del execute
            _unload("lanterne.execute")
            if self.setup is None:  # (set_config loaded them; setup mode keeps them)
                _unload("lanterne.config")
                _unload("lanterne.config_fields")
                _unload("lanterne.field")
                _unload("lanterne.setup_button")

    # -- link ------------------------------------------------------------------------
    async def link_task(self):
        # Brings the network link up and keeps it up (the uplink task sends over it), and keeps
        # the clock: NTP at boot, then hourly, every 10 s while it fails (the lamp profile follows
        # its photocell meanwhile). Every wait here is bounded and lets the loop run.
        link = self.link
        ip = link.name != "lorawan"  # LoRaWAN: no IP network, no NTP (readings carry their age)
        lora_too = getattr(link, "lora", None) is not None  # failover: LoRaWAN whatever the IP link does
        if ip and not self.net.start():
            self.no_uplink = self.faults["network"] = self.net.error
            self.log(self.net.error)
            if not lora_too:
                return
        was_up = net_was_up = False
        clock_due = time.ticks_ms() if ip else None
        while True:
            if self.reboot_at is not None and time.ticks_diff(time.ticks_ms(), self.reboot_at) >= 0:
                self.log("rebooting on command")
                if self.assets.energy:
                    self.assets.energy.save()  # the lamp's counters lose nothing to a reboot
                link.close()
                machine.reset()
            if ip and not lora_too and not self.net.up():
                if net_was_up:
                    self.log("link down")
                net_was_up = was_up = False
                if link.up:
                    link.close()
                await asyncio.sleep_ms(200)
                continue
            net_was_up = True
            if was_up and not link.up:
                self.faults[link.name] = link.last_error
                self.log(link.last_error)
            was_up = link.up
            b = self.assets.bollard
            if clock_due is not None and time.ticks_diff(time.ticks_ms(), clock_due) >= 0 and (not lora_too or self.net.up()):
                clock_due = time.ticks_add(time.ticks_ms(), 3600000 if await self.sync_clock() else 10000)
            elif link.up:
                await link.maintain()
            elif not link.due() or (b is not None and b.state == _MOVING and b.target == b.guard):
                # (no connection is set up while the bollard moves towards its guarded position: a
                # TLS handshake's key exchange runs in one long mbedtls call, which would delay the
                # presence interrupt's handler; moves only start on a command, over an up link)
                await asyncio.sleep_ms(100)
            elif await self._connect():
                self.faults.pop(link.name, None)
                self.log("connected to %s as %s" % (getattr(link, "where", None) or "%s:%d" % (link.host, link.port), self.cfg["device"]))
                self.status_due = False
                self.status_sent += 1  # field setup hook: the online status went with the connection
                if self.ota:
                    self.ota.status_sent()  # a trial's health: a status went out
                self.uplink_due.set()  # what waited for the link
                was_up = True
            else:
                self.status_not_sent()
                self.faults[link.name] = link.last_error
                self.log(link.last_error)

    async def _connect(self):
        gc.collect()  # a clean heap for the connection's buffers and its first status
        return await self.link.connect(self.status_payload)

    async def sync_clock(self):
        # One NTP query over a non-blocking socket (at most netio.NTP_TIMEOUT_MS); True when set.
        from lanterne import netio

        try:
            netio.set_rtc(await netio.ntp_query())
        except Exception as e:  # no NTP: the lamp profile falls back to its photocell
            self.faults["clock"] = "clock: not synced (%s)" % (e,)
            return False
        self.clock_synced = True
        self.faults.pop("clock", None)
        self.lamp_update()  # the schedule applies now, before the next status says otherwise
        return True

    def status_check(self):
        # Every second (from the actuator task): a status is due one status period after the last
        # one (so a period changed by command applies at once), or as soon as what it says changed
        # (a fault raised or cleared, the lamp's decision, the periods), at most every STATUS_GAP_MS.
        since = time.ticks_diff(time.ticks_ms(), self.status_at)
        if self.status_due or since < STATUS_GAP_MS:
            return
        if since >= self.status_period * 1000 or self._status_key() != self.status_seen:
            if self.no_uplink:  # nothing can deliver it: the console is where someone may see it
                print("[lanterne] status not sent (%s): " % self.no_uplink, end="")
                self.status(console=True)
            else:
                self.ask_status()

    def lamp_update(self, photocell=False):
        # Follow the lamp profile now (reading the photocell first when asked): at boot before
        # the first status is built, after a clock sync, and every TICK_MS from actuator_task.
        a = self.assets
        if a.lamp is None:
            return
        try:
            if photocell and a.light is not None:
                a.light.sample()
            a.lamp_tick(self.now_utc(), bool(self.link and self.link.up))
        except Exception as e:  # never let an actuator stop the board
            self.faults["actuator"] = "actuator: %r" % (e,)

    async def actuator_task(self):
        # The loop's heartbeat, every TICK_MS: the lamp and the bollard; how late it woke up
        # (anything that holds the loop, a blocking call or a long computation, shows here and
        # in the status as loop_lag_max_ms); the watchdog, fed only by a loop that keeps running;
        # every second, whether a status is due.
        a = self.assets
        tick = 0
        trips = irq_trips = 0
        t = fed = time.ticks_ms()
        while True:
            try:
                # the photocell every 2 s (every TICK_MS until its first reading), not only at the sampling period
                self.lamp_update(a.light is not None and (tick % 20 == 0 or not a.light.has_value))
                tick += 1
                b = a.bollard
                if b is not None:
                    b.update()
                    if b.interlock_trips != trips:
                        trips = b.interlock_trips
                        self.log(
                            "bollard: presence during a move towards the guarded position: move reversed (%s)"
                            % ("by the interrupt handler" if b.irq_trips != irq_trips else "by the loop")
                        )
                        irq_trips = b.irq_trips
            except Exception as e:  # never let an actuator stop the loop
                self.faults["actuator"] = "actuator: %r" % (e,)
            t = time.ticks_ms()
            await asyncio.sleep_ms(TICK_MS)
            now = time.ticks_ms()
            late = time.ticks_diff(now, t) - TICK_MS
            if late > self.lag_max:
                self.lag_max = late
                if late > self.lag_max_boot:
                    self.lag_max_boot = late
            if time.ticks_diff(now, fed) >= 1000:
                if self.wdt:
                    self.wdt.feed()
                fed = now
                try:
                    self.status_check()
                except MemoryError as e:  # no room to build it now: the next second tries again
                    self.log("status: %r" % (e,))

    async def run(self):
        # Collect after every few KB allocated rather than when the heap is full: garbage left
        # to pile up scatters the objects that outlive it (a connection's, a command's) across
        # the heap, which at 64 KB leaves no room in one piece for a status or a socket.
        gc.threshold(GC_EVERY)
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
        tasks = [
            self.guard("sampling", self.sample_task),
            self.guard("actuators", self.actuator_task),
            self.guard("setup", self.setup_task),  # field setup hook
        ]
        if self.link is not None:
            tasks += [
                self.guard("link", self.link_task),
                self.guard("uplink", self.uplink_task),
            ]
        if self.ota is not None:  # an update to resume, a trial, a rollback to report
            tasks.append(self.guard("ota", self.ota.run))
        await asyncio.gather(*tasks, *self.assets.tasks())

    async def setup_task(self):
        # field setup hook: a setup boot serves the setup page, then restarts
        # (lanterne/setup_mode.py); a normal boot watches the button for 5 s (lanterne/field.py).
        if self.setup_via is None:
            from lanterne import setup_button

            await setup_button.watch_button(self)
            del setup_button
            _unload("lanterne.setup_button")  # the button is watched only in the first seconds
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


def main(ota_info=None):
    app = App(ota_info)
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
