"""Helpers for the over-the-air update tests: signing keys, releases built from edited copies of
the firmware tree, boards factory-programmed with a release, a rollout against them."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from host_tools.fleet.registry import Registry
from host_tools.fleet.release.build import build_release, sign
from host_tools.fleet.release.keys import KeyStore
from host_tools.fleet.release.store import Release, ReleaseStore
from host_tools.runtime.paths import FIRMWARE

SITE = "ota"


@dataclass
class Kit:
    root: Path
    keys: KeyStore
    store: ReleaseStore
    registry: Registry

    @property
    def registry_path(self) -> Path:
        return self.root / "fleet.sqlite"


def kit(root: Path) -> Kit:
    root.mkdir(parents=True, exist_ok=True)
    keys = KeyStore(root / "release-keys")
    if not keys.keys():
        keys.new("first")
    return Kit(root, keys, ReleaseStore(root / "releases"), Registry(root / "fleet.sqlite"))


def firmware_tree(dest: Path, version: str, edits: dict[str, str] | None = None) -> Path:
    """A copy of the firmware tree with lanterne.__version__ = `version` and `edits` (path ->
    text appended to that module)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(FIRMWARE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    init = dest / "lanterne" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', f'__version__ = "{version}"'))
    for rel, text in (edits or {}).items():
        p = dest / rel
        p.write_text(p.read_text() + text)
    return dest


def release(k: Kit, version: str, edits: dict[str, str] | None = None, counter: int | None = None) -> Release:
    src = firmware_tree(k.root / f"src-{version}", version, edits)
    return build_release(k.store, k.keys, source=src, counter=counter)


def special(k: Kit, image_from: Release, counter: int, version: str, *, keys: KeyStore | None = None,
            mpy=(6, 3, 0), micropython=(1, 25, 0), image_sha: bytes | None = None, bad_signature: bool = False) -> Release:
    """A release a board must refuse: another key, another .mpy or MicroPython version, a wrong
    image hash (all signed), or a signature with one bit flipped."""
    image = image_from.image()
    manifest, meta = sign(image, version, counter, keys or k.keys, mpy=mpy, micropython=micropython, image_sha=image_sha)
    if bad_signature:
        m = bytearray(manifest)
        m[-10] ^= 0x01
        manifest = bytes(m)
        meta["manifest_sha256"] = hashlib.sha256(manifest).hexdigest()
    return k.store.add(meta, image, manifest)


def board_config(k: Kit, device: str, broker: str, **extra) -> dict:
    """Register `device` (its secrets generated) and return the config.json it is programmed with."""
    k.registry.add_or_update(device, site=SITE, board="esp32-devkitc", config={"site": SITE, "broker": broker})
    cfg = {"device": device, "site": SITE, "broker": broker, "command_key": k.registry.secret(device, "command_key"),
           "sample_period_s": 2, "status_period_s": 30, "watchdog_ms": 8000}  # fmt: skip
    cfg.update(extra)
    return cfg


def boards_on(k: Kit, virtual_boards, broker: str, rel: Release, devices: list[str], **extra):
    """Boards factory-programmed with `rel` in slot A, trusting the kit's keys."""
    return [virtual_boards(1, config=board_config(k, d, broker, **extra), image=rel.image(), trusted_keys=k.keys.trusted())[0]
            for d in devices]  # fmt: skip


def rollout(k: Kit, broker: str, rel: Release, **kw):
    from host_tools.backoffice.rollout import Rollout

    return Rollout(broker, k.registry, k.store, rel, timeout=kw.pop("timeout", 90), **kw)


def last_status(watcher, device: str, predicate=None) -> dict:
    docs = [json.loads(m.payload) for m in watcher.matching(f"lanterne/v1/{SITE}/{device}/status")]
    docs = [d for d in docs if d.get("state") == "online" and (predicate is None or predicate(d))]
    return docs[-1] if docs else {}


def slot_bytes(handle, slot: int) -> bytes:
    """The bytes of a board's slot, read from its flash (the partition file beside its folder)."""
    from host_tools import boards

    data = boards.romfs_path(handle.flash).read_bytes()
    half = len(data) // 2
    return data[slot * half : (slot + 1) * half]


def ota_state(handle) -> dict | None:
    """The board's slot state (its NVS blob), or None."""
    p = handle.flash.parent / (handle.flash.name + ".nvs") / "lanterne.json"
    if not p.exists():
        return None
    doc = json.loads(p.read_text())
    return json.loads(bytes.fromhex(doc["ota"])) if "ota" in doc else None
