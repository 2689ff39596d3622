"""What the LoRaWAN uplink service must remember across its own restarts, per device, in SQLite.

The delivery ledger is a promise to the boards: a reading it acknowledged is freed on the board and
never sent again. A service that forgot, after a restart or a crash, would:
- count the readings it already had as missing from seq 0 (or from the first it sees again), and
  list them in every ledger forever, crowding out the ranges really missing;
- let a resent reading through again (its de-duplication is the ledger);
- extend 16-bit wire seqs from nothing (wrong past 65 535 readings);
- spend a fresh day's ledger downlinks at once.

So each device's state — the ledger (base, next, highest, the seqs held above next), the highest
full seq, the ledger budget (send times, last summary), the last ledger counter, the commands in
flight, and the counters `stats()` shows — is one row, rewritten in the same lock as the uplink that
changed it, in one transaction (SQLite's journal makes a crash mid-write keep the previous row).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path


class StateError(ValueError):
    """The state file cannot be used (not SQLite, or a row that is not this service's)."""


class UplinkState:
    def __init__(self, path: str | Path):
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS device_state (dev_eui TEXT PRIMARY KEY, state TEXT NOT NULL)")
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: not an uplink-service state file ({exc})") from None

    def load(self, dev_eui: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM device_state WHERE dev_eui = ?", (dev_eui,)).fetchone()
        if row is None:
            return None
        try:
            state = json.loads(row[0])
        except ValueError as exc:
            raise StateError(f"{self.path}: device {dev_eui}: state is not JSON ({exc})") from None
        if not isinstance(state, dict):
            raise StateError(f"{self.path}: device {dev_eui}: state is not an object")
        return state

    def save(self, dev_eui: str, state: dict) -> None:
        text = json.dumps(state, separators=(",", ":"))
        with self._lock:
            self._db.execute("INSERT INTO device_state (dev_eui, state) VALUES (?, ?) "
                             "ON CONFLICT (dev_eui) DO UPDATE SET state = excluded.state", (dev_eui, text))

    def close(self) -> None:
        with self._lock:
            self._db.close()
