"""Actuator drivers: lamp dimming (lamp.py) and the bollard relay (relay.py); their fault bits.

Like the sensors, an actuator receives its pins, PWM and ADC already built, never
raises into the application for a hardware fault, and reports in `fault` (bits
below, alongside the sensors' FAULT_* bits). Time-based behaviour (ramps, travel
timeouts) advances in `update(now_ms=None)`, which the main loop calls often
(every 50..200 ms): nothing here sleeps.
"""

from micropython import const

FAULT_LAMP_FAILED = const(0x400)  # lamp commanded on, no current drawn (broken lamp or driver)
FAULT_CURRENT_OFF = const(0x800)  # current drawn while commanded off (driver or relay stuck on)
FAULT_TRAVEL = const(0x1000)  # the bollard did not confirm the commanded position within its timeout
FAULT_POSITION = const(0x2000)  # the position input changed without a command (moved by hand, input broken)
# set by the lamp's energy meter (lanterne/energy.py) in the lamp's fault word:
FAULT_POWER_LOW = const(0x4000)  # draws far less than its level implies (a dead LED module)
FAULT_POWER_HIGH = const(0x8000)  # draws far more than its level implies (a failing driver)
