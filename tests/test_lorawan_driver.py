"""The firmware's LoRaWAN AT driver (firmware/lanterne/transport/lorawan.py, at.py) on the MicroPython unix port,
against a scripted RUI3 modem on a fake UART (the UART is the seam: bytes in, bytes out), and against random
and truncated modem output (fuzz). The driver must never hang, never hold the asyncio loop, never raise out of
the link, and name every failure. The end-to-end behaviour against the modem twin is in test_lorawan_board.py."""

from __future__ import annotations

import json

import pytest

from host_tools.runtime import unix_port

HEAP = 256 * 1024  # compiled from source here; the board itself runs at 64 KB (test_lorawan_board.py)

# A modem behind a fake UART, the UART side (MicroPython code; test_provision_modem.py's modem uses it too):
# each line written to it goes to `command(text)`, a subclass's; its answers wait in `out`, or in `later`
# until their time. `script` says what the modem does beyond the happy path, counts used up one per event.
SCRIPTED_MODEM = r"""
class ScriptedModem:
    def __init__(self, nvm, script):
        self.nvm = nvm
        self.script = script
        self.out = bytearray()
        self.line = bytearray()
        self.log = []  # commands received
        self.later = []  # (when, bytes)

    def take(self, key):
        n = self.script.get(key, 0)
        if n:
            self.script[key] = n - 1
        return n

    def emit(self, *lines, delay=0):
        data = b"".join(l.encode() + b"\r\n" for l in lines)
        if delay:
            self.later.append((time.ticks_add(time.ticks_ms(), delay), data))
        else:
            self.out += data

    # the UART side
    def write(self, b):
        for c in bytes(b):
            if c in (13, 10):
                if self.line:
                    self.command(bytes(self.line).decode())
                    self.line = bytearray()
            else:
                self.line.append(c)
        return len(b)

    def any(self):
        now = time.ticks_ms()
        for item in [x for x in self.later if time.ticks_diff(now, x[0]) >= 0]:
            self.later.remove(item)
            self.out += item[1]
        return len(self.out)

    def readinto(self, buf):
        n = min(len(buf), len(self.out))
        buf[:n] = self.out[:n]
        self.out = self.out[n:]
        return n
"""

# A RUI3 modem as a small state machine (MicroPython code, run on the unix port).
MODEM = r"""
import asyncio, json, random, sys, time
from lanterne.transport.link import ACK, READINGS, STATUS
from lanterne.transport.lorawan import LorawanLink

CFG = {"device": "bin-7", "lorawan_confirmed": 0, "lorawan_airtime_s": 30, "lorawan_deveui": "AC1F09FFFE000001",
       "lorawan_joineui": "", "lorawan_appkey": "000102030405060708090A0B0C0D0E0F"}
""" + SCRIPTED_MODEM + r"""

class Modem(ScriptedModem):
    def __init__(self, joined=False, **script):
        super().__init__({"NWM": "1", "NJM": "1", "CLASS": "A", "BAND": "4", "ADR": "1", "CFM": "0", "DEVEUI": "0000000000000000",
                          "APPEUI": "0000000000000000", "APPKEY": "00000000000000000000000000000000", "DR": "5",
                          "LINKCHECK": "0"}, script)
        self.joined = joined

    def command(self, text):
        self.log.append(text)
        if self.script.get("absent"):
            return
        if self.take("reset"):
            self.out += b"AT_\r\nRAKwireless RAK3172 Example\r\nCurrent Work Mode: LoRaWAN.\r\n"
            return
        if self.take("garbage"):
            self.out += bytes([0xFF, 0x00, 0x7E, 0x21])  # noise before the answer
        if text == "AT":
            return self.emit("OK")
        name, _, arg = text[3:].partition("=")
        if arg == "?":
            if name == "NJS":
                return self.emit("AT+NJS=%d" % self.joined, "OK")
            return self.emit("AT+%s=%s" % (name, self.nvm[name]), "OK")
        if name == "JOIN":
            if self.take("join_busy"):
                return self.emit("Restricted_Wait_300_ms", "AT_BUSY_ERROR")
            self.emit("OK")
            if self.take("join_fail"):
                return self.emit("+EVT:JOIN_FAILED_RX_TIMEOUT", delay=30)
            self.joined = True
            return self.emit("+EVT:JOINED", delay=30)
        if name == "SEND":
            if not self.joined:
                return self.emit("AT_NO_NETWORK_JOINED")
            if self.take("busy"):
                return self.emit("AT_BUSY_ERROR")
            if self.take("duty"):
                return self.emit("Restricted_Wait_400_ms", "AT_BUSY_ERROR")
            self.emit("OK")
            events = ["+EVT:TX_DONE"]
            down = self.script.get("down")
            if down:
                self.script["down"] = down[1:]
                rx = "+EVT:RX_1:-97:6:UNICAST:%d:%s" % down[0]
                events = [rx] + events if self.take("rx_first") else events + [rx]
            if self.nvm["LINKCHECK"] != "0":
                self.nvm["LINKCHECK"] = "0"
                events.append("+EVT:LINKCHECK:1:0:0:0:0")
            if self.nvm["CFM"] == "1":  # a confirmed uplink: the network's ACK, or none after the retries
                events.append("+EVT:SEND_CONFIRMED_FAILED(8)" if self.take("cfm_fail") else "+EVT:SEND_CONFIRMED_OK")
            if self.take("no_tx_done"):
                return
            return self.emit(*events, delay=0 if self.take("tx_now") else 20)
        if name in self.nvm:
            self.nvm[name] = arg
            return self.emit("OK")
        self.emit("AT_COMMAND_NOT_FOUND")


def link_for(modem, **cfg):
    got = {"down": [], "ledger": []}
    c = dict(CFG, **cfg)
    link = LorawanLink(c, modem, got["down"].append, state_file=STATE)
    link.on_ledger = got["ledger"].append
    link.cmd_ms, link.join_ms, link.tx_ms = 150, 400, 400
    link._flags = 0  # no random spread before the first join
    link.budget.duty = 10 ** 9  # no duty-cycle pause of its own between sends (the budget has its own test)
    return link, got


async def lag_watch(box):
    # how late a 10 ms tick wakes up: anything holding the loop shows here
    while True:
        t = time.ticks_ms()
        await asyncio.sleep_ms(10)
        box[0] = max(box[0], time.ticks_diff(time.ticks_ms(), t) - 10)
"""


def run_modem(tmp_path, body: str):
    code = MODEM + f"STATE = {str(tmp_path / 'lorawan.json')!r}\n" + body
    out = unix_port.run(code, heapsize=HEAP)
    lines = out.strip().splitlines()
    assert lines, out
    return json.loads(lines[-1])


def test_configures_joins_once_and_keeps_a_session(tmp_path):
    got = run_modem(tmp_path, r"""
async def main():
    m = Modem(join_fail=1)
    link, got = link_for(m)
    first = await link.connect()
    why = link.last_error
    second = await link.connect()
    joins = [c for c in m.log if c.startswith("AT+JOIN")]
    # a reboot of the ESP32: the module kept its session, so no join
    m.log.clear()
    link2, _ = link_for(m)
    third = await link2.connect()
    print(json.dumps({"first": first, "why": why, "second": second, "joins": joins, "nvm": m.nvm, "third": third,
                      "after_reboot": m.log, "failures_file": open(STATE).read(), "dr": link2.dr}))
asyncio.run(main())
""")
    assert got["first"] is False and got["why"] == "lorawan: join failed (JOIN_FAILED_RX_TIMEOUT)"
    assert got["second"] is True and got["joins"] == ["AT+JOIN=1:0:8:1"] * 2
    # identity written from config.json, settings left alone where they were right
    assert got["nvm"]["DEVEUI"] == "AC1F09FFFE000001" and got["nvm"]["APPKEY"] == "000102030405060708090A0B0C0D0E0F"
    assert got["third"] is True and not [c for c in got["after_reboot"] if c.startswith("AT+JOIN") or "=" in c and "?" not in c]
    assert json.loads(got["failures_file"]) == {"join_failures": 0} and got["dr"] == 5


def test_an_answer_already_there_when_a_wait_runs_out_counts(tmp_path):
    # A task held up past its deadline (the host descheduling the interpreter, a long collection)
    # reads what the modem answered meanwhile before it calls the wait a timeout. Deadlines of 0 ms
    # stand in for the hold-up: the answer is there, the time is up at the first look.
    got = run_modem(tmp_path, r"""
async def main():
    m = Modem(joined=True, tx_now=1)
    link, got = link_for(m)
    assert await link.connect()
    out = {"at": await link.at.command(b"AT", 0)}
    link.tx_ms = 0
    out["sent"] = await link.send(READINGS, b"\x02" + bytes(20))
    out["fault"] = link.last_fault
    print(json.dumps(out))
asyncio.run(main())
""")
    assert got == {"at": "OK", "sent": True, "fault": None}


def test_send_busy_duty_cycle_reset_and_downlinks_in_either_order(tmp_path):
    got = run_modem(tmp_path, r"""
async def main():
    cmd = bytes(range(1, 30))
    m = Modem(joined=True, busy=1, down=[(10, cmd.hex()), (12, "0102"), (10, "abc")], rx_first=1)
    link, got = link_for(m)
    assert await link.connect()
    out = {}
    frame = b"\x02" + bytes(range(40))  # a codec frame: its version byte becomes the FPort (102)
    out["sent"] = await link.send(READINGS, frame)  # busy once (windows still open), then through
    out["send_line"] = [c for c in m.log if c.startswith("AT+SEND")][-1]
    out["down"] = [d.hex() for d in got["down"]]
    out["ledger"] = [d.hex() for d in got["ledger"]]
    out["sent2"] = await link.send(ACK, b"\x03\xe8\x00\xaa\xbb\xcc\xdd")
    out["ack_line"] = [c for c in m.log if c.startswith("AT+SEND")][-1]
    out["ledger"] = [d.hex() for d in got["ledger"]]
    out["sent3"] = await link.send(READINGS, frame)  # a malformed downlink (odd hex): a fault, the uplink counts
    out["fault3"] = link.last_fault
    m.script["duty"] = 1
    out["duty"] = await link.send(READINGS, frame)
    out["duty_fault"] = link.last_fault
    out["fits_now"] = link.fits(READINGS, len(frame))
    out["max_frame_now"] = link.max_frame(READINGS)
    out["status"] = await link.send(STATUS, '{"state": "online"}')
    # the module resets in the middle of a command: the link goes down, comes back without a join
    await asyncio.sleep_ms(450)  # (the duty-cycle wait the modem gave)
    m.script["reset"] = 1
    out["reset_send"] = await link.send(READINGS, frame)
    out["reset_why"] = link.last_error
    out["up_after_reset"] = link.up
    m.log.clear()
    await asyncio.sleep_ms(500)
    out["back"] = await link.connect()
    out["rejoined"] = [c for c in m.log if c.startswith("AT+JOIN")]
    # the modem lost its session: AT_NO_NETWORK_JOINED -> down, and the next connect joins
    m.joined = False
    out["lost"] = await link.send(READINGS, frame)
    out["lost_why"] = link.last_error
    out["reconnect"] = await link.connect()
    out["joins"] = len([c for c in m.log if c.startswith("AT+JOIN")])
    # no TX_DONE ever: bounded
    m.script["no_tx_done"] = 1
    await asyncio.sleep_ms(300)
    t = time.ticks_ms()
    out["no_tx_done"] = await link.send(READINGS, frame)
    out["no_tx_done_ms"] = time.ticks_diff(time.ticks_ms(), t)
    out["no_tx_done_why"] = link.last_error
    print(json.dumps(out))
asyncio.run(main())
""")
    assert got["sent"] is True and got["send_line"] == "AT+SEND=102:" + bytes(range(40)).hex()
    assert got["down"] == [bytes(range(1, 30)).hex()]  # the RX event came before TX_DONE: handed to the command handler
    assert got["sent2"] is True and got["ack_line"] == "AT+SEND=11:03e800aabbccdd"
    assert got["ledger"] == ["0102"]  # FPort 12, after TX_DONE
    assert got["sent3"] is True and got["fault3"].startswith("lorawan: malformed downlink event")
    assert got["duty"] is False and got["duty_fault"] == "lorawan: duty cycle: Restricted_Wait_400_ms"
    assert got["fits_now"] is False and got["max_frame_now"] == 0  # the budget is closed: no frame is built
    assert got["status"] is True  # not sent over LoRaWAN
    assert got["reset_send"] is False and got["reset_why"] == "lorawan: AT+SEND: the modem restarted" and not got["up_after_reset"]
    assert got["back"] is True and got["rejoined"] == []
    assert got["lost"] is False and "AT_NO_NETWORK_JOINED" in got["lost_why"]
    assert got["reconnect"] is True and got["joins"] == 1
    assert got["no_tx_done"] is False and got["no_tx_done_ms"] < 1500 and "no TX_DONE within 400 ms" in got["no_tx_done_why"]


def test_confirmed_uplinks_are_taken_only_when_the_network_acknowledged_them(tmp_path):
    # lorawan_confirmed: the module is set to confirmed uplinks (AT+CFM=1), and a frame counts as taken
    # (its readings committed: lanterne/delivery.py) only on +EVT:SEND_CONFIRMED_OK; a confirmed uplink
    # the network never acknowledged is not taken, and says so.
    got = run_modem(tmp_path, r"""
async def main():
    m = Modem(joined=True, cfm_fail=1)
    link, got = link_for(m, lorawan_confirmed=1)
    out = {"up": await link.connect(), "cfm": m.nvm["CFM"]}
    frame = b"\x02" + bytes(range(20))
    out["failed"] = await link.send(READINGS, frame)
    out["failed_fault"] = link.last_fault
    await asyncio.sleep_ms(450)
    out["ok"] = await link.send(READINGS, frame)
    print(json.dumps(out))
asyncio.run(main())
""")
    assert got["up"] is True and got["cfm"] == "1"
    assert got["failed"] is False and got["failed_fault"] == "lorawan: confirmed uplink not acknowledged (SEND_CONFIRMED_FAILED)"
    assert got["ok"] is True


def test_absent_modem_busy_join_and_silence(tmp_path):
    got = run_modem(tmp_path, r"""
async def main():
    out = {}
    m = Modem(absent=1)
    link, _ = link_for(m)
    t = time.ticks_ms()
    out["absent"] = await link.connect()
    out["absent_ms"] = time.ticks_diff(time.ticks_ms(), t)
    out["absent_why"] = link.last_error
    m = Modem(join_busy=2)
    link, _ = link_for(m)
    out["join_busy"] = await link.connect()
    out["join_busy_why"] = link.last_error
    out["failures_kept"] = json.loads(open(STATE).read())
    link, _ = link_for(m)  # a reboot: the backoff goes on from the failures kept
    await link.connect()
    out["failures_after_reboot"] = json.loads(open(STATE).read())["join_failures"]
    out["join"] = await link.connect()
    out["failures_after_join"] = json.loads(open(STATE).read())["join_failures"]
    # silence: no downlink for silence_ms -> LinkCheckReq on the next uplinks; 3 unanswered -> join again
    link.silence_ms = 100
    await asyncio.sleep_ms(150)
    frame = b"\x02" + bytes(10)
    sends = []
    for i in range(3):
        await asyncio.sleep_ms(300)
        sends.append(await link.send(READINGS, frame))
    out["sends"] = sends
    out["linkchecks"] = len([c for c in m.log if c == "AT+LINKCHECK=1"])
    out["down_after_silence"] = not link.up
    out["silence_why"] = link.last_error
    m.log.clear()
    out["rejoin"] = await link.connect()
    out["rejoined"] = [c for c in m.log if c.startswith("AT+JOIN")]
    print(json.dumps(out))
asyncio.run(main())
""")
    assert got["absent"] is False and got["absent_ms"] < 1000
    assert got["absent_why"] == "lorawan: modem not answering (no reply to AT within 150 ms)"
    assert got["join_busy"] is False and got["join_busy_why"] == "lorawan: join refused by the duty cycle (Restricted_Wait_300_ms)"
    assert got["failures_kept"] == {"join_failures": 1} and got["failures_after_reboot"] == 2
    assert got["join"] is True and got["failures_after_join"] == 0
    assert got["sends"] == [True, True, True] and got["linkchecks"] == 3
    assert got["down_after_silence"] and "3 link checks unanswered: joining again" in got["silence_why"]
    assert got["rejoin"] is True and got["rejoined"] == ["AT+JOIN=1:0:8:1"]


FUZZ = r"""
WORDS = ["OK", "AT_ERROR", "AT_BUSY_ERROR", "AT_PARAM_ERROR", "AT_NO_NETWORK_JOINED", "AT_", "Restricted_Wait_%d_ms",
         "AT+NJS=1", "AT+NJS=0", "AT+NWM=1", "AT+DR=5", "AT+DR=9", "AT+DR=x", "+EVT:JOINED", "+EVT:JOIN_FAILED_RX_TIMEOUT",
         "+EVT:TX_DONE", "+EVT:SEND_CONFIRMED_FAILED(4)", "+EVT:RX_1:-90:5:UNICAST:10:%s", "+EVT:RX_2:x:y:UNICAST:12:%s",
         "+EVT:RX_C:-1:2:UNICAST:999999999999:zz", "+EVT:LINKCHECK:0:3:1:-80:7", "+EVT:LINKCHECK", "+EVT:", "RAKwireless RAK3172",
         "Current Work Mode: LoRaWAN.", "AT+", "=", ":"]


class Fuzz(Modem):
    # A modem whose line is bad: most answers are right, but with noise before them, random events and
    # pieces of the dialect among them, lines cut short or far too long, and some commands answered
    # with nothing but junk.
    def __init__(self, rng):
        Modem.__init__(self, joined=bool(rng.getrandbits(1)))
        self.rng = rng
        self.bad = (1, 4, 16)[rng.getrandbits(8) % 3]  # out of 32 commands, that many are mangled

    def word(self):
        r = self.rng
        w = WORDS[r.getrandbits(5) % len(WORDS)]
        if "%d" in w:
            w = w % (r.getrandbits(10))
        elif "%s" in w:
            w = w % "".join("0123456789abcdefXY"[r.getrandbits(5) % 18] for _ in range(r.getrandbits(6)))
        return w

    def junk(self):
        r = self.rng
        for _ in range(r.getrandbits(2) + 1):
            k = r.getrandbits(3)
            if k == 0:
                self.out += bytes(r.getrandbits(8) for _ in range(r.getrandbits(4)))  # noise
            elif k == 1:
                w = self.word().encode()
                self.out += w[: r.getrandbits(4) % (len(w) + 1)]  # truncated, no line end
            elif k == 2:
                self.out += b"A" * (600 + r.getrandbits(6)) + b"\r\n"  # over the line buffer
            else:
                self.out += self.word().encode() + (b"\r\n" if r.getrandbits(3) else b"\n")

    def command(self, text):
        r = self.rng
        if r.getrandbits(5) >= self.bad:
            return Modem.command(self, text)
        k = r.getrandbits(3)
        if k < 2:
            self.junk()  # junk, then the right answer
        if k < 6:
            Modem.command(self, text)
            if self.later and r.getrandbits(1):
                self.later[-1] = (self.later[-1][0], self.later[-1][1][: r.getrandbits(5)])  # an event cut short
        else:
            self.junk()  # junk only
        if k == 5:
            self.junk()


async def case(seed, stats):
    import random as R
    R.seed(seed)
    m = Fuzz(R)
    link, got = link_for(m)
    link.cmd_ms, link.join_ms, link.tx_ms = 50, 100, 100
    for step in range(6):
        t = time.ticks_ms()
        try:
            if not link.up:
                await link.connect()
                assert link.up or link.last_error, "a failed connect says why"
            else:
                stats["sent"] += await link.send([READINGS, ACK, STATUS][step % 3], b"\x02" + bytes(range(step * 7)))
                if step == 5:
                    await link.maintain()
        except Exception as e:
            stats["raised"].append("%d: %r" % (seed, e))
            return
        dt = time.ticks_diff(time.ticks_ms(), t)
        stats["worst_ms"] = max(stats["worst_ms"], dt)
        stats["ups"] += link.up
    stats["downlinks"] += len(got["down"]) + len(got["ledger"])


async def main(first, n):
    stats = {"sent": 0, "ups": 0, "worst_ms": 0, "raised": [], "downlinks": 0}
    box = [0]
    watch = asyncio.create_task(lag_watch(box))
    for seed in range(first, first + n):
        await case(seed, stats)
    watch.cancel()
    stats["lag_ms"] = box[0]
    print(json.dumps(stats))
"""


@pytest.mark.parametrize("first", [0, 1000])
def test_random_and_truncated_modem_output_never_hangs_or_raises(tmp_path, first):
    got = run_modem(tmp_path, FUZZ + f"asyncio.run(main({first}, 30))\n")
    assert got["raised"] == []
    # every operation bounded: the longest is a connect through its timeouts (AT twice, a few queries, a join)
    assert got["worst_ms"] < 2000
    assert got["lag_ms"] < 200  # the loop never held (a 10 ms tick; the unix port on a busy machine jitters)
    assert got["ups"] > 0 and got["sent"] > 0, got  # the random modem also said the right things sometimes
