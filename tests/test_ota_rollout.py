"""A staged rollout over 20 virtual boards: a canary that fails its trial halts it; the fixed
release then goes out canaries first, in waves, through `lanterne release push --fleet`."""

from __future__ import annotations

import json

import pytest
from conftest import lanterne
from ota_support import SITE, boards_on, kit, last_status, ota_state, release, rollout

from host_tools.backoffice.rollout import state_file
from host_tools.backoffice.watcher import Watcher

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 20


def test_a_failing_canary_halts_the_rollout(virtual_boards, mosquitto, tmp_path):
    k = kit(tmp_path / "ota")
    r1 = release(k, "0.1.0")
    bad = release(k, "0.2.0", {"lanterne/app.py": "\nraise RuntimeError('release bug: crash at start-up')\n"})
    good = release(k, "0.2.1", {"lanterne/app.py": "\n\ndef _release_note():\n    return 'fixed'\n"})
    devices = [f"fleet-{i:02d}" for i in range(N)]
    with Watcher(mosquitto.url, [f"lanterne/v1/{SITE}/#"]) as w:
        boards = dict(zip(devices, boards_on(k, virtual_boards, mosquitto.url, r1, devices), strict=True))
        for d in devices:
            w.wait_for(f"lanterne/v1/{SITE}/{d}/status", lambda m: b'"online"' in m.payload, timeout=60)

        ro = rollout(k, mosquitto.url, bad)
        try:
            rep = ro.run(devices, canary_pct=10, state_file=state_file(k.store, bad))
        finally:
            ro.close()
        canaries = rep.waves[0]
        assert len(rep.waves) == 1 and len(canaries) == 2  # 10 % of 20, and nothing after them
        assert rep.halted and "canaries" in rep.halted
        for d in canaries:
            assert rep.devices[d].state == "rolled_back" and "crashed: RuntimeError" in rep.devices[d].reason
        # The other 18 never got the release: no command, no progress, still on release 1.
        others = [d for d in devices if d not in canaries]
        for d in others:
            assert rep.devices[d].state == "pending"
            assert not w.matching(f"lanterne/v1/{SITE}/{d}/ota/progress") and not w.matching(f"lanterne/v1/{SITE}/{d}/cmd")
            assert ota_state(boards[d])["active"] == 0 and last_status(w, d)["fw"] == "0.1.0"
        # The canaries rolled themselves back and say so.
        for d in canaries:
            st = w.wait_for(f"lanterne/v1/{SITE}/{d}/status", lambda m: b"rolled_back" in m.payload, timeout=30)
            assert json.loads(st[-1].payload)["fw"] == "0.1.0"

        # The halted rollout does not start again by accident.
        again = lanterne("release", "push", bad.counter, "--fleet", "--registry", k.registry_path, "--releases",
                         k.store.path, "--broker", mosquitto.url, timeout=60)  # fmt: skip
        assert again.returncode == 1 and "was halted" in again.stderr and "--resume" in again.stderr

        # The fixed release: canaries, then waves of 9, every board on it.
        r = lanterne("release", "push", good.counter, "--fleet", "--canary", 10, "--wave", 9, "--registry",
                     k.registry_path, "--releases", k.store.path, "--broker", mosquitto.url, "--json", timeout=400)  # fmt: skip
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr
        report = json.loads(r.stdout)
        assert [len(wv) for wv in report["waves"]] == [2, 9, 9] and report["halted"] is None
        assert all(v["state"] == "committed" for v in report["devices"].values())
        for d in devices:
            w.wait_for(f"lanterne/v1/{SITE}/{d}/status", lambda m: b'"fw": "0.2.1"' in m.payload, timeout=60)
