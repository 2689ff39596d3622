"""The simulated world of one virtual board: what its sensors see, what its outputs drive, its faults.

Tests and the `lanterne world` command set physical quantities (temperature,
illuminance, distance to the bin contents, supply voltage, link state ...),
inject faults (a part missing, NACKing or stuck; the link dropped) and read the
outputs the firmware drives (pin levels, PWM duty). The simulated parts in
`host_tools.emulator.devices` read the world on every bus transaction.

Nonsense is refused, whoever asks (a test, `lanterne world`, `lanterne emulate --set`): an
unknown quantity, a value outside what the physics allows (`LIMITS`), a fault on a part the
board does not have (the parts declare themselves, see `devices/parts.py`) or of a kind that
part cannot have. The `WorldError` names what is valid.

Thread-safe: the supervisor's HAL server and a test thread touch it at once.
"""

from __future__ import annotations

import difflib
import math
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
    "lamp_curve": "10:15 25:29 50:53 75:76 100:100",  # the lamp driver's input power against level (%:%)
    "noise": 0.0,  # relative sensor noise (0.01 = 1 %)
    "echo_outlier_ratio": 0.0,  # share of spurious ultrasonic echoes (lids, bin contents)
    "clock_offset_s": 0.0,  # the world's wall clock (what NTP serves) = host clock + this
    "rssi_dbm": -67.0,  # Wi-Fi signal the board sees
    "net_delay_s": 2.0,  # how long a "slow" broker / "slow_tls" handshake holds each chunk
    "sleep_speedup": 1.0,  # the world clock runs this many times faster while the board is in deep sleep (sleep.py)
    # LoRaWAN modem twin and its radio (host_tools/emulator/devices/lorawan_modem.py): counts are used up
    "lorawan_speedup": 1.0,  # the modem's clock runs this many times faster than the host's
    "lorawan_gateways": 1.0,  # gateways in range (each publishes every uplink it hears)
    "lorawan_rssi_dbm": -95.0,  # signal at the gateways and at the module
    "lorawan_snr_db": 7.0,
    "lorawan_join_failures": 0.0,  # the next N join requests get no answer
    "lorawan_busy_refusals": 0.0,  # the next N sends are refused with AT_BUSY_ERROR
    "lorawan_resets": 0.0,  # the module resets on the next N commands (banner mid-reply)
    "lorawan_garbage": 0.0,  # probability of noise bytes before each line the module prints
    "lorawan_uplink_loss": 0.0,  # probability an uplink reaches no gateway
    "lorawan_downlink_loss": 0.0,  # probability the module misses a downlink
    "lorawan_dr": -1.0,  # >= 0: the network moves the module to this data rate (then back to -1)
    "lorawan_tx_done_first": False,  # TX_DONE / SEND_CONFIRMED_* before the RX event instead of after
    "button": False,  # the board's button (board file: setup_button) held down
    "alarm": False,  # the board's alarm switch (board file: alarm; a bin's lid open or the bin tilted)
    "pm1_ugm3": 6.0,  # particulate matter a reference instrument would measure
    "pm25_ugm3": 11.0,
    "pm10_ugm3": 18.0,
    "pm_kappa": 0.0,  # > 0: optical PM sensors over-read in humid air by the kappa-Koehler growth
    "sound_scene": "pink db=55",  # what the microphone hears (host_tools/emulator/audio.py: tones, pink, bursts)
    "sound_wav": "",  # a WAV file to play to the microphone instead (looped)
    "mic_noise_db": 33.0,  # the microphone's self-noise, dB SPL
}

#: What each number may be: the physically possible, wider than any part measures (so a sensor's
#: own out-of-range handling can be exercised), never what cannot be (negative light, 120 %RH).
LIMITS: dict[str, tuple[float, float]] = {
    "temperature_c": (-80.0, 150.0),
    "humidity_pct": (0.0, 100.0),
    "pressure_hpa": (0.0, 2000.0),
    "illuminance_lx": (0.0, 1_000_000.0),
    "distance_mm": (0.0, 20_000.0),
    "supply_v": (0.0, 100.0),
    "lamp_load_w": (0.0, 2000.0),
    "noise": (0.0, 1.0),
    "echo_outlier_ratio": (0.0, 1.0),
    "clock_offset_s": (-1e10, 1e10),
    "rssi_dbm": (-130.0, 0.0),
    "net_delay_s": (0.0, 600.0),  # a slow broker's hold per chunk
    "sleep_speedup": (1.0, 1_000_000.0),
    "lorawan_speedup": (0.001, 1_000_000.0),
    "lorawan_gateways": (0.0, 100.0),
    "lorawan_rssi_dbm": (-150.0, 0.0),
    "lorawan_snr_db": (-30.0, 30.0),
    "lorawan_join_failures": (0.0, 1_000_000.0),
    "lorawan_busy_refusals": (0.0, 1_000_000.0),
    "lorawan_resets": (0.0, 1_000_000.0),
    "lorawan_garbage": (0.0, 1.0),
    "lorawan_uplink_loss": (0.0, 1.0),
    "lorawan_downlink_loss": (0.0, 1.0),
    "lorawan_dr": (-1.0, 15.0),
    "pm1_ugm3": (0.0, 10_000.0),
    "pm25_ugm3": (0.0, 10_000.0),
    "pm10_ugm3": (0.0, 10_000.0),
    "pm_kappa": (0.0, 2.0),
    "mic_noise_db": (0.0, 140.0),
}

#: Fault kinds a part can be given (each part says which of them it has, `fault_kinds`): a bus
#: part's by default; PM sensors add checksum, frame, fan; the microphone has silence, clipping;
#: the lamp has dead_module (half its LED modules dark) and failing_driver (it overdraws).
BUS_FAULT_KINDS = ("missing", "nack", "stuck")
FAULT_KINDS = BUS_FAULT_KINDS + ("checksum", "frame", "fan", "silence", "clipping", "dead_module", "failing_driver")


class WorldError(ValueError):
    """A request the world refuses: the message names what is valid."""


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_value(key: str, value: Any) -> bool | float | str:
    """`value` as the world stores it for `key`, or WorldError saying what `key` accepts."""
    if key not in DEFAULTS:
        raise WorldError(f"unknown world quantity {key!r}{_suggest(key, DEFAULTS)}; known: {', '.join(sorted(DEFAULTS))}")
    if isinstance(DEFAULTS[key], bool):
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        raise WorldError(f"{key} is on or off (true/false, up/down, 1/0), got {value!r}")
    if isinstance(DEFAULTS[key], str):
        if key == "sound_scene":
            from host_tools.emulator.audio import parse_scene

            try:
                parse_scene(str(value))  # refuse a bad scene here, with its reason
            except ValueError as exc:
                raise WorldError(f"sound_scene: {exc}") from None
        if key == "lamp_curve":
            from host_tools.runtime import firmware_module

            try:
                firmware_module("config").parse_curve(str(value))  # the syntax of the config field
            except ValueError as exc:
                raise WorldError(f"lamp_curve: {exc} (e.g. '10:15 50:53 100:100')") from None
        return str(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WorldError(f"{key} is a number, got {value!r}")
    lo, hi = LIMITS.get(key, (-math.inf, math.inf))
    if not (math.isfinite(value) and lo <= value <= hi):
        raise WorldError(f"{key}={_num(value)} is out of range: {_num(lo)} .. {_num(hi)}")
    return float(value)


def _num(x: float) -> str:
    return str(int(x)) if math.isfinite(x) and x == int(x) else f"{x:g}"

#: The simulated network's faults (host_tools/emulator/netsim.py): "part" -> the kinds it takes.
#: broker (through a FaultProxy): silent = accepts and never answers (every connection, old
#: and new, goes quiet); half_open = the connections open at that moment go quiet for good, new
#: ones work; slow = every chunk held net_delay_s; slow_tls = TLS handshake records held
#: net_delay_s. ntp: silent = the time server never answers. dns: hang = names never resolve
#: (the resolver gives up after ~15 s, as lwIP's does).
NETWORK_FAULTS = {"broker": ("silent", "half_open", "slow", "slow_tls"), "ntp": ("silent",), "dns": ("hang",)}


class World:
    def __init__(self, seed: int | None = None, **values):
        self._lock = threading.RLock()
        self._values: dict[str, Any] = dict(DEFAULTS)
        self._faults: dict[str, set[str]] = {}
        self._parts: dict[str, tuple[str, ...]] = {}  # part name -> the fault kinds it can have
        self._outputs: dict[str, Any] = {"pins": {}, "pwm": {}, "uart_tx": {}, "ap": None}
        self._listeners: list = []
        self.rng = random.Random(seed)
        self.started = time.monotonic()
        self.slept_ahead_s = 0.0  # how far deep sleeps at sleep_speedup moved the clock ahead of the host's
        self.set(**values)

    # -- physical quantities -------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            if key not in self._values and default is None and key not in DEFAULTS:
                raise KeyError(f"unknown world quantity {key!r}; known: {', '.join(sorted(self._values))}")
            return self._values.get(key, default)

    def set(self, **values) -> None:
        """Set quantities; all or nothing: one refused value (WorldError) changes none."""
        checked = {key: check_value(key, value) for key, value in values.items()}
        with self._lock:
            self._values.update(checked)
            listeners = list(self._listeners)
        for fn in listeners:
            fn("set", values)

    def now(self) -> float:
        """The world's wall clock, Unix seconds (what an NTP server tells the board)."""
        return time.time() + self._values["clock_offset_s"] + self.slept_ahead_s

    def set_clock(self, unix_seconds: float) -> None:
        """Make the world's wall clock read `unix_seconds` now (boards see it at their next NTP sync)."""
        self.set(clock_offset_s=unix_seconds - time.time() - self.slept_ahead_s)

    def advance(self, seconds: float) -> None:
        """Time passes faster than the host's: the world clock (and the clock of a board that slept
        through it, sleep.py) moves `seconds` ahead at once. Only ever forwards."""
        if seconds > 0:
            with self._lock:
                self.slept_ahead_s += seconds
            self._notify("advance", {"slept_ahead_s": self.slept_ahead_s})

    def values(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def noisy(self, value: float) -> float:
        """`value` with the world's relative noise applied."""
        n = self._values.get("noise", 0.0)
        return value * (1.0 + self.rng.gauss(0.0, n)) if n else value

    # -- faults ---------------------------------------------------------------
    def declare_part(self, name: str, kinds=BUS_FAULT_KINDS) -> None:
        """A simulated part of this board answers to `name` and can have the fault `kinds`."""
        with self._lock:
            self._parts[name] = tuple(sorted(set(self._parts.get(name, ())) | set(kinds)))

    def parts(self) -> dict[str, list[str]]:
        """The board's parts (fault targets) and the fault kinds each can have."""
        with self._lock:
            return {k: list(v) for k, v in sorted(self._parts.items())}

    def _check_part(self, part: str) -> tuple[str, ...]:
        # A world that no board declared parts to (a bare World in a unit test) takes any name.
        if not self._parts:
            return FAULT_KINDS
        if part not in self._parts:
            raise WorldError(
                f"this board has no part {part!r}{_suggest(part, self._parts)}; its parts: {', '.join(sorted(self._parts))}"
            )
        return self._parts[part]

    def inject(self, part: str, kind: str) -> None:
        with self._lock:
            if part in NETWORK_FAULTS:  # the network beyond the link: every board has it
                kinds = NETWORK_FAULTS[part]
                if kind not in kinds:
                    raise WorldError(f"unknown fault {kind!r} for {part}{_suggest(kind, kinds)}; choose from {', '.join(kinds)}")
            else:
                kinds = self._check_part(part)
            if kind not in FAULT_KINDS and part not in NETWORK_FAULTS:
                raise WorldError(f"unknown fault {kind!r} for {part}{_suggest(kind, kinds)}; choose from {', '.join(kinds)}")
            if kind not in kinds:
                raise WorldError(f"{part} cannot be given the fault {kind!r}; it can be: {', '.join(kinds)}")
            self._faults.setdefault(part, set()).add(kind)
        self._notify("fault", {part: kind})

    def clear(self, part: str | None = None) -> None:
        with self._lock:
            parts = list(self._faults) if part is None else [part]
            if part is None:
                self._faults.clear()
            else:
                if part not in NETWORK_FAULTS:
                    self._check_part(part)
                self._faults.pop(part, None)
        self._notify("clear", {p: None for p in parts})

    def _notify(self, what: str, values: dict) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for fn in listeners:
            fn(what, values)

    def fault(self, part: str, kind: str) -> bool:
        with self._lock:
            return kind in self._faults.get(part, ())

    def faults(self) -> dict[str, list[str]]:
        with self._lock:
            return {k: sorted(v) for k, v in self._faults.items() if v}

    # -- outputs driven by the firmware -------------------------------------
    def drive_pin(self, pin: int, level: int) -> None:
        with self._lock:
            changed = self._outputs["pins"].get(int(pin)) != int(level)
            self._outputs["pins"][int(pin)] = int(level)
        if changed:
            self._notify("pin", {int(pin): int(level)})

    def drive_pwm(self, pin: int, freq: int, duty_u16: int | None) -> None:
        with self._lock:
            if duty_u16 is None:
                self._outputs["pwm"].pop(int(pin), None)
            else:
                self._outputs["pwm"][int(pin)] = {"freq": int(freq), "duty_u16": int(duty_u16)}
        self._notify("pwm", {int(pin): duty_u16})

    def set_access_point(self, ap: dict | None) -> None:
        """The board's Wi-Fi access point as a phone nearby would find it (None: no AP)."""
        with self._lock:
            self._outputs["ap"] = dict(ap) if ap else None

    def access_point(self) -> dict | None:
        with self._lock:
            ap = self._outputs["ap"]
            return dict(ap) if ap else None

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
                "ap": self.access_point(),
            }

    def snapshot(self) -> dict[str, Any]:
        return {"values": self.values(), "faults": self.faults(), "outputs": self.outputs(), "parts": self.parts(),
                "slept_ahead_s": self.slept_ahead_s}

    def subscribe(self, fn) -> None:
        """Call `fn(what, values)` after every change: ("set", {quantity: value}), ("fault",
        {part: kind}), ("clear", {part: None}), ("pin", {pin: level}) when an output changes,
        ("pwm", {pin: duty_u16 or None}) at every PWM write, ("advance", {"slept_ahead_s": total})
        when a deep sleep moved the clock ahead. Called on the thread that made it."""
        with self._lock:
            self._listeners.append(fn)

    def unsubscribe(self, fn) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)
