"""The fleet's release signing keys: Ed25519, generated and kept on the host, never on a board.

A key store is a folder (default ./release-keys, mode 0700):
  <key id>.key    the private key, PKCS#8 PEM, mode 0600 (refused if others can read it)
  <key id>.pub    the public key, hex
  keys.json       per key: name, created, state ("active" or "retired")
The key id is the first 8 bytes of SHA-256(public key), in hex, as the manifest names it.

Rotation: releases are signed by the OLDEST active key and list every active key as trusted.
`new` adds a key: the next release, still signed by the old key (which the boards trust), teaches
them the new one when it commits. Once the fleet runs such a release, `retire` the old key: later
releases are signed by the new key and no longer list the old one, and boards forget it when such
a release commits. A board refuses a manifest signed by a key it does not trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from host_tools.fleet.release import ReleaseError

DEFAULT_DIR = "release-keys"


@dataclass
class KeyInfo:
    key_id: str
    name: str
    created: float
    state: str
    public: bytes

    def to_json(self) -> dict:
        return {"key_id": self.key_id, "name": self.name, "created": self.created, "state": self.state,
                "public": self.public.hex()}  # fmt: skip


def key_id(public: bytes) -> str:
    return hashlib.sha256(public).digest()[:8].hex()


class KeyStore:
    def __init__(self, path: str | Path = DEFAULT_DIR):
        self.path = Path(path)

    def _meta_path(self) -> Path:
        return self.path / "keys.json"

    def _meta(self) -> dict:
        try:
            return json.loads(self._meta_path().read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ReleaseError(f"{self._meta_path()}: not valid JSON ({exc})") from None

    def _write_meta(self, meta: dict) -> None:
        tmp = self._meta_path().with_name("keys.json.tmp")
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self._meta_path())

    def _ensure_dir(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    def keys(self) -> list[KeyInfo]:
        out = []
        for kid, m in sorted(self._meta().items(), key=lambda kv: kv[1]["created"]):
            pub = bytes.fromhex((self.path / f"{kid}.pub").read_text().strip())
            out.append(KeyInfo(kid, m.get("name", ""), m["created"], m.get("state", "active"), pub))
        return out

    def new(self, name: str = "") -> KeyInfo:
        """Generate a key pair; the private half is written owner-only before it holds a byte."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self._ensure_dir()
        priv = Ed25519PrivateKey.generate()
        pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        kid = key_id(pub)
        pem = priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        fd = os.open(self.path / f"{kid}.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
        finally:
            os.close(fd)
        (self.path / f"{kid}.pub").write_text(pub.hex() + "\n")
        meta = self._meta()
        meta[kid] = {"name": name, "created": time.time(), "state": "active"}
        self._write_meta(meta)
        return KeyInfo(kid, name, meta[kid]["created"], "active", pub)

    def retire(self, kid: str) -> KeyInfo:
        meta = self._meta()
        kid = self._resolve(kid, meta)
        active = [k for k, m in meta.items() if m.get("state", "active") == "active" and k != kid]
        if not active:
            raise ReleaseError(f"key {kid} is the only active key", hint="create another first: lanterne release keys new")
        meta[kid]["state"] = "retired"
        self._write_meta(meta)
        return next(k for k in self.keys() if k.key_id == kid)

    def _resolve(self, kid: str, meta: dict) -> str:
        found = [k for k in meta if k.startswith(kid)]
        if len(found) != 1:
            raise ReleaseError(f"no single key {kid!r} in {self.path}", hint="lanterne release keys list")
        return found[0]

    def trusted(self) -> list[bytes]:
        """The public keys boards should trust: every active key, oldest first."""
        return [k.public for k in self.keys() if k.state == "active"]

    def signing_key(self):
        """(KeyInfo, private key) of the oldest active key: the one the boards already trust."""
        active = [k for k in self.keys() if k.state == "active"]
        if not active:
            raise ReleaseError(f"no active signing key in {self.path}", hint="lanterne release keys new")
        info = active[0]
        path = self.path / f"{info.key_id}.key"
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ReleaseError(
                f"{path} can be read by others (mode {stat.S_IMODE(mode):04o}): a signing key must be owner-only",
                hint=f"chmod 600 {path}",
            )
        from cryptography.hazmat.primitives import serialization

        priv = serialization.load_pem_private_key(path.read_bytes(), password=None)
        return info, priv
