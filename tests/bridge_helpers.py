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
