"""A staged rollout over 20 virtual boards: a canary that fails its trial halts it; the fixed
release then goes out canaries first, in waves, through `lanterne release push --fleet`. A
rollout halted by a board switched off goes on with `--resume` once it is back."""

from __future__ import annotations

import json
import time

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


def test_a_halted_rollout_resumed_through_the_cli(virtual_boards, mosquitto, tmp_path):
    """A board switched off halts a fleet push (no ack); once it is back, `push --fleet --resume`
    updates it and the boards the halt left out, and leaves alone the one already updated."""
    k = kit(tmp_path / "ota")
    r1 = release(k, "0.1.0")
    r2 = release(k, "0.2.0", {"lanterne/app.py": "\n\ndef _release_note():\n    return 'release 2'\n"})
    devices = ["rs-0", "rs-1", "rs-2"]  # the registry's order: rs-0 the canary, then waves of one
    push = ("release", "push", r2.counter, "--fleet", "--wave", 1, "--registry", k.registry_path, "--releases",
            k.store.path, "--broker", mosquitto.url, "--timeout", 90)  # fmt: skip
    with Watcher(mosquitto.url, [f"lanterne/v1/{SITE}/#"]) as w:
        boards = dict(zip(devices, boards_on(k, virtual_boards, mosquitto.url, r1, devices), strict=True))
        for d in devices:
            w.wait_for(f"lanterne/v1/{SITE}/{d}/status", lambda m: b'"online"' in m.payload, timeout=60)
        boards["rs-1"].power_cut()  # switched off at the cabinet

        r = lanterne(*push, "--canary", 30, timeout=150)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "rs-0: committed" in r.stdout and "rs-1: no_ack" in r.stdout and "rs-2: pending" in r.stdout
        assert "rollout halted: wave 1: rs-1 no_ack" in r.stdout
        saved = json.loads(state_file(k.store, r2).read_text())
        assert saved["halted"] and saved["devices"]["rs-0"]["state"] == "committed"
        assert not w.matching(f"lanterne/v1/{SITE}/rs-2/cmd")  # the halt kept the next wave out
        after_first = {"rs-0": ota_state(boards["rs-0"]), "cmds": len(w.matching(f"lanterne/v1/{SITE}/rs-0/cmd")),
                       "progress": len(w.matching(f"lanterne/v1/{SITE}/rs-0/ota/progress"))}  # fmt: skip
        assert after_first["rs-0"]["active"] == 1 and after_first["cmds"] == 1

        # Without --resume, the halted rollout does not go on.
        again = lanterne(*push, timeout=60)
        assert again.returncode == 1 and "was halted" in again.stderr and "--resume" in again.stderr

        on = time.time()
        boards["rs-1"].power_on()
        w.wait_for(f"lanterne/v1/{SITE}/rs-1/status", lambda m: b'"online"' in m.payload and m.t >= on, timeout=60)
        r = lanterne(*push, "--resume", "--json", timeout=150)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr
        report = json.loads(r.stdout)
        assert report["halted"] is None and report["waves"] == [["rs-1"], ["rs-2"]]
        assert {d: v["state"] for d, v in report["devices"].items()} == dict.fromkeys(devices, "committed")
        for d in ("rs-1", "rs-2"):
            w.wait_for(f"lanterne/v1/{SITE}/{d}/status", lambda m: b'"fw": "0.2.0"' in m.payload, timeout=60)
            assert ota_state(boards[d])["active"] == 1 and ota_state(boards[d])["slots"][1]["n"] == r2.counter
        # rs-0, updated before the halt, was not sent the release again.
        assert len(w.matching(f"lanterne/v1/{SITE}/rs-0/cmd")) == after_first["cmds"]
        assert len(w.matching(f"lanterne/v1/{SITE}/rs-0/ota/progress")) == after_first["progress"]
        assert ota_state(boards["rs-0"]) == after_first["rs-0"] and last_status(w, "rs-0")["fw"] == "0.2.0"
        assert json.loads(state_file(k.store, r2).read_text())["halted"] is None
