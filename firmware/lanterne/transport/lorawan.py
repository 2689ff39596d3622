# Lanterne LoRaWAN link: a RAK3172 module running RUI3 on a UART, driven with AT commands
# (transport/at.py), behind the same contract as MQTT (transport/link.py). docs/lorawan.md.
#
#   connect()   the modem answers; its settings (NWM=1 LoRaWAN, NJM=1 OTAA, class A, BAND=4
#               EU868, ADR on, CFM per config) and identity (DevEUI, JoinEUI, AppKey from
#               config.json) are checked and written only where they differ (its flash keeps
#               them); AT+NJS=? and no join when the module still holds a session (its NVM
#               keeps it across our reboots); else AT+JOIN and +EVT:JOINED / JOIN_FAILED_*
#               awaited. Failed joins back off with jitter, and the count of failures is kept
#               on flash, so a fleet that lost power together neither joins in lock-step nor
#               starts its backoff over.
#   send()      READINGS on FPort 100 + format version (102, or 103 with extension fields: the
#               codec frame's byte 0, which LoRaWAN does not send: docs/payload.md), ACK (compact,
#               ledger.py) on FPort 11, unconfirmed:
#               True once the modem says +EVT:TX_DONE (the frame went on air; that it arrived
#               is the delivery ledger's business, lanterne/delivery.py). With lorawan_confirmed
#               True only on +EVT:SEND_CONFIRMED_OK. STATUS is not sent over LoRaWAN (True at
#               once): the JSON status is ~700 bytes, several uplinks of the daily airtime;
#               the readings' status flags and the network's metadata are what the back office
#               gets (docs/lorawan.md).
#   downlinks   +EVT:RX_<w>:<rssi>:<snr>:UNICAST:<port>:<hex>, before or after TX_DONE: FPort
#               10 -> on_downlink (a command), FPort 12 -> on_ledger (the delivery ledger).
#   max_frame() the EU868 table at the data rate the modem reports (AT+DR=? after each uplink:
#               the network may move it), 0 while the airtime budget is closed.
#   fits()      airtime.Budget: the sub-band's 1 % duty cycle and the daily cap (config).
#   silence     no downlink for SILENCE_MS: the next uplinks carry a LinkCheckReq; LINKCHECKS
#               unanswered in a row and the board joins again.
#   deep sleep  a battery wake keeps the budget and the silence detection in RTC memory
#               (transport/lorawan_state.py, loaded by lanterne/wake.py); a mains board's reboot
#               starts them afresh (docs/lorawan.md, "Across reboots and deep sleep").
# Every failure (no answer, busy, a reset banner, garbage, a lost session) is a reason in
# last_error (the app shows it as a fault); nothing here raises out of the link.
import time

import asyncio
from micropython import const

from lanterne.transport import airtime
from lanterne.transport.at import RESET, TIMEOUT, AtPort
from lanterne.transport.link import CONNECTING, OFFLINE, READINGS, STATUS, Link

FPORT_BASE = const(100)  # readings: FPort 100 + the codec frame's format version
FPORT_COMMAND = const(10)
FPORT_ACK = const(11)
FPORT_LEDGER = const(12)
CMD_MS = const(1500)  # an AT command's final status
JOIN_WAIT_MS = const(12000)  # +EVT:JOINED / JOIN_FAILED_* after OK: RX2 of the join accept opens 6 s after the request
TX_WAIT_MS = const(10000)  # +EVT:TX_DONE after OK: airtime (2.8 s at most, SF12) + RX2 at 2 s + its window
BUSY_RETRIES = const(3)  # AT_BUSY_ERROR without a duty-cycle wait: the previous uplink's windows are still open
BUSY_PAUSE_MS = const(700)
SILENCE_MS = const(21600000)  # 6 h without any downlink: ask for a link check
LINKCHECKS = const(3)  # that many unanswered link checks in a row: join again
STATE_FILE = "lorawan.json"
_HEX = b"0123456789abcdef"
_TX_MAX = const(64)  # the piece of an AT+SEND line written at once
C_UPLINKS = const(0)  # counts[]
C_DOWNLINKS = const(1)
C_JOINS = const(2)
C_FAULTS = const(3)
F_RESET = const(1)  # _flags: the modem printed its banner (it restarted)
F_REJOIN = const(2)  # join at the next connect even if the module holds a session
F_SPREAD = const(4)  # the first join since boot is still to wait its random spread
F_CHANGED = const(8)  # _setting() wrote something
F_MARKED = const(16)  # the state file asks for a join (provisioning wrote a new identity): cleared once up
F_KEPT = const(32)  # the silence is carried across deep sleeps (lorawan_state.resume): only a join resets it


def open_uart(board):
    """(machine.UART on the board file's network bus, or its `lorawan` modem's beside an IP link,
    None) or (None, why)."""
    try:
        import machine

        net = board.get("lorawan") or board["network"]
        spec = board["buses"][net["bus"]]
        uart = machine.UART(spec["id"], baudrate=spec.get("baudrate", 115200), tx=spec["tx"], rx=spec["rx"], timeout=0, rxbuf=1024)
        return uart, None
    except Exception as e:  # a board file without the bus, a UART that will not open
        return None, "lorawan: no UART for the modem: %r" % (e,)


def _unload(name):
    import sys

    sys.modules.pop(name, None)
    parent, _, child = name.rpartition(".")
    try:
        delattr(sys.modules[parent], child)
    except (KeyError, AttributeError):
        pass


def _hex_ok(s):
    if len(s) % 2:
        return False
    for c in s:
        if c not in "0123456789abcdefABCDEF":
            return False
    return True


class LorawanLink(Link):
    name = "lorawan"  # the app's fault key for this link
    where = "the LoRaWAN network"
    state_file = STATE_FILE
    # bounds of every wait (a test against a scripted modem shortens them on its instance)
    cmd_ms = CMD_MS
    join_ms = JOIN_WAIT_MS
    tx_ms = TX_WAIT_MS
    silence_ms = SILENCE_MS

    # cfg: the board's config (device, lorawan_* fields); uart: open_uart()'s (None: every attempt
    # fails with uart_error); on_downlink(frame): a command; on_ledger(frame): set by the app to the
    # delivery ledger's handler (None: ledgers are ignored). Few attributes: at a 64 KB heap the
    # instance's dict must find room in one piece.
    def __init__(self, cfg, uart, on_downlink, uart_error=None, state_file=None):
        Link.__init__(self, on_downlink)
        if state_file:
            self.state_file = state_file
        self.cfg = cfg
        self.on_ledger = None
        self.app_faults = None  # the app's fault dict: what leaves the link up is shown there as "lorawan_tx"
        self.at = AtPort(uart, self._line) if uart is not None else None
        self.last_error = uart_error
        self.budget = airtime.Budget(cfg["lorawan_airtime_s"] * 1000)
        self.dr = 0
        self.fopts = 0  # MAC command bytes riding on the next uplink (a LinkCheckReq)
        self.rx = None  # (rssi dBm, snr dB) of the last downlink
        self.counts = [0, 0, 0, 0]  # uplinks, downlinks, joins, faults (that left the link up)
        self.last_fault = None  # the last failure that did not take the link down (busy, refused)
        self._mono = 0  # ms since the link was made, never wrapping (ticks_ms does)
        self._tick = time.ticks_ms()
        self._heard = 0  # _mono of the last downlink, the join, or (always-on links) the last connect
        self._misses = 0  # link checks unanswered in a row
        self._evt = None  # the event awaited: JOINED / JOIN_FAILED_* or TX_DONE / SEND_CONFIRMED_*
        self._flags = F_SPREAD
        self._tx = bytearray(_TX_MAX)
        self.failures = self._file_failures = -1  # join failures kept on flash: read at the first connect

    def now(self):
        t = time.ticks_ms()
        self._mono += time.ticks_diff(t, self._tick)
        self._tick = t
        return self._mono

    # -- the contract ----------------------------------------------------------------------------
    def max_frame(self, kind):
        n = airtime.max_payload(self.dr, self.fopts)
        if kind != READINGS:
            return n
        wait = self.budget.wait_ms(self.now(), airtime.uplink_ms(1, self.dr, self.fopts))
        if wait:
            if wait < 0:
                self._fault("lorawan: airtime budget: the daily cap of %d s is used up" % (self.budget.cap_ms // 1000))
            return 0  # nothing can go now: no frame is built
        return n + 1  # the codec frame's version byte goes in the FPort

    def fits(self, kind, nbytes):
        if kind == STATUS:
            return True
        if kind == READINGS:
            nbytes -= 1
        wait = self.budget.wait_ms(self.now(), airtime.uplink_ms(nbytes, self.dr, self.fopts))
        if wait < 0:  # (a smaller frame might still have gone: max_frame() said so)
            self._fault("lorawan: airtime budget: the daily cap of %d s is used up" % (self.budget.cap_ms // 1000))
        return wait == 0

    def ack_frame(self, ack, key):
        # The compact ack (FPort 11, ledger.build_ack) of an MQTT-format ack frame (commands.py:
        # version, counter u32, opcode, status, data, 12-byte tag), signed with `key` (the key the
        # ack was made with: a rotate_key is acked with the old one).
        from lanterne.ledger import build_ack

        counter = (ack[1] << 24) | (ack[2] << 16) | (ack[3] << 8) | ack[4]
        try:
            return build_ack(key, self.cfg["device"], counter, ack[5], ack[6], ack[7 : len(ack) - 12])
        finally:
            _unload("lanterne.ledger")  # acks are rare

    async def connect(self, hello=None):
        """One attempt to come up (hello: unused, the status does not go over LoRaWAN)."""
        self.state = CONNECTING
        # the bring-up's code (settings, identity, join, the backoff kept on flash) is loaded for
        # the attempt only: connects are rare, and the heap is tight at 64 KB
        from lanterne.transport import lorawan_join as j

        try:
            why = await j.bring_up(self)
        except Exception as e:  # a bug or a driver error: a fault, never up the stack
            why = "lorawan: %r" % (e,)
        try:
            if why is None:
                self._came_up()
                if not self._flags & F_KEPT:
                    # always on: the silence counts from each connect (an idle failover link heard
                    # nothing because it sent nothing); a battery wake's link carries it instead
                    self._heard = self.now()
                    self._misses = 0
                self.fopts = 0  # (a LinkCheckReq the modem still holds is asked for again when due)
                j.keep_failures(self)
                await self._read_dr()
                return True
            if why == "spread":
                self.state = OFFLINE
                return False
            self._went_down(why)
            if why.startswith("lorawan: join"):
                j.join_backoff(self)
            return False
        finally:
            del j
            _unload("lanterne.transport.lorawan_join")

    async def send(self, kind, payload):
        if not self.up or self.at is None:
            return False
        if kind == STATUS:
            return True  # not over LoRaWAN (see the header)
        try:
            if kind == READINGS:
                if not payload or not 0 < payload[0] < 100:
                    self._fault("lorawan: readings frame of format version %r: not sent" % (payload[0] if payload else None))
                    return False
                return await self._send(FPORT_BASE + payload[0], payload, 1)
            return await self._send(FPORT_ACK, payload, 0)
        except Exception as e:  # never up the stack
            self._lost("send: %r" % (e,))
            return False

    async def maintain(self):
        await asyncio.sleep_ms(200)
        if self.at is not None:
            self.at.pump()
        if self._flags & F_RESET and self.up:
            self._lost("the modem restarted")
        self._flags &= ~F_RESET

    def close(self):
        self.state = OFFLINE
        self.up = False

    # -- coming up -------------------------------------------------------------------------------
    def _fault(self, why):
        # A failure that leaves the link up (busy, refused, over budget, a bad downlink): counted,
        # kept for the status, and on the console when it changes.
        self.counts[C_FAULTS] += 1
        if why != self.last_fault:
            print("[lanterne] " + why)
        self.last_fault = why
        if self.app_faults is not None:
            self.app_faults["lorawan_tx"] = why  # until an uplink goes through

    def _lost(self, why):
        if self.up:
            self._went_down("lorawan: " + why)

    async def _read_dr(self):
        v = await self.at.query(b"DR", self.cmd_ms)
        if v is not None and v.isdigit() and 0 <= int(v) <= 5:
            self.dr = int(v)

    # -- sending ---------------------------------------------------------------------------------
    async def _send(self, port, payload, start):
        # payload[start:] on FPort `port`
        at = self.at
        n = len(payload) - start
        if n > airtime.max_payload(self.dr, self.fopts):
            self._fault("lorawan: a %d-byte frame is over DR%d's %d bytes" % (n, self.dr, airtime.max_payload(self.dr, self.fopts)))
            await asyncio.sleep_ms(BUSY_PAUSE_MS)
            return False
        air = airtime.uplink_ms(n, self.dr, self.fopts)
        now = self.now()
        wait = self.budget.wait_ms(now, air)
        if wait:
            # over the budget: the caller tries again later (never a tight loop: this waits a little).
            # The duty cycle's pause is how LoRaWAN works; the day's cap reached is worth a fault.
            if wait < 0:
                self._fault("lorawan: airtime budget: the daily cap of %d s is used up" % (self.budget.cap_ms // 1000))
            await asyncio.sleep_ms(1000 if wait < 0 or wait > 1000 else wait)
            return False
        if now - self._heard > self.silence_ms and not self.fopts:
            if await at.command(b"AT+LINKCHECK=1", self.cmd_ms) == "OK":
                self.fopts = 1  # the LinkCheckReq rides in FOpts: one byte less for the payload
                if n > airtime.max_payload(self.dr, self.fopts):
                    return False
                air = airtime.uplink_ms(n, self.dr, self.fopts)
        cmd = (port, payload, start, n)  # AT+SEND=<port>:<hex>, written in pieces by _write_send
        for _ in range(BUSY_RETRIES):
            self._evt = None
            st = await at.command(self._write_send, self.cmd_ms, cmd)
            if self._flags & F_RESET:  # its banner came with the answer (a reply cut short: "AT_")
                st = RESET
            if st == "OK":
                break
            if st == "AT_BUSY_ERROR" and at.wait_ms:
                self.budget.closed_for(self.now(), at.wait_ms)
                self._fault("lorawan: duty cycle: Restricted_Wait_%d_ms" % at.wait_ms)
                return False
            if st == "AT_BUSY_ERROR":
                await asyncio.sleep_ms(BUSY_PAUSE_MS)
                continue
            if st == "AT_NO_NETWORK_JOINED":
                self._flags |= F_REJOIN
                self._lost("the modem has no session (AT_NO_NETWORK_JOINED): joining again")
                return False
            if st == "AT_PARAM_ERROR":
                await self._read_dr()  # the network may have lowered the data rate under the frame
                self._fault("lorawan: AT+SEND refused (AT_PARAM_ERROR) at DR%d, %d bytes" % (self.dr, n))
                return False
            if st == TIMEOUT or st == RESET:
                self._lost("AT+SEND: %s" % ("the modem restarted" if st == RESET else "no answer within %d ms" % self.cmd_ms))
                return False
            self._fault("lorawan: AT+SEND: %s" % st)
            return False
        else:
            self._fault("lorawan: AT+SEND: modem busy %d times" % BUSY_RETRIES)
            return False
        self.budget.record(self.now(), air)
        self.counts[C_UPLINKS] += 1
        t0 = time.ticks_ms()
        while self._evt is None and time.ticks_diff(time.ticks_ms(), t0) < self.tx_ms:
            await asyncio.sleep_ms(50)
            at.pump()
            if self._flags & F_RESET:
                break
        if self._evt is None:
            at.pump()  # a last read: a TX_DONE that came while this task was held up counts
        evt = self._evt
        if evt is None:
            self._lost("AT+SEND: %s" % ("the modem restarted" if self._flags & F_RESET else "no TX_DONE within %d ms" % self.tx_ms))
            return False
        await self._read_dr()
        taken = True
        if self.app_faults is not None:
            self.app_faults.pop("lorawan_tx", None)
        if self.cfg["lorawan_confirmed"] and evt != "SEND_CONFIRMED_OK":
            self._fault("lorawan: confirmed uplink not acknowledged (%s)" % evt)
            taken = False
        if self._misses >= LINKCHECKS:
            self._flags |= F_REJOIN
            self._misses = 0
            self._lost("no downlink for %d s and %d link checks unanswered: joining again" % (self.silence_ms // 1000, LINKCHECKS))
        return taken

    def _write_send(self, uart, cmd):
        # AT+SEND=<port>:<hex of payload[start:start + n]> onto the UART through a 64-byte buffer
        # (a command's line is up to 460 bytes: no buffer that size is kept for it)
        port, payload, start, n = cmd
        tx = self._tx
        k = 8
        tx[0:8] = b"AT+SEND="
        for c in str(port):
            tx[k] = ord(c)
            k += 1
        tx[k] = 58  # ':'
        k += 1
        for i in range(start, start + n):
            if k > _TX_MAX - 2:
                uart.write(memoryview(tx)[:k])
                k = 0
            b = payload[i]
            tx[k] = _HEX[b >> 4]
            tx[k + 1] = _HEX[b & 15]
            k += 2
        uart.write(memoryview(tx)[:k])

    # -- what the modem says on its own ----------------------------------------------------------
    def _line(self, text):
        if text == RESET:
            self._flags |= F_RESET
            return
        ev = text[5:]  # after "+EVT:"
        if ev.startswith("RX_"):
            self._downlink(text)
        elif ev == "TX_DONE" or ev == "SEND_CONFIRMED_OK" or ev == "JOINED" or ev.startswith("JOIN_FAILED"):
            self._evt = ev
        elif ev.startswith("SEND_CONFIRMED_FAILED"):
            self._evt = "SEND_CONFIRMED_FAILED"
        elif ev.startswith("LINKCHECK:"):
            self.fopts = 0
            if ev.startswith("LINKCHECK:0:"):
                self._heard = self.now()
                self._misses = 0
            else:
                self._misses += 1
        else:
            self.at.noise += 1

    def _downlink(self, text):
        # +EVT:RX_1:<rssi>:<snr>:UNICAST:<port>:<hex>
        parts = text.split(":")
        try:
            if len(parts) != 7 or not _hex_ok(parts[6]):
                raise ValueError
            port = int(parts[5])
            rssi = int(parts[2])
            snr = int(parts[3])
        except ValueError:
            self._fault("lorawan: malformed downlink event %r" % text[:60])
            return
        import binascii

        frame = binascii.unhexlify(parts[6])
        self.counts[C_DOWNLINKS] += 1
        self.rx = (rssi, snr)
        self._heard = self.now()
        self._misses = 0
        try:
            if port == FPORT_COMMAND:
                self.on_downlink(frame)
            elif port == FPORT_LEDGER and self.on_ledger is not None:
                self.on_ledger(frame)
            else:
                self._fault("lorawan: downlink on FPort %d ignored" % port)
        except Exception as e:  # a handler's bug must not take the link down
            self._fault("lorawan: downlink on FPort %d: %r" % (port, e))
