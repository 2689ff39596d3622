"""The running bridge: MQTT in, one worker that ingests and commits in batches, the outputs.

    bridge = Bridge(BridgeConfig(broker=..., db=..., registry=...))
    bridge.start(); ...; bridge.stop()

Threads: paho's network thread queues messages; the worker takes up to `batch_max` of
them, ingests them, commits once (after `batch_wait_s` at most, or as soon as the queue
is empty) and only then acknowledges them to the broker. A database error keeps the batch
and the messages unacknowledged, and the worker retries with backoff (the broker stops
sending once Receive Maximum messages wait). After each commit the outputs hear what was
new: the NGSI-LD pusher queues entities (never blocking), Home Assistant states are
published. The HTTP read API and the Home Assistant command handler run on their own threads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from host_tools.backoffice.bridge.database import Database
from host_tools.backoffice.bridge.devices import Directory
from host_tools.backoffice.bridge.ingest import Committed, Ingestor
from host_tools.backoffice.bridge.mqtt_input import MqttInput


@dataclass
class BridgeConfig:
    broker: str
    db: str = "bridge.sqlite"
    registry: str = "fleet.sqlite"
    # shared-subscription group; None (the default): plain subscriptions, which Mosquitto 2.0 restores
    # after a crash where it does not restore a shared one (docs/bridge.md, Scale-out)
    group: str | None = None
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    http: str | None = "127.0.0.1:8026"  # NGSI-LD read API; None: off
    ngsi_ld: str | None = None  # external context broker to push to
    home_assistant: bool = False
    ha_prefix: str = "homeassistant"
    lorawan: str | None = None  # chirpstack / tts: the network server's MQTT integration on the same broker
    lorawan_application: str | None = None
    lorawan_tenant: str = "ttn"
    lorawan_state: str | None = None  # the uplink service's state file (uplink_state.py); None: in memory only
    ledger_per_day: int = 10
    location_precision: int = 5
    batch_max: int = 1000  # messages per transaction
    batch_wait_s: float = 0.05
    session_expiry_s: int = 86400
    log: object = field(default=print, repr=False)


class Bridge:
    def __init__(self, cfg: BridgeConfig):
        self.cfg = cfg
        self.log = cfg.log
        self.db = Database(cfg.db)
        self.directory = Directory(cfg.registry)
        self.ingestor = Ingestor(self.db, self.directory, listeners=[self._committed])
        self.ha = None
        extra: tuple[str, ...] = ()
        if cfg.home_assistant:
            from host_tools.backoffice.bridge.homeassistant import HomeAssistant

            self.ha = HomeAssistant(self, prefix=cfg.ha_prefix)
            extra = self.ha.command_topics
        self.lorawan = None
        if cfg.lorawan:
            from host_tools.backoffice.bridge.lorawan_input import LorawanInput
            from host_tools.codec.lns_json import Application

            app = Application(tts_tenant=cfg.lorawan_tenant)
            if cfg.lorawan_application:
                app.application_id = app.tts_application = cfg.lorawan_application
            self.lorawan = LorawanInput(self, cfg.lorawan, app, cfg.ledger_per_day, cfg.lorawan_state)
            extra = extra + self.lorawan.topics
        self.input = MqttInput(cfg.broker, client_id=cfg.client_id, group=cfg.group, username=cfg.username,
                               password=cfg.password, tls_ca=cfg.tls_ca, extra_topics=extra,
                               session_expiry_s=cfg.session_expiry_s, log=self.log)
        self.pusher = None
        if cfg.ngsi_ld:
            from host_tools.backoffice.bridge.ngsi_push import Pusher

            self.pusher = Pusher(cfg.ngsi_ld, log=self.log)
        self.api = None
        if cfg.http:
            from host_tools.backoffice.bridge.ngsi_api import ApiServer

            try:
                self.api = ApiServer(self, cfg.http)
            except OSError as exc:
                self.db.close()
                raise ValueError(f"cannot serve the NGSI-LD API on {cfg.http}: {exc}") from None
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._local: list = []  # (handler, args) from other threads, run on the worker
        self._local_lock = threading.Lock()
        self.commits = 0
        self.failed_writes = 0

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> Bridge:
        if self.api:
            self.api.start()
        if self.pusher:
            self.pusher.start()
        self._worker = threading.Thread(target=self._work, name="bridge-worker", daemon=True)
        self._worker.start()
        self.input.start()
        if self.ha:
            self.ha.start()
        return self

    def stop(self) -> None:
        """Stop taking messages, commit and acknowledge what was taken, then close."""
        self._stop.set()
        if self._worker:
            self._worker.join(30)
        self.input.stop()
        if self.ha:
            self.ha.stop()
        if self.pusher:
            self.pusher.stop()
        if self.api:
            self.api.stop()
        self.db.close()

    def run_on_worker(self, fn, *args) -> None:
        """Have the worker call `fn(ingestor, *args)` before its next commit (thread-safe)."""
        with self._local_lock:
            self._local.append((fn, args))

    # -- the worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        taken = []
        first_at = None
        backoff = 0.5
        while True:
            stopping = self._stop.is_set()
            if not stopping and len(taken) < self.cfg.batch_max:
                wait = self.cfg.batch_wait_s if first_at is None else max(0.0, first_at + self.cfg.batch_wait_s - time.monotonic())
                msgs = self.input.take(self.cfg.batch_max - len(taken), wait)
                for m in msgs:
                    if self.ha is not None and self.ha.on_command(m.topic, m.payload):
                        continue
                    if self.lorawan is not None and self.lorawan.accepts(m.topic):
                        self.lorawan.handle(self.ingestor, m.topic, m.payload, m.received_at)
                    else:
                        self.ingestor.mqtt(m.topic, m.payload, m.received_at, m.retain)
                if msgs and first_at is None:
                    first_at = time.monotonic()
                taken += msgs
            with self._local_lock:
                local, self._local = self._local, []
            for fn, args in local:
                fn(self.ingestor, *args)
            due = (taken or self.ingestor.pending()) and (
                stopping or len(taken) >= self.cfg.batch_max or not self.input.queued()
                or (first_at is not None and time.monotonic() - first_at >= self.cfg.batch_wait_s)
            )
            if due:
                try:
                    self.ingestor.flush()
                except Exception as exc:  # the database is down or refuses: keep everything, retry
                    self.failed_writes += 1
                    self.log(f"database write failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                             f"retrying in {backoff:.1f} s, {len(taken)} messages held unacknowledged")
                    if self._stop.wait(backoff) and self.failed_writes > 3:
                        return  # stopping, database still down: the broker keeps the messages
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 0.5
                self.commits += 1
                self.input.ack(taken)
                taken, first_at = [], None
            elif stopping and not taken and not self.ingestor.pending():
                return

    def _committed(self, done: Committed) -> None:
        devices = set(done.new_readings) | set(done.statuses) | {a["device"] for a in done.acks}
        if not devices:
            return
        if self.pusher:
            try:
                self.pusher.offer(self.entities(sorted(devices)))
            except Exception as exc:  # an output never stops the ingest
                self.log(f"NGSI-LD: {exc}")
        if self.ha:
            try:
                self.ha.committed(done, sorted(devices))
            except Exception as exc:
                self.log(f"Home Assistant: {exc}")

    # -- views ---------------------------------------------------------------------------------
    def entities(self, devices: list[str] | None = None) -> list[dict]:
        """NGSI-LD entities (normalized, with @context) of `devices` (all by default), from the database."""
        from host_tools.backoffice.bridge import ngsi

        latest = self.db.latest_readings(devices)
        states = self.db.states()
        out = []
        for dev in self.directory.all():
            if devices is not None and dev.id not in devices:
                continue
            state = states.get(dev.id, {})
            if dev.id not in latest and not state:
                continue  # never heard of: nothing to say about it yet
            out.extend(ngsi.entities(dev, latest.get(dev.id), state.get("status"), self.cfg.location_precision))
        return out

    def stats(self) -> dict:
        c = self.ingestor.counts
        return {
            "readings": c["readings"], "duplicates": c["duplicates"], "frames": c["frames"], "commits": self.commits,
            "bad": {k: v for k, v in sorted(c.items()) if k not in ("readings", "duplicates", "frames")},
            "failed_writes": self.failed_writes, "queued": self.input.queued(),
            "pushed": self.pusher.stats() if self.pusher else None,
        }
