"""The release folder (default ./releases): every built release, and every image by its hash.

  <counter:06d>-<version>/image.romfs     the ROMFS slot image
  <counter:06d>-<version>/manifest.bin    the signed manifest
  <counter:06d>-<version>/release.json    what it is: version, counter, hashes, key, files, size
  images/<sha256>.romfs                   every image a board may run (releases, and the images
                                          provisioning wrote), so an update can be sent as a delta
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from host_tools.fleet.release import ReleaseError

DEFAULT_DIR = "releases"


@dataclass
class Release:
    path: Path
    meta: dict

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def counter(self) -> int:
        return self.meta["counter"]

    @property
    def block(self) -> int:
        """The manifest's block size: 4 KiB for a library image, 32 KiB for a MicroPython image."""
        return self.meta.get("block_size", 4096)

    @property
    def digest(self) -> bytes:
        """SHA-256 of the manifest: what the start command names."""
        return bytes.fromhex(self.meta["manifest_sha256"])

    def manifest(self) -> bytes:
        return (self.path / "manifest.bin").read_bytes()

    def image(self) -> bytes:
        return (self.path / "image.romfs").read_bytes()

    def __str__(self) -> str:
        return f"{self.version} (release {self.counter})"


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ReleaseStore:
    def __init__(self, path: str | Path = DEFAULT_DIR):
        self.path = Path(path)

    def releases(self) -> list[Release]:
        out = []
        if not self.path.exists():
            return out
        for d in sorted(self.path.iterdir()):
            f = d / "release.json"
            if d.is_dir() and f.exists():
                out.append(Release(d, json.loads(f.read_text())))
        return sorted(out, key=lambda r: r.counter)

    def latest_counter(self) -> int:
        rs = self.releases()
        return rs[-1].counter if rs else 0

    def add(self, meta: dict, image: bytes, manifest: bytes) -> Release:
        d = self.path / f"{meta['counter']:06d}-{meta['version']}"
        if d.exists():
            raise ReleaseError(f"release {meta['counter']} ({meta['version']}) already exists in {d}",
                               hint="release counters are never reused: build with the next one")  # fmt: skip
        d.mkdir(parents=True)
        _write(d / "image.romfs", image)
        _write(d / "manifest.bin", manifest)
        _write(d / "release.json", (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
        self.add_image(image)
        return Release(d, meta)

    def add_image(self, image: bytes) -> str:
        sha = hashlib.sha256(image).hexdigest()
        p = self.path / "images" / f"{sha}.romfs"
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            _write(p, image)
        return sha

    def image(self, sha_prefix: str) -> bytes | None:
        d = self.path / "images"
        if not d.exists() or len(sha_prefix) < 16:
            return None
        found = sorted(d.glob(f"{sha_prefix}*.romfs"))
        return found[0].read_bytes() if len(found) == 1 else None

    def get(self, ref: str | int) -> Release:
        """A release by counter, version, directory name or "latest"."""
        rs = self.releases()
        if not rs:
            raise ReleaseError(f"no releases in {self.path}", hint="lanterne release build")
        if str(ref) == "latest":
            return rs[-1]
        for r in rs:
            if str(ref) in (str(r.counter), r.version, r.path.name):
                return r
        raise ReleaseError(f"no release {ref!r} in {self.path}", hint="lanterne release list")

    def by_digest(self, prefix: bytes) -> Release | None:
        for r in self.releases():
            if r.digest.startswith(prefix):
                return r
        return None
