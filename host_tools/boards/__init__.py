"""Board files: one declarative JSON file per supported board, validated with errors naming file and field.

A board file says what the hardware is: chip, flash layout, heap size, network
interface, buses and their pins, and which sensors/actuators are wired where.
The virtual board builds its simulated parts and heap size from it; the
firmware reads the same facts (copied to the board as `board.json`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host_tools.runtime.paths import BOARDS

# ESP32 GPIO facts (ESP32 datasheet, "Peripheral Pin Configurations"):
ESP32_GPIOS = set(range(0, 40)) - {20, 24, 28, 29, 30, 31}
ESP32_FLASH_PINS = {6, 7, 8, 9, 10, 11}  # wired to the SPI flash on WROOM modules
ESP32_INPUT_ONLY = {34, 35, 36, 37, 38, 39}
ESP32_ADC1 = {32, 33, 34, 35, 36, 37, 38, 39}  # ADC2 is unusable while Wi-Fi runs
RTC_GPIOS = {0, 2, 4, 12, 13, 14, 15, 25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39}  # can wake it from deep sleep

# The heap the firmware is held to, out of a board's `heap_bytes`, with its library in the ROMFS
# partition as `lanterne provision` writes it (tests/test_romfs.py, `lanterne bench heap`). The
# project's goal is 64 KB (`lanterne bench heap` says whether it is met); the firmware needs 69 KB
# by the heap scale measured 2026-12-07 (docs/emulator.md, "Heap"), and is held to 70.
FIRMWARE_HEAP_BYTES = 70 * 1024

NETWORK_KINDS = ("wlan", "lan", "lorawan")
BUS_KINDS = ("i2c", "uart", "spi", "i2s")
SENSOR_TYPES = (
    "bme280", "bh1750", "veml7700", "ultrasonic", "ultrasonic_uart", "vl53l1x", "supply",
    "pms5003", "pms7003", "sds011", "sps30", "i2s_mic",
)
PM_TYPES = ("pms5003", "pms7003", "sds011", "sps30")
# Which bus kind each bus-attached sensor needs.
SENSOR_BUS = {"pms5003": "uart", "pms7003": "uart", "sds011": "uart", "sps30": "i2c", "i2s_mic": "i2s", "bme280": "i2c"}
I2S_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
ACTUATOR_TYPES = ("lamp", "relay")

TOP_FIELDS = {
    "name": str,
    "description": str,
    "chip": str,
    "flash": dict,
    "heap_bytes": int,
    "idf_heap_bytes": int,
    "micropython": str,
    "network": dict,
    "lorawan": dict,  # a LoRaWAN modem beside an IP link (MQTT with LoRaWAN failover): modem, bus, region
    "buses": dict,
    "sensors": list,
    "actuators": list,
    "status_led": (int, type(None)),
    "setup_button": (int, type(None)),
    "alarm": dict,
    "power": dict,
}
REQUIRED = ("name", "chip", "heap_bytes", "network", "buses", "sensors", "actuators")

# Which keys of a part are output pins, input pins, ADC pins.
OUTPUT_PIN_KEYS = {"pwm", "pin", "trigger", "tx", "scl", "sda", "reset", "mdc", "mdio", "power", "sck", "ws"}
INPUT_PIN_KEYS = {"echo", "position_pin", "presence_pin", "rx", "sd"}
ADC_PIN_KEYS = {"adc", "current_adc"}


class BoardError(ValueError):
    """A board file is wrong: the message names the file and the field."""


@dataclass
class Board:
    name: str
    path: Path
    data: dict[str, Any]

    @property
    def heap_bytes(self) -> int:
        return int(self.data["heap_bytes"])

    @property
    def romfs_bytes(self) -> int:
        """Size of the ROMFS partition the board's firmware has (0: none)."""
        return int(self.data.get("flash", {}).get("romfs_bytes", 0))

    def sensors(self, type_: str | None = None) -> list[dict]:
        return [s for s in self.data["sensors"] if type_ is None or s["type"] == type_]

    def actuators(self, type_: str | None = None) -> list[dict]:
        return [a for a in self.data["actuators"] if type_ is None or a["type"] == type_]

    def bus(self, name: str) -> dict:
        return self.data["buses"][name]


def _err(path: Path, field: str, why: str) -> BoardError:
    return BoardError(f"{path.name}: field '{field}': {why}")


def _check_pin(path, field, value, role):
    if not isinstance(value, int) or isinstance(value, bool):
        raise _err(path, field, f"pin must be a GPIO number, got {value!r}")
    if value not in ESP32_GPIOS:
        raise _err(path, field, f"GPIO{value} does not exist on the ESP32 (0..39, no 20/24/28-31)")
    if value in ESP32_FLASH_PINS:
        raise _err(path, field, f"GPIO{value} is wired to the SPI flash and cannot be used")
    if role == "output" and value in ESP32_INPUT_ONLY:
        raise _err(path, field, f"GPIO{value} is input-only and cannot drive an output")
    if role == "adc" and value not in ESP32_ADC1:
        raise _err(path, field, f"GPIO{value} is not an ADC1 pin (ADC1: 32..39; ADC2 stops with Wi-Fi)")


def _check_part_pins(path, prefix, part: dict, used: dict):
    for key, value in part.items():
        role = (
            "output" if key in OUTPUT_PIN_KEYS else "input" if key in INPUT_PIN_KEYS else "adc" if key in ADC_PIN_KEYS else None
        )
        if role is None:
            continue
        field = f"{prefix}.{key}"
        _check_pin(path, field, value, role)
        if value in used and not (key in ("scl", "sda") and used[value].endswith(key)):
            raise _err(path, field, f"GPIO{value} is already used by '{used[value]}'")
        used[value] = field


def _number(path, field, value, low, high, kind=(int, float)):
    if not isinstance(value, kind) or isinstance(value, bool) or not low <= value <= high:
        raise _err(path, field, f"must be a number from {low} to {high}, got {value!r}")


def _check_lamp_part(path, prefix, part: dict):
    """The lamp's electrical facts the energy meter uses (firmware/lanterne/energy.py, docs/energy.md)."""
    if "lamp_v" in part:  # the rail its current is sensed on, when the supply sensor does not measure it
        _number(path, f"{prefix}.lamp_v", part["lamp_v"], 1, 1000)
        if part.get("current_adc") is None:
            raise _err(path, f"{prefix}.lamp_v", "is the voltage of the rail the lamp's current is sensed on: "
                       "give current_adc too, or leave it out")
    if "rated_w" in part:  # an integrated luminaire's rated input power at 100 % (config lamp_rated_w wins)
        _number(path, f"{prefix}.rated_w", part["rated_w"], 0, 2000)
    for key in ("current_ohms", "current_gain"):
        if key in part:
            _number(path, f"{prefix}.{key}", part[key], 1e-6, 1e6)


def _check_environment_part(path, prefix, part: dict, buses: dict):
    """PM sensors and microphones: the bus kind they need, the duty cycle, the audio format."""
    kind = part.get("type")
    need = SENSOR_BUS.get(kind)
    if need is None:
        return
    bus = part.get("bus")
    if bus is None:
        raise _err(path, f"{prefix}.bus", f"a {kind} needs a {need} bus")
    if buses[bus].get("kind") != need:
        raise _err(path, f"{prefix}.bus", f"a {kind} is wired to a {need} bus; '{bus}' is {buses[bus].get('kind')}")
    if kind in PM_TYPES:
        warm, measure = part.get("warmup_s", 30), part.get("measure_s", 10)
        _number(path, f"{prefix}.warmup_s", warm, 0, 600, int)
        _number(path, f"{prefix}.measure_s", measure, 1, 600, int)
        if "period_s" in part:
            raise _err(path, f"{prefix}.period_s", "the measurement period is site policy: config field pm_period_s")
        if "mode" in part and (kind not in ("pms5003", "pms7003") or part["mode"] not in ("active", "passive")):
            raise _err(path, f"{prefix}.mode", "only a Plantower sensor has a mode: 'active' or 'passive'")
    if kind == "i2s_mic":
        rate = part.get("sample_rate", 48000)
        if rate not in I2S_RATES:
            raise _err(path, f"{prefix}.sample_rate", f"must be one of {', '.join(map(str, I2S_RATES))}")
        _number(path, f"{prefix}.sensitivity_dbfs", part.get("sensitivity_dbfs", -26.0), -80, 0)
        if part.get("bits", 32) not in (16, 32):
            raise _err(path, f"{prefix}.bits", "must be 16 or 32")
        _number(path, f"{prefix}.ibuf", part.get("ibuf", 16384), 4096, 65536, int)


# The power section (docs/battery.md): how the board is supplied and, on a battery, the energy
# model's inputs. Currents in mA, times in ms; each must be given for a battery board.
POWER_SUPPLIES = ("mains", "battery")
BATTERY_CURRENTS = ("esp32_active", "esp32_deep_sleep", "esp32_wifi", "modem_sleep", "modem_tx", "modem_rx",
                    "sensor_active", "regulator_quiescent")
BATTERY_TIMINGS = ("esp32_boot", "wifi_connect", "sensor_per_ping")


def _check_power(path, power: dict):
    supply = power.get("supply")
    if supply not in POWER_SUPPLIES:
        raise _err(path, "power.supply", f"must be one of {', '.join(POWER_SUPPLIES)}, got {supply!r}")
    if supply != "battery":
        return
    bat = power.get("battery")
    if not isinstance(bat, dict):
        raise _err(path, "power.battery", "a battery board says what its cell is: capacity_mah, nominal_v, self_discharge_pct_per_year")
    _number(path, "power.battery.capacity_mah", bat.get("capacity_mah"), 1, 1_000_000)
    _number(path, "power.battery.nominal_v", bat.get("nominal_v"), 0.5, 60)
    _number(path, "power.battery.self_discharge_pct_per_year", bat.get("self_discharge_pct_per_year"), 0, 50)
    for group, keys, high in (("currents_ma", BATTERY_CURRENTS, 2000), ("timing_ms", BATTERY_TIMINGS, 600_000)):
        values = power.get(group)
        if not isinstance(values, dict):
            raise _err(path, f"power.{group}", f"missing: give {', '.join(keys)}")
        for key in keys:
            _number(path, f"power.{group}.{key}", values.get(key), 0, high)
    _number(path, "power.esp32_mhz", power.get("esp32_mhz"), 80, 240)


def validate(data: Any, path: Path) -> dict:
    if not isinstance(data, dict):
        raise BoardError(f"{path.name}: a board file is a JSON object")
    for key in data:
        if key not in TOP_FIELDS:
            raise _err(path, key, f"unknown field (known: {', '.join(TOP_FIELDS)})")
    for key in REQUIRED:
        if key not in data:
            raise _err(path, key, "missing")
    for key, kind in TOP_FIELDS.items():
        if key in data and not isinstance(data[key], kind):
            raise _err(path, key, f"wrong type {type(data[key]).__name__}")
    if data["chip"] != "esp32":
        raise _err(path, "chip", f"unsupported chip {data['chip']!r} (supported: esp32)")
    if not 32 * 1024 <= data["heap_bytes"] <= 8 * 1024 * 1024:
        raise _err(path, "heap_bytes", "must be between 32 KiB and 8 MiB")
    flash = data.get("flash", {})
    for key in ("size_mb", "app_offset", "fs_bytes", "romfs_bytes"):
        if key in flash and (not isinstance(flash[key], int) or isinstance(flash[key], bool) or flash[key] < 0):
            raise _err(path, f"flash.{key}", "must be a non-negative integer")
    if flash.get("romfs_bytes", 0) % 4096:
        raise _err(path, "flash.romfs_bytes", "must be a whole number of 4 KiB flash sectors")
    used: dict[int, str] = {}
    net = data["network"]
    if net.get("kind") not in NETWORK_KINDS:
        raise _err(path, "network.kind", f"must be one of {', '.join(NETWORK_KINDS)}")
    for name, bus in data["buses"].items():
        if not isinstance(bus, dict) or bus.get("kind") not in BUS_KINDS:
            raise _err(path, f"buses.{name}.kind", f"must be one of {', '.join(BUS_KINDS)}")
        _check_part_pins(path, f"buses.{name}", bus, used)
    if net["kind"] == "lorawan" and (not isinstance(net.get("bus"), str) or net["bus"] not in data["buses"]):
        raise _err(path, "network.bus", f"names no bus of this board ({', '.join(data['buses'])})")
    _check_part_pins(path, "network", {k: v for k, v in net.items() if k != "phy_addr"}, used)
    modem = data.get("lorawan")
    if modem is not None:
        if net["kind"] == "lorawan":
            raise _err(path, "lorawan", "the board's network is already its LoRaWAN modem: a second modem is not supported")
        if not isinstance(modem.get("bus"), str) or modem["bus"] not in data["buses"] or data["buses"][modem["bus"]]["kind"] != "uart":
            raise _err(path, "lorawan.bus", f"names no UART of this board ({', '.join(data['buses'])})")
        if modem.get("modem", "rak3172") != "rak3172":
            raise _err(path, "lorawan.modem", f"unsupported modem {modem.get('modem')!r} (supported: rak3172)")
        _check_part_pins(path, "lorawan", modem, used)
    for group, types in (("sensors", SENSOR_TYPES), ("actuators", ACTUATOR_TYPES)):
        for i, part in enumerate(data[group]):
            prefix = f"{group}[{i}]"
            if not isinstance(part, dict) or part.get("type") not in types:
                raise _err(path, f"{prefix}.type", f"must be one of {', '.join(types)}")
            bus = part.get("bus")
            if bus is not None and (not isinstance(bus, str) or bus not in data["buses"]):
                raise _err(path, f"{prefix}.bus", f"names no bus of this board ({', '.join(data['buses'])})")
            addr = part.get("address")
            if addr is not None and not (isinstance(addr, int) and 0x08 <= addr <= 0x77):
                raise _err(path, f"{prefix}.address", f"I2C address must be 0x08..0x77, got {addr!r}")
            _check_environment_part(path, prefix, part, data["buses"])
            if part.get("type") == "lamp":
                _check_lamp_part(path, prefix, part)
            _check_part_pins(path, prefix, part, used)
    led = data.get("status_led")
    if led is not None:
        _check_pin(path, "status_led", led, "output")
        if led in used:
            raise _err(path, "status_led", f"GPIO{led} is already used by '{used[led]}'")
        used[led] = "status_led"
    button = data.get("setup_button")
    if button is not None:
        # Pressed = 0 against the board's pull-up; held for 1 s after power-up, it opens the setup page.
        _check_pin(path, "setup_button", button, "input")
        if button in used:
            raise _err(path, "setup_button", f"GPIO{button} is already used by '{used[button]}'")
        used[button] = "setup_button"
    alarm = data.get("alarm")
    if alarm is not None:
        # A switch that wakes the board from deep sleep (lid, tilt): an RTC GPIO (ext0 wake source).
        _check_pin(path, "alarm.pin", alarm.get("pin"), "input")
        if alarm["pin"] not in RTC_GPIOS:
            raise _err(path, "alarm.pin", f"GPIO{alarm['pin']} cannot wake the ESP32 from deep sleep (RTC GPIOs: "
                       f"{', '.join(map(str, sorted(RTC_GPIOS)))})")
        if alarm["pin"] in used:
            raise _err(path, "alarm.pin", f"GPIO{alarm['pin']} is already used by '{used[alarm['pin']]}'")
        if alarm.get("active", "high") not in ("high", "low"):
            raise _err(path, "alarm.active", f"must be high or low, got {alarm.get('active')!r}")
    if "power" in data:
        _check_power(path, data["power"])
    return data


def load_file(path: str | Path) -> Board:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BoardError(f"{path}: no such board file") from None
    except json.JSONDecodeError as exc:
        raise BoardError(f"{path.name}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise BoardError(f"{path.name}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    except RecursionError:
        raise BoardError(f"{path.name}: JSON nested too deeply") from None
    validate(data, path)
    return Board(data["name"], path, data)


def load(name_or_path: str | Path) -> Board:
    """A board by name (`esp32-devkitc`) from boards/, or by path to a JSON file."""
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists():
        return load_file(p)
    candidate = BOARDS / f"{name_or_path}.json"
    if not candidate.exists():
        raise BoardError(f"unknown board {name_or_path!r} (known: {', '.join(names())})")
    return load_file(candidate)


def names() -> list[str]:
    return sorted(p.stem for p in BOARDS.glob("*.json"))


def romfs_path(flash_dir: str | Path) -> Path:
    """Where a board's ROMFS partition is kept beside a folder holding its filesystem: DIR.romfs.

    One convention for a staged tree (`mpremote romfs deploy` reads the image there) and for a
    virtual board's flash folder (its partition)."""
    return Path(str(flash_dir) + ".romfs")
