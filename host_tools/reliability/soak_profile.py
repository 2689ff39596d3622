"""The soak campaign's profiles, board kinds and fault kinds: what runs, and what hits it.

A profile is data (a built-in name, `short` or `full`, or a JSON file of the same shape):

    {"name": "full",
     "sample_period_s": 10, "status_period_s": 60, "keepalive_s": 15,
     "tls_share": 0.25,                         # share of the fleet on mqtts:// (rounded, at least 1)
     "board_mix": {"wifi-lamp": 3, "ethernet-bollard": 2, "envstation": 1},   # weights
     "faults": {"power_cut": {"per_min": 2.0, "duration_s": [1, 20]}, ...},   # fleet-wide rates
     "commands_per_min": 30,                    # the back office's legitimate commands
     "attacks_per_min": 10,                     # forged, replayed, cross-device, malformed
     "probes_every_min": 10,                    # the security probes (at least once a run)
     "ota_share": 0.25,                         # share of the MQTT boards updated over the air mid-run (soak_ota)
     "drain_s": 300}                            # how long the fleet gets to deliver at the end

Faults are drawn up front from the seed (`schedule`; every kind with a rate at least once a
run, however short, unless the fleet has no board it concerns), each at a random instant of the
chaos window (the run less a settle time at each end): a board fault on a board that has
no other fault then (one at a time per board, so an outage never meets a full flash: a
board that drops readings because its flash is both full and cut off is a limit of the
store, docs/store.md, not what the campaign measures), a fleet fault (broker, back office)
never over another fleet fault. Every kind named in a profile must exist in `FAULTS`.

To add a board kind (LoRaWAN, battery, OTA-capable ...): one `BoardKind` entry in
`BOARD_KINDS` naming its board file, its transport and the fault kinds that apply to it;
a fault kind it needs is one `FaultKind` entry in `FAULTS` and one injector in
`soak_faults.INJECTORS`. Nothing else changes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path


class ProfileError(ValueError):
    """A profile file is wrong: the message names the file and the field."""


@dataclass(frozen=True)
class FaultKind:
    name: str
    scope: str  # "board": one board at a time; "fleet": the broker or the back office
    what: str
    # the board transports it applies to (board scope: the boards it may hit; fleet scope: a fleet
    # with none of them does not get it)
    transports: tuple[str, ...] = ("mqtt",)


FAULTS: dict[str, FaultKind] = {
    f.name: f
    for f in (
        FaultKind("power_cut", "board", "power cut at a random instant, power back after the duration", ("mqtt", "lorawan")),
        FaultKind("power_cut_flash_write", "board", "power cut the moment the board's store grows (a flash write under way)",
                  ("mqtt", "lorawan")),
        FaultKind("link_flap", "board", "Wi-Fi / Ethernet link down for the duration"),
        FaultKind("proxy_stall", "board", "the TCP proxy to the broker swallows everything (both ways) for the duration"),
        FaultKind("proxy_cut", "board", "the TCP proxy cuts the open connection silently (half-open) for the duration"),
        FaultKind("proxy_delay", "board", "the TCP proxy holds every chunk net_delay_s (2 s) for the duration"),
        FaultKind("sensor_fault", "board", "one of the board's sensors missing, NACKing or stuck for the duration", ("mqtt", "lorawan")),
        FaultKind("clock_jump", "board", "the wall clock NTP serves steps forward or back (hours to days), then back"),
        FaultKind("ntp_silent", "board", "NTP never answers for the duration"),
        FaultKind("full_flash", "board", "the filesystem filled up to the store's reserve for the duration", ("mqtt", "lorawan")),
        FaultKind("lorawan_uplink_loss", "board", "a share (50-90 %) of the board's uplinks reaches no gateway for the duration",
                  ("lorawan",)),
        FaultKind("lorawan_join_failure", "board", "the board's power cut and its module's session lost; the network leaves "
                  "the next 1-2 join requests unanswered; power back after the duration", ("lorawan",)),
        FaultKind("broker_restart", "fleet", "Mosquitto stopped (SIGTERM, it saves its state) and started again",
                  ("mqtt", "lorawan")),
        FaultKind("broker_kill", "fleet", "Mosquitto killed (SIGKILL), down for the duration, started again", ("mqtt", "lorawan")),
        FaultKind("backoffice_restart", "fleet", "the bridge stopped (committing what it took), down for the duration, started again",
                  ("mqtt", "lorawan")),
        FaultKind("uplink_service_restart", "fleet", "the LoRaWAN uplink service stopped (its state file closed), down for the "
                  "duration, started again on its state file", ("lorawan",)),
    )
}


@dataclass(frozen=True)
class BoardKind:
    name: str
    board: str  # board file (boards/NAME.json)
    transport: str  # "mqtt" (Wi-Fi or Ethernet) or "lorawan" (modem twin, network server, uplink service)
    tls: bool = True  # may be among the fleet's mqtts:// boards
    site: str = "soak"
    # The shortest sample period the board is given, whatever the profile's: a LoRaWAN board's 1 %
    # duty cycle keeps its sub-band closed 99x the airtime of each uplink (a full DR5 frame: ~37 s),
    # so it cannot carry a reading every 2 s; what it samples must fit what it may send.
    min_sample_period_s: int = 1
    command_weight: float = 1.0  # its share of the command stream per board (class A: one downlink per uplink)
    # A battery board (power: battery in its board file) sleeps between readings: its periods are its
    # own (world seconds), its world's clock runs `sleep_speedup` times faster while it sleeps.
    config: dict = field(default_factory=dict)  # config fields of its own (over the profile's)
    world: dict = field(default_factory=dict)  # world quantities it starts with


BOARD_KINDS: dict[str, BoardKind] = {
    k.name: k
    for k in (
        BoardKind("wifi-lamp", "esp32-devkitc", "mqtt"),  # street light: BME280, BH1750, supply, lamp PWM
        BoardKind("ethernet-bollard", "olimex-esp32-poe", "mqtt"),  # Ethernet: fill level, bollard relay
        BoardKind("envstation", "esp32-envstation", "mqtt"),  # PM sensor, microphone, 2 MB PSRAM heap
        BoardKind("lorawan-sensor", "esp32-rak3172", "lorawan", tls=False, min_sample_period_s=10,
                  command_weight=0.5),  # RAK3172 modem: BME280, BH1750, supply
        # Battery waste bin: RAK3172, ultrasonic fill level, lid alarm, deep sleep between readings. A
        # reading every 10 min and a frame when the oldest unsent one is 10 min old, its clock 60x while
        # it sleeps: a reading every ~10 s of the run. No commands (it listens only after a send wake).
        BoardKind("battery-bin", "esp32-rak3172-bin", "lorawan", tls=False, command_weight=0.0,
                  config={"sample_period_s": 600, "send_period_s": 600, "status_period_s": 86400, "bin_empty_mm": 1200,
                          "bin_full_mm": 200},
                  world={"sleep_speedup": 60.0, "distance_mm": 900.0}),
    )
}

_SHORT = {
    "name": "short",
    "sample_period_s": 2,
    "status_period_s": 20,
    "keepalive_s": 10,
    "tls_share": 0.25,
    "board_mix": {"wifi-lamp": 3, "ethernet-bollard": 2, "envstation": 1, "lorawan-sensor": 0.6, "battery-bin": 0.4},
    "faults": {
        "power_cut": {"per_min": 8, "duration_s": [0.5, 4]},
        "power_cut_flash_write": {"per_min": 4, "duration_s": [0.5, 3]},
        "link_flap": {"per_min": 8, "duration_s": [2, 12]},
        "proxy_stall": {"per_min": 3, "duration_s": [3, 10]},
        "proxy_cut": {"per_min": 3, "duration_s": [3, 10]},
        "proxy_delay": {"per_min": 3, "duration_s": [3, 8]},
        "sensor_fault": {"per_min": 6, "duration_s": [2, 10]},
        "clock_jump": {"per_min": 3, "duration_s": [5, 15]},
        "ntp_silent": {"per_min": 2, "duration_s": [5, 15]},
        "full_flash": {"per_min": 2, "duration_s": [5, 15]},
        "lorawan_uplink_loss": {"per_min": 1, "duration_s": [20, 40]},
        "lorawan_join_failure": {"per_min": 0.5, "duration_s": [0.5, 2]},
        "broker_restart": {"per_min": 0.6, "duration_s": [0, 0]},
        "broker_kill": {"per_min": 0.6, "duration_s": [1, 3]},
        "backoffice_restart": {"per_min": 0.6, "duration_s": [1, 5]},
        "uplink_service_restart": {"per_min": 0.6, "duration_s": [1, 5]},
    },
    "commands_per_min": 40,
    "attacks_per_min": 30,
    "probes_every_min": 1,
    "settle_s": 10,
    "drain_s": 90,
    # The bridge's shared-subscription group (`lanterne bridge --group`), or null: plain subscriptions.
    # Null by default here: on Mosquitto 2.0 a shared subscription does not survive a broker crash
    # (docs/reliability.md, "Findings"), and the campaign measures the rest of the system through it.
    "bridge_group": None,
    # Share of the MQTT boards a signed release is rolled out to, a quarter into the chaos window
    # (soak_ota; 0: no update).
    "ota_share": 0.12,
}

_FULL = {
    **_SHORT,
    "name": "full",
    "board_mix": {"wifi-lamp": 3, "ethernet-bollard": 2, "envstation": 1, "lorawan-sensor": 1, "battery-bin": 1},
    "sample_period_s": 10,
    "status_period_s": 60,
    "keepalive_s": 15,
    "faults": {
        "power_cut": {"per_min": 3, "duration_s": [1, 30]},
        "power_cut_flash_write": {"per_min": 1.5, "duration_s": [1, 10]},
        "link_flap": {"per_min": 3, "duration_s": [5, 180]},
        "proxy_stall": {"per_min": 1, "duration_s": [10, 120]},
        "proxy_cut": {"per_min": 1, "duration_s": [10, 120]},
        "proxy_delay": {"per_min": 1, "duration_s": [10, 60]},
        "sensor_fault": {"per_min": 2, "duration_s": [10, 300]},
        "clock_jump": {"per_min": 1, "duration_s": [30, 600]},
        "ntp_silent": {"per_min": 0.5, "duration_s": [30, 600]},
        "full_flash": {"per_min": 0.5, "duration_s": [30, 300]},
        "lorawan_uplink_loss": {"per_min": 0.5, "duration_s": [30, 300]},
        "lorawan_join_failure": {"per_min": 0.2, "duration_s": [1, 20]},
        "broker_restart": {"per_min": 0.1, "duration_s": [0, 0]},
        "broker_kill": {"per_min": 0.1, "duration_s": [2, 20]},
        "backoffice_restart": {"per_min": 0.15, "duration_s": [2, 60]},
        "uplink_service_restart": {"per_min": 0.15, "duration_s": [2, 60]},
    },
    "commands_per_min": 30,
    "attacks_per_min": 10,
    "probes_every_min": 10,
    "settle_s": 30,
    "drain_s": 300,
    "ota_share": 0.2,
}

PROFILES = {"short": _SHORT, "full": _FULL}


@dataclass
class Profile:
    name: str
    sample_period_s: int
    status_period_s: int
    keepalive_s: int
    tls_share: float
    board_mix: dict[str, float]
    faults: dict[str, dict]
    commands_per_min: float
    attacks_per_min: float
    probes_every_min: float
    settle_s: float
    drain_s: float
    bridge_group: str | None = None
    ota_share: float = 0.0
    source: str = ""

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "source"}


_NUMBERS = ("sample_period_s", "status_period_s", "keepalive_s", "tls_share", "commands_per_min", "attacks_per_min",
            "probes_every_min", "settle_s", "drain_s", "ota_share")


def load_profile(spec: str) -> Profile:
    """`short`, `full`, or a JSON file (any field it leaves out is the short profile's)."""
    if spec in PROFILES:
        data, where = PROFILES[spec], f"profile {spec}"
    else:
        path = Path(spec)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise ProfileError(f"cannot read the profile {spec}: {exc.strerror} (built-in profiles: short, full)") from None
        except ValueError as exc:
            raise ProfileError(f"{spec}: not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ProfileError(f"{spec}: a profile is a JSON object")
        unknown = sorted(set(data) - set(_SHORT))
        if unknown:
            raise ProfileError(f"{spec}: unknown field {unknown[0]!r}; known: {', '.join(sorted(_SHORT))}")
        data, where = {**_SHORT, "name": path.stem, **data}, spec
    for key in _NUMBERS:
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise ProfileError(f"{where}: field {key!r} must be a number >= 0 (got {v!r})")
    for key in ("tls_share", "ota_share"):
        if not 0 <= data[key] <= 1:
            raise ProfileError(f"{where}: field {key!r} must be between 0 and 1 (got {data[key]})")
    if data["sample_period_s"] < 1 or data["status_period_s"] < 10:
        raise ProfileError(f"{where}: sample_period_s must be >= 1 and status_period_s >= 10 (the firmware's limits)")
    if data["bridge_group"] is not None and not isinstance(data["bridge_group"], str):
        raise ProfileError(f"{where}: field 'bridge_group' must be a name or null")
    mix = data["board_mix"]
    if not isinstance(mix, dict) or not mix:
        raise ProfileError(f"{where}: field 'board_mix' must map board kinds to weights")
    for kind, w in mix.items():
        if kind not in BOARD_KINDS:
            raise ProfileError(f"{where}: board_mix: unknown board kind {kind!r}; known: {', '.join(BOARD_KINDS)}")
        if isinstance(w, bool) or not isinstance(w, int | float) or w < 0:
            raise ProfileError(f"{where}: board_mix.{kind}: weight must be a number >= 0")
    faults = data["faults"]
    if not isinstance(faults, dict):
        raise ProfileError(f"{where}: field 'faults' must map fault kinds to {{per_min, duration_s}}")
    for kind, spec_ in faults.items():
        if kind not in FAULTS:
            raise ProfileError(f"{where}: faults: unknown fault kind {kind!r}; known: {', '.join(FAULTS)}")
        rate, dur = spec_.get("per_min") if isinstance(spec_, dict) else None, spec_.get("duration_s") if isinstance(spec_, dict) else None
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
            raise ProfileError(f"{where}: faults.{kind}.per_min must be a number >= 0")
        if (not isinstance(dur, list) or len(dur) != 2 or not all(isinstance(x, int | float) for x in dur)
                or not 0 <= dur[0] <= dur[1]):
            raise ProfileError(f"{where}: faults.{kind}.duration_s must be [min, max] seconds, 0 <= min <= max")
    return Profile(**{k: data[k] for k in _SHORT}, source=where)


@dataclass
class Planned:
    at_s: float  # seconds into the run
    kind: str
    board: int | None  # index into the fleet (board scope), None for a fleet fault
    duration_s: float
    arg: dict = field(default_factory=dict)


def fleet_kinds(profile: Profile, n: int, rng: random.Random) -> list[str]:
    """N board kinds in the profile's proportions (largest remainder), in a seeded order."""
    mix = {k: w for k, w in profile.board_mix.items() if w > 0}
    total = sum(mix.values())
    exact = {k: n * w / total for k, w in mix.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[: n - sum(counts.values())]:
        counts[k] += 1
    kinds = [k for k in mix for _ in range(counts[k])]
    rng.shuffle(kinds)
    return kinds


def schedule(profile: Profile, kinds: list[str], minutes: float, rng: random.Random) -> list[Planned]:
    """Every fault of the run, drawn from the seed: [Planned] in time order (see the module docstring)."""
    run_s = minutes * 60
    settle = min(profile.settle_s, run_s / 4)
    lo, hi = settle, run_s - settle
    busy: dict[int | None, list[tuple[float, float]]] = {}
    out: list[Planned] = []
    for name in sorted(profile.faults):
        spec = profile.faults[name]
        fk = FAULTS[name]
        if fk.scope == "fleet" and not any(BOARD_KINDS[k].transport in fk.transports for k in kinds):
            continue  # (the uplink service's restart in a fleet of MQTT boards only: there is no service)
        expected = spec["per_min"] * (hi - lo) / 60
        count = int(expected) + (rng.random() < expected - int(expected))
        if spec["per_min"] > 0:
            count = max(1, count)  # every kind the profile names is injected at least once a run
        for _ in range(count):
            dur = rng.uniform(*spec["duration_s"])
            for _attempt in range(50):
                at = rng.uniform(lo, max(lo, hi - dur))
                if fk.scope == "fleet":
                    target = None
                else:
                    able = [i for i, k in enumerate(kinds) if BOARD_KINDS[k].transport in fk.transports]
                    if not able:
                        break
                    target = rng.choice(able)
                window = (at - 2, at + dur + 4)  # the board (or broker) gets a moment between two faults
                if all(window[1] <= a or b <= window[0] for a, b in busy.get(target, ())):
                    busy.setdefault(target, []).append(window)
                    out.append(Planned(round(at, 2), name, target, round(dur, 2)))
                    break
    out.sort(key=lambda p: p.at_s)
    return out
