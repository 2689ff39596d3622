"""The fleet soak and chaos campaign: a city's system run as a city runs it, while faults hit it,
with a ledger at the end that says what was sampled, what arrived, what was lost.

    ledger = Campaign(boards=20, minutes=2, profile=load_profile("short"), seed=1).run()

What runs (nothing mocked that a city runs for real):
1. N virtual boards of the profile's board kinds (soak_profile.BOARD_KINDS), each a blank
   MicroPython board with its own flash, world and `FaultProxy` to the broker; a share of them
   (`tls_share`) reaches the broker over TLS (the city's own CA). LoRaWAN boards (battery bins too)
   reach the back office through their modem twin, gateways, network server, uplink service (soak_lorawan).
2. The fleet registered from a CSV (`lanterne provision --fleet --register-only`), the broker's
   password, ACL and conf written from the registry (`lanterne broker-files`), Mosquitto started
   on that conf (as Debian's service starts it), the bridge (`lanterne bridge`: SQLite, persistent
   session, acknowledgement after commit) subscribed, then every board provisioned over its serial
   port by the same code as `lanterne provision --fleet` (mpy-cross, ROMFS image, config,
   per-device secrets) and awaited online on the broker.
3. The chaos window: faults at seeded instants (soak_profile.schedule, soak_faults.INJECTORS), the
   back office's commands and the attacks on the command path (soak_security.CommandStream), the
   security probes (soak_security.probe_broker, probe_rogue_broker), host CPU and memory sampled;
   with the profile's `ota_share`, a signed update rolled out to part of the fleet (soak_ota).
4. The drain: every fault cleared, the fleet given `drain_s` to empty its stores; then every link
   down, every board powered off, each store read from its flash (soak_ledger.read_store: the
   board's own counters), the boards powered on again and given `drain_s` more to deliver what
   their stores still held. Every seq below a board's count must then be in the bridge's database
   (a LoRaWAN board's: handed on by the uplink service).
5. The ledger (soak_ledger), also written as JSON; `ok` is False when anything was lost,
   duplicated after de-duplication, run twice or let in, or a board ended in a crash loop or bricked.

Used by `lanterne soak` (host_tools/cli/soak.py) and tests/test_soak.py (the short profile).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from host_tools import boards
from host_tools.reliability import soak_faults, soak_ledger, soak_lorawan, soak_ota, soak_security
from host_tools.reliability.soak_fds import paho_without_fd_limit
from host_tools.reliability.soak_profile import BOARD_KINDS, FAULTS, Profile, fleet_kinds, schedule

TASK_RESTARTED = "(restarted)"


class SoakError(RuntimeError):
    """The campaign could not be set up (a board not provisioned, the broker not starting)."""


@dataclass
class SoakBoard:
    index: int
    kind: str
    device: str
    site: str
    board: boards.Board
    flash: Path
    fs_bytes: int
    tls: bool
    world: object = None
    proxy: object = None
    handle: object = None
    expected_boots: int = 0
    console_seen: int = 0
    console_carry: str = ""
    console_lost: int = 0
    executed: list[int] = field(default_factory=list)
    task_restarted: int = 0
    memory_errors: int = 0
    heap_peak: int = 0  # LoRaWAN boards: from the statuses they log (they stay on the board)

    @property
    def lorawan(self) -> bool:
        return BOARD_KINDS[self.kind].transport == "lorawan"


class Campaign:
    def __init__(self, boards: int, minutes: float, profile: Profile, seed: int = 1, workdir: str | Path | None = None,
                 log=print):
        if boards < 2:
            raise SoakError("a soak needs at least 2 boards (the cross-device probes use two)")
        if minutes <= 0:
            raise SoakError("--minutes must be more than 0")
        self.n, self.minutes, self.profile, self.seed = boards, minutes, profile, seed
        self.workdir = workdir
        self.say = log
        self.rng = random.Random(seed)
        self.boards: list[SoakBoard] = []
        self.broker = None
        self.bridge = None
        self.bridge_duplicates = 0
        self.bridge_lock = threading.Lock()
        self.fleet_lock = threading.Lock()  # a fleet fault and a probe round never overlap
        self.errors: list[str] = []
        self.injected: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self.probe_results: list[dict[str, bool]] = []
        self.lora = None  # soak_lorawan.LoraSide, when the fleet has LoRaWAN boards
        self.ota = None  # soak_ota.OtaWave, when the profile updates part of the fleet

    # -- set-up ------------------------------------------------------------------------------
    def _fleet(self, work: Path, emu) -> None:
        from host_tools.emulator.netsim import FaultProxy
        from host_tools.emulator.world import World

        kinds = fleet_kinds(self.profile, self.n, self.rng)
        tls_able = [i for i, k in enumerate(kinds) if BOARD_KINDS[k].tls and BOARD_KINDS[k].transport == "mqtt"]
        n_tls = min(len(tls_able), max(1, round(self.profile.tls_share * self.n))) if self.profile.tls_share else 0
        tls = set(self.rng.sample(tls_able, n_tls))
        for i, kind in enumerate(kinds):
            bk = BOARD_KINDS[kind]
            board = boards.load(bk.board)
            device = f"soak-{i:03d}"
            flash = work / "boards" / device / "flash"
            flash.mkdir(parents=True)
            b = SoakBoard(i, kind, device, bk.site, board, flash, board.data.get("flash", {}).get("fs_bytes", 2 << 20), i in tls)
            b.world = World(seed=self.seed * 1000 + i)
            if bk.transport == "lorawan":
                b.world.set(**soak_lorawan.LORA_WORLD)  # its gateway radio: pointed at the broker once it runs
            b.world.set(**bk.world)
            b.proxy = FaultProxy("127.0.0.1", 0, world=b.world).start()  # its broker: once the broker's ports are chosen
            b.handle = emu.add_board(board, flash, port_path=work / "boards" / device / "tty", world=b.world,
                                     log_path=work / "boards" / device / "console.log")
            b.expected_boots = 1
            self.boards.append(b)
        for b in self.boards:
            b.handle.wait_for(">>> ", timeout=60 + self.n)

    def _csv(self, path: Path, ca_file: str) -> None:
        p = self.profile
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            own = sorted({k for bk in BOARD_KINDS.values() for k in bk.config} - {"sample_period_s", "status_period_s"})
            w.writerow(["port", "board", "device", "site", "broker", "ca_cert", "sample_period_s", "status_period_s", "keepalive_s",
                        *own])
            for b in self.boards:
                bk = BOARD_KINDS[b.kind]
                url = f"mqtts://localhost:{b.proxy.port}" if b.tls else f"mqtt://127.0.0.1:{b.proxy.port}"
                w.writerow([b.handle.port, b.board.name, b.device, b.site, url, ca_file if b.tls else "",
                            bk.config.get("sample_period_s", max(p.sample_period_s, bk.min_sample_period_s)),
                            bk.config.get("status_period_s", p.status_period_s), p.keepalive_s,
                            *(bk.config.get(k, "") for k in own)])

    def _provision(self, csv_path: Path, *flags: str) -> None:
        # `lanterne provision --fleet` in its own process, as an installer runs it (and with the few
        # file descriptors such a process has: pyserial's select() cannot watch one above 1023,
        # which this process, holding the whole fleet, passes).
        r = subprocess.run([sys.executable, "-m", "host_tools.cli", "provision", "--fleet", str(csv_path),
                            "--registry", str(self.reg_path), *flags], capture_output=True, text=True, timeout=600 + 5 * self.n)
        if r.returncode:
            raise SoakError(f"lanterne provision --fleet {' '.join(flags)} failed: {(r.stderr or r.stdout)[-3000:]}")

    def _broker(self, work: Path, reg, pki: dict):
        from host_tools.backoffice.brokers import SystemMosquitto
        from host_tools.fleet.broker_files import Listener, parse_owner, write_broker_files

        owner = parse_owner("root") if os.geteuid() == 0 else None
        tls = {"cafile": pki["cafile"], "certfile": pki["certfile"], "keyfile": pki["keyfile"],
               "listen": Listener(self.broker_tls_port, "127.0.0.1")}
        paths = write_broker_files(reg, work / "broker", owner=owner, listen=Listener(self.broker_port, "127.0.0.1"), tls=tls,
                                   persistence_dir=work / "broker" / "persistence")
        self.lns_password = os.urandom(12).hex()
        soak_lorawan.broker_users(paths, self.lns_password)
        return SystemMosquitto(paths["mosquitto_conf"], self.broker_port).start()

    def start_backoffice(self) -> None:
        from host_tools.backoffice.bridge.service import Bridge, BridgeConfig

        user, password = self.office_credentials
        cfg = BridgeConfig(broker=f"mqtt://127.0.0.1:{self.broker_port}", db=str(self.db_path), registry=str(self.reg_path),
                           username=user, password=password, http=None, client_id="soak-bridge", group=self.profile.bridge_group,
                           log=lambda msg: None)
        for _attempt in range(30):  # the broker may be on its way back from a fault
            try:
                bridge = Bridge(cfg)
                bridge.start()
                break
            except (OSError, TimeoutError):
                with contextlib.suppress(Exception):
                    bridge.db.close()
                time.sleep(1)
        else:
            raise SoakError("the bridge could not connect to the broker")
        with self.bridge_lock:
            self.bridge = bridge

    def stop_backoffice(self) -> None:
        with self.bridge_lock:
            bridge, self.bridge = self.bridge, None
        if bridge is not None:
            self.bridge_duplicates += bridge.ingestor.counts["duplicates"]
            bridge.stop()

    # -- the chaos window ---------------------------------------------------------------------
    def _fault_thread(self, p, t0: float) -> None:
        fk = FAULTS[p.kind]
        lock = self.fleet_lock if fk.scope == "fleet" else contextlib.nullcontext()
        with lock:
            try:
                end = soak_faults.INJECTORS[p.kind](self, p, random.Random(self.seed * 7919 + int(p.at_s * 1000)))
                self.injected[p.kind] = self.injected.get(p.kind, 0) + 1
            except Exception as exc:
                self.errors.append(f"{p.kind} at {p.at_s} s: {type(exc).__name__}: {exc}")
                return
            time.sleep(p.duration_s)
            if end is not None:
                try:
                    end()
                except Exception as exc:
                    self.errors.append(f"ending {p.kind} at {p.at_s} s: {type(exc).__name__}: {exc}")

    def _faults(self, plan, t0: float, stop: threading.Event, threads: list) -> None:
        for p in plan:
            if stop.wait(max(0.0, t0 + p.at_s - time.monotonic())):
                return
            t = threading.Thread(target=self._fault_thread, args=(p, t0), name=f"soak-{p.kind}", daemon=True)
            t.start()
            threads.append(t)

    def _commands(self, streams, end: float, stop: threading.Event) -> None:
        rate = (self.profile.commands_per_min + self.profile.attacks_per_min) / 60
        if rate <= 0:
            return
        legit_share = self.profile.commands_per_min / 60 / rate
        rng = random.Random(self.seed * 31)
        while not stop.wait(rng.expovariate(rate)) and time.monotonic() < end:
            try:
                stream = soak_lorawan.pick_stream(streams, rng)
                if rng.random() < legit_share:
                    stream.legit()
                else:
                    stream.attack()
            except Exception as exc:
                self.errors.append(f"command stream: {type(exc).__name__}: {exc}")

    def _probes(self, office, rogue, rogue_watcher, wrong_ca: str, t0: float, end: float, stop: threading.Event) -> None:
        every = max(30.0, self.profile.probes_every_min * 60)
        first = min(every, (end - t0) / 2)
        rng = random.Random(self.seed * 17)
        devices = [(b.site, b.device, self.passwords[b.device]) for b in self.boards]
        at = t0 + first
        while not stop.wait(max(0.0, at - time.monotonic())):
            with self.fleet_lock:
                try:
                    res = soak_security.probe_broker(f"mqtt://127.0.0.1:{self.broker_port}", self.broker_tls_port, devices,
                                                     office, wrong_ca, rng)
                    tls_boards = [b for b in self.boards if b.tls]
                    if tls_boards:
                        b = rng.choice(tls_boards)
                        res.update(soak_security.probe_rogue_broker(b, rogue, rogue_watcher,
                                                                    ("127.0.0.1", self.broker_tls_port)))
                    if self.lora is not None:  # the LoRaWAN side's topics, from both sides of the ACL
                        m = rng.choice([(b.site, b.device, self.passwords[b.device]) for b in self.boards if not b.lorawan])
                        res.update(soak_lorawan.probe(self.lora, self.broker_port, m, office))
                    self.probe_results.append(res)
                except Exception as exc:
                    self.errors.append(f"probe round: {type(exc).__name__}: {exc}")
            at += every
            if at > end:
                return

    def _read_consoles(self) -> None:
        for b in self.boards:
            async def get(vb=b.handle.board):
                return vb.console_bytes(), vb._console_total

            data, total = b.handle._call(get())
            new = total - b.console_seen
            if new > len(data):
                b.console_lost += new - len(data)
                new = len(data)
            b.console_seen = total
            text = b.console_carry + data[len(data) - new:].decode("utf-8", "replace")
            cut = text.rfind("\n") + 1
            whole, b.console_carry = text[:cut], text[cut:]
            b.executed += soak_security.executions(whole.encode())
            if b.lorawan:
                b.heap_peak = max(b.heap_peak, soak_lorawan.logged_heap(whole))
            b.task_restarted += whole.count(TASK_RESTARTED)
            b.memory_errors += whole.count("MemoryError")

    def _consoles(self, stop: threading.Event) -> None:
        while not stop.wait(20):
            try:
                self._read_consoles()
            except Exception as exc:
                self.errors.append(f"console reader: {type(exc).__name__}: {exc}")

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> dict:
        from host_tools.backoffice import tls as tls_mod
        from host_tools.backoffice.brokers import Mosquitto, free_port
        from host_tools.backoffice.watcher import Watcher
        from host_tools.emulator.supervisor import Emulator
        from host_tools.fleet.registry import Registry

        t_start = time.monotonic()
        paho_without_fd_limit()
        with contextlib.ExitStack() as stack:
            work = Path(self.workdir) if self.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lanterne-soak-")))
            work.mkdir(parents=True, exist_ok=True)
            self.reg_path, self.db_path = work / "fleet.sqlite", work / "bridge.sqlite"
            pki = tls_mod.write_test_pki(work / "pki")
            rogue_pki = tls_mod.write_test_pki(work / "rogue-pki")  # another CA: the impostor's
            emu = stack.enter_context(Emulator())
            stack.callback(lambda: [b.proxy.close() for b in self.boards if b.proxy])
            self.say(f"soak: {self.n} boards, {self.minutes} min, profile {self.profile.name}, seed {self.seed}, in {work}")
            self._fleet(work, emu)
            # The broker's ports, chosen now that every board and proxy holds its own (a port chosen
            # earlier could be taken by one of them before the broker binds it).
            self.broker_port = free_port()
            self.broker_tls_port = free_port()
            while self.broker_tls_port == self.broker_port:
                self.broker_tls_port = free_port()
            for b in self.boards:
                b.proxy.upstream = ("127.0.0.1", self.broker_tls_port if b.tls else self.broker_port)
            self.timings["boards_started"] = round(time.monotonic() - t_start, 1)
            # Register, broker files, broker, bridge; then provision over serial.
            csv_path = work / "fleet.csv"
            self._csv(csv_path, pki["cafile"])
            self._provision(csv_path, "--register-only")
            reg = Registry(self.reg_path)
            stack.callback(reg.close)
            self.office_credentials = reg.backoffice_credentials()
            self.passwords = {b.device: reg.secret(b.device, "mqtt_password") for b in self.boards}
            keys = {b.device: reg.command_key(b.device) for b in self.boards}
            counters = {b.device: reg.command_counter(b.device) for b in self.boards}
            self.broker = self._broker(work, reg, pki)
            stack.callback(lambda: self.broker.stop())
            office_user, office_pw = self.office_credentials
            for attempt in range(5):  # a loaded machine may take more than the watcher's 10 s to answer
                try:
                    office = stack.enter_context(Watcher(f"mqtt://127.0.0.1:{self.broker_port}", ["lanterne/#"],
                                                         username=office_user, password=office_pw))
                    break
                except TimeoutError:
                    if attempt == 4:
                        raise SoakError("the back office could not subscribe on the broker") from None
            self.start_backoffice()
            stack.callback(self.stop_backoffice)
            lora_boards = [b for b in self.boards if b.lorawan]
            if lora_boards:  # the network server, its gateways and the uplink service, on the same broker
                self.lora = soak_lorawan.LoraSide(lora_boards, reg, self.broker_port, self.lns_password).start()
                stack.callback(self.lora.stop)
            t = time.monotonic()
            ota_flags = soak_ota.prepare(work) if self.profile.ota_share > 0 else []
            self._provision(csv_path, "--no-wait", "--jobs", str(min(16, self.n)), *ota_flags)
            self.timings["provisioned"] = round(time.monotonic() - t, 1)
            for b in self.boards:
                b.expected_boots += 1  # provisioning resets the board
            never = self._wait_online(office, [b.device for b in self.boards], 120 + self.n)  # (LoRaWAN: a reading)
            self.timings["online"] = round(time.monotonic() - t, 1)
            # The impostor broker for the TLS probe, and the chaos window.
            rogue = stack.enter_context(Mosquitto(tls={"cafile": rogue_pki["cafile"], "certfile": rogue_pki["certfile"],
                                                       "keyfile": rogue_pki["keyfile"]}))
            rogue_watcher = stack.enter_context(Watcher(rogue.url, ["#"]))
            devices = {b.device: {"site": b.site, "lamp": bool(b.board.actuators("lamp"))} for b in self.boards
                       if BOARD_KINDS[b.kind].transport == "mqtt"}
            streams = [soak_security.CommandStream(f"mqtt://127.0.0.1:{self.broker_port}", office_user, office_pw, devices,
                                                   keys, counters, random.Random(self.seed * 13))]
            stack.callback(streams[0].close)
            if self.lora:
                streams.append(soak_lorawan.LoraCommands(self.lora, {b.device: {"site": b.site, "lamp": False} for b in lora_boards
                                                                     if BOARD_KINDS[b.kind].command_weight > 0},
                                                         keys, counters, random.Random(self.seed * 19)))
            stream = soak_lorawan.Streams(streams)
            mqtt_devices = sorted(devices)
            if self.profile.ota_share > 0 and mqtt_devices:
                rng = random.Random(self.seed * 23)
                targets = rng.sample(mqtt_devices, max(1, round(self.profile.ota_share * len(mqtt_devices))))
                self.ota = soak_ota.OtaWave(self, work, sorted(targets), streams[0].log, rng)
            plan = schedule(self.profile, [b.kind for b in self.boards], self.minutes, random.Random(self.seed))
            host = soak_ledger.HostLoad().start()
            stop = threading.Event()
            t0 = time.monotonic()
            end = t0 + self.minutes * 60
            fault_threads: list[threading.Thread] = []
            workers = [
                threading.Thread(target=self._faults, args=(plan, t0, stop, fault_threads), daemon=True),
                threading.Thread(target=self._commands, args=(streams, end - self.profile.settle_s / 2, stop), daemon=True),
                threading.Thread(target=self._probes, args=(office, rogue, rogue_watcher, rogue_pki["cafile"], t0, end, stop),
                                 daemon=True),
                threading.Thread(target=self._consoles, args=(stop,), daemon=True),
            ]
            if self.ota is not None:
                workers.append(threading.Thread(target=self.ota.run, args=(t0, end - self.profile.settle_s, stop), daemon=True))
            for w in workers:
                w.start()
            self.say(f"soak: chaos for {self.minutes} min: {len(plan)} faults planned, "
                     f"{self.profile.commands_per_min}/min commands, {self.profile.attacks_per_min}/min attacks")
            time.sleep(max(0.0, end - time.monotonic()))
            stop.set()
            for w in workers:
                w.join(60)
            for t in fault_threads:
                t.join(120)
            self.timings["chaos"] = round(time.monotonic() - t0, 1)
            # -- drain -------------------------------------------------------------------------
            self.say("soak: draining")
            t = time.monotonic()
            for b in self.boards:
                b.world.clear()
                b.world.set(link_up=True, clock_offset_s=0.0)
                if b.lorawan:
                    b.world.set(lorawan_uplink_loss=0.0, lorawan_join_failures=0.0)
                (b.flash / soak_faults.FILL_NAME).unlink(missing_ok=True)
                b.handle.power_on()
            if self.bridge is None:
                self.start_backoffice()
            stream.join(min(60.0, self.profile.drain_s))  # commands still unanswered: retried meanwhile
            self._wait_drained(office, t, self.profile.drain_s)
            for b in self.boards:
                b.world.set(link_up=False)
            time.sleep(1.5)
            for b in self.boards:
                b.handle.power_cut()
            self._read_consoles()
            stores = {b.device: soak_ledger.read_store(b.flash) for b in self.boards}
            back_on = time.time()
            for b in self.boards:
                b.world.set(link_up=True)
                b.handle.power_on()
                b.expected_boots += 1
            self._wait_delivered(stores, self.profile.drain_s)
            if self.ota is not None:  # every MQTT board back, on some release: none bricked
                soak_ota.wait_statuses(office, back_on, [b.device for b in self.boards if not b.lorawan], 60)
            self.timings["drain"] = round(time.monotonic() - t, 1)
            self._read_consoles()
            self.stop_backoffice()
            ledger = soak_ledger.build(self, stores, office, stream, never, plan, host.stop())
            if self.ota is not None:
                ledger["ota"] = self.ota.figures(office, back_on)
                ledger["ok"] = not soak_ledger.verdict(ledger)
            for device, c in stream.counters.items():
                reg.set_command_counter(device, c)
        ledger["timings_s"]["total"] = round(time.monotonic() - t_start, 1)
        return ledger

    # -- waiting ----------------------------------------------------------------------------------
    def _wait_online(self, office, devices: list[str], timeout: float) -> list[str]:
        end = time.monotonic() + timeout
        left = set(devices)
        while left and time.monotonic() < end:
            for m in office.matching("lanterne/v1/*/*/status", lambda m: b'"online"' in m.payload):
                left.discard(m.topic.split("/")[3])
            if self.lora is not None:  # a LoRaWAN board is online once a reading of it came through the uplink service
                left -= {d for d, seqs in self.lora.delivered()[0].items() if seqs}
            time.sleep(0.5)
        return sorted(left)

    def _wait_drained(self, office, since: float, timeout: float) -> None:
        # Every board has said, in a status sent after the drain began, that its store is empty.
        since_wall = time.time() - (time.monotonic() - since)
        end = since + timeout
        while time.monotonic() < end:
            empty = set()
            for m in office.matching("lanterne/v1/*/*/status"):
                if m.t >= since_wall + 1:
                    with contextlib.suppress(ValueError):
                        doc = json.loads(m.payload)
                        if doc.get("backlog") == 0:
                            empty.add(doc.get("device"))
            if all(b.device in empty for b in self.boards if not b.lorawan):  # (LoRaWAN: checked by _wait_delivered)
                return
            time.sleep(1)

    def _db_seqs(self) -> tuple[dict[str, list[int]], int]:
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            rows = con.execute("SELECT device, seq FROM readings").fetchall()
        finally:
            con.close()
        out: dict[str, list[int]] = {}
        for device, seq in rows:
            out.setdefault(device, []).append(seq)
        n = len(rows)
        if self.lora is not None:  # the LoRaWAN boards' readings: what the uplink service handed on after de-duplication
            got, events = self.lora.delivered()
            for device, seqs in got.items():
                out.setdefault(device, []).extend(seqs)
            n += events
        return out, n

    def _wait_delivered(self, stores: dict[str, dict], timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            seqs, _ = self._db_seqs()
            if all({s for s in seqs.get(d, ()) if s < st["next_seq"]} == set(range(st["next_seq"])) for d, st in stores.items()):
                return
            time.sleep(2)
