"""Virtual boards for tests and tools: one asyncio loop in a background thread, a synchronous facade.

`Emulator` runs any number of `VirtualBoard`s on one loop (one process for a fleet: each
board still has its own interpreter, flash folder and pty); `add_board()` returns a
`BoardHandle`, thread-safe, with what a test or a tool does to a board: power, reset,
download mode, serial input, console, `wait_for(pattern)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from pathlib import Path

from host_tools import boards as boards_mod
from host_tools.emulator.board import VirtualBoard, rom_heap_overhead
from host_tools.emulator.hal import HalServer
from host_tools.emulator.world import World


class BoardHandle:
    """Synchronous, thread-safe handle on a `VirtualBoard` running in an `Emulator`."""

    def __init__(self, emulator: Emulator, board: VirtualBoard):
        self.emulator = emulator
        self.board = board

    def _call(self, coro, timeout=30):
        return self.emulator._submit(coro, timeout)

    @property
    def world(self) -> World:
        return self.board.world

    @property
    def port(self) -> str:
        return str(self.board.port_path or self.board.pty_name)

    @property
    def flash(self) -> Path:
        return self.board.flash

    def power_cut(self) -> None:
        self._call(self.board.power_cut())

    def power_on(self) -> None:
        self._call(self.board.power_on())

    def hard_reset(self) -> None:
        self._call(self.board.hard_reset())

    def enter_download(self) -> None:
        self._call(self.board.enter_download())

    def write_serial(self, data: bytes) -> None:
        async def go():
            self.board._inject(data)

        self._call(go())

    def console(self) -> str:
        async def get():
            return self.board.console_bytes()

        return self._call(get()).decode("utf-8", "replace")

    def console_offset(self) -> int:
        async def get():
            return self.board._console_total

        return self._call(get())

    def wait_for(self, pattern: str | bytes, timeout: float = 20.0, since: int = 0) -> re.Match:
        """Wait until the serial output (from byte offset `since`) matches `pattern` (regex)."""
        pat = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)

        async def wait():
            deadline = time.monotonic() + timeout
            while True:
                changed = self.board._changed  # taken before reading: output after this wakes us
                data = self.board.console_bytes()
                start = max(0, len(data) - (self.board._console_total - since))
                m = pat.search(data, start)
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"serial output never matched {pattern!r}; last output:\n{data[-2000:].decode('utf-8', 'replace')}"
                    )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(left, 0.5))

        return self._call(wait(), timeout + 5)

    def wait_booted(self, timeout: float = 20.0) -> None:
        async def wait():
            await asyncio.wait_for(self.board.booted_event.wait(), timeout)

        self._call(wait(), timeout + 5)

    def http_url(self, port: int = 80, timeout: float = 0.0) -> str | None:
        """http://127.0.0.1:N/ where the firmware's server listening on `port` (any of the board's
        addresses) is reachable from the host; None if nothing listens there (after `timeout` s)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [hp for (_ip, p), hp in list(self.board.listening.items()) if p == port]
            if found:
                return f"http://127.0.0.1:{found[0]}/"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    @property
    def boots(self) -> int:
        return self.board.boots

    def close(self) -> None:
        self.emulator.remove(self)


class Emulator:
    """Runs virtual boards on one asyncio loop in a background thread; a synchronous facade."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="lanterne-emulator", daemon=True)
        self._thread.start()
        self.hal = HalServer()
        self._submit(self.hal.start())
        self.handles: list[BoardHandle] = []

    def _submit(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add_board(
        self,
        board: str | boards_mod.Board,
        flash_dir: str | Path,
        *,
        port_path: str | Path | None = None,
        world: World | None = None,
        power_on: bool = True,
        **kw,
    ) -> BoardHandle:
        b = board if isinstance(board, boards_mod.Board) else boards_mod.load(board)

        async def make():
            vb = VirtualBoard(b, flash_dir, self.hal, port_path=port_path, world=world, **kw)
            await vb.start(power_on=power_on)
            return vb

        if kw.get("heap_override") is None:
            rom_heap_overhead()  # calibrate outside the loop thread
        handle = BoardHandle(self, self._submit(make()))
        self.handles.append(handle)
        return handle

    def remove(self, handle: BoardHandle) -> None:
        if handle in self.handles:
            self.handles.remove(handle)
            self._submit(handle.board.close())

    def close(self) -> None:
        for h in list(self.handles):
            self.remove(h)
        with contextlib.suppress(Exception):
            self._submit(self.hal.stop(), 5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
