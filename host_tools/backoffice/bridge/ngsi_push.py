"""Push NGSI-LD entities to the city's context broker (Orion-LD, Stellio, Scorpio ...).

`Pusher(url).offer(entities)` never blocks and never fails: it files each entity under its
id, the newest replacing an older one not yet sent (a context broker holds current state,
so an entity superseded before it left need not be sent). A thread sends what is filed as
batch upserts, `POST {url}/ngsi-ld/v1/entityOperations/upsert` (ETSI GS CIM 009, "Batch
Entity Upsert"; `Content-Type: application/ld+json`, each entity with its `@context`), at
most `batch` entities at a time:
- 201 (some created) or 204 (all updated): sent.
- 207: the BatchOperationResult's `errors` are entities the broker refused: counted and
  dropped (a refused entity does not get better by sending it again), the rest are sent.
- 400 and other 4xx but 429: the whole request is refused: counted, dropped, logged.
- 429, 5xx, a refused connection, a timeout: everything goes back in the queue (unless a
  newer version came meanwhile) and the next try waits, doubling from `backoff_s` to
  `backoff_max_s` with full jitter, so a city of bridges does not hammer a broker that is
  coming back.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request


class Pusher:
    def __init__(self, url: str, *, batch: int = 100, timeout_s: float = 10.0, backoff_s: float = 0.5,
                 backoff_max_s: float = 60.0, log=print):
        base = url.rstrip("/")
        if base.endswith("/ngsi-ld/v1"):
            base = base[: -len("/ngsi-ld/v1")]
        self.endpoint = f"{base}/ngsi-ld/v1/entityOperations/upsert"
        self.batch = batch
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.log = log
        self._pending: dict[str, dict] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="ngsi-ld-push", daemon=True)
        self.sent = self.rejected = self.retries = self.requests = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, drain_s: float = 5.0) -> None:
        """Stop after trying to send what is queued (for at most `drain_s`)."""
        deadline = time.monotonic() + drain_s
        with self._cond:
            while self._pending and time.monotonic() < deadline and self._thread.is_alive():
                self._cond.wait(0.05)
            self._stop = True
            self._cond.notify_all()
        self._thread.join(self.timeout_s + 1)

    def offer(self, entities: list[dict]) -> None:
        with self._cond:
            for e in entities:
                self._pending[e["id"]] = e
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def stats(self) -> dict:
        return {"sent": self.sent, "rejected": self.rejected, "retries": self.retries, "pending": self.pending(),
                "last_error": self.last_error}

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait(1.0)
                if self._stop:
                    return
                ids = list(self._pending)[: self.batch]
                batch = [self._pending.pop(i) for i in ids]
                self._cond.notify_all()
            ok = self._send(batch)
            if ok:
                failures = 0
                continue
            with self._cond:  # back in the queue, unless a newer version arrived meanwhile
                for e in batch:
                    self._pending.setdefault(e["id"], e)
                failures += 1
                self.retries += 1
                delay = random.uniform(0, min(self.backoff_max_s, self.backoff_s * 2 ** (failures - 1)))
                self._cond.wait_for(lambda: self._stop, timeout=delay)

    def _send(self, batch: list[dict]) -> bool:
        """True when done with `batch` (sent, or refused for good); False to try again later."""
        self.requests += 1
        body = json.dumps(batch).encode()
        req = urllib.request.Request(self.endpoint, data=body, method="POST",
                                     headers={"Content-Type": "application/ld+json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                status, text = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        except (OSError, ValueError) as exc:  # refused, reset, timed out, DNS
            self.last_error = f"{self.endpoint}: {exc}"
            return False
        if status in (201, 204, 200):
            self.sent += len(batch)
            return True
        if status == 207:
            try:
                result = json.loads(text)
                refused = {err.get("entityId"): err.get("error", {}) for err in result.get("errors", [])}
            except (ValueError, AttributeError):
                refused = {}
            for eid, err in refused.items():
                self.log(f"NGSI-LD: {eid} refused: {err.get('title', '')} {err.get('detail', '')}".rstrip())
            self.rejected += len(refused)
            self.sent += len(batch) - len(refused)
            return True
        detail = text[:300].decode("utf-8", "replace")
        self.last_error = f"{self.endpoint}: HTTP {status} {detail}"
        if status == 429 or status >= 500:
            return False
        self.rejected += len(batch)
        self.log(f"NGSI-LD: batch of {len(batch)} refused, HTTP {status}: {detail}")
        return True
