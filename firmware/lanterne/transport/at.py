# Lanterne AT line channel: one command at a time on a UART, lines read back without ever
# blocking, and everything the modem says on its own (events, a reset banner) handed on.
#
# Lines end in CR LF (RUI3: 115200 8N1). The line is what counts, not the bytes around it: noise
# on the wire (bytes outside printable ASCII are dropped and counted; printable junk before a
# token is skipped by looking for the token), a line longer than LINE_MAX (dropped whole), a
# reply cut short by a reset (`AT_` then the banner). A command's answer is its final status
# line (`OK` or any `AT_...`), the `AT+XXX=<value>` line before it when it was a query, and a
# `Restricted_Wait_<ms>_ms` line before `AT_BUSY_ERROR` when the duty cycle is what refused.
# Every wait is bounded; nothing here raises on what the modem says.
import time

import asyncio
from micropython import const

LINE_MAX = const(512)  # a downlink event holds up to 2 x 222 hex digits
POLL_MS = const(10)  # how often a command in flight looks at the UART

TIMEOUT = ""  # command(): no final status within the bound
RESET = "reset"  # command(): the modem restarted while the command was in flight


def is_banner(line):
    # What a RAK3172 prints when it (re)starts: "RAKwireless RAK3172...", "RUI3 ...", "Current Work Mode: LoRaWAN."
    return "RAK" in line or "RUI" in line or "Current Work Mode" in line


class AtPort:
    # uart: machine.UART (or anything with any(), readinto(), write()); on_line(text) gets every
    # line that is not the answer to a command: +EVT: events, and "reset" for a banner.
    def __init__(self, uart, on_line):
        self.uart = uart
        self.on_line = on_line
        self._rx = bytearray(64)
        self._line = bytearray(LINE_MAX)
        self._n = 0
        self._drop = False  # the line under way is over LINE_MAX: drop it to its end
        self._busy = False  # a command is in flight
        self.status = None  # final status line of the command in flight
        self.value = None  # the AT+XXX=<value> line of a query
        self.wait_ms = 0  # Restricted_Wait_<ms>_ms before AT_BUSY_ERROR
        self.noise = 0  # bytes and lines that were not the AT dialect
        self.resets = 0  # banners seen
        self.last_noise = None

    def pump(self):
        # Read what the UART holds, handle each complete line. Never waits, never raises.
        u = self.uart
        rx = self._rx
        line = self._line
        while True:
            try:
                k = u.any() and u.readinto(rx)
            except Exception:  # a UART driver error: nothing to read now
                return
            if not k:
                return
            for i in range(k):
                b = rx[i]
                if b == 13 or b == 10:
                    if self._drop:
                        self._drop = False
                        self.noise += 1
                    elif self._n:
                        self._handle(bytes(line[: self._n]).decode())
                    self._n = 0
                elif b < 32 or b > 126:
                    self.noise += 1
                elif self._drop:
                    pass
                elif self._n == LINE_MAX:
                    self._drop = True
                    self._n = 0
                else:
                    line[self._n] = b
                    self._n += 1

    def _handle(self, text):
        i = text.find("+EVT:")
        if i >= 0:
            self.on_line(text[i:])
            return
        i = text.find("Restricted_Wait_")
        if i >= 0:
            try:
                self.wait_ms = int(text[i + 16 :].split("_")[0])
            except ValueError:
                self.wait_ms = 1000
            return
        i = text.find("AT_")
        if i >= 0:
            self._final(text[i:])
            return
        i = text.find("AT+")
        if i >= 0:
            if self._busy and "=" in text and not text.endswith("=?"):
                self.value = text[i:]
            return
        if text.endswith("OK"):
            self._final("OK")
            return
        if is_banner(text):
            self.resets += 1
            if self._busy and self.status is None:
                self.status = RESET
            self.on_line(RESET)
            return
        self.noise += 1
        self.last_noise = text[:40]

    def _final(self, status):
        if self._busy and self.status is None:
            self.status = status

    async def command(self, cmd, timeout_ms, arg=None):
        """Send `cmd` (bytes, without CR LF; or a function writing it: cmd(uart, arg)) and wait for
        its final status line: "OK", "AT_...", RESET, or TIMEOUT. `value` holds a query's answer
        line, `wait_ms` a duty-cycle wait."""
        self.pump()  # what came before the command is not its answer
        self.status = self.value = None
        self.wait_ms = 0
        self._busy = True
        try:
            try:
                if callable(cmd):
                    cmd(self.uart, arg)
                else:
                    self.uart.write(cmd)
                self.uart.write(b"\r\n")
            except Exception:
                return TIMEOUT
            t0 = time.ticks_ms()
            while self.status is None:
                if time.ticks_diff(time.ticks_ms(), t0) >= timeout_ms:
                    self.pump()  # a last read: an answer that came while this task was held up counts
                    return self.status or TIMEOUT
                await asyncio.sleep_ms(POLL_MS)
                self.pump()
            return self.status
        finally:
            self._busy = False

    async def query(self, name, timeout_ms):
        """The value of AT+<name>=? as a string, or None (then `status` says why)."""
        st = await self.command(b"AT+" + name + b"=?", timeout_ms)
        v = self.value
        if st != "OK" or v is None:
            if st == "OK":
                self.status = "no value"
            return None
        head = "AT+" + name.decode() + "="
        if not v.startswith(head):
            self.status = "answer %r" % v[:40]
            return None
        return v[len(head) :]
