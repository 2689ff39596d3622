"""The soak's over-the-air update: a signed release rolled out to part of the fleet while faults hit it.

When the profile's `ota_share` is above 0, the fleet is provisioned trusting a release key of the
run's own (`lanterne provision --release-keys`, the image kept in the run's release folder), and a
quarter into the chaos window `OtaWave` builds a signed release of this checkout's firmware under
another version (host_tools/fleet/release, as `lanterne release build` does) and rolls it out
(host_tools/backoffice/rollout.Rollout, as `lanterne ota` does: the start command, the release
server answering the boards' chunk requests over MQTT) to that share of the MQTT boards, chosen
from the seed. Whatever the schedule throws at those boards meanwhile (power cuts, link flaps,
the proxy's stalls and cuts, broker kills) hits them mid-update; on top of it, `power_cuts` of
them have their power cut a random 0.3-4 s after their update started (fault kind
`power_cut_during_ota`). A board whose update has stopped (no progress, not committed) gets the
start command again, as an operator re-runs `lanterne ota`, until the chaos window ends.

The start commands are signed commands like any other: each is logged (kind `ota`) so that its
execution on the board is explained, not counted as an accepted attack.

The ledger (`figures`): the release, the boards it was rolled out to, how many committed it, and
by the statuses every MQTT board published after the drain's last power-on, how many boards run
which release; `bricked`: boards of the fleet that never published a status after that power-on
(must be 0).
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

from host_tools.reliability import soak_security

START_AT = 0.25  # of the chaos window
RETRY_S = 8.0


def prepare(work: Path) -> list[str]:
    """The release key the fleet will trust, and the release folder; the provisioning flags that use them."""
    from host_tools.fleet.release.keys import KeyStore

    KeyStore(work / "release-keys").new("soak")
    (work / "releases").mkdir(exist_ok=True)
    return ["--release-keys", str(work / "release-keys"), "--releases", str(work / "releases")]


class OtaWave:
    def __init__(self, campaign, work: Path, targets: list[str], log: soak_security.CommandLog, rng: random.Random,
                 power_cuts: int = 2):
        self.c = campaign
        self.work = work
        self.targets = targets
        self.log = log
        self.rng = rng
        self.power_cuts = min(power_cuts, len(targets))
        self.release = None
        self.started: dict[str, int] = {}  # device -> start commands sent
        self.committed: set[str] = set()
        self.results: dict[str, str] = {}
        self.errors: list[str] = []
        self.cut: list[dict] = []
        self._moved: dict[str, tuple[int, float]] = {}  # device -> (progress records, when that count last changed)

    def run(self, t0: float, end: float, stop: threading.Event) -> None:
        from host_tools.backoffice.rollout import Rollout
        from host_tools.fleet.registry import Registry
        from host_tools.fleet.release.build import build_release
        from host_tools.fleet.release.keys import KeyStore
        from host_tools.fleet.release.store import ReleaseStore
        from host_tools.reliability.ota_powercut import _tree

        if stop.wait(max(0.0, t0 + START_AT * (end - t0) - time.monotonic())):
            return
        store = ReleaseStore(self.work / "releases")
        self.release = build_release(store, KeyStore(self.work / "release-keys"),
                                     source=_tree(self.work / "ota-src", "0.2.0", "soak update"))
        reg = Registry(self.c.reg_path)  # (its own connection: this thread's)
        ro = Rollout(f"mqtt://127.0.0.1:{self.c.broker_port}", reg, store, self.release, timeout=600)
        ro.ack_timeout = 5.0
        to_cut = set(self.rng.sample(self.targets, self.power_cuts))
        by_name = {b.device: b for b in self.c.boards}
        try:
            while not stop.is_set() and time.monotonic() < end:
                for device in self.targets:
                    if device in self.committed or stop.is_set():
                        continue
                    fin = ro._final(device)
                    if fin and fin[0] == "committed":
                        self.committed.add(device)
                        continue
                    if self._updating(ro, device):
                        continue
                    try:
                        res = ro.start(device)
                    except (RuntimeError, OSError, TimeoutError) as exc:  # the broker down (a fault): again later
                        self.results[device] = f"start not sent: {exc}"
                        continue
                    self.results[device] = res.state + (f": {res.reason}" if res.reason else "")
                    if res.state in ("updating", "refused", "no_ack"):
                        # the start command was sent, signed: its execution is ours
                        self.log.add(soak_security.Sent(device, reg.command_counter(device), "ota", b"", acked=res.state != "no_ack"))
                        self.started[device] = self.started.get(device, 0) + 1
                    if res.state == "updating" and device in to_cut:
                        to_cut.discard(device)
                        threading.Thread(target=self._cut, args=(by_name[device], ro, device), daemon=True).start()
                stop.wait(RETRY_S)
            for device in self.targets:
                fin = ro._final(device)
                if fin and fin[0] == "committed":
                    self.committed.add(device)
            self.results.update({d: "committed" for d in self.committed})
        except Exception as exc:
            self.errors.append(f"ota rollout: {type(exc).__name__}: {exc}")
        finally:
            ro.close()
            reg.close()

    def _updating(self, ro, device: str) -> bool:
        """The board's update is under way: its last progress record says so, and records still come
        (a board cut off mid-transfer resumes by itself once back; one silent for 30 s is started again)."""
        with ro._lock:
            n = len(ro.progress.get(device) or [])
        last = ro._last(device) or {}
        now = time.monotonic()
        if self._moved.get(device, (-1, 0.0))[0] != n:
            self._moved[device] = (n, now)
        return last.get("state") in ("manifest", "transfer", "trial") and now - self._moved[device][1] < 30

    def _cut(self, b, ro, device: str) -> None:
        time.sleep(self.rng.uniform(0.3, 4.0))
        last = ro._last(device) or {}
        b.handle.power_cut()
        b.expected_boots += 1
        self.c.injected["power_cut_during_ota"] = self.c.injected.get("power_cut_during_ota", 0) + 1
        self.cut.append({"device": device, "during": last.get("state", "start")})
        time.sleep(self.rng.uniform(0.2, 2.0))
        b.handle.power_on()

    def figures(self, office, since_wall: float) -> dict:
        """The update's outcome, from the statuses the fleet published after `since_wall` (the drain's last power-on)."""
        release: dict[str, int | None] = {}
        for m in office.matching("lanterne/v1/*/*/status"):
            if m.t < since_wall:
                continue
            try:
                doc = json.loads(m.payload)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("device"):
                release[doc["device"]] = (doc.get("ota") or {}).get("release")
        mqtt = [b.device for b in self.c.boards if not b.lorawan]
        ended: dict[str, int] = {}
        for d in mqtt:
            if d in release:
                ended[str(release[d])] = ended.get(str(release[d]), 0) + 1
        return {
            "release": None if self.release is None else self.release.counter,
            "version": None if self.release is None else self.release.version,
            "boards_targeted": len(self.targets),
            "start_commands_sent": sum(self.started.values()),
            "committed": len(self.committed),
            "targets_on_release": sum(1 for d in self.targets if self.release and release.get(d) == self.release.counter),
            "boards_ended_on_release": dict(sorted(ended.items())),
            "bricked": sorted(d for d in mqtt if d not in release),
            "power_cuts_during_update": self.cut,
            "results": dict(sorted(self.results.items())),
            "errors": self.errors,
        }


def wait_statuses(office, since_wall: float, devices: list[str], timeout: float) -> None:
    """Until each device published a status after `since_wall` (or the time is up)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        seen = {m.topic.split("/")[3] for m in office.matching("lanterne/v1/*/*/status") if m.t >= since_wall}
        if set(devices) <= seen:
            return
        time.sleep(1)
