"""`lanterne release build`: a firmware tree -> compiled library -> ROMFS slot image -> signed manifest.

The library (the `lanterne` package, the compatibility modules of firmware/lib, the pinned
MicroPython libraries) is compiled with mpy-cross to bytecode only (no native code: the .mpy
arch field stays 0, so the image runs on any port that loads its .mpy version), packed into a
ROMFS image with its release.json, checked against the smallest library slot of the board
files, and described by a manifest signed with the oldest active key of the key store. The
OTA package (lanterne_ota), boot.py and main.py are not part of a release: they stay on the
board's filesystem (and are frozen into the Lanterne MicroPython image).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from host_tools import boards
from host_tools.fleet import ProvisionError, deploy
from host_tools.fleet.release import ReleaseError, ota_module
from host_tools.fleet.release.keys import KeyStore
from host_tools.fleet.release.store import Release, ReleaseStore
from host_tools.runtime.paths import FIRMWARE, MPYLIB

# VfsRom, which the slots need, appeared in MicroPython 1.25: no release runs on anything older.
MIN_MICROPYTHON = (1, 25, 0)
FIRMWARE_BLOCK = 32768  # a MicroPython image's manifest block (8 flash sectors)


def library_sources(source: Path) -> dict[str, bytes]:
    """lib/<path> -> source of everything a slot holds (the package's modules and pages)."""
    files = {}
    pkg = source / "lanterne"
    if not (pkg / "__init__.py").exists():
        raise ReleaseError(f"{source} is not a firmware tree (no lanterne/__init__.py)", hint="pass --source FIRMWARE_DIR")
    for pattern in ("*.py", "*.html"):
        for p in sorted(pkg.rglob(pattern)):
            files["lib/" + p.relative_to(source).as_posix()] = p.read_bytes()
    for p in sorted((source / "lib").rglob("*.py")) if (source / "lib").exists() else ():
        files["lib/" + p.relative_to(source / "lib").as_posix()] = p.read_bytes()
    if not MPYLIB.exists():
        raise ReleaseError(f"{MPYLIB} is missing", hint="run `make deps`")
    for p in sorted(MPYLIB.rglob("*.py")):
        files["lib/" + p.relative_to(MPYLIB).as_posix()] = p.read_bytes()
    return files


def slot_bytes() -> int:
    """The smallest library slot among the boards that have a ROMFS partition."""
    sizes = [b.romfs_bytes // 2 for b in map(boards.load, boards.names()) if b.romfs_bytes]
    return min(sizes) if sizes else 0


def build_image(source: Path, version: str, counter: int, cross: deploy.MpyCross | None = None) -> tuple[bytes, dict[str, str]]:
    """(ROMFS image, {path in the image: sha256}) of `source`'s library: modules compiled to
    bytecode; a module with native code stays source (its machine code needs the board's
    architecture: the board compiles it at import, as provisioning leaves it); pages as they are."""
    cross = cross or deploy.MpyCross()
    rom = {}
    try:
        for rel, data in library_sources(source).items():
            if rel.endswith(".py") and not deploy.native_code(data):
                rom[rel[:-3] + ".mpy"] = cross.compile(data, rel[len("lib/"):])
            else:
                rom[rel] = data
    except ProvisionError as exc:
        raise ReleaseError(str(exc), hint=exc.hint) from None
    rom[deploy.RELEASE_FILE] = deploy.release_file(version, counter)
    image = deploy.romfs_image(rom)
    return image, {p: hashlib.sha256(d).hexdigest() for p, d in sorted(rom.items())}


def sign(
    image: bytes, version: str, counter: int, keys: KeyStore, *, mpy: tuple[int, int, int], micropython=MIN_MICROPYTHON,
    created: int | None = None, image_sha: bytes | None = None, trusted: list[bytes] | None = None, flags: int = 0,
    block: int = 4096,
) -> tuple[bytes, dict]:
    """(signed manifest, metadata). `image_sha` overrides the image's hash (to test that boards refuse it)."""
    man = ota_module("manifest")
    info, priv = keys.signing_key()
    trusted = keys.trusted() if trusted is None else trusted
    created = int(time.time()) if created is None else created
    body = man.encode_body(counter, image, version, mpy, micropython, created, trusted, block=block, image_sha=image_sha,
                           flags=flags)  # fmt: skip
    manifest = man.assemble(body, info.public, priv.sign(man.signing_message(body)))
    m = man.Manifest(manifest)  # read back with the board's own parser, signature checked
    m.check_signature([info.public])
    meta = {
        "version": version, "counter": counter, "created": created, "size": len(image), "blocks": m.nblocks,
        "image_sha256": hashlib.sha256(image).hexdigest(), "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        "key_id": info.key_id, "trusted_keys": [k.hex() for k in trusted], "mpy": list(mpy),
        "micropython": list(micropython), "kind": "firmware" if flags & man.FIRMWARE else "library", "block_size": block,
    }  # fmt: skip
    return manifest, meta


def build_release(
    store: ReleaseStore, keys: KeyStore, *, source: str | Path | None = None, counter: int | None = None,
    micropython=MIN_MICROPYTHON, cross: deploy.MpyCross | None = None, log=None,
) -> Release:
    """Build, sign and store a release of `source` (default: this checkout's firmware)."""
    say = log or (lambda msg: None)
    source = Path(source) if source else FIRMWARE
    try:
        version = deploy.firmware_version(source)
    except (ProvisionError, OSError) as exc:
        raise ReleaseError(str(exc), hint="pass --source FIRMWARE_DIR") from None
    last = store.latest_counter()
    counter = last + 1 if counter is None else counter
    if counter <= last:
        raise ReleaseError(f"release counter {counter} is not above the last one built ({last})",
                           hint="counters only grow: boards refuse anything not above what they run")  # fmt: skip
    cross = cross or deploy.MpyCross()
    image, files = build_image(source, version, counter, cross)
    limit = slot_bytes()
    if limit and len(image) > limit:
        raise ReleaseError(f"the image is {len(image)} bytes: more than a {limit}-byte library slot",
                           hint="trim the library, or give the boards a larger ROMFS partition")  # fmt: skip
    say(f"{version} (release {counter}): {len(files)} files, image {len(image) / 1024:.1f} KiB of a {limit / 1024:.0f} KiB slot")
    manifest, meta = sign(image, version, counter, keys, mpy=(cross.version[0], cross.version[1], 0), micropython=micropython)
    meta["files"] = files
    meta["source"] = str(source)
    return store.add(meta, image, manifest)


def build_firmware_release(store: ReleaseStore, keys: KeyStore, firmware: str | Path, *, counter: int | None = None,
                           log=None) -> Release:  # fmt: skip
    """A release of a MicroPython image (the Lanterne image's OTA variant): its app image, for the
    next OTA app partition (the board's bootloader boots it on trial). Its version is the image's
    own (esp_app_desc_t)."""
    from host_tools.boards.esp32_image import app_image

    say = log or (lambda msg: None)
    try:
        image, desc = app_image(Path(firmware).read_bytes())
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{firmware}: {exc}", hint="pass the .bin of a MicroPython build for the ESP32") from None
    last = store.latest_counter()
    counter = last + 1 if counter is None else counter
    if counter <= last:
        raise ReleaseError(f"release counter {counter} is not above the last one built ({last})")
    say(f"MicroPython image {desc['version']} ({desc['project']}, ESP-IDF {desc['idf_version']}): {len(image)} bytes")
    man = ota_module("manifest")
    # 32 KiB blocks: the manifest of a 1.5 MiB image holds 48 block hashes (1.5 KB), not 384.
    manifest, meta = sign(image, desc["version"], counter, keys, mpy=(0, 0, 0), micropython=(0, 0, 0), flags=man.FIRMWARE,
                          block=FIRMWARE_BLOCK)  # fmt: skip
    meta["project"] = desc["project"]
    meta["idf_version"] = desc["idf_version"]
    return store.add(meta, image, manifest)
