# Lanterne environmental parts: a particulate-matter sensor and an I2S microphone (sound levels).
# Loaded by lanterne.assets only on a board that has them (its strings and names would cost every
# other board RAM). Builds the parts from board facts, fills their codec v3 fields and flags,
# runs their tasks (the PM duty cycle, the microphone), reports them in the status.
from lanterne import codec

_F_PM = 1 << 10  # codec v3 status flags
_F_SOUND = 1 << 11
_F_PM_HUMID = 1 << 12
_PM1 = codec.EXT_FIRST  # extension slots: PM1, PM2.5, PM10, LAeq, LAmax
_FAULT_MISSING = 0x01


def _tenths(db):
    # dB -> 0.1 dB integer, 0..1400 (the codec's range)
    v = int(db * 10.0 + 0.5) if db > 0 else 0
    return 1400 if v > 1400 else v


class EnvironmentParts:
    def __init__(self):
        self.pm = None  # a lanterne.sensors.particulate.ParticulateSensor
        self.mic = None  # a lanterne.sensors.sound_level.Microphone
        self.sound_fault = 0

    def build(self, machine, kind, spec, buses, cfg, bus):
        Pin = machine.Pin
        if kind == "i2s_mic":
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
            return
        kw = {"period_s": cfg["pm_period_s"], "warmup_s": spec.get("warmup_s", 30),
              "measure_s": spec.get("measure_s", 10), "kappa_milli": cfg["pm_kappa_milli"]}
        if kind == "sps30":
            from lanterne.sensors.sps30 import SPS30

            self.pm = SPS30(bus(machine, spec["bus"], buses), spec.get("address", 0x69), **kw)
        elif kind == "sds011":
            from lanterne.sensors.sds011 import SDS011

            self.pm = SDS011(bus(machine, spec["bus"], buses), **kw)
        else:
            from lanterne.sensors.pms5003 import PMS5003

            self.pm = PMS5003(bus(machine, spec["bus"], buses), mode=spec.get("mode", "passive"), **kw)

    def sample(self, r, env):
        """Fill reading r's PM and sound fields; return the v3 status flags."""
        flags = 0
        pm = self.pm
        if pm is not None:
            if env is not None and env.has_humidity and not env.fault:
                pm.set_humidity(env.humidity_centi)
            if pm.measurements and pm.fresh:  # the latest measurement (one per pm_period_s)
                if pm.has_pm1:
                    r[_PM1] = pm.pm1
                r[_PM1 + 1] = pm.pm25
                r[_PM1 + 2] = pm.pm10
                if pm.humid:
                    flags |= _F_PM_HUMID
            if pm.fault:
                flags |= _F_PM
        mic = self.mic
        if mic is not None:
            m = mic.meter
            m.report()  # the levels since the previous reading
            if m.laeq is not None:
                r[_PM1 + 3] = _tenths(m.laeq)
                r[_PM1 + 4] = _tenths(m.lamax if m.lamax is not None else m.laeq)
            if m.fault or m.laeq is None:
                flags |= _F_SOUND
            self.sound_fault = m.fault if m.laeq is not None else (m.fault or _FAULT_MISSING)
        return flags

    def tasks(self, errors):
        out = []
        if self.pm is not None:
            out.append(self._pm_task(errors))
        if self.mic is not None:
            out.append(self._sound_task(errors))
        return out

    async def _pm_task(self, errors):
        import asyncio

        while True:
            try:
                self.pm.tick()
            except Exception as e:  # a driver bug never stops the board
                errors["pm_task"] = "pm task: %r" % (e,)
            await asyncio.sleep_ms(1000)

    async def _sound_task(self, errors):
        import asyncio

        mic = self.mic
        while True:
            try:
                mic.service()
            except Exception as e:  # an I2S error: reported, the board keeps going
                errors["noise_task"] = "noise task: %r" % (e,)
                await asyncio.sleep_ms(1000)
            await asyncio.sleep_ms(20)

    def reconfigure(self, key, cfg):
        """A config field changed by command: apply what concerns the parts."""
        if self.pm is not None and key in ("pm_period_s", "pm_kappa_milli"):
            self.pm.configure(period_s=cfg["pm_period_s"], kappa_milli=cfg["pm_kappa_milli"])
        if self.mic is not None and key == "sound_offset_db":
            m = self.mic.meter
            m.calibrate(m.sensitivity_dbfs, cfg["sound_offset_db"])

    def faults(self, out):
        from lanterne.sensors import fault_names

        pm = self.pm
        if pm is not None and pm.fault:
            out["pm"] = "pm: %s" % ",".join(fault_names(pm.fault))
        if self.mic is not None and self.sound_fault:
            out["noise"] = "noise: %s" % ",".join(fault_names(self.sound_fault))

    def status(self):
        """PM and sound figures for the status."""
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
