"""Street lamp: the dimming driver on the unix port drives the simulated lamp; its current sense finds a dead lamp.

Times are passed explicitly (`now_ms`) so the ramp is checked step by step without
depending on how fast the host runs.
"""

from __future__ import annotations

from test_sensors_support import FirmwareRepl, part, virtual_parts

FAULT_LAMP_FAILED, FAULT_CURRENT_OFF = 0x400, 0x800

SETUP = """
from machine import ADC, PWM, Pin
from lanterne.actuators.lamp import Lamp
lamp = Lamp(PWM(Pin(25)), freq=1000, min_level=10, ramp_ms=2000, current_adc=ADC(Pin(35)),
            current_ohms=0.1, current_gain=20.0, settle_ms=1000)
"""


def duty(hal) -> float:
    """What the lamp's control input sees, percent of 10 V."""
    pwm = hal.world.pwm(25)
    return 0.0 if pwm is None else pwm["duty_u16"] / 65535 * 100


def test_on_off_ramp_minimum_and_dimming():
    with virtual_parts("esp32-devkitc") as hal:
        with FirmwareRepl(SETUP, hal=hal) as fw:
            assert duty(hal) == 0 and hal.world.pwm(25)["freq"] == 1000
            fw.run("lamp.set(100, now_ms=0)")
            assert abs(duty(hal) - 10) < 0.1  # switching on starts at the minimum level
            fw.run("lamp.update(1000)")
            assert abs(duty(hal) - 55) < 0.1  # half way through the 2 s fade
            assert fw("lamp.update(2000)") == 100
            assert abs(duty(hal) - 100) < 0.1
            fw.run("lamp.set(50, now_ms=10000)")  # night dimming step
            fw.run("lamp.update(11000)")
            assert abs(duty(hal) - 75) < 0.1
            assert fw("lamp.update(12500)") == 50 and abs(duty(hal) - 50) < 0.1
            fw.run("lamp.set(4, ramp_ms=0, now_ms=13000)")  # below the minimum: held at the minimum
            assert abs(duty(hal) - 10) < 0.1
            fw.run("lamp.set(0, now_ms=14000)")  # off fades to the minimum, then cuts
            assert fw("lamp.update(16000), lamp.on") == [0, False]
            assert duty(hal) == 0


def test_current_sense_finds_a_dead_lamp_and_a_stuck_driver():
    with virtual_parts("esp32-devkitc", lamp_load_w=40.0) as hal:
        lamp_part = part(hal, "lamp")
        with FirmwareRepl(SETUP, hal=hal) as fw:
            fw.run("lamp.set(100, ramp_ms=0, now_ms=0)")
            assert fw("lamp.check(500), lamp.fault") == [
                True,
                0,
            ]  # still in the driver's soft start: not judged
            assert fw("lamp.check(2000), lamp.fault") == [True, 0]
            # 40 W on the 48 V LED supply: ~833 mA through the 0.1 ohm shunt, gain 20
            assert abs(fw("lamp.current_ma") - 40 / 48 * 1000) < 15
            hal.world.set(lamp_failed=True)
            assert fw("lamp.check(3000), lamp.fault") == [False, FAULT_LAMP_FAILED]
            hal.world.set(lamp_failed=False)  # lamp replaced: the fault clears without a reboot
            assert fw("lamp.check(4000), lamp.fault") == [True, 0]
            fw.run("lamp.set(0, ramp_ms=0, now_ms=5000)")
            assert fw("lamp.check(7000), lamp.fault") == [True, 0]
            # current while commanded off: the driver (or its relay) is stuck on
            lamp_part.duty_u16 = 65535
            assert fw("lamp.check(8000), lamp.fault") == [False, FAULT_CURRENT_OFF]
