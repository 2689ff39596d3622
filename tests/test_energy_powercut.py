"""The lamp's energy counters on littlefs under power cuts at random instants (the harness's shorter run).

`python -m host_tools.reliability.energy_powercut --cuts 200` is the documented campaign; this runs
25 cuts: each start loads at least what was last reported, a cut loses at most a minute of burning,
and the flash wear per save is what docs/energy.md says.
"""

from __future__ import annotations

import pytest

from host_tools.reliability.energy_powercut import run_energy_powercuts

pytestmark = pytest.mark.integration


def test_power_cuts_never_take_the_counters_back_and_lose_at_most_a_minute(tmp_path):
    rep = run_energy_powercuts(25, seed=7, flash_dir=tmp_path)
    assert rep.ok, rep.summary()
    assert rep.reports > 100 and rep.saves > rep.reports
    # the cuts landed all over the save period: the worst lost most of a minute, never more
    assert 30 * 100 < rep.worst_loss_ws <= rep.max_loss_ws == 60 * 100
    # littlefs keeps the 48-byte file inline in its directory: ~100 bytes programmed and a block
    # erased every few dozen saves (docs/energy.md, "Flash wear")
    assert 0 < rep.erases_per_save < 0.05 and 40 < rep.programmed_per_save < 200
