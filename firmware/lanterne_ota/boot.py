# The boot selector: which library slot runs this boot. boot.py calls select() with /rom
# unmounted, before any module of a slot is imported; main.py calls crashed() when the
# application dies at start-up. It never touches config.json or the store.
#
# Order of a boot (docs/ota.md, "Boot"):
#  1. read the slot state (NVS); none yet: adopt slot A as provisioning wrote it;
#  2. finish a commit a power cut interrupted (the new trusted keys);
#  3. a release on trial: a first boot is counted and runs it; a crash or a watchdog reset during
#     the trial (or a failure the application recorded) returns to the previous slot, and so do
#     two more resets without a commit. A power cut is not the release's fault (a street lamp's
#     supply may be switched off at dawn): power-on boots count only against a limit of ten;
#  4. no trial: crashes and watchdog resets in a row are counted; at three, back to the other
#     slot if it holds a good release, else safe mode (MQTT and updates only);
#  5. the chosen slot's SHA-256 is checked against the state before it is mounted, with the
#     watchdog armed on a trial (an import of damaged bytecode can hang);
#  6. mount it at /rom and put /rom, /rom/lib before /lib on sys.path.
import sys

from lanterne_ota import state as S

PWRON_RESET = 1
WDT_RESET = 3
TRIAL_BOOTS = 3  # boots a trial gets, power cuts aside, before it must have committed
TRIAL_POWER_BOOTS = 10  # boots a trial gets in all (power cuts included)
UNHEALTHY_LIMIT = 3  # crashes in a row before a committed release is abandoned
TRIAL_WATCHDOG_MS = 30000


def log(msg):
    print("[ota] " + msg)


def _reset_cause():
    try:
        import machine

        return machine.reset_cause()
    except (ImportError, AttributeError):
        return 0


def _watchdog_ms():
    # The application's own watchdog period (config.json), so that its later WDT() call keeps it.
    try:
        import json

        with open("config.json") as f:
            ms = int(json.loads(f.read()).get("watchdog_ms", TRIAL_WATCHDOG_MS))
        return ms if ms >= 5000 else TRIAL_WATCHDOG_MS
    except Exception:
        return TRIAL_WATCHDOG_MS


def _arm_watchdog():
    try:
        import machine

        machine.WDT(timeout=_watchdog_ms())
    except Exception as e:  # a port without a watchdog: the trial still runs, unguarded
        log("no watchdog for the trial: %r" % (e,))


def _read_slot(rom, slot):
    """What a slot holds, from its image and release.json: a state slot entry, or None."""
    n = rom.image_len(slot)
    if not n:
        return None
    ver, counter = "unknown", 0
    try:
        rom.mount(slot)
        import json

        with open("/rom/release.json") as f:
            doc = json.loads(f.read())
        ver, counter = str(doc.get("version", ver)), int(doc.get("counter", 0))
    except Exception:
        pass
    _umount()
    return {"n": counter, "len": n, "sha": S.hexs(rom.sha(slot, n)), "ver": ver}


def _adopt(rom):
    # First boot with OTA (or after provisioning reset the state): slot A as it was written.
    s = _read_slot(rom, 0)
    if s is None:
        return None
    st = S.fresh()
    st["slots"][0] = s
    return st


def _umount():
    try:
        import vfs

        vfs.umount("/rom")
    except (OSError, ImportError):
        pass


def finish_commit(st):
    """Install the trusted keys of the release `st` says was committed, then drop its manifest.

    A commit (a library slot's or a MicroPython image's) writes the state first, then the keys,
    then drops the manifest: a power cut in between leaves the manifest of the release now
    committed, whose keys are installed here at the next boot. A manifest that no transfer owns
    (no job) and no trial waits on is that of a release that rolled back or was refused: dropped."""
    import os

    from lanterne_ota import JOB_FILE, MANIFEST_FILE

    try:
        os.stat(JOB_FILE)
        return  # a transfer under way owns the manifest
    except OSError:
        pass
    try:
        with open(MANIFEST_FILE, "rb") as f:
            raw = f.read()
    except OSError:
        return
    from lanterne_ota import manifest as M

    try:
        m = M.Manifest(raw)
    except Exception:
        m = None
    raw = None
    done = False
    if m is None:
        pass
    elif m.flags & M.FIRMWARE:  # a MicroPython image (second tier)
        if st.get("fw_trial"):
            return  # its trial decides
        fw = st.get("fw")
        done = fw is not None and m.counter == fw["n"]
    else:
        if st.get("trial"):
            return
        active = st["slots"][st["active"]]
        done = bool(active) and m.counter == active["n"] and S.hexs(m.image_sha) == active["sha"]
    if done:
        if m.keys:
            S.save_keys(m.keys)
        log("commit of %s completed (keys %s)" % (m.version, "installed" if m.keys else "kept"))
    S.remove(MANIFEST_FILE)


def _rollback_event(st, bad, good, reason):
    b, g = st["slots"][bad], st["slots"][good]
    return {"kind": "rolled_back", "from": b["ver"] if b else "?", "from_n": b["n"] if b else 0,
            "to": g["ver"] if g else "?", "reason": reason}  # fmt: skip


def _decide(st, cause, rom):
    """Update `st` for this boot; return (slot to mount or None, changed)."""
    changed = False
    crash = st.get("crash")
    if crash:
        st["crash"] = None
        changed = True
    trial = st.get("trial")
    if trial:
        slot = trial["slot"]
        why = None
        if trial["boots"] >= 1:
            if cause != PWRON_RESET:
                trial["resets"] = trial.get("resets", 0) + 1
            if crash:
                why = crash
            elif cause == WDT_RESET:
                why = "watchdog reset during the trial: the release hung"
            elif trial.get("resets", 0) >= TRIAL_BOOTS - 1:
                why = "reset %d times during the trial without confirming it was healthy" % trial["resets"]
            elif trial["boots"] >= TRIAL_POWER_BOOTS:
                why = "not confirmed healthy in %d boots" % trial["boots"]
        if why is None:
            trial["boots"] += 1
            return slot, True
        other = 1 - slot
        st["event"] = _rollback_event(st, slot, other, why)
        st["failed"] = st["slots"][slot]["n"] if st["slots"][slot] else 0
        st["slots"][slot] = None
        st["trial"] = None
        st["active"] = other
        log("trial of release %d failed (%s): back to %s" % (st["failed"], why, S.describe(st, other)))
        return (None if st.get("safe") else other), True  # tried from safe mode: stay there
    if crash or cause == WDT_RESET:
        st["unhealthy"] = st.get("unhealthy", 0) + 1
        changed = True
        if st["unhealthy"] >= UNHEALTHY_LIMIT:
            bad = st["active"]
            other = 1 - bad
            why = "%d crashes in a row (last: %s)" % (st["unhealthy"], crash or "watchdog reset")
            if st["slots"][other] and not st.get("safe"):
                st["event"] = _rollback_event(st, bad, other, why)
                st["failed"] = st["slots"][bad]["n"] if st["slots"][bad] else 0
                st["slots"][bad] = None
                st["active"] = other
                st["unhealthy"] = 0
                log("release %d keeps crashing (%s): back to %s" % (st["failed"], why, S.describe(st, other)))
                return other, True
            st["safe"] = why
    if st.get("safe"):
        return None, changed
    return st["active"], changed


def select():
    """Pick and mount this boot's library slot (a one-line summary is printed). Returns what the
    application is to know of it (state.boot_info: main.py hands it to lanterne.app.main), or None
    when nothing is mounted: no ROMFS partition (the library runs from /lib), no library, or
    safe mode."""
    try:
        rom = S.Rom()
    except (OSError, ImportError, AttributeError):
        return None
    store = S.Store()
    st = store.load()
    changed = False
    if st is None or st["slots"][st["active"]] is None and not st.get("trial"):
        st = _adopt(rom)
        if st is None:
            log("no library: slot A holds no ROMFS image (provision the board)")
            return None
        changed = True
    finish_commit(st)
    cause = _reset_cause()
    slot, ch = _decide(st, cause, rom)
    changed = changed or ch
    trial = st.get("trial")
    while slot is not None:
        want = st["slots"][slot]
        if want and rom.image_len(slot) == want["len"] and S.hexs(rom.sha(slot, want["len"])) == want["sha"]:
            break
        # The slot's bytes are not what was verified when it was written: never mount them as they
        # were trusted. A committed slot that still holds a ROMFS image was rewritten outside OTA
        # (`mpremote romfs deploy` over USB) or damaged: it boots as a trial, watchdog armed, and
        # is adopted only if it proves healthy; otherwise back to the other slot, or safe mode.
        changed = True
        other = 1 - slot
        now = _read_slot(rom, slot) if not trial else None
        if now is not None:
            st["slots"][slot] = now
            st["trial"] = trial = {"slot": slot, "boots": 1}
            log("slot %s changed outside an update (now %s, sha %s): booting it as a trial" % ("AB"[slot], now["ver"], now["sha"][:16]))
            break
        why = "slot %s failed its hash check" % "AB"[slot]
        log(why)
        if trial and trial["slot"] == slot:
            st["event"] = _rollback_event(st, slot, other, why)
            st["trial"] = trial = None
        st["slots"][slot] = None
        st["active"] = other
        slot = other if st["slots"][other] else None
        if slot is None:
            st["safe"] = why
    if changed:
        store.save(st)
    if slot is None:
        log("safe mode: %s" % st.get("safe"))
        return None
    if trial:
        _arm_watchdog()
    s = st["slots"][slot]
    log("%s verified (sha %s)%s" % (S.describe(st, slot), s["sha"][:16], ", on trial boot %d" % trial["boots"] if trial else ""))
    info = S.boot_info(st)
    # What stays (the application's info, the mount, its view of the slot, sys.path's entries)
    # goes in at the bottom of a clean heap, not above this function's garbage: holes there would
    # split the application's heap.
    st = s = trial = store = None
    import gc

    gc.collect()
    rom.mount(slot)
    p = sys.path
    if "/rom" not in p:
        i = p.index("/lib") if "/lib" in p else len(p)
        p.insert(i, "/rom/lib")
        p.insert(i, "/rom")
    return info


def record(reason):
    """Store why this run is about to end, for the next boot's selector (crash, failed trial)."""
    store = S.Store()
    st = store.load()
    if st is None:
        return
    st["crash"] = str(reason)[:160]
    store.save(st)


def crashed(exc):
    """main.py: the application died. Record it and reset (the selector counts it and rolls back
    when it repeats); a board without slots goes back to the REPL as before."""
    try:
        S.Rom()
    except Exception:
        return
    record("crashed: %r" % (exc,))
    log("the application crashed (%r): resetting in 3 s" % (exc,))
    import time

    import machine

    time.sleep(3)
    machine.reset()


def confirm():
    """The application is healthy (its sensors read, a status out, no task restarted): commit the
    release on trial, or end a streak of crashes. Returns what it did, or None."""
    store = S.Store()
    st = store.load()
    if st is None:
        return None
    t = st.get("trial")
    if t:
        st["active"] = t["slot"]
        st["trial"] = None
        st["safe"] = None
        st["unhealthy"] = 0
        st["failed"] = 0
        store.save(st)  # committed: from here on a power cut keeps this release
        finish_commit(st)  # then its keys, then drop its manifest
        return "committed " + S.describe(st, st["active"])
    if st.get("unhealthy"):
        st["unhealthy"] = 0
        store.save(st)
        return "healthy again after crashes"
    return None
