"""Over-the-air updates on virtual boards and a real Mosquitto (docs/ota.md).

A board is factory-programmed with release 1 in slot A; releases are built and signed from
edited copies of the firmware tree; `lanterne release push` (or the rollout library behind it)
sends the signed start command and serves the blocks. Shown here: the update applied and the new
version in the status; every bad release refused with its reason and the running slot untouched;
readings and commands flowing during a transfer; a power cut mid-transfer resumed; a release
that crashes at start-up and one that hangs an import rolled back with config and store intact.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
from conftest import lanterne
from ota_support import (
    SITE,
    boards_on,
    kit,
    last_status,
    ota_state,
    release,
    rollout,
    slot_bytes,
    special,
)

from host_tools.backoffice.watcher import Watcher
from host_tools.codec.decoder import decode
from host_tools.codec.seq import SeqTracker

pytestmark = pytest.mark.integration

V2_EDIT = {"lanterne/app.py": "\n\ndef _release_note():\n    return 'release 2: one module changed'\n"}


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    k = kit(tmp_path_factory.mktemp("ota"))
    r1 = release(k, "0.1.0")
    r2 = release(k, "0.2.0", V2_EDIT)
    r3 = release(k, "0.3.0", {"lanterne/app.py": "\n\ndef _release_note():\n    return 'release 3'\n"})
    return k, r1, r2, r3


def test_update_over_mqtt_new_version_in_the_status(releases, virtual_boards, mosquitto, tmp_path):
    k, r1, r2, _ = releases
    with Watcher(mosquitto.url, [f"lanterne/v1/{SITE}/ota-1/#"]) as w:
        (h,) = boards_on(k, virtual_boards, mosquitto.url, r1, ["ota-1"])
        w.wait_for(f"lanterne/v1/{SITE}/ota-1/status", lambda m: b'"online"' in m.payload, timeout=30)
        assert last_status(w, "ota-1")["ota"] == {"slot": "A", "release": 1}
        slot_a = slot_bytes(h, 0)
        r = lanterne("release", "push", r2.counter, "ota-1", "--registry", k.registry_path, "--releases", k.store.path,
                     "--broker", mosquitto.url, "--timeout", 90, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ota-1: committed" in r.stdout
        st = w.wait_for(f"lanterne/v1/{SITE}/ota-1/status",
                        lambda m: b'"0.2.0"' in m.payload and b'"trial": false' in m.payload, timeout=30)  # fmt: skip
        doc = json.loads(st[-1].payload)
        assert doc["fw"] == "0.2.0" and doc["ota"]["slot"] == "B" and doc["ota"]["release"] == 2 and doc["faults"] == []
        # The previous release is still in slot A, untouched: the rollback target.
        assert slot_bytes(h, 0) == slot_a
        state = ota_state(h)
        assert state["active"] == 1 and state["slots"][0]["n"] == 1 and state["slots"][1]["n"] == 2
        # A delta: the module that changed, not the image (the image is ~171 KB).
        progress = [json.loads(m.payload) for m in w.matching(f"lanterne/v1/{SITE}/ota-1/ota/progress")]
        trial = [p for p in progress if p["state"] == "trial"][-1]
        assert trial["bytes"] < 8000 and trial["total"] == r2.meta["blocks"]
    # The operator's view: the monitor shows the update's outcome.
    mon = lanterne("monitor", "--broker", mosquitto.url, "--json", "--duration", 2)
    row = [d for d in json.loads(mon.stdout) if d["device"] == "ota-1"][0]
    assert row["update"]["state"] == "committed" and row["status"]["fw"] == "0.2.0"


def test_readings_and_commands_keep_flowing_during_a_transfer(releases, virtual_boards, mosquitto):
    from host_tools.backoffice.command_client import CommandClient, next_counter

    k, r1, r2, _ = releases

    def slow_link(device, index, recipe):  # a slow cellular link: each block takes 150 ms to come
        time.sleep(0.15)
        return recipe

    with Watcher(mosquitto.url, [f"lanterne/v1/{SITE}/ota-flow/#"]) as w:
        boards_on(k, virtual_boards, mosquitto.url, r1, ["ota-flow"], sample_period_s=1)
        w.wait_for(f"lanterne/v1/{SITE}/ota-flow/status", lambda m: b'"online"' in m.payload, timeout=30)
        ro = rollout(k, mosquitto.url, r2, transform=slow_link)
        cc = CommandClient(mosquitto.url)
        key = k.registry.command_key("ota-flow")
        result = {}
        t = threading.Thread(target=lambda: result.update(r=ro.run(["ota-flow"])))
        try:
            t.start()
            w.wait_for(f"lanterne/v1/{SITE}/ota-flow/ota/progress", lambda m: b'"transfer"' in m.payload, timeout=30)
            acks = []
            counter = next_counter(0)

            def rebooted_since(t0):  # the slot is written: the board reboots into its trial
                return any(json.loads(m.payload)["state"] == "trial" and m.t >= t0 - 0.5
                           for m in w.matching(f"lanterne/v1/{SITE}/ota-flow/ota/progress"))  # fmt: skip

            while not rebooted_since(0) and len(acks) < 60:
                counter += 1
                sent = time.time()
                try:
                    acks.append((sent, cc.send(SITE, "ota-flow", key, counter, "dim", {"level": 10 + len(acks)}, timeout=5)))
                except TimeoutError:
                    # Only the command on its way as the board rebooted into the trial may go
                    # unanswered (the progress reports every batch of blocks, up to 8 at a time,
                    # so the test cannot stop just before the last one).
                    if rebooted_since(sent):
                        break
                    raise
                time.sleep(0.2)
            t.join(60)
        finally:
            cc.close()
            ro.close()
        assert result["r"].ok, result["r"].lines()
        progress = {}  # state -> when it was first seen
        for m in w.matching(f"lanterne/v1/{SITE}/ota-flow/ota/progress"):
            progress.setdefault(json.loads(m.payload)["state"], m.t)
        # Commands sent while the blocks were coming were executed and acknowledged at once.
        during = [a for ts, a in acks if progress["transfer"] <= ts <= progress["trial"]]
        assert len(during) >= 3 and all(a.ok and a.rtt_ms < 1500 for a in during), [(a.reason, a.rtt_ms) for a in during]
        # Readings kept being published while the transfer ran, and not one was lost across the
        # transfer and the reboot into the new release.
        ups = w.matching(f"lanterne/v1/{SITE}/ota-flow/up")
        assert any(progress["transfer"] <= m.t <= progress["trial"] for m in ups)
        tracker, seqs = SeqTracker(), set()
        for m in ups:
            for r in decode(m.payload)["readings"]:
                seqs.add(tracker.accept(r["seq"])[0])
        assert seqs == set(range(min(seqs), max(seqs) + 1))


def test_bad_releases_are_refused_with_a_reason_and_the_running_slot_untouched(releases, virtual_boards, mosquitto, tmp_path):
    from host_tools.fleet.release.keys import KeyStore

    k, r1, r2, r3 = releases
    stranger = KeyStore(tmp_path / "other-keys")
    stranger.new("not the fleet's")
    bad = {  # release 2's image under later counters: real blocks to fetch
        "bad_signature": special(k, r2, 10, "0.10.0", bad_signature=True),
        "unknown_key": special(k, r2, 11, "0.11.0", keys=stranger),
        "image_hash": special(k, r2, 12, "0.12.0", image_sha=bytes(32)),
        "mpy_mismatch": special(k, r2, 13, "0.13.0", mpy=(7, 0, 0)),
        "micropython_too_old": special(k, r2, 14, "0.14.0", micropython=(1, 99, 0)),
        "downgrade": r2,
        # (release 1's image: the refused image above left release 2's blocks in slot B, and a
        # block already in place is not fetched again)
        "tampered_block": special(k, r1, 15, "0.15.0"),
    }

    def tamper(device, index, recipe):  # a man in the middle alters block 3 on its way
        return bytes((recipe[0] ^ 0xFF,)) + recipe[1:] if index == 3 else recipe

    with Watcher(mosquitto.url, [f"lanterne/v1/{SITE}/ota-bad/#"]) as w:
        (h,) = boards_on(k, virtual_boards, mosquitto.url, r3, ["ota-bad"])
        w.wait_for(f"lanterne/v1/{SITE}/ota-bad/status", lambda m: b'"online"' in m.payload, timeout=30)
        running, state = slot_bytes(h, 0), ota_state(h)
        assert state["slots"][0]["n"] == 3
        for code, rel in bad.items():
            ro = rollout(k, mosquitto.url, rel, transform=tamper if code == "tampered_block" else None)
            try:
                rep = ro.run(["ota-bad"])
            finally:
                ro.close()
            res = rep.devices["ota-bad"]
            assert res.state == "refused", (code, res, h.console()[-3000:])
            last = [json.loads(m.payload) for m in w.matching(f"lanterne/v1/{SITE}/ota-bad/ota/progress")][-1]
            assert last["state"] == "refused" and last["code"] == code, (code, last)
            assert res.reason == last["reason"] and len(res.reason) > 20
            # The running slot and the slot state are as they were: the board runs release 3.
            assert slot_bytes(h, 0) == running, code
            now = ota_state(h)
            assert now["active"] == 0 and now["slots"][0] == state["slots"][0] and now["trial"] is None, code
        reasons = {json.loads(m.payload).get("code"): json.loads(m.payload)["reason"]
                   for m in w.matching(f"lanterne/v1/{SITE}/ota-bad/ota/progress") if b"refused" in m.payload}  # fmt: skip
        assert "does not trust" in reasons["unknown_key"] and "does not verify" in reasons["bad_signature"]
        assert "v7.0" in reasons["mpy_mismatch"] and "1.99.0" in reasons["micropython_too_old"]
        assert "downgrade needs force" in reasons["downgrade"] and "block 3" in reasons["tampered_block"]
        assert "SHA-256" in reasons["image_hash"]
        assert last_status(w, "ota-bad")["fw"] == "0.3.0"
        # Forced, the downgrade is accepted.
        ro = rollout(k, mosquitto.url, r2, force=True)
        try:
            rep = ro.run(["ota-bad"])
        finally:
            ro.close()
        assert rep.ok, (rep.lines(), h.console()[-3000:])
        w.wait_for(f"lanterne/v1/{SITE}/ota-bad/status", lambda m: b'"fw": "0.2.0"' in m.payload, timeout=30)


TASK_BUG = """

async def _actuator_task_with_a_bug(self):
    raise RuntimeError("release bug: the actuator task fails")


App.actuator_task = _actuator_task_with_a_bug
"""


@pytest.mark.parametrize(
    "name,edit,why",
    [
        ("crash", {"lanterne/app.py": "\nraise RuntimeError('release bug: crash at start-up')\n"}, "crashed: RuntimeError"),
        ("hang", {"lanterne/assets.py": "\nwhile True:\n    pass\n"}, "watchdog reset during the trial"),
        # starts, then one of its tasks fails and is restarted: not healthy, rolled back
        ("task", {"lanterne/app.py": TASK_BUG}, "trial failed: actuators task failed: RuntimeError"),
    ],
)
def test_a_release_that_fails_at_start_up_is_rolled_back(releases, virtual_boards, mosquitto, name, edit, why):
    k, r1, _r2, _ = releases
    bad = release(k, {"crash": "0.9.1", "hang": "0.9.2", "task": "0.9.3"}[name], edit)
    device = f"ota-{name}"
    with Watcher(mosquitto.url, [f"lanterne/v1/{SITE}/{device}/#"]) as w:
        (h,) = boards_on(k, virtual_boards, mosquitto.url, r1, [device], sample_period_s=1)
        w.wait_for(f"lanterne/v1/{SITE}/{device}/up", timeout=30)
        config_before = (h.flash / "config.json").read_bytes()
        ro = rollout(k, mosquitto.url, bad)
        try:
            rep = ro.run([device])
        finally:
            ro.close()
        res = rep.devices[device]
        assert res.state == "rolled_back" and why in res.reason, res
        # Back on release 1, which says why in its status.
        st = w.wait_for(f"lanterne/v1/{SITE}/{device}/status",
                        lambda m: b'"online"' in m.payload and b"rolled_back" in m.payload, timeout=30)  # fmt: skip
        doc = json.loads(st[-1].payload)
        assert doc["fw"] == "0.1.0" and doc["ota"]["slot"] == "A"
        assert doc["ota"]["rolled_back"]["from"] == bad.version and why in doc["ota"]["rolled_back"]["reason"]
        # Config untouched; the store kept every reading: the sequence has no gap across the trial.
        assert (h.flash / "config.json").read_bytes() == config_before
        n_before = len(w.matching(f"lanterne/v1/{SITE}/{device}/up"))
        w.wait_for(f"lanterne/v1/{SITE}/{device}/up", count=n_before + 2, timeout=30)
        tracker, seqs = SeqTracker(), set()
        for m in w.matching(f"lanterne/v1/{SITE}/{device}/up"):
            for r in decode(m.payload)["readings"]:
                seqs.add(tracker.accept(r["seq"])[0])
        assert seqs == set(range(min(seqs), max(seqs) + 1))
        state = ota_state(h)
        assert state["active"] == 0 and state["slots"][1] is None and state["failed"] == bad.counter
    # Pushing the same release again is refused without --force: it failed here before.
    ro = rollout(k, mosquitto.url, bad)
    try:
        rep = ro.run([device])
    finally:
        ro.close()
    assert rep.devices[device].state == "refused" and "failed its trial" in rep.devices[device].reason


def test_power_cut_mid_transfer_resumes_where_it_stopped(releases, virtual_boards, mosquitto):
    k, r1, _r2, r3 = releases
    def slow(device, index, recipe):
        time.sleep(0.1)
        return recipe

    with Watcher(mosquitto.url, [f"lanterne/v1/{SITE}/ota-cut/#"]) as w:
        (h,) = boards_on(k, virtual_boards, mosquitto.url, r1, ["ota-cut"])
        w.wait_for(f"lanterne/v1/{SITE}/ota-cut/status", lambda m: b'"online"' in m.payload, timeout=30)
        k.store.path.joinpath("images").rename(k.store.path / "images.away")  # no base: a full transfer
        try:
            ro = rollout(k, mosquitto.url, r3, transform=slow)
            result = {}
            t = threading.Thread(target=lambda: result.update(r=ro.run(["ota-cut"])))
            t.start()
            w.wait_for(f"lanterne/v1/{SITE}/ota-cut/ota/progress", lambda m: b'"done": 8' in m.payload, timeout=60)
            h.power_cut()
            time.sleep(0.5)
            h.power_on()
            t.join(90)
            ro.close()
        finally:
            (k.store.path / "images.away").rename(k.store.path / "images")
        assert result["r"].ok, result["r"].lines()
        w.wait_for(f"lanterne/v1/{SITE}/ota-cut/status", lambda m: b'"fw": "0.3.0"' in m.payload, timeout=30)
        # After the cut only the blocks not yet written were fetched again (the header block last).
        served = ro.server.stats["ota-cut"].blocks
        assert served < 2 * r3.meta["blocks"] - 6, served
        assert "resuming the update under way" in h.console()


def test_provisioning_sets_the_trusted_keys_and_a_later_provisioning_resets_the_slots(releases, virtual_boards, mosquitto):
    from host_tools.fleet.provision import provision

    k, _r1, r2, _r3 = releases
    (h,) = virtual_boards(1, firmware=False)
    h.wait_for(">>> ")
    rep = provision(h.port, "esp32-devkitc", "ota-prov", site=SITE, broker=mosquitto.url, registry=k.registry,
                    trusted_keys=k.keys.trusted(), release_store=k.store)  # fmt: skip
    assert rep.status["ota"] == {"slot": "A", "release": 0}  # a provisioned (non-release) build: release 0
    assert json.loads((h.flash / "ota" / "keys.json").read_text())["keys"] == [p.hex() for p in k.keys.trusted()]
    ro = rollout(k, mosquitto.url, r2)
    try:
        res = ro.run(["ota-prov"]).devices["ota-prov"]
        stats = ro.server.stats["ota-prov"]
    finally:
        ro.close()
    assert res.state == "committed", res
    assert stats.base is not None and stats.wire_bytes < 10000  # a delta against the image provisioning wrote
    assert ota_state(h)["active"] == 1
    # The registry follows: `lanterne verify` finds the board as the update left it.
    from host_tools.fleet.verify import verify

    v = verify(h.port, k.registry, check_checkout=False)
    assert v.ok, v.lines()
    assert k.registry.get("ota-prov").state == f"release {r2.counter}"
    # Provisioning again puts this checkout's firmware in slot A and forgets slot B's release.
    # (the board is restarting from verify's session: its boot verifies a slot, slow on a loaded machine)
    again = provision(h.port, None, "ota-prov", registry=k.registry, trusted_keys=k.keys.trusted(), release_store=k.store,
                      connect_timeout=15)
    assert again.status["ota"] == {"slot": "A", "release": 0} and again.status["fw"] == "0.1.0"
    state = ota_state(h)
    assert state["active"] == 0 and state["slots"][1] is None and state["trial"] is None


LATENT_BUG = {"lanterne/app.py": """
import os as _os

try:
    _os.stat("crash.flag")
except OSError:
    pass
else:
    raise RuntimeError("latent bug: crash.flag")
"""}


def test_safe_mode_keeps_a_board_with_no_good_release_reachable_for_updates(releases, virtual_boards, mosquitto):
    k, _r1, _r2, _r3 = releases
    latent = release(k, "0.8.0", LATENT_BUG)
    fixed = release(k, "0.8.1")
    with Watcher(mosquitto.url, [f"lanterne/v1/{SITE}/ota-safe/#"]) as w:
        # The only release on the board (slot B empty) starts crashing at every boot.
        (h,) = boards_on(k, virtual_boards, mosquitto.url, latent, ["ota-safe"])
        w.wait_for(f"lanterne/v1/{SITE}/ota-safe/status", lambda m: b'"online"' in m.payload, timeout=30)
        (h.flash / "crash.flag").write_text("1")
        h.hard_reset()
        # Three crashes in a row and nothing to roll back to: safe mode, reachable, saying why.
        st = w.wait_for(f"lanterne/v1/{SITE}/ota-safe/status", lambda m: b"safe_mode" in m.payload, timeout=60)
        doc = json.loads(st[-1].payload)
        assert "3 crashes in a row" in doc["reason"] and "latent bug" in doc["reason"] and doc["fw"] is None
        assert ota_state(h)["safe"]
        # A fixed release goes on from safe mode, through the same signed command and transfer.
        ro = rollout(k, mosquitto.url, fixed)
        try:
            res = ro.run(["ota-safe"]).devices["ota-safe"]
        finally:
            ro.close()
        assert res.state == "committed", (res.reason, h.console()[-2000:])
        w.wait_for(f"lanterne/v1/{SITE}/ota-safe/status", lambda m: b'"fw": "0.8.1"' in m.payload, timeout=30)
        state = ota_state(h)
        assert state["safe"] is None and state["unhealthy"] == 0 and state["active"] == 1


def test_a_micropython_image_update_confirms_or_rolls_back(releases, emulator, mosquitto, tmp_path):
    from host_tools.boards import otadata
    from host_tools.boards.esp32_image import app_image
    from host_tools.emulator.firmware_image import build_micropython_image
    from host_tools.emulator.rombootloader import SimulatedFlash
    from host_tools.fleet.provision import provision
    from host_tools.fleet.release.build import build_firmware_release
    from host_tools.fleet.release.keys import KeyStore

    k, _r1, _r2, _r3 = releases
    v0 = build_micropython_image("v1.29.0", romfs_bytes=393216, ota=True)
    (tmp_path / "v1.bin").write_bytes(build_micropython_image("v1.29.1", romfs_bytes=393216, ota=True, code_seed="v1.29.0"))
    (tmp_path / "v2.bin").write_bytes(build_micropython_image("v1.29.2", romfs_bytes=393216, ota=True, code_seed="v1.29.0"))
    k.store.add_image(app_image(v0)[0])  # the image the boards were flashed with: updates are deltas
    # A key rotation carried by image releases: fw1 (signed by the kit's key) lists a second key,
    # fw2 a third one; a board installs a release's keys only when the release is confirmed.
    rotating = KeyStore(tmp_path / "rotating-keys")
    rotating.path.mkdir(mode=0o700)
    for p in k.keys.path.iterdir():
        shutil.copy2(p, rotating.path / p.name)
    rotating.new("second")
    fw1 = build_firmware_release(k.store, rotating, tmp_path / "v1.bin")
    rotating.new("third")
    fw2 = build_firmware_release(k.store, rotating, tmp_path / "v2.bin")
    assert fw1.meta["key_id"] == fw2.meta["key_id"] == k.keys.keys()[0].key_id
    assert len(fw1.meta["trusted_keys"]) == 2 and len(fw2.meta["trusted_keys"]) == 3
    assert fw1.meta["kind"] == "firmware" and fw1.version == "v1.29.1"
    # The factory writes the OTA variant's image; provisioning puts the library in slot A.
    from host_tools import boards as boards_mod

    data = json.loads(boards_mod.load("esp32-devkitc").path.read_text())
    data["flash"]["fs_bytes"] = 0x90000
    board_file = tmp_path / "esp32-devkitc-ota.json"
    board_file.write_text(json.dumps(data))
    flash = tmp_path / "image-board" / "flash"
    flash.mkdir(parents=True)
    chip = flash.parent / "flash.flash.bin"
    with SimulatedFlash(chip, 4 * 1024 * 1024) as f:
        f.program(0x1000, v0)
    h = emulator.add_board(boards_mod.load(str(board_file)), flash, port_path=tmp_path / "image-board" / "tty", flash_image=chip)
    try:
        _image_update(h, k, fw1, fw2, board_file, mosquitto, otadata, provision)
    finally:
        h.close()


def _image_update(h, k, fw1, fw2, board_file, mosquitto, otadata, provision):
    h.wait_for(">>> ", timeout=30)
    rep = provision(h.port, str(board_file), "ota-image", site=SITE, broker=mosquitto.url, registry=k.registry,
                    trusted_keys=k.keys.trusted())  # fmt: skip
    assert rep.status["ota"]["slot"] == "A"
    parts = h.board.spi_flash.boot_check().partitions
    ota = next(p for p in parts if p.label == "otadata")

    def state():
        es = otadata.entries(h.board.spi_flash.read, ota)
        a = otadata.active(es)
        return (es[a]["seq"], es[a]["state"]) if a is not None else None

    with Watcher(mosquitto.url, [f"lanterne/v1/{SITE}/ota-image/#"]) as w:
        # 1. The new image: written to ota_1, booted on trial, confirmed by the healthy application.
        ro = rollout(k, mosquitto.url, fw1, timeout=120)
        try:
            res = ro.run(["ota-image"]).devices["ota-image"]
            stats = ro.server.stats["ota-image"]
        finally:
            ro.close()
        assert res.state == "committed", (res.reason, h.console()[-2000:])
        assert stats.base is not None and stats.wire_bytes < 60000  # a delta of a 1.5 MB image
        assert h.board.running_app == "ota_1" and state() == (2, otadata.VALID)
        # Confirmed: the board trusts the keys the image release listed, and dropped its manifest.
        assert json.loads((h.flash / "ota" / "keys.json").read_text())["keys"] == fw1.meta["trusted_keys"]
        assert not (h.flash / "ota" / "pending.man").exists()
        st = w.wait_for(f"lanterne/v1/{SITE}/ota-image/status", lambda m: b'"ota_1"' in m.payload and b'"trial": false' in m.payload,
                        timeout=30)  # fmt: skip
        assert json.loads(st[-1].payload)["ota"]["image"]["version"] == "v1.29.1"

        # 2. Another image, booted on trial, never confirmed (no broker, then the power goes): the
        # bootloader goes back to ota_1, whose application says so.
        ro = rollout(k, mosquitto.url, fw2, timeout=180)
        result = {}
        t = threading.Thread(target=lambda: result.update(r=ro.run(["ota-image"])))
        t.start()
        try:
            w.wait_for(f"lanterne/v1/{SITE}/ota-image/ota/progress", lambda m: b'"trial"' in m.payload and b"v1.29.2" in m.payload,
                       timeout=180)  # fmt: skip
            h.world.set(link_up=False)
            h.wait_for(r"on esp32-devkitc, device ota-image", timeout=30, since=h.console_offset())
            assert h.board.running_app == "ota_0" and state() == (3, otadata.PENDING_VERIFY)
            h.power_cut()
            h.world.set(link_up=True)
            h.power_on()
            t.join(120)
        finally:
            ro.close()
        res = result["r"].devices["ota-image"]
        assert res.state == "rolled_back" and "did not confirm itself" in res.reason, res
        assert h.board.running_app == "ota_1"
        es = otadata.entries(h.board.spi_flash.read, ota)
        assert {e["seq"]: e["state"] for e in es} == {2: otadata.VALID, 3: otadata.ABORTED}
        # The image that rolled back taught the board nothing: still fw1's keys.
        assert json.loads((h.flash / "ota" / "keys.json").read_text())["keys"] == fw1.meta["trusted_keys"]
