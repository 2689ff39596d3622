"""The virtual board speaks what an ESP32 running MicroPython speaks on its serial port."""

from __future__ import annotations

import os
import select
import time

import pytest

from host_tools.emulator.board import HEAP_SCALE, rom_heap_overhead


class Serial:
    """A raw client of the board's pty, as a terminal or a host tool opens it."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        self.buf = b""

    def write(self, data: bytes):
        os.write(self.fd, data)

    def read_until(self, marker: bytes, timeout=15.0) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"never saw {marker!r}; got {self.buf[-800:]!r}")
            r, _, _ = select.select([self.fd], [], [], min(left, 0.2))
            if r:
                self.buf += os.read(self.fd, 4096)
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def drain(self, quiet=0.2):
        while True:
            r, _, _ = select.select([self.fd], [], [], quiet)
            if not r:
                return
            os.read(self.fd, 4096)

    def close(self):
        os.close(self.fd)


@pytest.fixture
def bare_board(virtual_boards):
    def make(files=None, wait=">>> ", **kw):
        (h,) = virtual_boards(1, firmware=False, files=files or {}, **kw)
        h.wait_for(wait)
        s = Serial(h.port)
        s.drain()  # what the board printed before we opened the port
        return h, s

    return make


def test_power_on_runs_boot_then_main_then_friendly_repl(bare_board):
    h, s = bare_board(files={"boot.py": "print('in boot')\n", "main.py": "print('in main')\n"})
    out = h.console()
    assert out.index("in boot") < out.index("in main") < out.index(">>> ")
    assert "POWERON_RESET" in out
    assert "MicroPython v1.29" in out and 'Type "help()" for more information.' in out


def test_friendly_repl_evaluates_and_echoes(bare_board):
    h, s = bare_board()
    s.write(b"1 + 2\r")
    out = s.read_until(b">>> ")
    assert out == b"1 + 2\r\n3\r\n>>> "
    s.write(b"for i in range(2):\r")
    s.read_until(b"... ")
    s.write(b"    print('i', i)\r")
    s.read_until(b"... ")
    s.write(b"\r")
    out = s.read_until(b">>> ")
    assert b"i 0\r\ni 1\r\n" in out
    s.write(b"1/0\r")
    out = s.read_until(b">>> ")
    assert b"ZeroDivisionError" in out and b"Traceback" in out


def test_friendly_repl_auto_indents_as_the_esp32_does(bare_board):
    # Typed as a person types, compared byte for byte with what MicroPython's readline echoes.
    h, s = bare_board()
    s.write(b"for i in range(3):\r")
    assert s.read_until(b"...     ").endswith(b"for i in range(3):\r\n...     ")  # indented for the body
    s.write(b"print(i * 10)\r")
    assert s.read_until(b"...     ") == b"print(i * 10)\r\n...     "  # same level again
    s.write(b"\r")
    assert s.read_until(b"...     ") == b"\r\n...     "  # one blank line is not the end of the block yet
    s.write(b"\r")
    assert s.read_until(b"... ") == b"\r\n... "  # two are: no indent, and Enter runs it
    s.write(b"\r")
    assert s.read_until(b">>> ") == b"\r\n0\r\n10\r\n20\r\n>>> "

    # Nested blocks; backspace over an indent removes one level (4 spaces) at a time.
    s.write(b"def f(x):\r")
    s.read_until(b"...     ")
    s.write(b"if x:\r")
    assert s.read_until(b"...         ") == b"if x:\r\n...         "
    s.write(b"return 'yes'\r")
    s.read_until(b"...         ")
    s.write(b"\x7f")
    assert s.read_until(b"\x1b[K") == b"\b\b\b\b\x1b[K"
    s.write(b"return 'no'\r")
    assert s.read_until(b"...     ") == b"return 'no'\r\n...     "
    s.write(b"\x7f\r")
    assert s.read_until(b">>> ") == b"\b\b\b\b\x1b[K\r\n>>> "
    s.write(b"print(f(1), f(0))\r")
    assert s.read_until(b">>> ") == b"print(f(1), f(0))\r\nyes no\r\n>>> "

    # Code pasted with its own indentation: a space right after the auto-indent takes 3 of its 4
    # spaces back and turns auto-indent off for the statement, so the pasted indent is kept.
    s.write(b"if True:\r")
    s.read_until(b"...     ")
    s.write(b"    y = 5\r")
    assert s.read_until(b"... ") == b"\b\b\b   y = 5\r\n... "
    s.write(b"\r")
    s.read_until(b">>> ")
    s.write(b"y\r")
    assert s.read_until(b">>> ") == b"y\r\n5\r\n>>> "


def test_sys_platform_and_os_uname_are_the_esp32_ones(bare_board):
    h, s = bare_board(files={"main.py": "import sys\nif sys.platform == 'esp32':\n    print('main.py sees an esp32')\n"})
    assert "main.py sees an esp32" in h.console()  # firmware that branches on it takes the board's branch
    s.write(b"import sys, os; print(sys.platform); print(os.uname())\r")
    out = s.read_until(b">>> ")
    assert out.endswith(
        b"esp32\r\n(sysname='esp32', nodename='esp32', release='1.29.0-preview', version='v1.29.0-preview on "
        b"2026-07-05', machine='Generic ESP32 module with ESP32')\r\n>>> "
    )
    s.write(b"os.uname().machine, os.uname()[0], len(os.uname()), sys\r")
    assert b"('Generic ESP32 module with ESP32', 'esp32', 5, <module 'sys'>)" in s.read_until(b">>> ")
    # The banner and uname tell the same version.
    assert "MicroPython v1.29.0-preview on 2026-07-05; Generic ESP32 module with ESP32" in h.console()


def test_paste_mode(bare_board):
    h, s = bare_board()
    s.write(b"\x05")
    s.read_until(b"paste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
    s.write(b"x = 6\rprint(x * 7)\r\x04")
    out = s.read_until(b">>> ")
    assert b"42\r\n" in out


def test_raw_repl_and_raw_paste(bare_board):
    h, s = bare_board()
    s.write(b"\r\x01")
    s.read_until(b"raw REPL; CTRL-B to exit\r\n>")
    s.write(b"print('hi'); print(1/0)\x04")
    out = s.read_until(b"\x04>")
    # OK, normal output, EOF, exception output, EOF, prompt
    assert out.startswith(b"OKhi\r\n\x04Traceback")
    assert out.endswith(b"\x04>") and b"ZeroDivisionError" in out
    # raw-paste: the board answers R\x01, the window size and a first window credit
    s.write(b"\x05A\x01")
    header = s.read_until(b"\x01", timeout=5)
    header += s.read_until(b"\x01", timeout=5)
    assert header[:2] == b"R\x01"
    window = header[2] | header[3] << 8
    assert window == 128
    code = b"total = sum(range(100))\nprint('total', total)\n" + b"# pad\n" * 40
    sent = 0
    credit = 2 * window
    while sent < len(code):
        n = min(credit, len(code) - sent)
        s.write(code[sent : sent + n])
        sent += n
        credit -= n
        if credit == 0:
            s.read_until(b"\x01", timeout=5)
            credit += window
    s.write(b"\x04")
    out = s.read_until(b"\x04>", timeout=10)
    assert b"total 4950" in out
    s.write(b"\x02")
    s.read_until(b">>> ")


def test_ctrl_c_interrupts_main_and_ctrl_d_soft_reboots(bare_board):
    h, s = bare_board(
        files={
            "boot.py": "print('boot ran')\n",
            "main.py": "import time\nprint('main start')\nwhile True:\n    time.sleep_ms(10)\n",
        },
        wait="main start",
    )
    s.write(b"\x03")
    out = s.read_until(b">>> ")
    assert b"KeyboardInterrupt" in out
    boots = h.boots
    # Ctrl-D at the friendly REPL: soft reboot, boot.py and main.py run again
    s.write(b"\x04")
    out = s.read_until(b"main start")
    assert b"MPY: soft reboot\r\n" in out and b"boot ran" in out
    assert h.boots == boots + 1
    s.write(b"\x03")
    s.read_until(b">>> ")
    # From the raw REPL, a soft reboot runs boot.py but not main.py and stays in raw REPL
    s.write(b"\r\x01")
    s.read_until(b"raw REPL; CTRL-B to exit\r\n>")
    s.write(b"\x04")
    out = s.read_until(b"raw REPL; CTRL-B to exit\r\n", timeout=15)
    assert b"OK\r\nMPY: soft reboot\r\n" in out and b"boot ran" in out and b"main start" not in out
    # machine.soft_reset() from raw REPL code behaves the same
    s.write(b"import machine; machine.soft_reset()\x04")
    out = s.read_until(b"raw REPL; CTRL-B to exit\r\n", timeout=15)
    assert b"MPY: soft reboot" in out and b"main start" not in out


def test_machine_reset_is_a_hard_reboot(bare_board):
    h, s = bare_board(files={"main.py": "import machine\nprint('cause', machine.reset_cause())\n"})
    assert "cause 1" in h.console()
    s.write(b"import machine; machine.reset()\r")
    out = s.read_until(b">>> ", timeout=20)
    assert b"SW_CPU_RESET" in out and b"cause 5" in out  # SOFT_RESET, as the ESP32 port reports it


def test_power_cut_keeps_flash_and_boots_again(bare_board):
    h, s = bare_board(
        files={
            "main.py": (
                "n = 0\n"
                "try:\n    n = int(open('count').read())\nexcept OSError:\n    pass\n"
                "open('count', 'w').write(str(n + 1))\nprint('boot number', n + 1)\n"
            )
        },
        wait="boot number 1",
    )
    h.power_cut()
    assert (h.flash / "count").read_text() == "1"
    h.power_on()
    h.wait_for("boot number 2")


def test_filesystem_is_the_flash_folder_and_jailed(bare_board):
    h, s = bare_board()
    s.write(b"import os; open('/hello.txt','w').write('x'); print(sorted(os.listdir('/')))\r")
    out = s.read_until(b">>> ")
    assert b"hello.txt" in out
    assert (h.flash / "hello.txt").read_text() == "x"
    s.write(b"open('/../../../../etc/hostname').read()\r")
    out = s.read_until(b">>> ")
    assert b"OSError" in out
    s.write(b"print(os.statvfs('/')[0] * os.statvfs('/')[2])\r")
    out = s.read_until(b">>> ")
    assert b"2097152" in out  # the board file's filesystem size, not the host disk


def test_heap_is_the_board_heap(bare_board):
    h, s = bare_board()
    s.write(b"import gc; gc.collect(); print('free', gc.mem_free())\r")
    out = s.read_until(b">>> ")
    free = int(out.split(b"free ")[1].split(b"\r")[0])
    heap = int(102400 * HEAP_SCALE)  # esp32-devkitc heap_bytes, in this 64-bit port's bytes
    # The ROM allocated the qstr pool the firmware's names go into (1280 entries of a pointer, a
    # hash and a length, rom/_board.py) and charged it to the firmware, as the ESP32's pools are.
    pool = 1280 * (8 + 3) + 64
    assert heap * 0.85 < free + pool <= heap
    # A firmware that needs more than the board has fails here as it would on the board.
    s.write(b"x = bytearray(%d)\r" % (heap + 4096))
    out = s.read_until(b">>> ")
    assert b"MemoryError" in out
    assert rom_heap_overhead() > 0


def test_crash_of_the_interpreter_reboots_the_board(bare_board):
    h, s = bare_board(files={"main.py": "print('up')\n"})
    boots = h.boots
    os.kill(h.board.proc.pid, 9)  # the interpreter dies without the emulator asking for it
    h.wait_for("Guru Meditation", timeout=10)
    since = h.console_offset()
    h.wait_for(">>> ", since=since - 200)
    assert h.boots == boots + 1


def test_watchdog_resets_a_stuck_board(bare_board):
    h, s = bare_board(
        files={
            "main.py": (
                "import machine, time\nprint('cause', machine.reset_cause())\n"
                "if machine.reset_cause() != machine.WDT_RESET:\n"
                "    w = machine.WDT(timeout=300)\n    w.feed()\n    while True:\n        time.sleep_ms(50)\n"
            )
        },
        wait="cause 1",
    )
    h.wait_for("cause 3", timeout=15)
    assert "TG0WDT_SYS_RESET" in h.console()


# A main.py that spends much of its time in the garbage collector, as a firmware on a small heap
# does, passing through a HAL request and the asyncio loop between collections.
_GC_BUSY_MAIN = """
import asyncio, gc, machine
print('main start')
pin = machine.Pin(4, machine.Pin.IN)
live = [[i] * 4 for i in range(500)]
async def loop():
    n = 0
    while True:
        gc.collect()
        n += pin.value()
        await asyncio.sleep_ms(0)
asyncio.run(loop())
"""


def test_ctrl_c_during_garbage_collection_never_locks_the_heap(bare_board):
    # mpremote's Ctrl-C then Ctrl-A, 30 times, landing anywhere in a loop that collects garbage
    # most of the time. When the emulator sent Ctrl-C as SIGINT, the unix port raised
    # KeyboardInterrupt from inside the collector and left the heap locked: "MemoryError: memory
    # allocation failed, heap is locked", a reboot, and "could not enter raw repl" (in ~40% of
    # such tries). Each Ctrl-C must be one KeyboardInterrupt, at a bytecode, and no signal.
    import random

    h, s = bare_board(files={"main.py": _GC_BUSY_MAIN}, wait="main start")
    boots = h.boots
    for _ in range(30):
        time.sleep(random.uniform(0.05, 0.4))
        s.write(b"\r\x03")
        time.sleep(0.02)
        s.write(b"\r\x01")
        out = s.read_until(b"raw REPL; CTRL-B to exit\r\n>", timeout=10)
        assert b"KeyboardInterrupt" in out, out
        assert b"heap is locked" not in out and b"Guru Meditation" not in out, out
        s.write(b"\x02")
        s.read_until(b">>> ")
        s.write(b"\x04")  # soft reboot from the friendly REPL: main.py runs again
        s.read_until(b"main start")
    assert h.boots == boots + 30  # the 30 soft reboots, no crash among them
    assert h.board.interrupt_signals == 0


def test_ctrl_c_ends_a_long_sleep_without_a_signal(bare_board):
    # As on the ESP32, whose sleeps take a Ctrl-C while they wait: time.sleep(), sleep_ms() and
    # machine.lightsleep() are interrupted by the Ctrl-C itself, not by the signal that would
    # follow INTERRUPT_GRACE_S later.
    h, s = bare_board()
    for call in (b"time.sleep(30)", b"time.sleep_ms(30000)", b"machine.lightsleep(30000)"):
        s.write(b"import time, machine; print('sleeping'); " + call + b"\r")
        s.read_until(b"sleeping")
        time.sleep(0.2)
        s.write(b"\x03")
        out = s.read_until(b">>> ", timeout=10)
        assert b"KeyboardInterrupt" in out
    assert h.board.interrupt_signals == 0  # taken from the channel by the sleep, not by a signal


def test_ctrl_c_still_stops_a_pure_computation(bare_board):
    # A loop that calls nothing of the ROM's (no HAL request, poll or sleep) never takes the
    # Ctrl-C from its channel: it gets SIGINT after INTERRUPT_GRACE_S, and only then.
    from host_tools.emulator.board import INTERRUPT_GRACE_S

    h, s = bare_board()
    s.write(b"n = 0\r")
    s.read_until(b">>> ")
    s.write(b"while True: n += 1\r\r")
    s.read_until(b"... ")
    time.sleep(0.5)
    s.drain(0.05)
    t0 = time.monotonic()
    s.write(b"\x03")
    out = s.read_until(b">>> ", timeout=10)
    assert b"KeyboardInterrupt" in out
    assert time.monotonic() - t0 >= INTERRUPT_GRACE_S * 0.9
    assert h.board.interrupt_signals == 1
    # one Ctrl-C, one KeyboardInterrupt: its unread byte does not interrupt the next statement
    s.write(b"import time; time.sleep_ms(300); print('after', n > 0)\r")
    out = s.read_until(b">>> ")
    assert b"after True" in out and b"KeyboardInterrupt" not in out


def test_a_timer_callback_runs_while_the_code_sleeps(bare_board):
    # The ESP32's sleeps run scheduled callbacks as they come; so do the virtual board's, which
    # wait on the wake-up pair the timer's thread writes to (and on the Ctrl-C channel).
    h, s = bare_board()
    s.write(b"import machine, time; hits = []; t0 = time.ticks_ms()\r")
    s.read_until(b">>> ")
    s.write(b"tm = machine.Timer(0, mode=machine.Timer.ONE_SHOT, period=100, "
            b"callback=lambda t: hits.append(time.ticks_diff(time.ticks_ms(), t0))); "
            b"time.sleep_ms(1500); print('hits', hits)\r")
    out = s.read_until(b">>> ", timeout=10)
    hits = [int(x) for x in out.split(b"hits [")[1].split(b"]")[0].split(b",")]
    assert len(hits) == 1 and 100 <= hits[0] < 1000, out  # long before the sleep's end (1500)
