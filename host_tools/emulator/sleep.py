"""Deep sleep of a virtual board: what the ESP32 keeps while it sleeps, what wakes it, and time.

`machine.deepsleep(ms)` on the ESP32 powers the CPUs and their RAM down: the interpreter ends
and the heap is lost; the RTC domain stays powered, so its slow memory (`machine.RTC().memory()`,
2 KB on the ESP32 port) and its clock survive, and the chip boots again from the ROM with
`machine.reset_cause() == machine.DEEPSLEEP_RESET` and `machine.wake_reason()` saying what
woke it: the timer (TIMER_WAKE = 4), an RTC pin at its level (`esp32.wake_on_ext0(pin, level)`:
EXT0_WAKE = PIN_WAKE = 2), or any/all of a set of RTC pins (`esp32.wake_on_ext1`: EXT1_WAKE = 3).

`DeepSleep` keeps that state for one `VirtualBoard`, on the host, across its interpreters:

- RTC memory and the RTC clock: kept across deep sleep and the resets that leave the RTC
  domain powered (`machine.reset()`, the watchdog, a panic, a soft reboot); lost when the
  supply drops (`power_cut`) and when EN is pressed (the EN pin powers the whole chip down).
- Wake sources, armed by the interpreter that goes to sleep (each boot starts with none, as
  the port's `machine_rtc_config` does) and checked while it sleeps: a level already present
  when the board goes to sleep wakes it at once, as the ESP32's level-triggered ext0/ext1 do.
- The world clock may run faster than real time while the board sleeps: the world quantity
  `sleep_speedup` (1 .. 1e6; `lanterne world --port P set sleep_speedup=1000`). A sleep of
  `ms` takes `ms / sleep_speedup` of real time and the world clock (`World.now()`, what NTP
  serves) and the board's RTC move on by the whole `ms`
  (`World.advance`). An alarm pin during such a sleep wakes the board at once; the world
  time that passed is the real time times the speedup. Awake, the board runs in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from host_tools.emulator.hal import input_change_wait

RTC_POWER_ON_EPOCH = 946684800  # what the ESP32's RTC reads at power-on: 2000-01-01, Unix seconds
RTC_MEMORY_MAX = 2048  # MICROPY_HW_RTC_USER_MEM_MAX on the ESP32 port
WAKE_UNDEFINED, WAKE_EXT0, WAKE_EXT1, WAKE_TIMER = 0, 2, 3, 4  # esp_sleep_wakeup_cause_t
RTC_GPIOS = frozenset((0, 2, 4, 12, 13, 14, 15, 25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39))
#: reset kinds after which the RTC domain kept its power (memory and clock kept)
RTC_KEPT = frozenset(("deepsleep", "software", "wdt", "panic", "soft-friendly", "soft-raw"))
# how often a sleeping board's wake pins are looked at when the part driving one cannot say when
# it changes (hal.input_change_wait); a pin the world sets is looked at on every world change
_POLL_S = 0.01


def cpu_seconds(pid: int | None) -> float:
    """CPU time a process's threads have used (Linux schedstat, ns resolution); 0 when unknown."""
    if pid is None:
        return 0.0
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return total / 1e9


class DeepSleep:
    """One board's RTC domain: memory, clock, wake sources; and its sleeps."""

    def __init__(self, board):
        self.board = board
        self.rtc_memory = b""
        self.rtc_offset_ms: int | None = None  # RTC clock - board clock (ms), once the RTC was set
        self.ext0: tuple[int, int] | None = None  # (pin, level)
        self.ext1: tuple[tuple[int, ...], int] | None = None  # (pins, 1: any high / 0: all low)
        self.wake_reason = WAKE_UNDEFINED
        self.sleeps = 0  # deep sleeps entered since the emulator started
        self.asleep_since: float | None = None  # host monotonic time the current sleep began
        self.slept_world_s = 0.0  # world seconds spent asleep, all sleeps
        self.awake_real_s = 0.0  # host seconds between boot and sleep, all wakes (a benchmark reads it)
        #: one entry per sleep entered: {"wall_s": host seconds from the ROM's BOOTED to the sleep
        #: request (what the firmware did: boot.py, main.py), "cpu_s": CPU time the interpreter
        #: used meanwhile} (lanterne bench battery turns them into ESP32 awake times)
        self.wake_log: list[dict] = []
        self._booted: tuple[float, float] | None = None  # (monotonic, cpu seconds) at BOOTED
        self._task: asyncio.Task | None = None
        self._changed: asyncio.Event | None = None

    # -- what the interpreter asks over the HAL ----------------------------------------
    def request(self, op: str, args: list[str]) -> str:
        if op == "RTCMEM":
            data = bytes.fromhex(args[0]) if args and args[0] != "-" else b""
            if len(data) > RTC_MEMORY_MAX:
                raise ValueError("RTC memory holds at most %d bytes" % RTC_MEMORY_MAX)
            self.rtc_memory = data
            return "OK"
        if op == "RTCCLK":
            self.rtc_offset_ms = int(args[0])
            return "OK"
        if op == "WAKE":
            kind, rest = args[0], args[1:]
            if kind == "ext0":
                self.ext0 = None if rest[0] == "-" else (int(rest[0]), int(rest[1]))
            elif kind == "ext1":
                pins = tuple(p for p in range(40) if int(rest[0]) >> p & 1)
                self.ext1 = (pins, int(rest[1])) if pins else None
            else:
                raise ValueError(kind)
            return "OK"
        raise ValueError(op)

    def env(self, kind: str) -> dict[str, str]:
        """What a new interpreter starts with (after `kind` of reset): RTC memory, clock, wake reason."""
        if kind not in RTC_KEPT:
            self.lose()
        if kind != "deepsleep":
            self.wake_reason = WAKE_UNDEFINED
        self.ext0 = self.ext1 = None  # each boot arms its own wake sources
        ahead = self.board.world.slept_ahead_s
        if self.rtc_offset_ms is None:  # powered up: the RTC counts from 2000-01-01 00:00 UTC
            self.rtc_offset_ms = int((RTC_POWER_ON_EPOCH - (time.time() + ahead)) * 1000)
        return {
            "LANTERNE_RTC_MEMORY": self.rtc_memory.hex(),
            "LANTERNE_RTC_OFFSET_MS": str(self.rtc_offset_ms),
            "LANTERNE_WAKE_REASON": str(self.wake_reason),
            "LANTERNE_CLOCK_AHEAD": repr(ahead),
        }

    def lose(self) -> None:
        """The RTC domain lost power (supply cut, EN pressed): its memory and its clock are gone."""
        self.rtc_memory = b""
        self.rtc_offset_ms = None

    # -- what each wake cost ------------------------------------------------------------
    def booted(self, pid: int | None) -> None:
        """The ROM is up (BOOTED): the firmware's share of this wake starts now."""
        self._booted = (time.monotonic(), cpu_seconds(pid))

    def requested(self, pid: int | None) -> None:
        """The firmware asked for deep sleep: what this wake cost since BOOTED."""
        if self._booted is not None:
            t0, c0 = self._booted
            self.wake_log.append({"wall_s": time.monotonic() - t0, "cpu_s": max(0.0, cpu_seconds(pid) - c0)})
        self._booted = None

    # -- sleeping ---------------------------------------------------------------------
    @property
    def asleep(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, ms: int, awake_s: float | None = None) -> None:
        """The interpreter went to sleep for `ms` (0: until a wake pin or a reset): boot it again then."""
        self.sleeps += 1
        if awake_s is not None:
            self.awake_real_s += awake_s
        self.asleep_since = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._sleep(ms))

    def cancel(self) -> None:
        """The sleep ends without a wake (power cut, EN, the emulator closing)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            self._account(time.monotonic() - (self.asleep_since or time.monotonic()), None)
        self._task = None
        self.asleep_since = None

    def _pin_reason(self) -> int:
        read = self.board.parts.pin_read
        if self.ext0 is not None and read(self.ext0[0]) == self.ext0[1]:
            return WAKE_EXT0
        if self.ext1 is not None:
            pins, level = self.ext1
            levels = [read(p) for p in pins]
            if (level and any(levels)) or (not level and not any(levels)):
                return WAKE_EXT1
        return WAKE_UNDEFINED

    async def _sleep(self, ms: int) -> None:
        world = self.board.world
        speedup = float(world.get("sleep_speedup"))
        start = time.monotonic()
        real_s = ms / 1000.0 / speedup if ms > 0 else None
        reason = WAKE_TIMER
        watch = self.ext0 is not None or self.ext1 is not None
        changed = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_world(what, values):
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(changed.set)

        if watch:
            world.subscribe(on_world)
        try:
            while True:
                if watch:
                    r = self._pin_reason()
                    if r:
                        reason = r
                        break
                left = None if real_s is None else real_s - (time.monotonic() - start)
                if left is not None and left <= 0:
                    break
                # the wake pins wake it through the world (`changed`) or, for a part's input that
                # changes by itself, when that part says (polled every _POLL_S when it cannot say)
                pins = ([self.ext0[0]] if self.ext0 else []) + (list(self.ext1[0]) if self.ext1 else [])
                by_itself = input_change_wait(self.board.parts, pins, _POLL_S) if watch else None
                wait = left if by_itself is None else (by_itself if left is None else min(left, by_itself))
                if wait is None and not watch:
                    await asyncio.sleep(3600)
                    continue
                changed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), wait)  # (None: until the world changes)
        finally:
            if watch:
                world.unsubscribe(on_world)
        elapsed = time.monotonic() - start
        self._account(elapsed, ms if reason == WAKE_TIMER and ms > 0 else None)
        self.wake_reason = reason
        self._task = None
        self.asleep_since = None
        self.board.wake_from_sleep()

    def _account(self, real_s: float, ms: int | None) -> None:
        # The world (and the board's clock) moved on by what the sleep lasted in world time: the
        # timer's whole period, or the real time times the speedup when something else ended it.
        speedup = float(self.board.world.get("sleep_speedup"))
        world_s = ms / 1000.0 if ms is not None else real_s * speedup
        self.slept_world_s += world_s
        self.board.world.advance(max(0.0, world_s - real_s))
