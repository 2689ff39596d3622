"""Power cuts during over-the-air updates: cut a virtual board's supply at random instants while
it fetches, writes and switches to a release, and check every boot.

One virtual board (the real firmware, its ROMFS partition in a file beside its flash folder) on a
real Mosquitto, a release server and rollout from the back office, and a chain of signed releases
with alternating contents (so that every update really rewrites blocks). Over and over: the
back office starts the update to the next release (unless the board resumed it by itself after
the last cut), the supply is cut after a random, seeded delay anywhere in an update's span —
the transfer, the slot write, the reboot into the trial, the trial, the commit — and restored.
(The span starts at 2 s and grows by half after three cuts in a row that found no commit: a
loaded host updates slower.) Every other cut is aimed instead: it waits until the update reports
the transfer, the trial or the commit (in turn), and cuts within 0.3 s of it, so that the cuts
cover those phases however slow the host is.

Checked at every boot, from the boot selector's own line on the console: the slot it mounted
holds a complete image whose SHA-256 is one of the signed releases' (never a half-written slot),
and the application started. At the end, with the power left on, the board must end on the
newest release the back office started (the transfer resumes where it stopped), with its
config.json unchanged.

    python -m host_tools.reliability.ota_powercut --cuts 100 --seed 1     # the documented run
    run_campaign(cuts=20, seed=7, workdir=tmp) -> CampaignReport
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from host_tools import boards
from host_tools.backoffice.brokers import Mosquitto
from host_tools.backoffice.rollout import Rollout
from host_tools.backoffice.watcher import Watcher
from host_tools.emulator.supervisor import Emulator
from host_tools.fleet import deploy
from host_tools.fleet.registry import Registry
from host_tools.fleet.release.build import build_release
from host_tools.fleet.release.keys import KeyStore
from host_tools.fleet.release.store import ReleaseStore
from host_tools.runtime.paths import FIRMWARE

SITE = "cut"
DEVICE = "ota-cut-1"
# Every other cut is aimed: it waits for the update to report one of these phases (in turn), then
# cuts within 0.3 s, so that a slow host still has cuts in the transfer, the trial and after the commit.
AIMED = ("transfer", "trial", "committed")
BOOT_LINE = re.compile(rb"\[ota\] slot ([AB]): (\S+) \(release (\d+)\) verified \(sha ([0-9a-f]{16})\)")


@dataclass
class CampaignReport:
    cuts: int = 0
    boots_checked: int = 0
    phases: Counter = field(default_factory=Counter)  # what each cut interrupted
    releases_committed: list[int] = field(default_factory=list)
    final_release: int | None = None
    target_release: int | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and self.final_release == self.target_release and self.boots_checked >= self.cuts

    def to_json(self) -> dict:
        return {"cuts": self.cuts, "boots_checked": self.boots_checked, "phases": dict(self.phases),
                "releases_committed": self.releases_committed, "final_release": self.final_release,
                "target_release": self.target_release, "problems": self.problems, "ok": self.ok,
                "seconds": round(self.seconds, 1)}  # fmt: skip


def _tree(dest: Path, version: str, note: str) -> Path:
    shutil.copytree(FIRMWARE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    init = dest / "lanterne" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text()))
    app = dest / "lanterne" / "app.py"
    app.write_text(app.read_text() + f"\n\ndef _release_note():\n    return {note!r}\n")
    return dest


def run_campaign(cuts: int = 20, seed: int = 1, workdir: str | Path | None = None, releases: int | None = None,
                 log=None) -> CampaignReport:  # fmt: skip
    say = log or (lambda msg: None)
    rng = random.Random(seed)
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="lanterne-ota-cut-")) if own else Path(workdir)
    rep = CampaignReport()
    t_start = time.monotonic()
    try:
        keys = KeyStore(root / "release-keys")
        keys.new("campaign")
        store = ReleaseStore(root / "releases")
        # Alternating contents: A, B, A', B' ... each a real change of app.py (and the version).
        n_rel = releases or cuts // 2 + 3
        chain = [build_release(store, keys, source=_tree(root / f"src{i}", f"1.{i}.0", "AB"[i % 2] * (1 + i % 3) * 200))
                 for i in range(1, n_rel + 1)]  # fmt: skip
        known = {r.meta["image_sha256"][:16]: r.counter for r in chain}
        reg = Registry(root / "fleet.sqlite")
        with Mosquitto() as mq, Emulator() as emu:
            reg.add_or_update(DEVICE, site=SITE, board="esp32-devkitc", config={"site": SITE, "broker": mq.url})
            cfg = {"device": DEVICE, "site": SITE, "broker": mq.url, "command_key": reg.secret(DEVICE, "command_key"),
                   "sample_period_s": 2, "status_period_s": 60, "watchdog_ms": 8000}  # fmt: skip
            flash = root / "board" / "flash"
            flash.mkdir(parents=True)
            board = boards.load("esp32-devkitc")
            deploy.copy_to_flash(board, cfg, flash, image=chain[0].image(), trusted_keys=keys.trusted())
            config_bytes = (flash / "config.json").read_bytes()
            with Watcher(mq.url, [f"lanterne/v1/{SITE}/{DEVICE}/#"]) as w:
                h = emu.add_board(board, flash, port_path=root / "board" / "tty")
                seen = 0  # console bytes already checked for boot lines

                def check_boots() -> None:
                    nonlocal seen
                    data = h.console().encode()
                    for m in BOOT_LINE.finditer(data, max(0, seen - 200)):
                        if m.end() <= seen:
                            continue
                        sha, counter = m.group(4).decode(), int(m.group(3))
                        rep.boots_checked += 1
                        if known.get(sha) != counter:
                            rep.problems.append(f"boot {rep.boots_checked}: slot {m.group(1).decode()} holds sha {sha}"
                                                f" (release {counter}): not a signed release's image")  # fmt: skip
                    seen = len(data)

                def progress() -> list[dict]:
                    return [json.loads(m.payload) for m in w.matching(f"lanterne/v1/{SITE}/{DEVICE}/ota/progress")]

                def committed(n: int) -> bool:
                    return any(d.get("state") == "committed" and d.get("n") == n for d in progress())

                ro = Rollout(mq.url, reg, store, chain[1], timeout=120)
                ro.ack_timeout = 3.0  # a start sent while the board reboots is lost: send it again
                try:
                    w.wait_for(f"lanterne/v1/{SITE}/{DEVICE}/status", lambda m: b'"online"' in m.payload, timeout=60)
                    target_i = 1
                    # seconds: about the span of an update here, from the command to the commit; a
                    # loaded host updates slower, so the span grows while cuts keep missing commits
                    # (or every cut would land in the transfer and no release would ever commit)
                    span = 2.0
                    uncommitted = 0
                    for i in range(cuts):
                        rel = chain[target_i]
                        ro.release = rel
                        started = time.monotonic()
                        res = ro.start(DEVICE)
                        if res.state == "refused" and "on trial" not in (res.reason or ""):
                            rep.problems.append(f"cut {i}: start of release {rel.counter} refused: {res.reason}")
                            break
                        aim = AIMED[(i // 2) % len(AIMED)] if i % 2 else None
                        if aim is None:
                            deadline = started + rng.uniform(0.05, span)
                            while time.monotonic() < deadline:
                                time.sleep(0.02)
                        else:  # aimed: once the update reports that phase, within a moment
                            aim_deadline = time.monotonic() + max(30.0, 4 * span)
                            while _state(progress(), rel.counter) != aim and time.monotonic() < aim_deadline:
                                time.sleep(0.02)
                            time.sleep(rng.uniform(0.0, 0.3))
                        phase = _phase(progress(), rel.counter, h.console())
                        h.power_cut()
                        rep.cuts += 1
                        rep.phases[phase] += 1
                        time.sleep(rng.uniform(0.05, 0.4))
                        since = h.console_offset()
                        h.power_on()
                        _wait_boot(h, since)
                        check_boots()
                        if committed(rel.counter):
                            rep.releases_committed.append(rel.counter)
                            uncommitted = 0
                            if target_i + 1 < len(chain):
                                target_i += 1
                        else:
                            uncommitted += 1
                            if uncommitted >= 3:
                                span = min(span * 1.5, 20.0)
                        say(f"cut {i + 1}/{cuts} during {phase}; target release {chain[target_i].counter}")
                    # Power stays on: the update in hand must complete.
                    rel = chain[target_i]
                    ro.release = rel
                    rep.target_release = rel.counter
                    deadline = time.monotonic() + 180
                    while not committed(rel.counter) and time.monotonic() < deadline:
                        if not _updating(progress(), rel.counter):
                            ro.start(DEVICE)
                        time.sleep(1.0)
                    ok = w.wait_for(f"lanterne/v1/{SITE}/{DEVICE}/status",
                                    lambda m: f'"fw": "{rel.version}"'.encode() in m.payload, timeout=60)  # fmt: skip
                    rep.final_release = json.loads(ok[-1].payload)["ota"]["release"]
                    check_boots()
                finally:
                    ro.close()
                if (flash / "config.json").read_bytes() != config_bytes:
                    rep.problems.append("config.json changed")
    finally:
        rep.seconds = time.monotonic() - t_start
        if own:
            shutil.rmtree(root, ignore_errors=True)
    return rep


def _state(docs: list[dict], n: int) -> str | None:
    """The state of the last progress record of release `n`."""
    mine = [d for d in docs if d.get("n") == n]
    return mine[-1].get("state") if mine else None


def _updating(docs: list[dict], n: int) -> bool:
    for d in reversed(docs):
        if d.get("n") == n or d.get("from_n") == n:
            return d.get("state") in ("manifest", "transfer", "trial")
    return False


def _phase(docs: list[dict], n: int, console: str) -> str:
    """What the cut interrupted: the last progress record of this release, else the boot."""
    state = _state(docs, n) or "start"
    tail = console[-400:]
    if state == "trial" and "on trial boot" not in tail and "rebooting into its trial" in console[-2000:]:
        return "switch-over"
    return {"manifest": "manifest", "transfer": "transfer (slot write)", "trial": "trial boot", "committed": "after commit",
            "start": "before the transfer"}.get(state, state)  # fmt: skip


def _wait_boot(h, since: int, timeout: float = 30.0) -> None:
    """Until the application started again after a power-on and reached the broker."""
    try:
        h.wait_for(r"\[lanterne\] connected", timeout=timeout, since=since)
    except TimeoutError:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cuts", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rep = run_campaign(args.cuts, args.seed, log=None if args.json else print)
    if args.json:
        print(json.dumps(rep.to_json(), indent=1))
    else:
        print(json.dumps(rep.to_json(), indent=1))
        print("OK" if rep.ok else "FAILED")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
