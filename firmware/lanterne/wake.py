# Lanterne on a battery (docs/battery.md): one wake from deep sleep, then deep sleep again. No
# always-on loop: main.py calls run() instead of the app when config/board say power=battery.
#
#   wake -> state from RTC memory (or a cold start: RTC memory lost or never written)
#        -> sample when due (or an alarm woke the board) -> store.append (durable on flash)
#        -> send only when the policy says so: the oldest unsent reading is send_period_s old, a
#           frame's worth is waiting, the alarm switch changed, a status or a command's ack is
#           due, or a cold start -> listen for commands while the link is up (MQTT: a persistent
#           session queues them at the broker while the board sleeps; LoRaWAN: class A, after
#           each uplink) -> state to RTC memory -> machine.deepsleep until the next sample.
#
# What survives the sleep, and where:
#   RTC memory (this module's State, 44 bytes + the link's state, CRC-checked): the schedule (next sample), the
#     batching state (when the last frame went, readings appended since), when the last status
#     and clock sync were, the run number of the board's clock (boot), the alarm level last
#     reported, whether the clock is synced, whether the LoRaWAN session is up; over LoRaWAN
#     also the airtime budget and the silence detection (67 bytes, transport/lorawan_state.py)
#     and the delivery ledger's bookkeeping (pack_outbox, at most 714 bytes).
#   flash: the readings (store/), the command counter and key (cmdstate.json), acks not yet
#     delivered (acks.pending), config.json, boot.count.
#   The modem's own NVM: the LoRaWAN session (DevAddr, keys, frame counters).
# RTC memory lost (a power cut, EN, a new battery): a cold start. The next boot number is taken
# (readings of the old run keep their sampling times only if the clock was synced), the board
# samples and sends at once, and the schedule starts again from now. Nothing stored is lost: the
# store, the command counter and the pending acks are on flash. A LoRaWAN link starts with half
# its daily airtime cap counted as spent (it cannot know what it sent before the cut).
import struct
import time

try:
    import machine
    from micropython import const
except ImportError:  # CPython: State, next_after and send_due are pure (tests run them there)
    machine = None

    def const(x):
        return x


_MAGIC = const(0x4C42)
_VERSION = const(2)  # (lanterne/power.py reads the magic and this byte)
# magic, version, flags, boot, wakes, next sample, last send, last status, last sync (board clock,
# seconds), unsent readings, alarm level last sent, length of the link's state (link), sample
# period, send period, length of the delivery state (extra); then link, then extra, then a CRC-16
# over all of it
_FMT = "<HBBIIiiiiHBBIIH"
_LEN = const(42)  # the header
_EXTRA_MAX = const(1900)  # RTC memory is 2048 bytes: the link's state and extra together at most
F_SYNCED = const(1)  # the board's clock was set from NTP (or the network) and has run on since
F_JOINED = const(2)  # the LoRaWAN session is up (the modem keeps it in its NVM)
_EXT0_WAKE = const(2)
_DEEPSLEEP_RESET = const(4)
_F_TAMPER = const(64)  # codec status bit 6 "tamper": the alarm switch is active (lid open, bin tilted)
_F_OVERFLOW = const(128)
_F_CONFIG = const(256)
_F_UNSYNCED = const(512)
BATCH_FULL = const(12)  # readings waiting that make a send due whatever the period (half a frame's worth)
SYNC_EVERY_S = const(86400)  # NTP at most once a day on a send wake (the RTC drifts ~1-2 s/day)
WIFI_TIMEOUT_MS = const(10000)
CONNECT_ATTEMPTS = const(3)
CONNECT_WAIT_MS = const(10000)  # the longest wait between two attempts in one wake
LISTEN_MS = const(500)  # after the last frame, how long the link stays up for commands still coming
ACKS_FILE = "acks.pending"


def _crc(buf, n):
    from lanterne.store import crc16

    return crc16(buf, 0, n)


class State:
    """The battery duty cycle's state kept in RTC memory across deep sleeps."""

    def __init__(self, boot, now, sample_period, send_period):
        self.flags = 0
        self.boot = boot
        self.wakes = 0
        self.next_sample = now
        self.last_send = now
        self.last_status = now - 10 ** 6
        self.last_sync = now - 10 ** 6
        self.unsent = 0
        self.alarm = 0
        self.sample_period = sample_period
        self.send_period = send_period
        self.link = b""  # the link's state across sleeps (LoRaWAN: airtime budget, silence: transport/lorawan_state.py)
        self.extra = b""  # the delivery state across sleeps (LoRaWAN: what is in flight, lanterne/delivery.py)

    @classmethod
    def load(cls, data):
        # The state in `data` (RTC memory), or None: empty, not ours, another version, damaged.
        if len(data) < _LEN + 2:
            return None
        v = struct.unpack_from(_FMT, data, 0)
        n = len(data)
        if v[0] != _MAGIC or v[1] != _VERSION or n != _LEN + v[11] + v[14] + 2 or data[n - 2] | data[n - 1] << 8 != _crc(data, n - 2):
            return None
        s = cls(v[3], 0, v[12], v[13])
        s.link = bytes(data[_LEN : _LEN + v[11]])
        s.extra = bytes(data[_LEN + v[11] : n - 2])
        s.flags, s.wakes, s.next_sample, s.last_send, s.last_status, s.last_sync, s.unsent, s.alarm = (
            v[2], v[4], v[5], v[6], v[7], v[8], v[9], v[10])
        return s

    def pack(self):
        link = self.link if len(self.link) < 256 else b""  # too much: the link starts afresh
        extra = self.extra if len(link) + len(self.extra) <= _EXTRA_MAX else b""
        n = _LEN + len(link) + len(extra)
        buf = bytearray(n + 2)
        struct.pack_into(_FMT, buf, 0, _MAGIC, _VERSION, self.flags, self.boot, self.wakes, self.next_sample,
                         self.last_send, self.last_status, self.last_sync, self.unsent, self.alarm, len(link),
                         self.sample_period, self.send_period, len(extra))
        buf[_LEN : _LEN + len(link)] = link
        buf[_LEN + len(link) : n] = extra
        c = _crc(buf, n)
        buf[n] = c & 0xFF
        buf[n + 1] = c >> 8
        return bytes(buf)


def next_after(due, period, now):
    # The sampling cadence: the first due time after `now` on the grid due + k * period (a wake
    # that came late, or an alarm, never shifts the grid; missed periods are skipped, not caught up).
    if due > now:
        return due
    return due + ((now - due) // period + 1) * period


def pack_outbox(o):
    # LoRaWAN's delivery state (lanterne/delivery.py keeps it in RAM; a deep sleep loses RAM): what
    # went in which uplink and is not acknowledged yet, what to send again, where "never sent"
    # starts. Without it every wake would send again everything the last ledger did not list.
    inflight = o.inflight[-48:]
    resend = o.resend[:16]
    out = bytearray(struct.pack("<IIBB", o.sent_upto, o.uplink, len(inflight), len(resend)))
    for a, b, u in inflight:
        out += struct.pack("<III", a, b, u)
    for a, b in resend:
        out += struct.pack("<II", a, b)
    return bytes(out)


def unpack_outbox(o, data):
    # The state pack_outbox kept, back into a fresh delivery object; nothing (a cold start's) leaves
    # it as built: the readings the last ledger did not list go again, the back office drops repeats.
    if len(data) < 10:
        return
    sent_upto, uplink, ni, nr = struct.unpack_from("<IIBB", data, 0)
    if len(data) != 10 + 12 * ni + 8 * nr:
        return
    o.sent_upto, o.uplink = sent_upto, uplink
    o.inflight = [list(struct.unpack_from("<III", data, 10 + 12 * i)) for i in range(ni)]
    o.resend = [list(struct.unpack_from("<II", data, 10 + 12 * ni + 8 * i)) for i in range(nr)]


def send_due(st, now, pending, alarm_changed, cold, acks, status_due):
    # The batching policy: is a frame to go in this wake?
    if cold or alarm_changed or acks or status_due:
        return pending > 0 or alarm_changed or acks or status_due or cold
    if pending >= BATCH_FULL:
        return True
    return pending > 0 and now - st.last_send >= st.send_period


class Wake:
    """One wake of a battery board. Duck-types what lanterne.execute needs of the App."""

    def __init__(self):
        from lanterne import boardinfo, config

        self.cfg, self.config_errors = config.load()
        self.board, board_error = boardinfo.load()
        self.faults = {}
        for i, err in enumerate(self.config_errors):
            self.faults["config%d" % i] = err
        if board_error:
            self.faults["board"] = board_error
        self.reset_cause = machine.reset_cause()
        self.woke_by_alarm = self.reset_cause == _DEEPSLEEP_RESET and machine.wake_reason() == _EXT0_WAKE
        self.rtc = machine.RTC()
        st = State.load(self.rtc.memory()) if self.reset_cause == _DEEPSLEEP_RESET else None
        self.cold = st is None
        now = self.now()
        if st is None:
            from lanterne.flashfile import bump_counter

            st = State(bump_counter("boot.count"), now, self.cfg["sample_period_s"], self.cfg["send_period_s"])
        # a period changed by command or config applies from this wake on
        st.sample_period = self.cfg["sample_period_s"]
        st.send_period = self.cfg["send_period_s"]
        st.wakes += 1
        self.st = st
        self.clock_synced = bool(st.flags & F_SYNCED)
        self.sample_period = st.sample_period
        self.status_period = self.cfg["status_period_s"]
        self.status_asked = False
        self.reboot_at = None
        self.sent = 0
        self.acks = _read_acks()
        self.assets = None
        self.store = None
        self.link = None
        self.outbox = None  # what the uplink step sends from: the store, or LoRaWAN's delivery ledger in front of it
        self.commands = None
        self.cmd_queue = []

    # -- what lanterne.execute uses of the App -------------------------------------------
    def now(self):
        # The RTC's clock: it runs on through deep sleep (on the ESP32 time.time() is the same clock)
        d = self.rtc.datetime()
        return int(time.mktime((d[0], d[1], d[2], d[4], d[5], d[6], 0, 0)))

    def now_utc(self):
        return self.now() if self.clock_synced else None

    def log(self, msg):
        print("[lanterne] " + msg)

    def ask_status(self):
        self.status_asked = True

    # -- the wake ------------------------------------------------------------------------
    def alarm_level(self):
        spec = self.board.get("alarm")
        if not spec:
            return 0
        level = machine.Pin(spec["pin"], machine.Pin.IN).value()
        return 1 if level == (0 if spec.get("active") == "low" else 1) else 0

    def build(self):
        from lanterne.assets import Assets, load_drivers
        from lanterne.store import Store

        load_drivers(self.board)
        self.assets = Assets(self.board, self.cfg, None)
        for kind, err in self.assets.errors.items():
            self.faults[kind] = err
        self.store = Store("store", capacity_bytes=self.cfg["store_bytes"])
        self.outbox = self.store
        if self.cfg["transport"] == "lorawan":
            try:
                from lanterne.delivery import LedgerDelivery
            except ImportError:
                return
            # unconfirmed uplinks: readings stay in the store until a delivery ledger says they arrived
            self.outbox = LedgerDelivery(self.store, self.cfg["device"], self._command_key, self.faults,
                                         bool(self.cfg.get("lorawan_confirmed")))
            unpack_outbox(self.outbox, self.st.extra)

    def _handler(self):
        if self.commands is None:
            from lanterne.control import CommandHandler

            self.commands = CommandHandler(self.cfg["device"], self.cfg["command_key"], self.execute)
        return self.commands

    def _command_key(self):
        return self._handler().verifier.key

    async def sample(self, alarm):
        from lanterne import codec
        from lanterne.reading import RecordPacker

        r = codec.new_reading()
        flags = await self.assets.sample(r)
        if self.store.overflow:
            flags |= _F_OVERFLOW
        if self.config_errors:
            flags |= _F_CONFIG
        if not self.clock_synced:
            flags |= _F_UNSYNCED
        if alarm:
            flags |= _F_TAMPER
        r[codec.STATUS] = flags
        seq = self.store.append(RecordPacker().pack(r, self.now(), self.st.boot, self.clock_synced))
        if seq < 0:
            self.faults["store"] = "store: append failed: %s" % self.store.last_error
        else:
            self.st.unsent += 1
        return seq

    async def run(self):
        st = self.st
        now = self.t_wake = self.now()
        self.build()
        alarm = self.alarm_level()
        alarm_changed = alarm != st.alarm
        sampled = -1
        if self.cold or now >= st.next_sample or alarm_changed:
            sampled = await self.sample(alarm)
        if now >= st.next_sample:
            st.next_sample = next_after(st.next_sample, st.sample_period, now)
        # a status rides with the next frame once status_period_s has passed; it makes a send wake
        # of its own only when no frame went for longer than the send period either
        status_due = self.cold or now - st.last_status >= self.status_period
        status_late = self.cold or now - st.last_status >= max(self.status_period, st.send_period)
        pending = self.outbox.pending
        kind = "sample"
        if send_due(st, now, pending, alarm_changed, self.cold, self.acks, status_late):
            kind = "send"
            if self._cap_spent(now):
                # LoRaWAN over its daily airtime cap: not even the smallest uplink may go, so the modem
                # is not woken to be refused; the readings wait in the store, the schedule goes on
                kind = "held"
            elif await self.send(status_due):
                st.alarm = alarm
            else:
                st.last_send = now  # no link now: the next try waits a send period (an alarm still goes at once)
        self.log("wake %d (%s%s): %s, seq %d, backlog %d, next sample in %d s" % (
            st.wakes, "cold" if self.cold else "deepsleep", ", alarm" if self.woke_by_alarm else "", kind, sampled,
            self.outbox.pending, st.next_sample - self.now()))
        if self.outbox is not self.store:
            st.extra = pack_outbox(self.outbox)
        if self.link is not None and self.cfg["transport"] == "lorawan":
            # the airtime budget and the silence detection (a sample-only wake carries them as they are)
            from lanterne.transport import lorawan_state

            st.link = lorawan_state.keep(self.link, self.now())
        return kind

    # -- sending -------------------------------------------------------------------------
    def _cap_spent(self, now):
        if self.cfg["transport"] != "lorawan" or not self.st.link:
            return False
        from lanterne.transport import lorawan_state

        return lorawan_state.cap_spent(self.st.link, now, self.cfg["lorawan_airtime_s"] * 1000)

    def _link(self):
        t = self.cfg["transport"]
        if t == "mqtt":
            if not self.cfg["broker"]:
                self.faults["broker"] = "config: no broker configured: offline, readings kept in the store"
                return None
            from lanterne.transport.mqtt import MqttLink

            link = MqttLink(self.cfg, self.on_downlink)
            link.clean = False  # the broker keeps the subscription and queues commands while the board sleeps
            return link
        try:
            from lanterne.transport.lorawan import LorawanLink, open_uart
        except ImportError:
            self.faults["transport"] = "transport %s: not available in this firmware yet" % t
            return None
        uart, why = open_uart(self.board)
        link = LorawanLink(self.cfg, uart, self.on_downlink, why)  # no join while the modem keeps its session
        from lanterne.transport import lorawan_state

        lorawan_state.resume(link, self.st.link, self.now())  # the day's airtime, the silence so far
        if self.outbox is not self.store:
            link.on_ledger = self.outbox.ledger
        return link

    async def send(self, status_due):
        # Bring the link up, send acks, a status when due, then the readings frame by frame (each
        # committed only once the link took it), listen for commands; True when everything went.
        link = self._link()
        if link is None:
            return False
        self.link = link
        if self.cfg["transport"] == "mqtt":
            from lanterne.net import Network

            net = Network(self.board, self.cfg)
            if not net.start() or not await net.wait_up(WIFI_TIMEOUT_MS):
                self.faults["network"] = net.error or "network: not up within %d ms" % WIFI_TIMEOUT_MS
                return False
            if not self.clock_synced or self.now() - self.st.last_sync >= SYNC_EVERY_S:
                await self.sync_clock()
        if not await self.connect(link):
            self.faults["link"] = link.last_error
            self.log("link: %s" % link.last_error)
            self._save_acks()
            return False
        self.st.flags |= F_JOINED
        if self.cfg["transport"] == "mqtt":
            self.st.last_status = self.now()  # the connection's hello is the status
            status_due = False
        from lanterne.uplink import Uplink
        from lanterne.transport.link import ACK, STATUS

        uplink = Uplink(self.outbox, self.faults)
        ok = True
        listen_until = time.ticks_add(time.ticks_ms(), LISTEN_MS)
        while link.up:
            self.handle_commands()
            if self.acks:
                if await link.send(ACK, self.acks[0]):
                    self.acks.pop(0)
                    continue
                ok = False
                break
            if status_due or self.status_asked:
                if await link.send(STATUS, self.status_payload()):
                    self.st.last_status = self.now()
                    status_due = self.status_asked = False
                    continue
                ok = False
                break
            if self.outbox.pending:
                n = await uplink.send(link, self.now(), self.st.boot, self.clock_synced)
                if n < 0:
                    ok = False
                    break
                self.sent += n
                if n:
                    self.st.last_send = self.t_wake  # the period counts from this wake's grid time, not from when the link came up
                listen_until = time.ticks_add(time.ticks_ms(), LISTEN_MS)
                continue
            if time.ticks_diff(listen_until, time.ticks_ms()) <= 0:
                break
            await link.maintain()  # lets the link's reader take a queued command (~200 ms)
        if not link.up and link.last_error:  # went down on the way (LoRaWAN: a lost session found)
            self.faults["link"] = link.last_error
            self.log("link: %s" % link.last_error)
        self.st.unsent = self.outbox.pending
        self.handle_commands()
        self._save_acks()
        disconnect = getattr(link, "disconnect", None)
        if disconnect is not None:
            await disconnect()
        else:
            link.close()
        return ok and not self.outbox.pending

    async def connect(self, link):
        # A few attempts, waiting out what the link asks between them (LoRaWAN: the first join's
        # random spread after a cold start; a retry's backoff) when that is short; else the next
        # send wake tries again (a LoRaWAN board whose modem kept its session does not join at all).
        import asyncio

        for attempt in range(CONNECT_ATTEMPTS):
            if await link.connect(self.status_payload):
                return True
            wait = time.ticks_diff(link.next_try, time.ticks_ms())
            if attempt == CONNECT_ATTEMPTS - 1 or wait > CONNECT_WAIT_MS:
                return False
            await asyncio.sleep_ms(wait if wait > 0 else 0)
        return False

    async def sync_clock(self):
        from lanterne import netio

        try:
            t = await netio.ntp_query()
            before = self.now()
            netio.set_rtc(t)
        except Exception as e:
            self.faults["clock"] = "clock: not synced (%s)" % (e,)
            return
        jump = self.now() - before
        if jump > 2 or jump < -2:
            # the clock moved (an RTC counting from 2000 after a cold start): the schedule moves with
            # it, and the readings taken on the old clock become another run's (their age unknown,
            # flagged clock_unsynced, rather than wrong)
            from lanterne.flashfile import bump_counter

            st = self.st
            st.next_sample += jump
            st.last_send += jump
            st.last_status += jump
            self.t_wake += jump
            st.boot = bump_counter("boot.count")
        self.clock_synced = True
        self.st.flags |= F_SYNCED
        self.st.last_sync = self.now()
        self.faults.pop("clock", None)

    # -- commands (the same gate and execution as the always-on app) ----------------------
    def on_downlink(self, frame):
        self.cmd_queue.append(bytes(frame))

    def handle_commands(self):
        while self.cmd_queue:
            handler = self._handler()
            key = handler.verifier.key  # the ack's key (a rotate_key is acked with the old one)
            ack, line = handler.handle(self.cmd_queue.pop(0))
            self.log(line)
            if ack is not None:
                frame = getattr(self.link, "ack_frame", None)  # LoRaWAN sends a compact ack
                self.acks.append(frame(ack, key) if frame else ack)

    def execute(self, opcode, args):
        from lanterne import execute

        return execute.run(self, opcode, args)

    def _save_acks(self):
        # Acks not delivered in this wake wait on flash (a power cut must not lose them either).
        if self.acks or _read_acks():
            from lanterne.flashfile import write_atomic

            write_atomic(ACKS_FILE, "\n".join(a.hex() for a in self.acks))

    def status_payload(self):
        import gc
        import json

        from lanterne import __version__

        faults = dict(self.faults)
        if self.assets is not None:
            faults.update(self.assets.faults())
        sup = self.assets.supply if self.assets is not None else None
        st = self.st
        return json.dumps({
            "state": "online", "device": self.cfg["device"], "board": self.board.get("name"), "fw": __version__,
            "power": "battery", "battery_mv": sup.millivolts if sup is not None and not sup.fault else None,
            "reset_cause": "deepsleep" if self.reset_cause == _DEEPSLEEP_RESET else "power_on" if self.cold else "other",
            "boot": st.boot, "wakes": st.wakes, "heap_free": gc.mem_free(), "heap_alloc": gc.mem_alloc(),
            "backlog": self.store.pending if self.store else None, "dropped": self.store.dropped if self.store else None,
            "sent": self.sent, "sample_period_s": st.sample_period, "status_period_s": self.status_period,
            "send_period_s": st.send_period, "faults": sorted(faults.values()), "clock": self.clock_synced,
            "alarm": bool(self.alarm_level()), "cmd_counter": self.commands.verifier.last_counter if self.commands else None,
        })

    # -- sleep ----------------------------------------------------------------------------
    def sleep(self):
        # State to RTC memory, the alarm switch armed (on its other level while it is active, so
        # the board learns when it returns to rest), then deep sleep until the next sample.
        st = self.st
        st.sample_period = self.cfg["sample_period_s"]
        self.rtc.memory(st.pack())
        spec = self.board.get("alarm")
        if spec:
            import esp32

            active = 0 if spec.get("active") == "low" else 1
            esp32.wake_on_ext0(machine.Pin(spec["pin"], machine.Pin.IN), active if not self.alarm_level() else 1 - active)
        if self.store is not None:
            self.store.close()
        if self.reboot_at is not None:
            self.log("rebooting on command")
            machine.reset()
        ms = (st.next_sample - self.now()) * 1000
        machine.deepsleep(ms if ms > 100 else 100)


def _read_acks():
    try:
        with open(ACKS_FILE) as f:
            return [bytes.fromhex(line) for line in f.read().split("\n") if line]
    except (OSError, ValueError):
        return []


def run():
    # One wake, then deep sleep; never returns. A failure in the wake is reported and the board
    # still goes to sleep (a battery board that stayed awake on an error would be flat in days).
    import asyncio

    t0 = time.ticks_ms()
    w = None
    try:
        w = Wake()
        asyncio.run(w.run())
    except Exception as e:  # noqa: never stay awake on an error
        import sys

        print("[lanterne] wake failed: %r" % (e,))
        sys.print_exception(e)
    print("[lanterne] awake %d ms" % time.ticks_diff(time.ticks_ms(), t0))
    if w is not None:
        w.sleep()
    machine.deepsleep(60000)
