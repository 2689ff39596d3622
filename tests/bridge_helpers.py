"""Helpers for the bridge's tests: a fleet registry with a few devices, frames the firmware encodes."""

from __future__ import annotations

from pathlib import Path

from host_tools.codec import encode_values
from host_tools.fleet.registry import Registry

LYON = (45.764043, 4.835659)
# id -> (site, board, lat, lon): a street light with weather sensors, a bin with a bollard.
FLEET = {
    "lamp-1": ("lyon", "esp32-devkitc", 45.764043, 4.835659),
    "lamp-2": ("lyon", "esp32-devkitc", 45.765112, 4.836901),
    "bin-1": ("lyon", "olimex-esp32-poe", 45.762311, 4.833377),
    "bin-2": ("lyon", "olimex-esp32-poe", 45.761900, 4.839120),
}


def make_registry(path: Path, fleet: dict | None = None, **config) -> Path:
    with Registry(path) as reg:
        for device, (site, board, lat, lon) in (fleet or FLEET).items():
            cfg = {"lat": lat, "lon": lon, "sample_period_s": 60}
            cfg.update(config)
            reg.add_or_update(device, site=site, board=board, config=cfg)
    return path


def lamp_reading(seq: int, age: int = 0, **over) -> dict:
    r = {"temperature": 11.5, "humidity": 70.0, "pressure": 1002.5, "illuminance": 3.0, "lamp": 80,
         "lamp_fault": False, "voltage": 12.1, "status": [], "seq": seq, "age": age}
    r.update(over)
    return r


def bin_reading(seq: int, age: int = 0, fill: int = 40, **over) -> dict:
    r = {"temperature": 9.0, "humidity": 80.0, "pressure": 1001.0, "fill": fill, "voltage": 12.0, "status": [],
         "seq": seq, "age": age}
    r.update(over)
    return r


def frames(readings: list[dict], budget: int = 242, lorawan: bool = False) -> list[bytes]:
    """MQTT frames (or LoRaWAN payloads) of `readings`, from the firmware's encoder on CPython."""
    return [f["frame"] for f in encode_values(readings, budget=budget, runtime="cpython", lorawan=lorawan)]


class BridgeProcess:
    """`lanterne bridge ARGS --json` in its own process, as a city runs it; `.started` is its first line."""

    def __init__(self, *args, env: dict | None = None):
        import json
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-m", "host_tools.cli", "bridge", "--json", "--stats", "0",
                                      *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env)
        line = self.proc.stdout.readline()
        try:
            self.started = json.loads(line)["started"]
        except (ValueError, KeyError):
            rest = self.proc.communicate(timeout=10)[0] if self.proc.poll() is not None else ""
            self.kill()
            raise RuntimeError(f"lanterne bridge did not start: {line}{rest}") from None

    def kill(self) -> None:
        """SIGKILL: no goodbye, nothing flushed or acknowledged (a crash, a power cut)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> dict:
        """SIGTERM, as systemd stops it: commits what it holds; returns its final counters."""
        import json

        self.proc.terminate()
        out = self.proc.communicate(timeout=60)[0]
        for line in reversed(out.splitlines()):
            if line.startswith('{"stopped"'):
                return json.loads(line)["stopped"]
        raise RuntimeError(f"lanterne bridge did not stop cleanly:\n{out[-2000:]}")


def wait_until(predicate, timeout: float, what: str, step: float = 0.1):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
