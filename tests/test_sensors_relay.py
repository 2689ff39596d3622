"""Access bollard: the relay driver on the unix port against the simulated bollard (position switch, loop detector).

The simulated bollard's clock and the driver's `now_ms` are stepped together by the
test, so travel and timeouts are checked without waiting.
"""

from __future__ import annotations

import contextlib

from test_sensors_support import FirmwareRepl, part, virtual_parts

FAULT_TRAVEL, FAULT_POSITION = 0x1000, 0x2000
DOWN, UP, MOVING, UNKNOWN = 0, 1, 2, 3
OK, REFUSED_INTERLOCK = 0, 1

SETUP = """
from machine import Pin
from lanterne.actuators.relay import Bollard, UP, DOWN
def make():
    return Bollard(Pin(32, Pin.OUT), position=Pin(33, Pin.IN), presence=Pin(39, Pin.IN), travel_ms=3000)
bollard = make()
"""


class Clock:
    def __init__(self):
        self.s = 0.0

    def __call__(self):
        return self.s


@contextlib.contextmanager
def bollard_board():
    """(world, simulated bollard, its clock, the firmware) on the cabinet board."""
    with virtual_parts("olimex-esp32-poe") as hal:
        clock = Clock()
        sim = part(hal, "relay")
        sim.clock = clock
        with FirmwareRepl(SETUP, hal=hal) as fw:
            yield hal.world, sim, clock, fw


def test_moves_confirms_and_never_lowers_onto_presence():
    with bollard_board() as (w, sim, clock, fw):
        assert fw("bollard.state, bollard.fault") == [DOWN, 0]
        assert w.pin_level(32) == 0
        assert fw("bollard.command(UP, now_ms=0)") == OK
        assert w.pin_level(32) == 1
        clock.s = 1.0
        assert fw("bollard.update(1000)") == MOVING
        clock.s = 3.1
        assert fw("bollard.update(3100), bollard.position") == [UP, UP]
        # something stands there: lowering is refused, nothing moves
        w.set(presence=True)
        assert fw("bollard.command(DOWN, now_ms=5000), bollard.state, bollard.refusals") == [
            REFUSED_INTERLOCK,
            UP,
            1,
        ]
        assert w.pin_level(32) == 1
        # presence appearing while lowering: the move reverses
        w.set(presence=False)
        clock.s = 10.0
        assert fw("bollard.command(DOWN, now_ms=10000)") == OK
        clock.s = 11.0
        w.set(presence=True)
        assert fw("bollard.update(11000), bollard.interlock_trips, bollard.target") == [MOVING, 1, UP]
        assert w.pin_level(32) == 1
        clock.s = 11.1
        assert fw("bollard.update(11100)") == UP
        assert sim.position == 1  # it never went down


def test_jammed_bollard_times_out_and_moves_by_hand_are_reported():
    with bollard_board() as (w, sim, clock, fw):
        w.inject("relay", "stuck")
        assert fw("bollard.command(UP, now_ms=0)") == OK
        clock.s = 4.0
        assert fw("bollard.update(4000)") == MOVING
        clock.s = 5.1
        # not confirmed within 1.5 x travel + 0.5 s
        assert fw("bollard.update(5100), bollard.fault") == [UNKNOWN, FAULT_TRAVEL]
        assert w.pin_level(32) == 1  # no hunting: the command stays
        w.clear("relay")
        clock.s = 9.0
        assert fw("bollard.update(9000), bollard.fault") == [
            UP,
            FAULT_TRAVEL,
        ]  # late, kept until a command
        assert fw("bollard.command(UP, now_ms=9100), bollard.fault, bollard.state") == [OK, 0, UP]
        sim.move_by_hand(0)  # lowered with the maintenance key
        assert fw("bollard.update(9200), bollard.fault, bollard.position") == [DOWN, FAULT_POSITION, DOWN]


def test_a_reboot_never_moves_the_bollard():
    with virtual_parts("olimex-esp32-poe") as hal:
        sim = part(hal, "relay")
        sim.move_by_hand(1)
        with FirmwareRepl(SETUP, hal=hal) as fw:
            assert fw("bollard.state") == UP
            assert hal.world.pin_level(32) == 1
            assert sim.position == 1
