"""Street-lamp dimming by PWM into a 0-10 V / 1-10 V LED-driver interface, with ramps and lamp-fault detection.

    lamp = Lamp(PWM(Pin(25)), freq=1000, min_level=10, ramp_ms=2000,
                current_adc=ADC(Pin(35)), current_ohms=0.1, current_gain=20.0)
    lamp.set(50)              # percent; 0 = off
    lamp.update()             # every 50..200 ms from the main loop: advances the ramp
    lamp.check()              # now and then: current sense -> FAULT_LAMP_FAILED / FAULT_CURRENT_OFF

Interface: the PWM drives the analogue dimming input through the usual RC filter
and transistor stage, so the control voltage is duty x 10 V (`invert=True` when the
stage pulls the line down, as a 1-10 V current sink does). Level L % gives L/10 V:
1 V (10 %) is the driver's minimum on a 1-10 V interface, which cannot switch a
lamp off; give `switch` (a Pin driving the mains relay) for a true off. A 0-10 V
"dim-to-off" driver turns off at 0 V by itself.

`min_level` (default 10 %) is the lowest level ever output while on: a request
between 1 and min_level is raised to it. A change fades linearly over `ramp_ms`
(the whole change, like a DALI fade time); switching on starts from min_level,
switching off fades to min_level, then cuts.

Lamp fault, when the board has a current-sense ADC (shunt `current_ohms` followed
by an amplifier of `current_gain`): once the output has been steady for
`settle_ms`, less than `fault_ma` while on -> FAULT_LAMP_FAILED, more than
`fault_ma` while off -> FAULT_CURRENT_OFF.

DALI (IEC 62386) is out of scope: it needs a bus interface circuit and a
Manchester transceiver; this driver covers the analogue interfaces only.
"""

import time

from micropython import const

from lanterne.actuators import FAULT_CURRENT_OFF, FAULT_LAMP_FAILED

_FULL = const(1000)  # output in permille


class Lamp:
    def __init__(
        self,
        pwm,
        *,
        freq=1000,
        min_level=10,
        ramp_ms=2000,
        invert=False,
        switch=None,
        current_adc=None,
        current_ohms=0.1,
        current_gain=20.0,
        fault_ma=20,
        settle_ms=1500,
    ):
        if not 0 <= min_level <= 100:
            raise ValueError("min_level is a percentage")
        self.pwm = pwm
        self.min_level = min_level
        self.ramp_ms = ramp_ms
        self.invert = invert
        self.switch = switch
        self.current_adc = current_adc
        self.fault_ma = fault_ma
        self.settle_ms = settle_ms
        self._sense_k = int(current_ohms * current_gain * 1000 + 0.5)  # uV per mA at the ADC pin
        self.fault = 0
        self.level = 0  # requested level, percent (0 = off)
        self.output = 0  # what is driven now, permille of full light
        self.current_ma = -1  # last current-sense reading (-1: none)
        self._from = 0
        self._to = 0
        self._t0 = time.ticks_ms()
        self._dur = 0
        self._steady_since = self._t0
        try:
            pwm.freq(freq)
        except (AttributeError, ValueError):
            pass
        if current_adc is not None:
            try:
                current_adc.atten(current_adc.ATTN_11DB)
            except (AttributeError, OSError):
                pass
        self._drive(0)

    @property
    def on(self):
        return self.output > 0

    @property
    def ramping(self):
        return self.output != self._to

    def _drive(self, permille):
        self.output = permille
        duty = permille * 65535 // _FULL
        self.pwm.duty_u16(65535 - duty if self.invert else duty)
        if self.switch is not None:
            self.switch.value(1 if permille else 0)

    def set(self, level, ramp_ms=None, now_ms=None):
        """Request `level` percent (0 = off, else at least min_level), reached after the ramp."""
        level = int(level)
        if level < 0:
            level = 0
        elif level > 100:
            level = 100
        if 0 < level < self.min_level:
            level = self.min_level
        now = time.ticks_ms() if now_ms is None else now_ms
        self.level = level
        start = self.output
        if start == 0 and level:
            start = self.min_level * 10  # from off: light up at the minimum, then fade up
            self._drive(start)
        self._from = start
        self._to = level * 10
        self._t0 = now
        self._dur = self.ramp_ms if ramp_ms is None else ramp_ms
        self.update(now)

    def update(self, now_ms=None):
        """Advance the ramp; returns the output in percent. Call often from the main loop."""
        now = time.ticks_ms() if now_ms is None else now_ms
        target = self._to
        if self.output != target:
            elapsed = time.ticks_diff(now, self._t0)
            if target == 0:
                # fade to the minimum, then off
                low = self.min_level * 10
                if self._dur <= 0 or elapsed >= self._dur or self._from <= low:
                    value = 0
                else:
                    value = self._from + (low - self._from) * elapsed // self._dur
            elif self._dur <= 0 or elapsed >= self._dur:
                value = target
            else:
                value = self._from + (target - self._from) * elapsed // self._dur
            if value != self.output:
                self._drive(value)
                if value == target:
                    self._steady_since = now
        return (self.output + 5) // 10

    def check(self, now_ms=None):
        """Read the current sense (if any) and update the lamp faults; returns True when no lamp fault."""
        adc = self.current_adc
        if adc is None:
            return True
        now = time.ticks_ms() if now_ms is None else now_ms
        total = 0
        try:
            for _ in range(4):
                total += adc.read_uv()
        except OSError:
            return self.fault == 0
        self.current_ma = total // 4 // self._sense_k
        if self.ramping or time.ticks_diff(now, self._steady_since) < self.settle_ms:
            return self.fault == 0  # the driver's soft start / the fade: not judged yet
        fault = self.fault & ~(FAULT_LAMP_FAILED | FAULT_CURRENT_OFF)
        if self.output and self.current_ma < self.fault_ma:
            fault |= FAULT_LAMP_FAILED
        elif not self.output and self.current_ma > self.fault_ma:
            fault |= FAULT_CURRENT_OFF
        self.fault = fault
        return fault == 0
