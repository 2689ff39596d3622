"""Fleet registry: one SQLite file (default ./fleet.sqlite, owner-only) holding every device and its secrets.

The registry is the source of truth for what a board should hold and for who may talk
to the broker: `lanterne provision` writes it, `lanterne verify` compares a board with
it, `lanterne broker-files` turns it into Mosquitto's password and ACL files, and
`lanterne command` signs with the command key it keeps.

Tables:
- `devices`: id (unique), site, board, port last used, hardware id (machine.unique_id),
  firmware hash, the manifest of files written (path -> sha256), the config without
  secrets (JSON), state, created/updated timestamps.
- `secrets`: per device, generated on the host with `secrets` (the OS CSPRNG): the MQTT
  password, the command key (32 random bytes, hex), and for LoRaWAN boards the DevEUI
  and AppKey. They are never printed: `DeviceRecord` does not carry them, and
  `secret(device, name)` is the only way out.
- `roles`: back-office credentials (one `backoffice` role: reads the fleet, writes commands).
- `command_counters`: the last command counter sent to each device (`lanterne command`).
- `field_changes`: per device, the changes an installer made on site with the setup page, as
  `lanterne verify` last read them from the board (its field.json: a count, a hash, the fields
  and values), and the hash `lanterne registry accept` adopted into the device's config.

The file is created with mode 0600 before SQLite opens it (SQLite gives its journal the
same mode), and an existing file that others can read is tightened to 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets as _secrets
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PATH = "fleet.sqlite"
SCHEMA_VERSION = 1

# Config fields that are secrets: kept in the `secrets` table, never in a device's config JSON.
SECRET_FIELDS = ("mqtt_password", "command_key", "wifi_key", "lorawan_appkey", "setup_key")
# Generated for every device / for boards whose network is LoRaWAN. setup_key: the setup access
# point's name and passphrase derive from it (firmware/lanterne/setup_credentials.py, `lanterne label`).
DEVICE_SECRETS = ("mqtt_password", "command_key", "setup_key")
LORAWAN_SECRETS = ("lorawan_deveui", "lorawan_appkey")
BACKOFFICE_ROLE = "backoffice"
BACKOFFICE_USER = "lanterne-backoffice"
RESERVED_IDS = (BACKOFFICE_USER,)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    board TEXT NOT NULL,
    port TEXT,
    hw_id TEXT,
    firmware_hash TEXT,
    files TEXT NOT NULL DEFAULT '{}',
    config TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'registered',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS devices_hw_id ON devices (hw_id) WHERE hw_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS secrets (
    device TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (device, name)
);
CREATE TABLE IF NOT EXISTS command_counters (device TEXT PRIMARY KEY, counter INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS field_changes (
    device TEXT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    seen TEXT,
    seen_at REAL,
    accepted_hash TEXT,
    accepted_at REAL
);
CREATE TABLE IF NOT EXISTS roles (
    name TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password TEXT NOT NULL,
    created REAL NOT NULL
);
"""


class RegistryError(RuntimeError):
    pass


def new_secret(name: str) -> str:
    """A fresh value for secret `name`, from the OS CSPRNG."""
    if name == "command_key":
        return _secrets.token_bytes(32).hex()  # HMAC-SHA256 key: 32 random bytes
    if name == "setup_key":
        return _secrets.token_bytes(16).hex()
    if name == "lorawan_appkey":
        return _secrets.token_bytes(16).hex().upper()  # AES-128 root key
    if name == "lorawan_deveui":
        # A locally administered EUI-64 (bit 1 of the first octet set): no IEEE block needed.
        eui = bytearray(_secrets.token_bytes(8))
        eui[0] = (eui[0] | 0x02) & 0xFE
        return eui.hex().upper()
    return _secrets.token_urlsafe(24)  # passwords: 192 bits, URL-safe characters


@dataclass(frozen=True)
class DeviceRecord:
    """A device as the registry knows it. Holds no secret."""

    id: str
    site: str
    board: str
    port: str | None
    hw_id: str | None
    firmware_hash: str | None
    files: dict[str, str] = field(repr=False)
    config: dict
    state: str
    created: float
    updated: float

    @property
    def mqtt_user(self) -> str:
        return self.id

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "site": self.site,
            "board": self.board,
            "port": self.port,
            "hw_id": self.hw_id,
            "firmware_hash": self.firmware_hash,
            "files": len(self.files),
            "config": self.config,
            "state": self.state,
            "created": self.created,
            "updated": self.updated,
        }


def _create_private(path: Path) -> None:
    """Create `path` owner-only (0600), or tighten an existing file others could read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
        return
    os.close(fd)


class Registry:
    """The fleet registry in one SQLite file. Safe to share between threads of one process."""

    def __init__(self, path: str | Path = DEFAULT_PATH):
        self.path = Path(path)
        _create_private(self.path)
        try:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"{self.path}: not a Lanterne registry ({exc})") from None
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise RegistryError(f"{self.path}: registry schema {row[0]} is newer than this lanterne ({SCHEMA_VERSION})")
        self._lock = threading.RLock()

    # -- plumbing -----------------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _record(row) -> DeviceRecord:
        (id_, site, board, port, hw_id, fw, files, config, state, created, updated) = row
        return DeviceRecord(id_, site, board, port, hw_id, fw, json.loads(files), json.loads(config), state, created, updated)

    _COLUMNS = "id, site, board, port, hw_id, firmware_hash, files, config, state, created, updated"

    # -- devices ------------------------------------------------------------------
    def add_or_update(
        self,
        device: str,
        *,
        site: str | None = None,
        board: str | None = None,
        port: str | None = None,
        hw_id: str | None = None,
        firmware_hash: str | None = None,
        files: dict[str, str] | None = None,
        config: dict | None = None,
        state: str | None = None,
        lorawan: bool = False,
    ) -> DeviceRecord:
        """Create `device` (generating its secrets) or update the fields given (None keeps a field).

        `config` must hold no secret field: pass secrets through `set_secret`.
        """
        if device in RESERVED_IDS:
            raise RegistryError(f"device id {device!r} is reserved for the back office")
        if config is not None:
            leaked = sorted(set(config) & set(SECRET_FIELDS))
            if leaked:
                raise RegistryError(f"config for {device} holds secret fields {leaked}: use set_secret")
        now = time.time()
        with self._tx() as db:
            row = db.execute(f"SELECT {self._COLUMNS} FROM devices WHERE id = ?", (device,)).fetchone()
            if row is None:
                if site is None or board is None:
                    raise RegistryError(f"new device {device}: site and board are required")
                db.execute(
                    "INSERT INTO devices (id, site, board, port, hw_id, firmware_hash, files, config, state, created, updated)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (device, site, board, port, hw_id, firmware_hash, json.dumps(files or {}, sort_keys=True),
                     json.dumps(config or {}, sort_keys=True), state or "registered", now, now),
                )
            else:
                old = self._record(row)
                db.execute(
                    "UPDATE devices SET site = ?, board = ?, port = ?, hw_id = ?, firmware_hash = ?, files = ?,"
                    " config = ?, state = ?, updated = ? WHERE id = ?",
                    (
                        site if site is not None else old.site,
                        board if board is not None else old.board,
                        port if port is not None else old.port,
                        hw_id if hw_id is not None else old.hw_id,
                        firmware_hash if firmware_hash is not None else old.firmware_hash,
                        json.dumps(files if files is not None else old.files, sort_keys=True),
                        json.dumps(config if config is not None else old.config, sort_keys=True),
                        state if state is not None else old.state,
                        now,
                        device,
                    ),
                )
            wanted = DEVICE_SECRETS + (LORAWAN_SECRETS if lorawan else ())
            have = {r[0] for r in db.execute("SELECT name FROM secrets WHERE device = ?", (device,))}
            for name in wanted:
                if name not in have:
                    db.execute("INSERT INTO secrets VALUES (?, ?, ?, ?)", (device, name, new_secret(name), now))
            row = db.execute(f"SELECT {self._COLUMNS} FROM devices WHERE id = ?", (device,)).fetchone()
        return self._record(row)

    def update_config(self, device: str, fields: dict) -> DeviceRecord:
        """Set some of a device's config fields (what an acknowledged command changed on the board)."""
        leaked = sorted(set(fields) & set(SECRET_FIELDS))
        if leaked:
            raise RegistryError(f"config for {device} holds secret fields {leaked}: use set_secret")
        with self._tx() as db:
            row = db.execute("SELECT config FROM devices WHERE id = ?", (device,)).fetchone()
            if row is None:
                raise KeyError(f"no device {device!r}")
            config = {**json.loads(row[0]), **fields}
            db.execute("UPDATE devices SET config = ?, updated = ? WHERE id = ?",
                       (json.dumps(config, sort_keys=True), time.time(), device))
        return self.get(device)

    def get(self, device: str) -> DeviceRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {self._COLUMNS} FROM devices WHERE id = ?", (device,)).fetchone()
        return self._record(row) if row else None

    def by_hw_id(self, hw_id: str) -> DeviceRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {self._COLUMNS} FROM devices WHERE hw_id = ?", (hw_id,)).fetchone()
        return self._record(row) if row else None

    def devices(self) -> list[DeviceRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {self._COLUMNS} FROM devices ORDER BY id").fetchall()
        return [self._record(r) for r in rows]

    def move_hardware(self, hw_id: str, to_device: str) -> None:
        """A board (hardware id) now serves `to_device`: forget it on any other device (board replaced)."""
        with self._tx() as db:
            db.execute("UPDATE devices SET hw_id = NULL WHERE hw_id = ? AND id != ?", (hw_id, to_device))

    def remove(self, device: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM devices WHERE id = ?", (device,)).rowcount > 0

    # -- secrets ------------------------------------------------------------------
    def secret(self, device: str, name: str) -> str:
        with self._lock:
            row = self._db.execute("SELECT value FROM secrets WHERE device = ? AND name = ?", (device, name)).fetchone()
        if row is None:
            raise KeyError(f"no secret {name!r} for device {device!r}")
        return row[0]

    def secret_names(self, device: str) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM secrets WHERE device = ? ORDER BY name", (device,))]

    def set_secret(self, device: str, name: str, value: str) -> None:
        """Store or replace a secret (a rotated command key, a site's Wi-Fi key ...)."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM devices WHERE id = ?", (device,)).fetchone() is None:
                raise KeyError(f"no device {device!r}")
            db.execute(
                "INSERT INTO secrets VALUES (?, ?, ?, ?) ON CONFLICT (device, name) DO UPDATE SET value = excluded.value",
                (device, name, value, time.time()),
            )

    def command_key(self, device: str) -> bytes:
        """The device's 32-byte command key (stored as hex)."""
        return bytes.fromhex(self.secret(device, "command_key"))

    # -- command counters (lanterne command) --------------------------------------------
    def command_counter(self, device: str) -> int:
        """The last command counter sent to `device` (0 if none): the board refuses anything not above it."""
        with self._lock:
            row = self._db.execute("SELECT counter FROM command_counters WHERE device = ?", (device,)).fetchone()
        return row[0] if row else 0

    def set_command_counter(self, device: str, counter: int) -> None:
        """Record the counter of a command sent; it never goes back (a lower value is ignored)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO command_counters VALUES (?, ?)"
                " ON CONFLICT (device) DO UPDATE SET counter = MAX(counter, excluded.counter)",
                (device, counter),
            )

    # -- field changes (the setup page) ---------------------------------------------------
    def record_field_changes(self, device: str, field_doc: dict) -> None:
        """What a board says was changed on site (its field.json: n, hash, fields), as last read."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO field_changes (device, seen, seen_at) VALUES (?, ?, ?)"
                " ON CONFLICT (device) DO UPDATE SET seen = excluded.seen, seen_at = excluded.seen_at",
                (device, json.dumps(field_doc, sort_keys=True), time.time()),
            )

    def field_changes(self, device: str) -> tuple[dict | None, str | None]:
        """(the field changes last read from the board or None, the hash accepted or None)."""
        with self._lock:
            row = self._db.execute("SELECT seen, accepted_hash FROM field_changes WHERE device = ?", (device,)).fetchone()
        if row is None:
            return None, None
        return (json.loads(row[0]) if row[0] else None), row[1]

    def accept_field_changes(self, device: str, editable: tuple[str, ...]) -> dict:
        """Adopt the field changes last read from the board into the device's config; returns them."""
        seen, _accepted = self.field_changes(device)
        if not seen or not seen.get("fields"):
            raise RegistryError(f"no field changes read from {device} yet: run lanterne verify --port PORT first")
        rec = self.get(device)
        if rec is None:
            raise RegistryError(f"no device {device!r}")
        fields = {k: v for k, v in seen["fields"].items() if k in editable}
        config = dict(rec.config)
        config.update(fields)
        self.add_or_update(device, config=config)
        with self._tx() as db:
            db.execute("UPDATE field_changes SET accepted_hash = ?, accepted_at = ? WHERE device = ?",
                       (seen.get("hash"), time.time(), device))
        return seen

    # -- back office ----------------------------------------------------------------
    def backoffice_credentials(self) -> tuple[str, str]:
        """(username, password) of the back-office role, created on first use."""
        with self._tx() as db:
            row = db.execute("SELECT username, password FROM roles WHERE name = ?", (BACKOFFICE_ROLE,)).fetchone()
            if row is None:
                row = (BACKOFFICE_USER, new_secret("mqtt_password"))
                db.execute("INSERT INTO roles VALUES (?, ?, ?, ?)", (BACKOFFICE_ROLE, *row, time.time()))
        return row[0], row[1]

    def roles(self) -> list[tuple[str, str, str]]:
        """(role, username, password) for every back-office role."""
        self.backoffice_credentials()
        with self._lock:
            return [tuple(r) for r in self._db.execute("SELECT name, username, password FROM roles ORDER BY name")]
