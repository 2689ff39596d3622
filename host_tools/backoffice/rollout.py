"""`lanterne release push`: put a release on one board or roll it out over a fleet, canaries first.

For each device: a signed `ota_start` command (the device's command key, as `lanterne command`),
then its `ota/progress` records until the release is committed (and its status shows the new
version) or refused, or rolled back, or the time is up. The release server
(`host_tools.backoffice.ota_server`) answers the boards' requests meanwhile.

A fleet rollout (`--fleet`) goes in waves: the canaries first (`--canary N` percent of the devices
to update, at least one), then the rest, `--wave` devices at a time (default: all at once). Any
device that fails (refused, rolled back, timed out) halts the rollout: no further wave starts;
the devices already updated keep the release (each board rolls itself back if it is bad). The
state is kept in `<releases>/rollouts/<counter>.json`; `--resume` continues a halted or
interrupted rollout with the devices not yet done: those never started, and those that did not
answer or did not finish in time (tried again); not those that committed, nor those that refused
the release or rolled it back (they stay in the report as failed). Devices already running the release are
skipped, and so are LoRaWAN-only boards (updated over USB: no OTA over LoRaWAN's airtime).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from host_tools.backoffice.command_client import CommandClient, next_counter
from host_tools.backoffice.ota_server import ReleaseServer
from host_tools.fleet.registry import Registry
from host_tools.fleet.release import ReleaseError
from host_tools.fleet.release.store import Release, ReleaseStore

OTA_START = 0x0A
FINAL = ("committed", "refused", "rolled_back", "timeout", "no_ack", "offline")
VERDICTS = ("refused", "rolled_back")  # the board judged the release: a resume does not ask it again


@dataclass
class DeviceResult:
    device: str
    state: str = "pending"  # pending, skipped, updating, committed, refused, rolled_back, timeout, no_ack, offline
    reason: str | None = None
    seconds: float = 0.0
    wire_bytes: int = 0
    progress: str | None = None  # the last progress record's state ("transfer 8/16" ...)

    @property
    def ok(self) -> bool:
        return self.state in ("committed", "skipped")


@dataclass
class RolloutReport:
    release: str
    counter: int
    devices: dict[str, DeviceResult] = field(default_factory=dict)
    waves: list[list[str]] = field(default_factory=list)
    halted: str | None = None

    @property
    def ok(self) -> bool:
        return self.halted is None and all(r.ok for r in self.devices.values())

    def to_json(self) -> dict:
        return {"release": self.release, "counter": self.counter, "halted": self.halted, "waves": self.waves,
                "devices": {d: asdict(r) for d, r in sorted(self.devices.items())}}  # fmt: skip

    def lines(self) -> list[str]:
        out = []
        for d, r in sorted(self.devices.items()):
            extra = f": {r.reason}" if r.reason else ""
            out.append(f"{d}: {r.state}{extra}" + (f" ({r.seconds:.1f} s, {r.wire_bytes} bytes)" if r.seconds else ""))
        if self.halted:
            out.append(f"rollout halted: {self.halted}")
        return out


class Rollout:
    """One connection to the broker: serves the release, sends commands, follows progress."""

    def __init__(self, url: str, registry: Registry, store: ReleaseStore, release: Release, *, tls_ca: str | None = None,
                 timeout: float = 300.0, force: bool = False, log: Callable[[str], None] | None = None,
                 transform=None):  # fmt: skip
        from host_tools.backoffice.watcher import Watcher

        self.registry = registry
        self.store = store
        self.release = release
        self.timeout = timeout
        self.ack_timeout = 15.0  # seconds to wait for the start command's ack
        self.force = force
        self.log = log or (lambda msg: None)
        self._lock = threading.Condition()
        self.progress: dict[str, list[dict]] = {}
        self.status: dict[str, dict] = {}
        user, password = registry.backoffice_credentials()
        self.watcher = Watcher(url, ["lanterne/v1/+/+/status", "lanterne/v1/+/+/ota/progress", "lanterne/v1/+/+/ota/req"],
                               username=user, password=password, tls_ca=tls_ca, on_message=self._on_message)  # fmt: skip
        # paho calls back on its network thread: publish from there without waiting for the PUBACK
        self.server = ReleaseServer(store, lambda t, p: self.watcher.client.publish(t, p, qos=1), transform=transform)
        self.commands = CommandClient(url, username=user, password=password, tls_ca=tls_ca)

    def close(self) -> None:
        self.commands.close()
        self.watcher.close()

    def _on_message(self, m) -> None:
        parts = m.topic.split("/")
        if len(parts) < 5:
            return
        device = parts[3]
        if parts[4:] == ["ota", "req"]:
            self.server.on_message(m.topic, m.payload)
            return
        try:
            doc = json.loads(m.payload)
        except ValueError:
            return
        with self._lock:
            if parts[4:] == ["ota", "progress"]:
                self.progress.setdefault(device, []).append(doc)
            elif parts[4:] == ["status"]:
                self.status[device] = doc
            self._lock.notify_all()

    # -- one device ------------------------------------------------------------------------------
    def _running(self, device: str) -> int | None:
        st = self.status.get(device) or {}
        ota = st.get("ota") or {}
        if self.release.meta.get("kind") == "firmware":
            return (ota.get("image") or {}).get("release")
        return ota.get("release")

    def start(self, device: str) -> DeviceResult:
        """Send the start command. The result's state is "updating" when the board accepted it."""
        res = DeviceResult(device)
        rec = self.registry.get(device)
        if rec is None:
            res.state, res.reason = "refused", "not in the registry"
            return res
        if rec.config.get("transport", "mqtt") != "mqtt":
            res.state, res.reason = "skipped", "LoRaWAN-only board: updated over USB (lanterne provision)"
            return res
        if self._running(device) == self.release.counter:
            res.state, res.reason = "skipped", f"already runs {self.release}"
            return res
        with self._lock:
            self.progress.pop(device, None)
        key = self.registry.command_key(device)
        counter = next_counter(self.registry.command_counter(device))
        self.registry.set_command_counter(device, counter)
        args = {"counter": self.release.counter, "force": self.force, "digest": self.release.digest}
        res.seconds = time.monotonic()  # start time until finished
        try:
            ack = self.commands.send(rec.site, device, key, counter, OTA_START, args, timeout=self.ack_timeout)
        except TimeoutError:
            res.state, res.reason, res.seconds = "no_ack", "no ack to the start command (offline?)", 0.0
            return res
        if not ack.ok:
            res.state = "refused"
            res.reason = f"start command {ack.reason}"
            time.sleep(0.3)  # the board's progress record says why
            last = self._last(device)
            if last and last.get("reason"):
                res.reason += f": {last['reason']}"
            res.seconds = 0.0
            return res
        res.state = "updating"
        self.log(f"{device}: update to {self.release} started")
        return res

    def _last(self, device: str) -> dict | None:
        with self._lock:
            docs = self.progress.get(device) or []
            return docs[-1] if docs else None

    def _final(self, device: str) -> tuple[str, str | None] | None:
        n = self.release.counter
        with self._lock:
            docs = list(self.progress.get(device) or [])
            st = self.status.get(device) or {}
        for doc in docs:
            state = doc.get("state")
            if state == "refused" and doc.get("n") in (n, None):
                return "refused", doc.get("reason")
            if state == "rolled_back" and doc.get("from_n") == n:
                return "rolled_back", doc.get("reason")
        image = self.release.meta.get("kind") == "firmware"  # the status's "fw" is the library's
        if any(d.get("state") == "committed" and d.get("n") == n for d in docs) and (image or st.get("fw") == self.release.version):
            return "committed", None
        return None

    def wait(self, results: list[DeviceResult]) -> None:
        """Until every updating device is final (or its time is up)."""
        t0 = {r.device: r.seconds for r in results}
        pending = [r for r in results if r.state == "updating"]
        while pending:
            with self._lock:
                self._lock.wait(0.5)
            now = time.monotonic()
            for r in list(pending):
                fin = self._final(r.device)
                last = self._last(r.device)
                if last:
                    r.progress = last.get("state") + (f" {last['done']}/{last['total']}" if "done" in last else "")
                if fin is None and now - t0[r.device] > self.timeout:
                    fin = ("timeout", f"not committed within {self.timeout:g} s (last: {r.progress or 'nothing'})")
                if fin is not None:
                    r.state, r.reason = fin
                    if r.state == "committed":
                        self._record(r.device)
                    r.seconds = now - t0[r.device]
                    st = self.server.stats.get(r.device)
                    r.wire_bytes = st.wire_bytes if st else 0
                    self.log(f"{r.device}: {r.state}" + (f": {r.reason}" if r.reason else f" in {r.seconds:.1f} s"))
                    pending.remove(r)

    def _record(self, device: str) -> None:
        """The registry's view of the board follows the update: its /rom now holds the release's
        files (so `lanterne verify` compares with what runs), its state says which release."""
        from host_tools.fleet.deploy import firmware_hash

        rec = self.registry.get(device)
        files = self.release.meta.get("files")
        if rec is None or self.release.meta.get("kind") == "firmware" or not files:
            return
        merged = {p: h for p, h in rec.files.items() if not p.startswith("/rom/")}
        merged.update({"/rom/" + p: h for p, h in files.items()})
        self.registry.add_or_update(device, files=merged, firmware_hash=firmware_hash(merged),
                                    state=f"release {self.release.counter}")  # fmt: skip

    def settle(self, seconds: float = 1.0) -> None:
        """Let the retained status messages arrive (what each device runs)."""
        time.sleep(seconds)

    # -- a fleet ---------------------------------------------------------------------------------
    def run(self, devices: list[str], *, canary_pct: float = 0.0, wave: int = 0, state_file: Path | None = None,
            resume: bool = False) -> RolloutReport:  # fmt: skip
        report = RolloutReport(self.release.version, self.release.counter)
        previous = _load_state(state_file) if state_file else None
        if previous and previous.get("halted") and not resume:
            raise ReleaseError(f"the rollout of {self.release} was halted: {previous['halted']}",
                               hint="look at the failed devices, then pass --resume to continue (or build a fixed release)")  # fmt: skip
        before = (previous or {}).get("devices", {})
        done = {d for d, r in before.items() if r.get("state") in ("committed", "skipped")}
        # A board that refused the release or rolled it back said what it thinks of it: not asked
        # again (it would refuse a release that failed its trial there). One that did not answer
        # or ran out of time (switched off, out of coverage) is not done: a resume tries it again.
        failed = {d for d, r in before.items() if r.get("state") in VERDICTS}
        self.settle()
        todo = [d for d in devices if d not in done and d not in failed]
        for d in devices:
            if d in done or d in failed:
                report.devices[d] = DeviceResult(**previous["devices"][d])
        n_canary = math.ceil(len(todo) * canary_pct / 100) if canary_pct > 0 else 0
        if canary_pct > 0:
            n_canary = max(1, n_canary)
        waves = [todo[:n_canary]] if n_canary else []
        rest = todo[n_canary:]
        size = wave if wave > 0 else max(1, len(rest))
        waves += [rest[i : i + size] for i in range(0, len(rest), size)]
        for d in todo:
            report.devices[d] = DeviceResult(d)
        for i, group in enumerate(waves):
            report.waves.append(group)
            label = "canaries" if i == 0 and n_canary else f"wave {i + (0 if n_canary else 1)}"
            self.log(f"{label}: {', '.join(group)}")
            results = [self.start(d) for d in group]
            for r in results:
                report.devices[r.device] = r
            self.wait(results)
            bad = [r for r in results if not r.ok]
            _save_state(state_file, report)
            if bad:
                report.halted = f"{label}: " + "; ".join(f"{r.device} {r.state} ({r.reason})" for r in bad)
                self.log(f"halted: {report.halted}")
                break
        _save_state(state_file, report)
        return report


def _load_state(path: Path | None) -> dict | None:
    try:
        return json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        return None


def _save_state(path: Path | None, report: RolloutReport) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    tmp.replace(path)


def state_file(store: ReleaseStore, release: Release) -> Path:
    return store.path / "rollouts" / f"{release.counter:06d}.json"
