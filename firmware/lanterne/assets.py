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
_F_PM = 1 << 10  # codec v3 flags
_F_SOUND = 1 << 11
_F_PM_HUMID = 1 << 12
_PM_TYPES = ("pms5003", "pms7003", "sds011", "sps30")


class Assets:
    def __init__(self, board, cfg):
        import machine

        self.errors = {}  # part -> why it could not be built
        self.env = self.light = self.fill = self.supply = self.lamp = self.bollard = None
        self.pm = self.mic = None  # particulate sensor, microphone (a sensors.sound_level.Microphone)
        self.profile = None
        self.lamp_level_override = None
        self.sound_fault = 0
        self._i2c = {}
        buses = board.get("buses", {})
        for spec in board.get("sensors", []) + board.get("actuators", []):
            kind = spec.get("type")
            try:
                self._build(machine, kind, spec, buses, cfg)
            except Exception as e:  # a wrong board file or a driver error: report, keep going
                self.errors[kind] = "%s: %r" % (kind, e)

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
        elif kind in ("bh1750", "veml7700"):
            from lanterne.sensors import light

            cls = light.BH1750 if kind == "bh1750" else light.VEML7700
            self.light = cls(self._bus(machine, spec["bus"], buses), spec.get("address", 0x23 if kind == "bh1750" else 0x10))
        elif kind == "ultrasonic":
            from lanterne.sensors.fill_level import UltrasonicFillLevel

            self.fill = UltrasonicFillLevel(
                Pin(spec["trigger"], Pin.OUT), Pin(spec["echo"], Pin.IN), empty_mm=cfg["bin_empty_mm"], full_mm=cfg["bin_full_mm"]
            )
        elif kind == "ultrasonic_uart":
            if self.fill is None:  # one fill-level source: trigger/echo preferred when both are fitted
                from lanterne.sensors.fill_level import UartFillLevel

                self.fill = UartFillLevel(self._bus(machine, spec["bus"], buses), empty_mm=cfg["bin_empty_mm"], full_mm=cfg["bin_full_mm"])
        elif kind in _PM_TYPES:
            kw = {"period_s": cfg["pm_period_s"], "warmup_s": spec.get("warmup_s", 30),
                  "measure_s": spec.get("measure_s", 10), "kappa_milli": cfg["pm_kappa_milli"]}
            if kind == "sps30":
                from lanterne.sensors.sps30 import SPS30

                self.pm = SPS30(self._bus(machine, spec["bus"], buses), spec.get("address", 0x69), **kw)
            elif kind == "sds011":
                from lanterne.sensors.sds011 import SDS011

                self.pm = SDS011(self._bus(machine, spec["bus"], buses), **kw)
            else:
                from lanterne.sensors.pms5003 import PMS5003

                self.pm = PMS5003(self._bus(machine, spec["bus"], buses), mode=spec.get("mode", "passive"), **kw)
        elif kind == "i2s_mic":
            from lanterne.sensors.sound_level import Microphone, SoundLevelMeter

            b = buses[spec["bus"]]
            rate = spec.get("sample_rate", 48000)
            bits = spec.get("bits", 32)
            meter = SoundLevelMeter(rate, spec.get("sensitivity_dbfs", -26.0), cfg["sound_offset_db"], bits)
            ibuf = spec.get("ibuf", 16384)
            i2s = machine.I2S(
                b.get("id", 0), sck=Pin(b["sck"]), ws=Pin(b["ws"]), sd=Pin(b["sd"]), mode=machine.I2S.RX,
                bits=bits, format=machine.I2S.MONO, rate=rate, ibuf=ibuf,
            )
            self.mic = Microphone(i2s, meter, ibuf_bytes=ibuf)
        elif kind == "supply":
            from lanterne.sensors.supply import SupplyVoltage

            self.supply = SupplyVoltage(machine.ADC(Pin(spec["adc"])), spec.get("divider", 11.0))
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
            has_site = cfg["lat"] != 0.0 or cfg["lon"] != 0.0
            self.profile = LampProfile(
                cfg["lat"] if has_site else None,
                cfg["lon"] if has_site else None,
                utc_offset_min=cfg["timezone_min"],
                dst="eu",
            )
        elif kind == "relay":
            from lanterne.actuators import relay

            self.bollard = relay.Bollard(
                Pin(spec["pin"], Pin.OUT),
                position=Pin(spec["position_pin"], Pin.IN) if spec.get("position_pin") is not None else None,
                presence=Pin(spec["presence_pin"], Pin.IN) if spec.get("presence_pin") is not None else None,
                travel_ms=spec.get("travel_ms", 3000),
                guard=relay.UP if spec.get("guard") == "up" else relay.DOWN,
            )

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
            if await fill.sample_async():
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
            r[codec.LAMP_FAULT] = 1 if lamp.fault else 0
        pm = self.pm
        if pm is not None:
            if env is not None and env.has_humidity and not env.fault:
                pm.set_humidity(env.humidity_centi)
            if pm.measurements and pm.fresh:  # the latest measurement (one per pm_period_s)
                if pm.has_pm1:
                    r[codec.PM1] = pm.pm1
                r[codec.PM25] = pm.pm25
                r[codec.PM10] = pm.pm10
                if pm.humid:
                    flags |= _F_PM_HUMID
            if pm.fault:
                flags |= _F_PM
        mic = self.mic
        if mic is not None:
            m = mic.meter
            m.report()  # the levels since the previous reading
            if m.laeq is not None:
                r[codec.LAEQ] = _tenths(m.laeq)
                r[codec.LAMAX] = _tenths(m.lamax if m.lamax is not None else m.laeq)
            if m.fault or m.laeq is None:
                flags |= _F_SOUND
            self.sound_fault = m.fault if m.laeq is not None else (m.fault or 0x01)
        return flags

    # -- environmental parts: their own tasks -----------------------------------------
    def tasks(self):
        """Coroutines the app runs beside its own: the PM duty cycle and the microphone."""
        out = []
        if self.pm is not None:
            out.append(self._pm_task())
        if self.mic is not None:
            out.append(self._sound_task())
        return out

    async def _pm_task(self):
        import asyncio

        while True:
            try:
                self.pm.tick()
            except Exception as e:  # a driver bug never stops the board
                self.errors["pm_task"] = "pm task: %r" % (e,)
            await asyncio.sleep_ms(1000)

    async def _sound_task(self):
        import asyncio

        mic = self.mic
        while True:
            try:
                mic.service()
            except Exception as e:  # an I2S error: reported, the board keeps going
                self.errors["noise_task"] = "noise task: %r" % (e,)
                await asyncio.sleep_ms(1000)
            await asyncio.sleep_ms(20)

    def reconfigure(self, key, cfg):
        """A config field changed by command: apply what concerns the parts."""
        if self.pm is not None and key in ("pm_period_s", "pm_kappa_milli"):
            self.pm.configure(period_s=cfg["pm_period_s"], kappa_milli=cfg["pm_kappa_milli"])
        if self.mic is not None and key == "sound_offset_db":
            m = self.mic.meter
            m.calibrate(m.sensitivity_dbfs, cfg["sound_offset_db"])

    def environment(self):
        """PM and sound figures for the status (None when the part is not fitted)."""
        pm = self.pm
        mic = self.mic
        out = {}
        if pm is not None:
            out["pm"] = {
                "pm1": pm.pm1 if pm.has_pm1 and pm.measurements else None,
                "pm2_5": pm.pm25 if pm.measurements else None,
                "pm10": pm.pm10 if pm.measurements else None,
                "humid": pm.humid,
                "state": ("asleep", "warming", "measuring")[pm.state],
                "measurements": pm.measurements,
                "fan_s": pm.fan_seconds,
                "bad_frames": pm.bad_frames,
            }
        if mic is not None:
            m = mic.meter
            out["noise"] = {
                "laeq": None if m.laeq is None else _tenths(m.laeq) / 10,
                "lamax": None if m.lamax is None else _tenths(m.lamax) / 10,
                "la90": None if m.la90 is None else _tenths(m.la90) / 10,
                "rate": m.sample_rate,
                "lost": m.lost,
            }
        return out

    # -- actuators --------------------------------------------------------------------
    def lamp_tick(self, now_utc, contact):
        """Follow the lamp profile (or the back office's override); call every ~100 ms."""
        lamp = self.lamp
        if lamp is None:
            return
        lux = None
        light = self.light
        if light is not None and not light.fault and light.errors >= 0:
            lux = light.lux
        want = self.profile.level(now_utc, lux, contact)
        if want != lamp.level:
            lamp.set(want)
        lamp.update()

    def faults(self):
        from lanterne.sensors import fault_names

        out = dict(self.errors)
        for name in ("env", "light", "fill", "supply", "lamp", "bollard", "pm"):
            part = getattr(self, name)
            if part is not None and part.fault:
                out[name] = "%s: %s" % (name, ",".join(fault_names(part.fault)))
        if self.mic is not None and self.sound_fault:
            out["noise"] = "noise: %s" % ",".join(fault_names(self.sound_fault))
        return out


def _tenths(db):
    # dB -> 0.1 dB integer, 0..1400 (the codec's range)
    v = int(db * 10.0 + 0.5) if db > 0 else 0
    return 1400 if v > 1400 else v
