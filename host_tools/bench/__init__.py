"""Benchmark registry behind `lanterne bench`.

Each capability adds a module `host_tools/bench/<name>.py` that defines
`run(quick: bool) -> BenchResult` and lists itself in `BENCHMARKS`. A benchmark
measures side by side, in the same run, whatever it compares against (ratios
printed next to each other), and runs firmware code on the unix port at the
board's heap size. Metric names are the ones the issues ask for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

# name -> (module, one-line description); modules are imported only when run.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "boot": ("host_tools.bench.boot", "virtual-board boot time to first status message, heap free after boot"),
    "codec": ("host_tools.bench.codec", "payload size vs Cayenne LPP and JSON, airtime budget, encode cost"),
    "store": ("host_tools.bench.store", "store-and-forward appends/s, write amplification, recovery time"),
    "sensors": ("host_tools.bench.sensors", "time and allocation per sample cycle of each driver"),
    "provision": ("host_tools.bench.provision", "provisioning 20 virtual boards; bytes per re-provision vs a full mpremote copy"),
    "heap": ("host_tools.bench.heap", "firmware heap per layout (ROMFS vs filesystem): steady state, smallest heap it runs in, 64 KB"),
    "lorawan": ("host_tools.bench.lorawan", "LoRaWAN readings a day within the airtime cap per data rate, ledger downlinks a day"),
    "environment": ("host_tools.bench.environment", "sound-level meter real-time budget (ESP32 estimate), PM driver allocation, env payload size"),
    "mqtt": ("host_tools.bench.mqtt", "command round trip with 1/50/200 boards, fleet soak without loss, heap TLS off/on"),
    "loop": ("host_tools.bench.loop", "control-loop lag and bollard interlock reaction under each network fault, heap"),
    "bridge": ("host_tools.bench.bridge", "back-office bridge readings/s into SQLite and PostgreSQL, two instances, NGSI-LD entities/s"),
    "energy": ("host_tools.bench.energy", "lamp energy meter: heap and qstr cost on a board, tick/save cost, flash wear"),
    "ota": ("host_tools.bench.ota", "over-the-air updates: wire bytes (delta, full), transfer time, heap, Ed25519 verify, rollback"),
    "battery": ("host_tools.bench.battery", "battery bin: awake time per wake (virtual board, ESP32 estimate), charge a day, battery years"),
    "fleet": ("host_tools.bench.fleet", "CPU a virtual board costs: its interpreter and the supervisor's share, 1-20 boards of the soak's kinds"),
    "mutation": ("host_tools.bench.mutation", "mutation testing: kill rate per module of the commands, store, codec, drain and decoders"),
}


@dataclass
class BenchResult:
    """Metrics for `--json` plus the human tables printed by `lanterne bench`."""

    metrics: dict[str, float | int | str]
    # Each table: (title, column names, rows).
    tables: list[tuple[str, list[str], list[list]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (module, desc) in BENCHMARKS.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        out[name] = (module, desc)
    return out


def run(name: str, quick: bool = False) -> BenchResult:
    module, _ = BENCHMARKS[name]
    return importlib.import_module(module).run(quick=quick)
