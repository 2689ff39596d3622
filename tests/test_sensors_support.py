"""Helpers for the driver tests: firmware on the unix port driven step by step, against simulated parts.

`FirmwareRepl(setup, hal=...)` starts one MicroPython process that runs `setup`
(imports, building the driver on the virtual board's `machine` objects) and then
answers one request per line: an expression is evaluated and its value comes
back as JSON, a statement (`run`) is executed. Between two requests the test
changes the simulated world (faults, light, distance ...), so one driver instance
lives through a fault and its recovery, as on a board.

`virtual_parts(board, **world)` is a StandaloneHal (the emulator's HAL server for
one set of simulated parts) with its World: `hal.world`, `hal.parts`, `part(hal, name)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import tempfile

from host_tools import boards
from host_tools.emulator import ROM
from host_tools.emulator.hal import StandaloneHal
from host_tools.emulator.world import World
from host_tools.runtime import paths, unix_port

_LOOP = r"""
import sys, json
def _serve():
    g = globals()
    print(json.dumps({"ok": "ready"}))
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        kind, src = json.loads(line)
        try:
            if kind == "x":
                exec(src, g)
                r = None
            else:
                r = eval(src, g)
            print(json.dumps({"ok": r}))
        except Exception as e:
            sys.print_exception(e, sys.stderr)
            print(json.dumps({"error": repr(e)}))
_serve()
"""


class FirmwareError(AssertionError):
    pass


class FirmwareRepl:
    def __init__(self, setup: str, *, hal: StandaloneHal | None = None, heapsize: int = unix_port.DEFAULT_HEAP):
        fd, self._script = tempfile.mkstemp(suffix=".py")
        with os.fdopen(fd, "w") as f:
            f.write(setup + "\n" + _LOOP)
        env = dict(os.environ, MICROPYPATH=unix_port.micropython_path([ROM] if hal else None))
        if hal is not None:
            env.update(hal.env())
        self.proc = subprocess.Popen(
            [paths.micropython_binary(), "-X", f"heapsize={heapsize}", self._script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        self._reply("setup", 30.0)  # the setup ran (or its traceback is in the error)

    def _ask(self, kind: str, src: str, timeout: float):
        self.proc.stdin.write(json.dumps([kind, src]) + "\n")
        self.proc.stdin.flush()
        return self._reply(src, timeout)

    def _reply(self, src: str, timeout: float):
        if not self._sel.select(timeout):
            raise FirmwareError(f"no answer to {src!r} within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise FirmwareError(f"interpreter ended: {self.proc.stderr.read()}")
        reply = json.loads(line)
        if "error" in reply:
            raise FirmwareError(f"{src!r} raised {reply['error']}")
        return reply["ok"]

    def __call__(self, expr: str, timeout: float = 30.0):
        """Evaluate an expression on the board; its value, through JSON."""
        return self._ask("e", expr, timeout)

    def run(self, code: str, timeout: float = 30.0) -> None:
        """Execute statements on the board."""
        self._ask("x", code, timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        os.unlink(self._script)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def virtual_parts(board: str | dict = "esp32-devkitc", seed: int = 1, **world_values):
    """The simulated parts of a board (name or board data) behind a HAL server, with their world."""
    data = boards.load(board).data if isinstance(board, str) else board
    world = World(seed=seed, **world_values)
    with StandaloneHal(data, world) as hal:
        yield hal


def part(hal: StandaloneHal, name: str):
    """The simulated part called `name` (its type in the board file)."""
    for p in hal.parts.parts:
        if getattr(p, "name", None) == name:
            return p
    raise LookupError(f"no simulated part {name!r} on this board")


def board_with(board: str, *, sensors=None, actuators=None) -> dict:
    """A board file's data with its sensors/actuators replaced (for parts a test needs)."""
    data = json.loads(json.dumps(boards.load(board).data))
    if sensors is not None:
        data["sensors"] = sensors
    if actuators is not None:
        data["actuators"] = actuators
    return data


def test_firmware_repl_evaluates_and_reports_errors():
    with FirmwareRepl("x = 41") as fw:
        fw.run("x += 1")
        assert fw("x") == 42
        try:
            fw("undefined_name")
        except FirmwareError as exc:
            assert "NameError" in str(exc)
        else:  # pragma: no cover
            raise AssertionError("an error on the board must reach the test")
