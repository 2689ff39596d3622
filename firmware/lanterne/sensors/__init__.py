"""Sensor drivers (one module per device family) and what they share: fault flags, the stuck detector.

Every driver here follows the same contract, so the application treats them alike:

- it receives its bus, pins or ADC already built (`machine.I2C`, `machine.Pin`,
  `machine.ADC`, `machine.UART`); it never builds `machine` objects itself, so the
  module imports anywhere and a fake bus is a few lines in a test;
- `sample() -> bool` runs one sample cycle and returns True when fresh values are in
  the driver's attributes (integers in fixed units, named in each driver);
- a fault never raises into the application: it sets bits in `fault` (FAULT_*
  below), counts the failed cycle in `errors`, and leaves the last good values in
  place (stale; the app must look at `fault`);
- a sensor that answers again is re-initialised by the next `sample()`: no reboot.

"Stuck" means the raw values did not change for `stuck_cycles` cycles in a row.
Real converters always move their least significant bits, so identical raw words
mean a frozen part (a latched-up chip, a dead multiplexer), not a calm world.
"""

import time

from micropython import const

FAULT_MISSING = const(0x01)  # never answered since start-up, or a different chip answers
FAULT_BUS = const(0x02)  # answered before, now NACKs or the transfer failed
FAULT_STUCK = const(0x04)  # identical raw values for `stuck_cycles` cycles
FAULT_RANGE = const(0x08)  # reading outside the valid or calibrated range: flagged, never clamped silently
FAULT_TIMEOUT = const(0x10)  # conversion never completed / no echo within the timeout
FAULT_NOISY = const(0x20)  # the samples of one cycle disagree too much to give a value
FAULT_CHECKSUM = const(0x40)  # frames arrive but fail their checksum / CRC
FAULT_FRAME = const(0x80)  # the part answers with frames of another kind (wrong sensor, wrong mode)
FAULT_FAN = const(0x100)  # the part reports its fan blocked or out of speed

_NAMES = (
    (FAULT_MISSING, "missing"),
    (FAULT_BUS, "bus"),
    (FAULT_STUCK, "stuck"),
    (FAULT_RANGE, "range"),
    (FAULT_TIMEOUT, "timeout"),
    (FAULT_NOISY, "noisy"),
    (FAULT_CHECKSUM, "checksum"),
    (FAULT_FRAME, "frame"),
    (FAULT_FAN, "fan"),
    # the actuators' bits (lanterne.actuators), in the same fault word space
    (0x400, "failed"),  # FAULT_LAMP_FAILED: on, but drawing no current
    (0x800, "current_when_off"),  # FAULT_CURRENT_OFF
    (0x1000, "travel_timeout"),  # FAULT_TRAVEL
    (0x2000, "moved_without_command"),  # FAULT_POSITION
    (0x4000, "power_low"),  # FAULT_POWER_LOW (lanterne/energy.py): a dead LED module
    (0x8000, "power_high"),  # FAULT_POWER_HIGH: a failing driver
)


def fault_names(mask):
    """The names of the fault bits set in `mask` (sensors' and actuators'), for status messages (allocates: not for hot paths)."""
    return [name for bit, name in _NAMES if mask & bit]


class Sensor:
    """Base of the drivers: the fault word, the error counter and the stuck detector."""

    def __init__(self, stuck_cycles):
        self.fault = 0
        self.errors = 0  # failed sample cycles since start-up
        self.stuck_cycles = stuck_cycles  # 0 disables stuck detection
        self._same = 0
        self._stuck_at = time.ticks_ms()

    @property
    def ok(self):
        return self.fault == 0

    def _stuck(self, unchanged, min_interval_ms=0):
        """Feed one cycle: `unchanged` when the raw values equal the previous cycle's.

        Returns True once `stuck_cycles` consecutive cycles carried identical raw values.
        With `min_interval_ms` (a part that converts on its own schedule), an unchanged
        reading taken sooner than that after the last counted one is a re-read of the
        same conversion and does not count.
        """
        if not unchanged:
            self._same = 1
            self._stuck_at = time.ticks_ms()
            return False
        if min_interval_ms:
            now = time.ticks_ms()
            if time.ticks_diff(now, self._stuck_at) < min_interval_ms:
                return 0 < self.stuck_cycles <= self._same
            self._stuck_at = now
        self._same += 1
        return 0 < self.stuck_cycles <= self._same

    def _failed(self, bits):
        self.fault = bits
        self.errors += 1
        return False
