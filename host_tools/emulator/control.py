"""Control socket of a running virtual board (`PATH.ctl`): JSON lines in, JSON lines out.

Requests: {"op": "get"} -> world snapshot (with "listening": the firmware's listening sockets,
board "ip:port" -> the host's "127.0.0.1:port" that reaches it); {"op": "set", "values": {...}};
{"op": "inject", "part": "bme280", "fault": "nack"}; {"op": "clear", "part": ...};
{"op": "power_cut"}; {"op": "power_on"}; {"op": "reset"} (EN pressed);
{"op": "download"} (BOOT held, EN pressed: the ROM serial bootloader waits for esptool).
Used by `lanterne world` and by tests that run `lanterne emulate` as a separate process.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from host_tools import boards


def parse_assignments(items: list[str]) -> dict:
    from host_tools.emulator.world import DEFAULTS

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        if isinstance(DEFAULTS.get(key.strip()), str):  # text quantities: a sound scene, a file
            out[key.strip()] = value
            continue
        low = value.strip().lower()
        out[key.strip()] = {"true": True, "on": True, "up": True, "false": False, "off": False, "down": False}.get(
            low, value
        )
        if not isinstance(out[key.strip()], bool):
            try:
                out[key.strip()] = float(value)
            except ValueError:
                raise ValueError(f"{key}: not a number: {value!r}") from None
    return out


class ControlServer:
    def __init__(self, handle, path: str):
        self.handle = handle
        self.path = path
        self._sock = None
        self._thread = None

    def start(self):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def stop(self):
        if self._sock:
            self._sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _serve(self):
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn):
        with conn, conn.makefile("rwb") as f:
            for line in f:
                try:
                    reply = self.dispatch(json.loads(line))
                except Exception as exc:  # report any bad request to the caller
                    reply = {"ok": False, "error": str(exc)}
                f.write((json.dumps(reply) + "\n").encode())
                f.flush()

    def dispatch(self, req: dict) -> dict:
        h = self.handle
        op = req.get("op")
        if op == "get":
            listening = {f"{ip}:{port}": f"127.0.0.1:{hp}" for (ip, port), hp in h.board.listening.items()}
            return {"ok": True, **h.world.snapshot(), "boots": h.boots, "listening": listening}
        if op == "set":
            h.world.set(**req["values"])
            return {"ok": True}
        if op == "inject":
            h.world.inject(req["part"], req["fault"])
            return {"ok": True}
        if op == "clear":
            h.world.clear(req.get("part"))
            return {"ok": True}
        if op == "power_cut":
            h.power_cut()
            return {"ok": True}
        if op == "power_on":
            h.power_on()
            return {"ok": True}
        if op == "reset":
            h.hard_reset()
            return {"ok": True}
        if op == "download":
            h.enter_download()
            return {"ok": True}
        raise ValueError(f"unknown op {op!r}")


def request(path: str, req: dict, timeout: float = 10.0) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError as exc:
        raise ConnectionError(f"no virtual board control socket at {path} ({exc.strerror})") from None
    with s, s.makefile("rwb") as f:
        f.write((json.dumps(req) + "\n").encode())
        f.flush()
        reply = json.loads(f.readline())
    if not reply.get("ok"):
        raise ValueError(reply.get("error", "request failed"))
    return reply


class ControlError(ConnectionError):
    """A virtual board's control socket did not do what was asked: one line, and what to do."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def generated_firmware(board: boards.Board | None) -> Path:
    """The MicroPython image a virtual board of `board` runs: generated, with the board's ROMFS partition.

    It carries the version the virtual board's interpreter reports in its banner ('v1.29.0-preview'),
    so what `lanterne flash` says it wrote is what the board then says it runs."""
    from host_tools.emulator.firmware_image import micropython_image_path
    from host_tools.runtime import unix_port

    return micropython_image_path(unix_port.version(), romfs_bytes=board.romfs_bytes if board else 0)


@dataclass
class VirtualControl:
    """What `lanterne flash` needs of a board without DTR/RTS lines: hold BOOT + press EN
    (enter_download), press EN (reset), and the firmware to write when none is given."""

    enter_download: Callable[[], None]
    reset: Callable[[], None]
    default_firmware: Callable[[boards.Board | None], Path] = generated_firmware

    @classmethod
    def for_port(cls, port: str) -> VirtualControl | None:
        """The control socket of a board served by `lanterne emulate --port PORT`, if there is one."""
        ctl = Path(f"{port}.ctl")
        if not ctl.exists():
            return None

        def call(op: str) -> None:
            try:
                request(str(ctl), {"op": op})
            except ConnectionError as exc:
                raise ControlError(
                    f"virtual board on {port} does not answer its control socket ({exc})",
                    hint="is `lanterne emulate --port PORT` still running?",
                ) from None
            except ValueError as exc:
                raise ControlError(
                    f"virtual board on {port} refused '{op}': {exc}",
                    hint="this emulator has no download mode; update Lanterne",
                ) from None

        return cls(enter_download=lambda: call("download"), reset=lambda: call("reset"))
