"""The simulated world of one virtual board: what its sensors see, what its outputs drive, its faults.

Tests and the `lanterne world` command set physical quantities (temperature,
illuminance, distance to the bin contents, supply voltage, link state ...),
inject faults (a part missing, NACKing or stuck; the link dropped) and read the
outputs the firmware drives (pin levels, PWM duty). The simulated parts in
`host_tools.emulator.devices` read the world on every bus transaction.

Thread-safe: the supervisor's HAL server and a test thread touch it at once.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

#: Physical quantities and their defaults (SI-ish units named in the key).
DEFAULTS: dict[str, Any] = {
    "temperature_c": 15.0,
    "humidity_pct": 55.0,
    "pressure_hpa": 1013.25,
    "illuminance_lx": 250.0,
    "distance_mm": 900.0,  # what a fill-level sensor sees: distance to the bin contents
    "supply_v": 12.0,
    "presence": False,  # bollard presence / loop detector input
    "link_up": True,  # Wi-Fi/Ethernet/cellular link of the board
    "lamp_load_w": 40.0,  # load drawn by the lamp at 100 %: drives the current-sense ADC
    "lamp_failed": False,  # lamp broken: no current drawn whatever the duty
    "noise": 0.0,  # relative sensor noise (0.01 = 1 %)
    "echo_outlier_ratio": 0.0,  # share of spurious ultrasonic echoes (lids, bin contents)
    "clock_offset_s": 0.0,  # the world's wall clock (what NTP serves) = host clock + this
    "rssi_dbm": -67.0,  # Wi-Fi signal the board sees
    "pm1_ugm3": 6.0,  # particulate matter a reference instrument would measure
    "pm25_ugm3": 11.0,
    "pm10_ugm3": 18.0,
    "pm_kappa": 0.0,  # > 0: optical PM sensors over-read in humid air by the kappa-Koehler growth
    "sound_scene": "pink db=55",  # what the microphone hears (host_tools/emulator/audio.py: tones, pink, bursts)
    "sound_wav": "",  # a WAV file to play to the microphone instead (looped)
    "mic_noise_db": 33.0,  # the microphone's self-noise, dB SPL
}

#: Fault kinds a part can be given (PM sensors: checksum, frame, fan; the microphone: silence, clipping).
FAULT_KINDS = ("missing", "nack", "stuck", "checksum", "frame", "fan", "silence", "clipping")


class World:
    def __init__(self, seed: int | None = None, **values):
        self._lock = threading.RLock()
        self._values: dict[str, Any] = dict(DEFAULTS)
        self._faults: dict[str, set[str]] = {}
        self._outputs: dict[str, Any] = {"pins": {}, "pwm": {}, "uart_tx": {}}
        self._listeners: list = []
        self.rng = random.Random(seed)
        self.started = time.monotonic()
        self.set(**values)

    # -- physical quantities -------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            if key not in self._values and default is None and key not in DEFAULTS:
                raise KeyError(f"unknown world quantity {key!r}; known: {', '.join(sorted(self._values))}")
            return self._values.get(key, default)

    def set(self, **values) -> None:
        with self._lock:
            for key, value in values.items():
                if key not in DEFAULTS:
                    raise KeyError(f"unknown world quantity {key!r}; known: {', '.join(sorted(DEFAULTS))}")
                kind = type(DEFAULTS[key])
                if kind is str:
                    if key == "sound_scene":
                        from host_tools.emulator.audio import parse_scene

                        parse_scene(str(value))  # refuse a bad scene here, with its reason
                    self._values[key] = str(value)
                else:
                    self._values[key] = bool(value) if kind is bool else float(value)
            listeners = list(self._listeners)
        for fn in listeners:
            fn("set", values)

    def now(self) -> float:
        """The world's wall clock, Unix seconds (what an NTP server tells the board)."""
        return time.time() + self._values["clock_offset_s"]

    def set_clock(self, unix_seconds: float) -> None:
        """Make the world's wall clock read `unix_seconds` now (boards see it at their next NTP sync)."""
        self.set(clock_offset_s=unix_seconds - time.time())

    def values(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def noisy(self, value: float) -> float:
        """`value` with the world's relative noise applied."""
        n = self._values.get("noise", 0.0)
        return value * (1.0 + self.rng.gauss(0.0, n)) if n else value

    # -- faults ---------------------------------------------------------------
    def inject(self, part: str, kind: str) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r} for {part}; choose from {', '.join(FAULT_KINDS)}")
        with self._lock:
            self._faults.setdefault(part, set()).add(kind)

    def clear(self, part: str | None = None) -> None:
        with self._lock:
            if part is None:
                self._faults.clear()
            else:
                self._faults.pop(part, None)

    def fault(self, part: str, kind: str) -> bool:
        with self._lock:
            return kind in self._faults.get(part, ())

    def faults(self) -> dict[str, list[str]]:
        with self._lock:
            return {k: sorted(v) for k, v in self._faults.items() if v}

    # -- outputs driven by the firmware -------------------------------------
    def drive_pin(self, pin: int, level: int) -> None:
        with self._lock:
            self._outputs["pins"][int(pin)] = int(level)

    def drive_pwm(self, pin: int, freq: int, duty_u16: int | None) -> None:
        with self._lock:
            if duty_u16 is None:
                self._outputs["pwm"].pop(int(pin), None)
            else:
                self._outputs["pwm"][int(pin)] = {"freq": int(freq), "duty_u16": int(duty_u16)}

    def pin_level(self, pin: int) -> int | None:
        with self._lock:
            return self._outputs["pins"].get(int(pin))

    def pwm(self, pin: int) -> dict | None:
        with self._lock:
            v = self._outputs["pwm"].get(int(pin))
            return dict(v) if v else None

    def outputs(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pins": dict(self._outputs["pins"]),
                "pwm": {k: dict(v) for k, v in self._outputs["pwm"].items()},
            }

    def snapshot(self) -> dict[str, Any]:
        return {"values": self.values(), "faults": self.faults(), "outputs": self.outputs()}

    def subscribe(self, fn) -> None:
        with self._lock:
            self._listeners.append(fn)
