"""Supply voltage through a resistor divider on an ESP32 ADC1 pin (the divider ratio comes from the board file).

    supply = SupplyVoltage(ADC(Pin(34)), board["sensors"][i]["divider"])   # e.g. 11.0 for 100k/10k
    if supply.sample():
        supply.millivolts

The driver sets 11 dB attenuation (full scale ~3.1 V) and uses `read_uv()`, which
the ESP32 port corrects with the chip's eFuse calibration. A cycle averages
`samples` readings (integer microvolts). Faults: nothing on the pin (< 20 mV:
divider open or not fitted) -> FAULT_MISSING; input at the ADC's full scale (the
supply is above what the divider can show) -> FAULT_RANGE, value kept; every
reading of `stuck_cycles` cycles identical -> FAULT_STUCK (an ESP32 ADC always
moves a few codes; identical words mean a dead input).
"""

from micropython import const

from lanterne.sensors import FAULT_BUS, FAULT_MISSING, FAULT_RANGE, FAULT_STUCK, Sensor

_MISSING_UV = const(20_000)


class SupplyVoltage(Sensor):
    def __init__(self, adc, divider, *, samples=8, stuck_cycles=5, full_scale_uv=3_100_000):
        super().__init__(stuck_cycles)
        if divider < 1:
            raise ValueError("divider is the ratio Vin/Vadc, >= 1")
        self.adc = adc
        self.divider_milli = int(divider * 1000 + 0.5)
        self.samples = samples
        self.full_scale_uv = full_scale_uv
        self.millivolts = 0
        self.microvolts_at_pin = 0
        self._last_raw = -1
        try:
            adc.atten(adc.ATTN_11DB)
        except (AttributeError, OSError):
            pass  # an ADC object without attenuation control (a test double): used as it is

    def sample(self):
        """Average `samples` readings; True when `millivolts` is fresh (maybe FAULT_RANGE)."""
        lo = 0x7FFFFFFF
        hi = -1
        total = 0
        try:
            for _ in range(self.samples):
                uv = self.adc.read_uv()
                total += uv
                if uv < lo:
                    lo = uv
                if uv > hi:
                    hi = uv
        except OSError:
            return self._failed(FAULT_BUS)
        if hi < _MISSING_UV:
            return self._failed(FAULT_MISSING)
        unchanged = lo == hi and lo == self._last_raw
        self._last_raw = lo if lo == hi else -1
        if self._stuck(unchanged):
            return self._failed(FAULT_STUCK)
        avg = total // self.samples
        self.microvolts_at_pin = avg
        # avg * divider_milli // 10**6, split so no product passes 2**30 (a long int on the ESP32)
        d = self.divider_milli
        self.millivolts = (avg // 1000 * d + avg % 1000 * d // 1000) // 1000
        self.fault = FAULT_RANGE if hi >= self.full_scale_uv - 10_000 else 0
        return True
