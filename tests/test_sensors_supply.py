"""Supply voltage: the driver on the unix port reads the simulated divider through the virtual board's ADC."""

from __future__ import annotations

from test_sensors_support import FirmwareRepl, virtual_parts

from host_tools import boards

FAULT_MISSING, FAULT_STUCK, FAULT_RANGE = 0x01, 0x04, 0x08


def setup_for(board: str) -> str:
    spec = boards.load(board).sensors("supply")[0]
    return f"""
from machine import ADC, Pin
from lanterne.sensors.supply import SupplyVoltage
supply = SupplyVoltage(ADC(Pin({spec["adc"]})), {spec["divider"]!r}, stuck_cycles=3)

def cycle():
    return [supply.sample(), supply.millivolts, supply.fault]
"""


def test_reads_the_supply_through_the_board_divider():
    for board in ("esp32-devkitc", "olimex-esp32-poe"):
        with virtual_parts(board) as hal:
            with FirmwareRepl(setup_for(board), hal=hal) as fw:
                for volts in (5.0, 12.0, 13.8, 24.0):
                    hal.world.set(supply_v=volts)
                    ok, mv, fault = fw("cycle()")
                    if volts * 1e6 / boards.load(board).sensors("supply")[0]["divider"] >= 3.1e6:
                        continue
                    assert ok and fault == 0
                    assert abs(mv - volts * 1000) <= 0.01 * volts * 1000 + 20, (board, volts, mv)


def test_above_full_scale_is_flagged_and_faults_recover():
    with virtual_parts("esp32-devkitc", supply_v=12.0) as hal:
        w = hal.world
        with FirmwareRepl(setup_for("esp32-devkitc"), hal=hal) as fw:
            w.set(supply_v=48.0)  # 48 V / 11 = 4.4 V at the pin: beyond the ADC's 3.1 V
            ok, mv, fault = fw("cycle()")
            assert ok and fault == FAULT_RANGE and mv >= 33000  # at least this; flagged
            w.set(supply_v=12.0)
            w.inject("supply", "missing")  # divider open: 0 V at the pin
            assert fw("cycle()")[0::2] == [False, FAULT_MISSING]
            w.clear("supply")
            assert fw("cycle()")[0::2] == [True, 0]
            w.inject("supply", "stuck")
            assert [fw("cycle()")[2] for _ in range(4)][-1] == FAULT_STUCK
            w.clear("supply")
            assert fw("cycle()")[0::2] == [True, 0]
