"""The virtual board sleeps as an ESP32 does: `machine.deepsleep(ms)` ends the interpreter (the
heap is gone) and boots it again after `ms` on the world clock, with DEEPSLEEP_RESET and the wake
reason; RTC memory and the RTC clock survive the sleep, not a power cut or EN; the world clock runs
`sleep_speedup` times faster while the board sleeps; an ext0 wake pin ends a sleep at once."""

from __future__ import annotations

import json
import re
import time

import pytest

from host_tools.emulator.world import WorldError

pytestmark = pytest.mark.integration

# main.py of a board that reports each boot and sleeps again, counting its wakes in RTC memory.
# heap_marker is a module global: set before the sleep, it must not be there after it.
SLEEPER = """\
import json, machine, esp32, time, sys
rtc = machine.RTC()
mem = rtc.memory()
print("BOOT " + json.dumps({"cause": machine.reset_cause(), "wake": machine.wake_reason(),
      "mem": mem.decode(), "t": time.mktime(tuple(rtc.datetime()[i] for i in (0, 1, 2, 4, 5, 6)) + (0, 0)), "rtc": list(rtc.datetime()[:7]),
      "heap_marker": "heap_marker" in globals()}))
n = int(mem or b"0")
if n < {wakes}:
    rtc.memory(b"%d" % (n + 1))
    heap_marker = 1
    {arm}
    machine.deepsleep({ms})
print("AWAKE FOR GOOD")
"""


def boots(h, n, timeout=20.0):
    h.wait_for(r"(BOOT \{.*\}\r\n[\s\S]*){%d}" % n, timeout=timeout)
    return [json.loads(m) for m in re.findall(r"BOOT (\{.*\})\r\n", h.console())]


def sleeper(virtual_boards, wakes=2, ms=600000, arm="pass", speedup=10000.0, board="esp32-devkitc"):
    src = SLEEPER.replace("{wakes}", str(wakes)).replace("{ms}", str(ms)).replace("{arm}", arm)
    (h,) = virtual_boards(1, board=board, firmware=False, files={"main.py": src},
                          world_values={"sleep_speedup": speedup})
    return h


def test_deepsleep_boots_again_after_the_world_time_keeping_rtc_memory(virtual_boards):
    h = sleeper(virtual_boards, wakes=2, ms=600000)  # two 10-minute sleeps at 10 000x: 0.06 s each
    t0 = time.monotonic()
    b = boots(h, 3)
    h.wait_for("AWAKE FOR GOOD")
    real = time.monotonic() - t0
    assert [x["cause"] for x in b] == [1, 4, 4]  # PWRON_RESET, then DEEPSLEEP_RESET
    assert [x["wake"] for x in b] == [0, 4, 4]  # TIMER_WAKE after a timed sleep
    assert [x["mem"] for x in b] == ["", "1", "2"]  # RTC memory kept across both sleeps
    assert not any(x["heap_marker"] for x in b)  # the heap is gone: a fresh interpreter each wake
    # the board's clock and its RTC moved on by the whole sleep, though it took a fraction of that
    for a, z in zip(b, b[1:], strict=False):
        assert 600 <= z["t"] - a["t"] < 600 + real + 2
    assert real < 600
    assert 1199 < h.world.slept_ahead_s < 1200
    assert "rst:0x5 (DEEPSLEEP_RESET)" in h.console()
    assert h.board.sleep.sleeps == 2


def test_rtc_clock_survives_deepsleep_and_counts_the_sleep(virtual_boards):
    arm = "rtc.datetime((2030, 1, 2, 3, 4, 5, 6, 0)) if n == 0 else None"
    h = sleeper(virtual_boards, wakes=1, ms=3600000, arm=arm, speedup=100000.0)
    b = boots(h, 2)
    assert b[0]["rtc"][0] == 2000  # a powered-up RTC counts from 2000-01-01
    assert b[1]["rtc"][:4] == [2030, 1, 2, 2]  # set before the sleep, an hour later after it
    assert b[1]["rtc"][4] == 5 and b[1]["rtc"][5] in (4, 5)


def test_power_cut_during_sleep_loses_rtc_memory_and_clock(virtual_boards):
    arm = "rtc.datetime((2030, 1, 2, 3, 4, 5, 6, 0))"
    h = sleeper(virtual_boards, wakes=5, ms=3600000, arm=arm, speedup=1.0)  # an hour, in real time
    boots(h, 1)
    time.sleep(0.5)
    assert h.board.sleep.asleep and h.board.proc is None  # asleep: no interpreter runs
    h.power_cut()
    assert not h.board.sleep.asleep
    h.power_on()
    b = boots(h, 2)
    assert b[1]["cause"] == 1 and b[1]["wake"] == 0  # a power-on, not a wake
    assert b[1]["mem"] == ""  # RTC memory lost with the supply
    assert b[1]["rtc"][0] == 2000  # and the RTC clock


def test_en_loses_rtc_memory_machine_reset_keeps_it(virtual_boards):
    src = """\
import machine
mem = machine.RTC().memory()
print("MEM[%s] cause %d" % (mem.decode(), machine.reset_cause()))
if not mem:
    machine.RTC().memory(b"kept")
    machine.reset()
"""
    (h,) = virtual_boards(1, firmware=False, files={"main.py": src})
    h.wait_for(r"MEM\[kept\] cause 5")  # machine.reset(): RTC memory kept (SOFT_RESET)
    h.hard_reset()  # EN: the chip powers down, RTC domain included
    h.wait_for(r"MEM\[\] cause 2[\s\S]*MEM\[kept\] cause 5", since=0)


def test_rtc_memory_holds_2kb(virtual_boards):
    src = """\
import machine
try:
    machine.RTC().memory(bytes(2049))
except ValueError as e:
    print("REFUSED", e)
machine.RTC().memory(bytes(range(256)) * 8)
print("HELD", len(machine.RTC().memory()))
"""
    (h,) = virtual_boards(1, firmware=False, files={"main.py": src})
    h.wait_for("HELD 2048")
    assert "REFUSED buffer too long" in h.console()


def test_ext0_pin_wakes_a_sleeping_board_at_once(virtual_boards):
    # GPIO0 is the DevKitC's BOOT button (held: low). Sleep "forever"; the button wakes it.
    arm = "esp32.wake_on_ext0(machine.Pin(0), esp32.WAKEUP_ALL_LOW)"
    h = sleeper(virtual_boards, wakes=1, ms=0, arm=arm, speedup=1.0)
    boots(h, 1)
    time.sleep(0.5)
    assert h.board.sleep.asleep
    t0 = time.monotonic()
    h.world.set(button=True)
    b = boots(h, 2)
    assert time.monotonic() - t0 < 2.0
    assert b[1]["cause"] == 4 and b[1]["wake"] == 2  # DEEPSLEEP_RESET, EXT0_WAKE (PIN_WAKE)


def test_a_wake_level_already_present_wakes_at_once_and_timer_still_counts(virtual_boards):
    # ext0 is level-triggered: asleep with the pin at its level, the board wakes straight away;
    # the world moved on by the real time slept times the speedup, not by the timer's period.
    arm = "esp32.wake_on_ext0(machine.Pin(0), esp32.WAKEUP_ALL_LOW)"
    (h,) = virtual_boards(1, firmware=False, world_values={"button": True, "sleep_speedup": 10.0},
                          files={"main.py": SLEEPER.replace("{wakes}", "1").replace("{ms}", "3600000").replace("{arm}", arm)})
    b = boots(h, 2)
    assert b[1]["wake"] == 2
    assert h.world.slept_ahead_s < 60


def test_wake_pin_must_be_an_rtc_gpio_and_sleep_speedup_has_limits(virtual_boards):
    src = """\
import esp32, machine
for p in (5, 0):
    try:
        esp32.wake_on_ext0(machine.Pin(p), 1)
        print("PIN", p, "ok")
    except ValueError as e:
        print("PIN", p, e)
"""
    (h,) = virtual_boards(1, firmware=False, files={"main.py": src})
    h.wait_for("PIN 0 ok")
    assert "PIN 5 invalid pin for wake" in h.console()
    with pytest.raises(WorldError, match="sleep_speedup=0.5 is out of range"):
        h.world.set(sleep_speedup=0.5)
