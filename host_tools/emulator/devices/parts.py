"""The simulated hardware of one virtual board, built from its board file.

`Parts` is what the emulator's HAL server talks to: every `machine` call the
firmware makes on the virtual board (I2C transaction, pin write/read, PWM,
ADC, pulse timing, UART bytes) lands on one method here, which routes it to
the simulated part wired there (see the board file) or to the world's outputs.

Simulated part classes register themselves in `MODELS` (type name in the board
file -> factory(world, spec, board) -> part object). A part object may define
any of: `address` + `write(data)` / `read(n)` (I2C), `pins_in` (pins it drives
towards the ESP32) + `pin_read(pin)` + `next_change()` (when those inputs next change by
themselves, monotonic seconds, or None when only the world changes them: the HAL's interrupt
watch and a sleeping board's wake pins sleep until then; without it they are polled every
10 ms), `pins_out` + `pin_write(pin, level)`,
`time_pulse_us(pin, level, timeout_us)`, `adc_pins` + `adc_read_uv(pin)`,
`uart` (bus name) + `uart_write(data)` / `uart_read(n)`, `pwm_changed(pin, freq, duty_u16)`,
`i2s` (bus id) + `i2s_init(rate, bits)` / `i2s_read(nbytes) -> (bytes, wait_us)`.
Its `name` is what `world.inject(name, kind)` targets, and `fault_kinds` (default: the bus
faults missing, nack, stuck) the faults it can be given: each part added declares both to the
world, which then refuses a fault on a part this board does not have.
"""

from __future__ import annotations

import errno

from host_tools.emulator.devices import Nack
from host_tools.emulator.world import BUS_FAULT_KINDS

#: type name in board files -> factory(world, spec: dict, board_data: dict) -> part
MODELS: dict = {}


def register(type_name: str):
    def deco(factory):
        MODELS[type_name] = factory
        return factory

    return deco


def _load_models():
    # Import the model modules so they register themselves; missing ones are skipped.
    import importlib

    for mod in ("bme280", "light", "fill_level", "lamp", "relay", "supply", "particulate", "microphone", "lorawan_modem"):
        try:
            importlib.import_module(f"host_tools.emulator.devices.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"host_tools.emulator.devices.{mod}":
                raise


class Parts:
    def __init__(self, board_data: dict, world):
        _load_models()
        self.world = world
        self.board = board_data
        self.parts: list = []
        # bus name -> {address: part}
        self.i2c: dict[str, dict[int, object]] = {}
        self.i2c_by_id: dict[int, str] = {}
        self.uart_by_id: dict[int, str] = {}
        self.uart_parts: dict[str, object] = {}
        self.pin_in: dict[int, object] = {}
        self.pin_out: dict[int, object] = {}
        self.adc: dict[int, object] = {}
        self.pwm_parts: dict[int, object] = {}
        self.i2s_parts: dict[int, object] = {}
        self.missing_models: list[str] = []
        for name, bus in board_data.get("buses", {}).items():
            if bus["kind"] == "i2c":
                self.i2c[name] = {}
                self.i2c_by_id[int(bus.get("id", 0))] = name
            elif bus["kind"] == "uart":
                self.uart_by_id[int(bus.get("id", 1))] = name
        specs = list(board_data.get("sensors", [])) + list(board_data.get("actuators", []))
        net = board_data.get("network", {})
        if net.get("kind") == "lorawan":
            specs.append(dict(net, type="lorawan_modem"))
        elif board_data.get("lorawan"):  # a LoRaWAN modem beside the IP link (failover)
            specs.append(dict(board_data["lorawan"], type="lorawan_modem"))
        for spec in specs:
            factory = MODELS.get(spec["type"])
            if factory is None:
                self.missing_models.append(spec["type"])
                continue
            self.add(factory(world, spec, board_data), spec)
        if board_data.get("setup_button") is not None:
            from host_tools.emulator.devices.button import Button

            self.add(Button(world, int(board_data["setup_button"])))
        if board_data.get("alarm") is not None:
            from host_tools.emulator.devices.button import AlarmSwitch

            alarm = board_data["alarm"]
            self.add(AlarmSwitch(world, int(alarm["pin"]), alarm.get("active", "high")))

    def add(self, part, spec: dict | None = None) -> None:
        spec = spec or {}
        self.parts.append(part)
        if getattr(part, "name", None):
            self.world.declare_part(part.name, getattr(part, "fault_kinds", BUS_FAULT_KINDS))
        if hasattr(part, "address") and spec.get("bus") in self.i2c:
            self.i2c[spec["bus"]][int(part.address)] = part
        for pin in getattr(part, "pins_in", ()):
            self.pin_in[int(pin)] = part
        for pin in getattr(part, "pins_out", ()):
            self.pin_out[int(pin)] = part
        for pin in getattr(part, "adc_pins", ()):
            self.adc[int(pin)] = part
        for pin in getattr(part, "pwm_pins", ()):
            self.pwm_parts[int(pin)] = part
        if getattr(part, "uart", None):
            self.uart_parts[part.uart] = part
        if getattr(part, "i2s", None) is not None:
            self.i2s_parts[int(part.i2s)] = part

    # -- I2C ------------------------------------------------------------------
    def _i2c_part(self, bus_id: int, addr: int):
        bus = self.i2c.get(self.i2c_by_id.get(bus_id, ""), {})
        part = bus.get(addr)
        if part is None or not part.present():
            raise Nack(errno.ENODEV, "ENODEV")
        return part

    def i2c_scan(self, bus_id: int) -> list[int]:
        bus = self.i2c.get(self.i2c_by_id.get(bus_id, ""), {})
        return sorted(a for a, p in bus.items() if p.present())

    def i2c_write(self, bus_id: int, addr: int, data: bytes) -> None:
        self._i2c_part(bus_id, addr).write(bytes(data))

    def i2c_read(self, bus_id: int, addr: int, n: int) -> bytes:
        data = self._i2c_part(bus_id, addr).read(int(n))
        return bytes(data[:n]).ljust(n, b"\xff")

    # -- pins -----------------------------------------------------------------
    def pin_write(self, pin: int, level: int) -> None:
        self.world.drive_pin(pin, level)
        part = self.pin_out.get(int(pin))
        if part is not None:
            part.pin_write(int(pin), int(level))

    def pin_read(self, pin: int) -> int:
        part = self.pin_in.get(int(pin))
        if part is not None:
            return int(part.pin_read(int(pin)))
        level = self.world.pin_level(pin)
        return 0 if level is None else level

    def time_pulse_us(self, pin: int, level: int, timeout_us: int) -> int:
        part = self.pin_in.get(int(pin))
        if part is None or not hasattr(part, "time_pulse_us"):
            return -2  # ESP32 port: -2 when the pulse never started within the timeout
        return int(part.time_pulse_us(int(pin), int(level), int(timeout_us)))

    # -- PWM / ADC ------------------------------------------------------------
    def pwm(self, pin: int, freq: int, duty_u16: int | None) -> None:
        self.world.drive_pwm(pin, freq, duty_u16)
        part = self.pwm_parts.get(int(pin))
        if part is not None:
            part.pwm_changed(int(pin), int(freq), duty_u16)

    def release_pwm(self) -> None:
        """The chip stopped driving its PWM outputs (a reset, a power cut): every PWM pin goes idle."""
        for pin in list(self.world.outputs()["pwm"]):
            self.pwm(pin, 0, None)

    def adc_read_uv(self, pin: int) -> int:
        part = self.adc.get(int(pin))
        if part is None:
            return 0
        return max(0, min(3_300_000, int(part.adc_read_uv(int(pin)))))

    # -- UART -----------------------------------------------------------------
    def uart_write(self, uart_id: int, data: bytes) -> None:
        part = self.uart_parts.get(self.uart_by_id.get(uart_id, ""))
        if part is not None:
            part.uart_write(bytes(data))

    def uart_read(self, uart_id: int, n: int) -> bytes:
        part = self.uart_parts.get(self.uart_by_id.get(uart_id, ""))
        if part is None:
            return b""
        return bytes(part.uart_read(int(n)))

    # -- I2S ------------------------------------------------------------------
    def i2s_init(self, i2s_id: int, rate: int, bits: int) -> None:
        part = self.i2s_parts.get(int(i2s_id))
        if part is not None:
            part.i2s_init(int(rate), int(bits))

    def i2s_read(self, i2s_id: int, nbytes: int) -> tuple[bytes, int]:
        part = self.i2s_parts.get(int(i2s_id))
        if part is None:
            return bytes(nbytes), 0  # nothing on the bus: the data line reads low
        return part.i2s_read(int(nbytes))
