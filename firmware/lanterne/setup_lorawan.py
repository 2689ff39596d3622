# Lanterne setup page's link test on a LoRaWAN board (lanterne/setup_api.py loads it when the
# page asks, in setup mode only): join, or the session the modem holds, then one test uplink
# with a LinkCheckReq riding on it, and the result for the installer. docs/field.md.
#
# It runs beside the page's server as its own task and the page polls it (a join takes seconds:
# no request waits that long). The link stays the app's: the join is the link task's connect(),
# asked for now (the reconnect backoff and the boot's random spread are skipped: one installer,
# one press, one attempt); the uplink goes in the uplink task's turn (App.uplink_task: one frame
# at a time on the modem), on FPort 13, never as readings: the readings' seq and the delivery
# ledger are not touched. The airtime budget decides first: the duty cycle reopening within 20 s
# (the previous uplink's pause) is waited out, in that turn; closed for longer, or the daily cap
# used up, the test is refused with the wait, and nothing is sent.
#
# The test uplink (FPort 13): byte 0 version = 1, byte 1 the test's number since boot (mod 256).
# The LinkCheckReq (AT+LINKCHECK=1) makes the network answer in the uplink's receive windows
# (+EVT:LINKCHECK:0:<margin dB>:<gateways>:<rssi>:<snr>): the round trip proven, with how well
# the gateways heard the board. No answer: "sent, not confirmed", which is what it is.
import time

import asyncio
from micropython import const

from lanterne.transport import airtime
from lanterne.transport.link import CONNECTING, OFFLINE

FPORT_TEST = const(13)
VERSION = const(1)
_CONNECT_MS = const(45000)  # a connect: up to 14 AT commands (1.5 s each at worst) + a join's 12 s
_TURN_MS = const(30000)  # the uplink task's turn: DevAddr, LinkCheck, AT+SEND (3 busy retries), TX_DONE's 10 s, DR
_WAIT_MAX_MS = const(20000)  # a closed duty cycle that reopens within this is waited out; beyond, refused
_ANSWER_MS = const(1500)  # the link check's answer, when TX_DONE came first

_number = 0  # tests since boot (the frame's byte 1)


def _reason(why):
    # what the page shows first: a short word for why the link is not up
    if why is None:
        return None
    if "UART" in why or "not answering" in why:
        return "no modem"
    if "duty cycle" in why or "BUSY" in why or "busy" in why:
        return "busy"
    if why.startswith("lorawan: join"):
        return "join failed"
    if "no session" in why:
        return "session lost"  # the next press joins again
    return "error"


class LinkTest:
    def __init__(self, app):
        self.app = app
        self.running = True
        self.stage = "joining"
        self.joined = False
        self.join = None  # "joined now" or "session kept"
        self.sent = False
        self.check = None  # (margin dB, gateways, rssi dBm, snr dB) of the network's LinkCheckAns
        self.devaddr = None
        self.dr = None
        self.air_ms = 0
        self.error = None
        self.reason = None
        self.wait_s = None
        self.waited_s = 0  # the duty cycle's short wait, waited out before sending
        self._taken = False  # the uplink task's turn has begun
        self._done = False  # ... and is over
        self._forward = None

    def report(self):
        link = self.app.link
        b = link.budget
        d = {
            "transport": "lorawan", "running": self.running, "stage": self.stage, "ok": self.sent,
            "joined": self.joined, "join": self.join, "devaddr": self.devaddr, "dr": self.dr,
            "sf": airtime.SF[self.dr] if self.dr is not None else None,
            "confirmed": self.check is not None, "gateways": None, "margin_db": None,
            "rssi": None, "snr": None, "airtime_ms": self.air_ms,
            "airtime_day_s": b.used_ms(link.now()) / 1000, "airtime_cap_s": b.cap_ms // 1000,
            "error": self.error, "reason": self.reason, "wait_s": self.wait_s, "waited_s": self.waited_s,
        }
        if self.check is not None:
            d["margin_db"], d["gateways"], d["rssi"], d["snr"] = self.check
        elif link.rx is not None:  # no answer to this test: the last downlink's, if any
            d["rssi"], d["snr"] = link.rx
        return d

    def _fail(self, reason, error, wait_s=None):
        self.reason = reason
        self.error = error
        self.wait_s = wait_s

    async def run(self):
        global _number
        try:
            await self._run()
        except Exception as e:  # a bug here must not take the page down: the result says so
            self._fail("error", "link test: %r" % (e,))
        finally:
            s = self.app.setup
            if s is not None and not self._taken:
                s.turn = None  # (a turn not taken yet: withdrawn)
            self.stage = "done"
            self.running = False
            _number += 1
            if self.sent:
                self.app.log("setup: LoRaWAN link test: uplink sent at DR%d (%d ms on air), %s" % (
                    self.dr, self.air_ms, "the network answered (margin %d dB, %d gateway(s))" % self.check[:2] if self.check else "not confirmed"))
            else:
                self.app.log("setup: LoRaWAN link test failed (%s): %s" % (self.reason, self.error))

    async def _run(self):
        app = self.app
        link = app.link
        if link.at is None:
            self._fail("no modem", link.last_error or "lorawan: no UART for the modem")
            return
        # The turn is asked for first: when the link comes up, the test uplink goes before the
        # readings waiting for it (they would close the duty cycle's sub-band).
        app.setup.turn = self._turn
        app.uplink_due.set()
        if link.up:
            self.join = "session kept"
        elif not await self._connect(link):
            return
        self.joined = True
        t0 = time.ticks_ms()
        while not self._done and time.ticks_diff(time.ticks_ms(), t0) < _TURN_MS:
            await asyncio.sleep_ms(100)
            if not self._taken and not link.up:  # down before its turn came: nothing was sent
                self._fail(_reason(link.last_error) or "error", link.last_error or "the link went down before the test uplink")
                return
        if not self._done:
            self._fail("busy", "the modem was busy: the test uplink did not go within %d s" % (_TURN_MS // 1000))

    async def _connect(self, link):
        # The link task's connect(), now: one attempt, its outcome read off the link.
        from lanterne.transport.lorawan import F_SPREAD

        joins = link.counts[2]  # C_JOINS
        connects = link.connects
        t0 = time.ticks_ms()
        # an attempt begun before the press (the link task's own) is let finish: its failure
        # would say what the modem did before, not now
        while link.state == CONNECTING and time.ticks_diff(time.ticks_ms(), t0) < _CONNECT_MS:
            await asyncio.sleep_ms(50)
        before = link.last_error
        link._flags &= ~F_SPREAD
        link.next_try = time.ticks_ms()
        seen = False
        while time.ticks_diff(time.ticks_ms(), t0) < _CONNECT_MS:
            await asyncio.sleep_ms(50)
            if link.up or link.connects != connects:
                self.join = "joined now" if link.counts[2] != joins else "session kept"
                return True
            if link.state == CONNECTING:
                seen = True
            elif link.state == OFFLINE and (seen or link.last_error is not before):
                if link.last_error is None or "random spread" not in link.last_error:
                    break
                # an attempt begun before this test held back for the boot's spread: once more, now
                before = link.last_error
                seen = False
                link._flags &= ~F_SPREAD
                link.next_try = time.ticks_ms()
        why = link.last_error
        if link.state == CONNECTING or why is before or why is None:
            why = "lorawan: no outcome of the join within %d s" % (_CONNECT_MS // 1000)
        self._fail(_reason(why), why)
        return False

    async def _turn(self, link):
        # Run by the app's uplink task (App.uplink_task), the only sender on the modem.
        at = link.at
        self._taken = True
        self.stage = "sending"
        try:
            # the budget first: closed, the test is refused with its wait (nothing is sent)
            self.dr = link.dr
            wait = link.budget.wait_ms(link.now(), airtime.uplink_ms(2, link.dr, 1))
            if wait < 0:
                self._fail("airtime cap", "the daily airtime cap of %d s is used up: test again when the last 24 hours have room"
                           % (link.budget.cap_ms // 1000), 3600)
                return
            if wait > _WAIT_MAX_MS:
                w = (wait + 999) // 1000
                self._fail("duty cycle", "the duty cycle allows the next uplink in %d s: try again then" % w, w)
                return
            if wait > 0:
                # a short wait (the previous uplink's): waited out in this turn, so the readings
                # queued behind do not take the sub-band first when it reopens
                self.stage = "waiting"
                self.wait_s = (wait + 999) // 1000
                await asyncio.sleep_ms(wait + 20)
                self.waited_s = self.wait_s
                self.wait_s = None
                self.stage = "sending"
            v = await at.query(b"DEVADDR", link.cmd_ms)
            if v is not None and len(v) == 8 and v != "00000000":
                self.devaddr = v.upper()
            if not link.fopts and await at.command(b"AT+LINKCHECK=1", link.cmd_ms) == "OK":
                link.fopts = 1  # the LinkCheckReq rides in FOpts (one byte less for the payload)
            self.dr = link.dr
            frame = bytes((VERSION, _number & 255))
            air = airtime.uplink_ms(len(frame), link.dr, link.fopts)
            self._forward = at.on_line
            at.on_line = self._line
            fault = link.last_fault
            try:
                self.sent = await link._send(FPORT_TEST, frame, 0)
                if self.sent:
                    self.air_ms = air
                    t0 = time.ticks_ms()
                    while self.check is None and link.fopts and time.ticks_diff(time.ticks_ms(), t0) < _ANSWER_MS:
                        await asyncio.sleep_ms(50)
                        at.pump()
            finally:
                at.on_line = self._forward
            if not self.sent:
                why = link.last_error if not link.up else (link.last_fault if link.last_fault is not fault else None)
                w = at.wait_ms // 1000 + 1 if why and "Restricted_Wait" in why else None
                self._fail((_reason(why) or "not sent") if w is None else "duty cycle", why or "the test uplink was not sent", w)
        finally:
            self._done = True

    def _line(self, text):
        # +EVT:LINKCHECK:<0 ok|1 none>:<margin>:<gateways>:<rssi>:<snr> (RUI3), then on to the link's own handler
        if text.startswith("+EVT:LINKCHECK:0:"):
            try:
                p = text.split(":")
                self.check = (int(p[3]), int(p[4]), int(p[5]), int(p[6]))
            except (ValueError, IndexError):
                pass
        self._forward(text)
