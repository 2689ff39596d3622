# Lanterne assets: the sensors and actuators this board carries, built from board.json.
# Drivers are imported only for the parts fitted (RAM). One sample cycle fills a codec
# reading; a part that fails is flagged in the reading's status and in `faults()`, and the
# others keep reporting. Every hardware object is built here, from board facts.
import time

from lanterne import codec

# codec status bits (codec.STATUS_NAMES)
_F_TEMPERATURE = 1 << 0
_F_HUMIDITY = 1 << 1
_F_PRESSURE = 1 << 2
_F_LIGHT = 1 << 3
_F_FILL = 1 << 4
_F_VOLTAGE = 1 << 5
F_OVERFLOW = 1 << 7
F_CONFIG = 1 << 8
F_UNSYNCED = 1 << 9
# the status bits that make a reading an alarm, sent ahead of a LoRaWAN backlog (lanterne/delivery.py):
# the sensor faults (bits 0-5), tamper (6), store overflow (7), config error (8), PM and sound
# faults (10, 11); not clock_unsynced (9) nor pm_humid (12), which are information, not alarms
ALARM_FLAGS = 0x0DFF
_ENV_TYPES = ("pms5003", "pms7003", "sds011", "sps30", "i2s_mic")  # lanterne.environment, loaded only when fitted

LAMP_CHECK_MS = 2000  # the lamp's current sense is judged this often (4 ADC reads each time)

# part attribute -> the reading fields its fault flags (status text: what a user sees in the readings)
_FLAGGED = (
    ("env", "temperature_fault, humidity_fault, pressure_fault"),
    ("light", "illuminance_fault"),
    ("fill", "fill_fault"),
    ("supply", "voltage_fault"),
    ("lamp", "lamp_fault"),
    ("bollard", None),
)


# The driver modules each kind of part needs. App imports them all before it builds any object
# (load_drivers): a module's names may grow MicroPython's qstr pool, a new pool is twice the
# last and must be found in one piece, which a heap full of small objects may no longer have.
_DRIVERS = {
    "bme280": ("lanterne.sensors.bme280",),
    "bh1750": ("lanterne.sensors.light",),
    "veml7700": ("lanterne.sensors.light",),
    "ultrasonic": ("lanterne.sensors.fill_level",),
    "ultrasonic_uart": ("lanterne.sensors.fill_level",),
    "supply": ("lanterne.sensors.supply",),
    "lamp": ("lanterne.actuators.lamp", "lanterne.lamp_profile"),
    "relay": ("lanterne.actuators.relay",),
}


def load_drivers(board):
    for spec in board.get("sensors", []) + board.get("actuators", []):
        for name in _DRIVERS.get(spec.get("type"), ()):
            try:
                __import__(name)
            except ImportError:
                pass  # Assets reports it when it builds that part


class Assets:
    def __init__(self, board, cfg, lamp_curve):
        import machine

        self.lamp_curve = lamp_curve  # config.parse_curve of cfg["lamp_curve"], by the app while config is loaded

        self.errors = {}  # part -> why it could not be built
        self.env = self.light = self.fill = self.supply = self.lamp = self.bollard = None
        self.extra = None  # lanterne.environment.EnvironmentParts: PM sensor, microphone
        self.energy = None  # lanterne.energy.EnergyMeter: the lamp's Wh and burning hours
        self.profile = None
        self.lamp_level_override = None
        self.fill_busy = False  # field setup hook: the setup page's calibration pings take turns with sampling
        self.kinds = {}  # part attribute -> its type in the board file ("env" -> "bme280"), for the status
        self._lamp_checked = time.ticks_ms()
        self._i2c = {}
        buses = board.get("buses", {})
        for spec in board.get("sensors", []) + board.get("actuators", []):
            kind = spec.get("type")
            try:
                attr = self._build(machine, kind, spec, buses, cfg)
                if attr:
                    self.kinds[attr] = kind
            except Exception as e:  # a wrong board file or a driver error: report, keep going
                self.errors[kind] = "%s: %r" % (kind, e)
        if self.energy is not None:
            self.energy.supply = self.supply  # the lamp's rail voltage, when the board file gives no lamp_v

    def _bus(self, machine, name, buses):
        if name in self._i2c:
            return self._i2c[name]
        b = buses[name]
        if b["kind"] == "i2c":
            bus = machine.I2C(b.get("id", 0), scl=machine.Pin(b["scl"]), sda=machine.Pin(b["sda"]), freq=b.get("freq", 400000))
        else:
            bus = machine.UART(b.get("id", 1), b.get("baudrate", 9600), tx=b.get("tx"), rx=b.get("rx"), timeout=0)
        self._i2c[name] = bus
        return bus

    def _build(self, machine, kind, spec, buses, cfg):
        Pin = machine.Pin
        if kind == "bme280":
            from lanterne.sensors.bme280 import BME280

            self.env = BME280(self._bus(machine, spec["bus"], buses), spec.get("address", 0x76))
            return "env"
        elif kind in ("bh1750", "veml7700"):
            from lanterne.sensors import light

            cls = light.BH1750 if kind == "bh1750" else light.VEML7700
            self.light = cls(self._bus(machine, spec["bus"], buses), spec.get("address", 0x23 if kind == "bh1750" else 0x10))
            return "light"
        elif kind == "ultrasonic":
            from lanterne.sensors.fill_level import UltrasonicFillLevel

            self.fill = UltrasonicFillLevel(
                Pin(spec["trigger"], Pin.OUT), Pin(spec["echo"], Pin.IN), empty_mm=cfg["bin_empty_mm"], full_mm=cfg["bin_full_mm"],
                samples=spec.get("samples", 9), gap_ms=spec.get("gap_ms", 60),  # fewer, closer pings on a battery
            )
            return "fill"
        elif kind == "ultrasonic_uart":
            if self.fill is None:  # one fill-level source: trigger/echo preferred when both are fitted
                from lanterne.sensors.fill_level import UartFillLevel

                self.fill = UartFillLevel(self._bus(machine, spec["bus"], buses), empty_mm=cfg["bin_empty_mm"], full_mm=cfg["bin_full_mm"])
                return "fill"
        elif kind in _ENV_TYPES:
            if self.extra is None:
                from lanterne.environment import EnvironmentParts

                self.extra = EnvironmentParts()
            self.extra.build(machine, kind, spec, buses, cfg, self._bus)
        elif kind == "supply":
            from lanterne.sensors.supply import SupplyVoltage

            self.supply = SupplyVoltage(machine.ADC(Pin(spec["adc"])), spec.get("divider", 11.0))
            return "supply"
        elif kind == "lamp":
            from lanterne.actuators.lamp import Lamp
            from lanterne.lamp_profile import LampProfile

            adc = machine.ADC(Pin(spec["current_adc"])) if spec.get("current_adc") is not None else None
            self.lamp = Lamp(
                machine.PWM(Pin(spec["pwm"]), freq=spec.get("freq", 1000), duty_u16=0),
                freq=spec.get("freq", 1000),
                current_adc=adc,
                current_ohms=spec.get("current_ohms", 0.1),
                current_gain=spec.get("current_gain", 20.0),
            )
            from lanterne.energy import EnergyMeter


            self.energy = EnergyMeter(
                self.lamp,
                lamp_v=spec.get("lamp_v", 0.0),
                rated_w=cfg["lamp_rated_w"] or spec.get("rated_w", 0.0),
                curve=self.lamp_curve,
                low_pct=cfg["lamp_power_low_pct"],
                high_pct=cfg["lamp_power_high_pct"],
            )
            has_site = cfg["lat"] != 0.0 or cfg["lon"] != 0.0
            self.profile = LampProfile(
                cfg["lat"] if has_site else None,
                cfg["lon"] if has_site else None,
                utc_offset_min=cfg["timezone_min"],
                dst="eu",
            )
            return "lamp"
        elif kind == "relay":
            from lanterne.actuators import relay

            self.bollard = relay.Bollard(
                Pin(spec["pin"], Pin.OUT),
                position=Pin(spec["position_pin"], Pin.IN) if spec.get("position_pin") is not None else None,
                presence=Pin(spec["presence_pin"], Pin.IN) if spec.get("presence_pin") is not None else None,
                travel_ms=spec.get("travel_ms", 3000),
                guard=relay.UP if spec.get("guard") == "up" else relay.DOWN,
            )
            return "bollard"

    # -- sampling -------------------------------------------------------------------
    async def sample(self, r):
        """One sample cycle of every sensor into codec reading `r`; returns the status flags."""
        import asyncio

        for i in range(codec.N_FIELDS):
            r[i] = None
        flags = 0
        env = self.env
        if env is not None:
            wait = env.trigger()
            if wait:
                await asyncio.sleep_ms(wait // 1000 + 1)
            if env.read():  # fresh values (a RANGE fault keeps them, flagged)
                r[codec.TEMPERATURE] = env.temperature // 10
                if env.has_humidity:
                    r[codec.HUMIDITY] = env.humidity_centi // 50
                r[codec.PRESSURE] = env.pressure_pa // 10
            if env.fault:
                flags |= _F_TEMPERATURE | _F_PRESSURE | (_F_HUMIDITY if env.has_humidity or not env.present else 0)
        light = self.light
        if light is not None:
            ok = light.sample()
            if not ok and not light.fault:
                await asyncio.sleep_ms(light.settle_ms)  # changing range: one more try
                ok = light.sample()
            if ok:
                r[codec.ILLUMINANCE] = light.millilux
            if light.fault:
                flags |= _F_LIGHT
        fill = self.fill
        if fill is not None:
            if env is not None and env.present and not env.fault:
                fill.set_temperature(env.temperature)
            while self.fill_busy:
                await asyncio.sleep_ms(20)
            self.fill_busy = True
            try:
                fresh = await fill.sample_async()
            finally:
                self.fill_busy = False
            if fresh:
                lvl = fill.level_permille // 10
                r[codec.FILL] = 0 if lvl < 0 else (100 if lvl > 100 else lvl)
                r[codec.DISTANCE] = fill.distance_mm
            if fill.fault:
                flags |= _F_FILL
        sup = self.supply
        if sup is not None:
            if sup.sample():
                r[codec.VOLTAGE] = sup.millivolts
            if sup.fault:
                flags |= _F_VOLTAGE
        lamp = self.lamp
        if lamp is not None:
            r[codec.LAMP] = lamp.level
            if self.energy is not None:  # saved first: a reading never says more than the flash holds
                wh, ch = self.energy.report()
                if self.energy.source != "none":
                    r[codec.EXT_FIRST + 5] = wh
                r[codec.EXT_FIRST + 6] = ch
            r[codec.LAMP_FAULT] = 1 if lamp.fault else 0
        if self.extra is not None:
            flags |= self.extra.sample(r, env)
        return flags

    def tasks(self):
        """Coroutines the app runs beside its own (the PM duty cycle, the microphone)."""
        return self.extra.tasks(self.errors) if self.extra is not None else []

    # -- actuators --------------------------------------------------------------------
    def lamp_tick(self, now_utc, contact):
        """Follow the lamp profile (or the back office's override); call every ~100 ms.

        Every LAMP_CHECK_MS the current sense is judged too (lamp failed, current while off)."""
        lamp = self.lamp
        if lamp is None:
            return
        lux = None
        light = self.light
        if light is not None and not light.fault and light.has_value:
            lux = light.lux  # a photocell that has not answered yet is no photocell (never "dark")
        want = self.profile.level(now_utc, lux, contact)
        if want != lamp.level:
            lamp.set(want)
        lamp.update()
        now = time.ticks_ms()
        if time.ticks_diff(now, self._lamp_checked) >= LAMP_CHECK_MS:
            self._lamp_checked = now
            lamp.check(now)
            if self.energy is not None:
                self.energy.tick(now)

    def fault_key(self):
        """The parts' fault words, cheap to compare: a change means the status has news."""
        key = tuple(0 if p is None else p.fault for p in (self.env, self.light, self.fill, self.supply, self.lamp, self.bollard))
        return key if self.energy is None else key + (self.energy.error, self.energy.lost)

    def faults(self):
        """Status text per faulty part: its type in the board file, what is wrong, the reading fields it flags."""
        from lanterne.sensors import fault_names

        out = dict(self.errors)
        for name, flagged in _FLAGGED:
            part = getattr(self, name)
            if part is not None and part.fault:
                if name == "env" and part.present and not part.has_humidity:
                    flagged = "temperature_fault, pressure_fault"
                why = "%s: %s" % (self.kinds.get(name, name), ", ".join(fault_names(part.fault)))
                out[name] = "%s (%s)" % (why, flagged) if flagged else why
        if self.extra is not None:
            self.extra.faults(out)
        if self.energy is not None and (self.energy.error or self.energy.lost):
            out["energy"] = self.energy.error or self.energy.lost
        return out
