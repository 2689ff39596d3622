"""The simulated world refuses what cannot be, for every client (tests, `lanterne world`, `emulate --set`)."""

from __future__ import annotations

import pytest

from host_tools import boards
from host_tools.emulator.devices.parts import Parts
from host_tools.emulator.world import DEFAULTS, LIMITS, World, WorldError


def test_every_number_has_its_limits_and_its_default_is_within():
    for key, default in DEFAULTS.items():
        if isinstance(default, (bool, str)):  # on/off, and text (a sound scene, a file): no range
            assert key not in LIMITS
            continue
        lo, hi = LIMITS[key]  # a new quantity needs its physical range here
        assert lo <= default <= hi, key


def test_refusals_name_what_is_valid_and_change_nothing():
    w = World()
    Parts(boards.load("esp32-rak3172").data, w)
    assert set(w.parts()) == {"bme280", "bh1750", "supply", "lorawan", "button"}
    with pytest.raises(WorldError, match=r"illuminance_lx=-50 is out of range: 0 \.\. 1000000"):
        w.set(temperature_c=30, illuminance_lx=-50)
    assert w.get("temperature_c") == 15.0  # all or nothing
    with pytest.raises(WorldError, match=r"lorawan_uplink_loss=2 is out of range: 0 \.\. 1"):
        w.set(lorawan_uplink_loss=2)
    with pytest.raises(WorldError, match=r"temperature_c=nan is out of range"):
        w.set(temperature_c=float("nan"))
    with pytest.raises(WorldError, match=r"no part 'lamp'; its parts: bh1750, bme280, button, lorawan, supply"):
        w.inject("lamp", "stuck")
    w.set(lorawan_join_failures=2)  # counts the modem twin uses up
    w.inject("lorawan", "missing")
    assert w.faults() == {"lorawan": ["missing"]}
    # A world no board declared parts to (a driver test's own) takes any part name.
    bare = World()
    bare.inject("anything", "nack")
    with pytest.raises(WorldError, match="unknown fault 'melted'"):
        bare.inject("anything", "melted")
