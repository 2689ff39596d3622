"""What the bridge knows of each device, from the fleet registry: site, board, location, key.

The registry (host_tools/fleet/registry.py) is the source of truth for who exists. The
bridge reads it through a `Directory`, which caches each device and reads the registry
again when asked for one it does not know (at most once a second, so a flood of frames
from an unknown id does not hammer the file), and every minute in any case, so a newly
provisioned device or a rotated command key is seen without a restart.

`fields` is the set of payload fields a device's board can produce (from the parts its
board file lists): a frame carrying a field the board has no sensor for did not come from
that device. None when the board file names a part this table does not know.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from host_tools import boards

# Payload fields each part of a board file produces (docs/payload.md, docs/boards.md).
PART_FIELDS: dict[str, frozenset[str]] = {
    "bme280": frozenset({"temperature", "humidity", "pressure"}),
    "bh1750": frozenset({"illuminance"}),
    "veml7700": frozenset({"illuminance"}),
    "ultrasonic": frozenset({"fill", "distance"}),
    "ultrasonic_uart": frozenset({"fill", "distance"}),
    "vl53l1x": frozenset({"fill", "distance"}),
    "supply": frozenset({"voltage"}),
    # particulate matter (payload v3 extension fields): SDS011 has no PM1, the others do
    "pms5003": frozenset({"pm1", "pm2_5", "pm10"}),
    "pms7003": frozenset({"pm1", "pm2_5", "pm10"}),
    "sps30": frozenset({"pm1", "pm2_5", "pm10"}),
    "sds011": frozenset({"pm2_5", "pm10"}),
    "i2s_mic": frozenset({"laeq", "lamax"}),  # the sound-level meter
    "lamp": frozenset({"lamp", "lamp_fault", "energy", "burning_hours"}),  # + the lamp's energy counters (v3)
    "relay": frozenset(),
}
EVERY_DEVICE = frozenset({"status", "seq", "age"})


@dataclass(frozen=True)
class Device:
    id: str
    site: str
    board: str
    lat: float | None
    lon: float | None
    fields: frozenset[str] | None  # None: unknown parts, not checked
    parts: frozenset[str]  # part types of its board (lamp, relay, bme280 ...)
    key: bytes | None  # command key (32 bytes); None when the registry has none
    config: dict

    @property
    def has_location(self) -> bool:
        return self.lat is not None and self.lon is not None


def board_parts(board_name: str) -> tuple[frozenset[str], frozenset[str] | None]:
    """(part types, payload fields) of a board file; fields None when a part is unknown here."""
    try:
        board = boards.load(board_name)
    except (boards.BoardError, OSError, ValueError):
        return frozenset(), None
    parts = frozenset(p.get("type") for p in board.sensors() + board.actuators())
    if not parts <= set(PART_FIELDS):
        return parts, None
    fields = set(EVERY_DEVICE)
    for p in parts:
        fields |= PART_FIELDS[p]
    return parts, frozenset(fields)


class Directory:
    """Devices by id. `Directory(registry_path)` reads the fleet registry; `Directory.of(devices)`
    holds a fixed list (tests, tools without a registry)."""

    def __init__(self, registry: str | Path | None = None, *, refresh_s: float = 60.0, miss_s: float = 1.0):
        self.path = Path(registry) if registry is not None else None
        self.refresh_s = refresh_s
        self.miss_s = miss_s
        self._devices: dict[str, Device] = {}
        self._boards: dict[str, tuple] = {}
        self._read_at = 0.0
        self._lock = threading.Lock()
        if self.path is not None:
            self.reload()

    @classmethod
    def of(cls, devices: list[Device]) -> Directory:
        d = cls(None)
        d._devices = {dev.id: dev for dev in devices}
        return d

    def reload(self) -> None:
        if self.path is None:
            return
        from host_tools.fleet.registry import Registry

        with Registry(self.path) as reg:
            found = {}
            for rec in reg.devices():
                try:
                    key = reg.command_key(rec.id)
                except (KeyError, ValueError):
                    key = None
                if rec.board not in self._boards:
                    self._boards[rec.board] = board_parts(rec.board)
                parts, fields = self._boards[rec.board]
                cfg = rec.config or {}
                lat, lon = cfg.get("lat"), cfg.get("lon")
                located = isinstance(lat, (int, float)) and isinstance(lon, (int, float)) and (lat, lon) != (0, 0)
                found[rec.id] = Device(rec.id, rec.site, rec.board, float(lat) if located else None,
                                       float(lon) if located else None, fields, parts, key, cfg)
        with self._lock:
            self._devices = found
            self._read_at = time.monotonic()

    def _maybe_reload(self, missing: bool) -> None:
        if self.path is None:
            return
        age = time.monotonic() - self._read_at
        if age > self.refresh_s or (missing and age > self.miss_s):
            self.reload()

    def get(self, device: str) -> Device | None:
        self._maybe_reload(False)
        with self._lock:
            found = self._devices.get(device)
        if found is None:
            self._maybe_reload(True)
            with self._lock:
                found = self._devices.get(device)
        return found

    def fresh_key(self, device: str) -> bytes | None:
        """The device's command key read from the registry now (after a failed check: rotated?)."""
        if self.path is not None and time.monotonic() - self._read_at > self.miss_s:
            self.reload()
        dev = self.get(device)
        return dev.key if dev else None

    def all(self) -> list[Device]:
        self._maybe_reload(False)
        with self._lock:
            return sorted(self._devices.values(), key=lambda d: d.id)
