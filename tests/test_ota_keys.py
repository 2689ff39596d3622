"""Release signing keys as an operator handles them (docs/ota.md, "Keys"): `lanterne release keys
new|list|retire` and `lanterne release build` run as typed in a shell, and a key rotated over the
air: a board that trusts key 1 learns key 2 from a release signed by key 1, then runs a release
signed by key 2 alone, forgets key 1 and refuses what key 1 signs, without a USB visit."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat

import pytest
from conftest import lanterne
from ota_support import SITE, Kit, boards_on, firmware_tree, last_status, ota_state, slot_bytes, special

from host_tools.backoffice.watcher import Watcher
from host_tools.fleet.registry import Registry
from host_tools.fleet.release import ota_module
from host_tools.fleet.release.keys import KeyStore
from host_tools.fleet.release.store import ReleaseStore


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _new_key(name: str, *args, **kw) -> str:
    r = lanterne("release", "keys", "new", "--name", name, *args, **kw)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"key ([0-9a-f]{16}) created", r.stdout)
    assert m, r.stdout
    return m.group(1)


def _build(*args, **kw) -> dict:
    r = lanterne("release", "build", *args, timeout=120, **kw)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"release \d+ \(\S+\) in (\S+): ", r.stdout)
    assert m, r.stdout
    return {"stdout": r.stdout, "dir": m.group(1)}


def test_keys_new_list_retire_and_build_through_the_cli(tmp_path):
    """In an operator's folder, with the defaults (./release-keys, ./releases) and a umask that
    would leave files readable by anyone: the private keys are still owner-only."""
    man = ota_module("manifest")
    run = {"cwd": tmp_path, "preexec_fn": lambda: os.umask(0)}

    r = lanterne("release", "keys", "list", **run)
    assert r.returncode == 0 and "no keys in release-keys" in r.stdout and "keys new" in r.stdout

    first = _new_key("first", **run)
    second = _new_key("second", **run)
    folder = tmp_path / "release-keys"
    assert _mode(folder) == 0o700
    meta = json.loads((folder / "keys.json").read_text())
    assert set(meta) == {first, second}
    from cryptography.hazmat.primitives import serialization

    pubs = {}
    for kid in (first, second):
        key = folder / f"{kid}.key"
        assert _mode(key) == 0o600, oct(_mode(key))
        pub = bytes.fromhex((folder / f"{kid}.pub").read_text().strip())
        # The key id is the one the manifest names; the public half is the private key's.
        assert len(pub) == 32 and hashlib.sha256(pub).digest()[:8].hex() == kid
        priv = serialization.load_pem_private_key(key.read_bytes(), password=None)
        assert priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == pub
        assert meta[kid]["state"] == "active"
        pubs[kid] = pub

    r = lanterne("release", "keys", "list", **run)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 2
    assert lines[0].split()[:2] == [first, "active"] and lines[0].endswith("first")  # oldest first
    assert lines[1].split()[:2] == [second, "active"] and lines[1].endswith("second")

    # A build with both keys active: signed by the oldest (the one boards trust), listing both.
    b1 = _build(**run)
    assert f"signed by {first}" in b1["stdout"]
    rel1 = tmp_path / b1["dir"]
    assert rel1.parent == tmp_path / "releases" and rel1.name == "000001-0.1.0"
    doc = json.loads((rel1 / "release.json").read_text())
    assert doc["counter"] == 1 and doc["key_id"] == first and doc["trusted_keys"] == [pubs[first].hex(), pubs[second].hex()]
    image, manifest = (rel1 / "image.romfs").read_bytes(), (rel1 / "manifest.bin").read_bytes()
    assert hashlib.sha256(manifest).hexdigest() == doc["manifest_sha256"] and doc["size"] == len(image)
    assert (tmp_path / "releases" / "images" / f"{hashlib.sha256(image).hexdigest()}.romfs").read_bytes() == image
    m = man.Manifest(manifest)  # the board's own parser
    m.check_signature([pubs[first]])
    assert m.counter == 1 and m.image_sha == hashlib.sha256(image).digest() and m.keys == [pubs[first], pubs[second]]

    # Retired by a prefix of its id, as an operator types it.
    r = lanterne("release", "keys", "retire", first[:6], **run)
    assert r.returncode == 0 and f"key {first} retired" in r.stdout
    listed = {k["key_id"]: k for k in json.loads(lanterne("release", "keys", "list", "--json", **run).stdout)}
    assert listed[first]["state"] == "retired" and listed[second]["state"] == "active"
    assert listed[second]["public"] == pubs[second].hex() and listed[second]["name"] == "second"
    assert (folder / f"{first}.key").exists()  # retired, not deleted: what it signed can still be checked

    b2 = _build(**run)
    assert f"signed by {second}" in b2["stdout"]
    doc = json.loads((tmp_path / b2["dir"] / "release.json").read_text())
    assert doc["counter"] == 2 and doc["key_id"] == second and doc["trusted_keys"] == [pubs[second].hex()]
    m = man.Manifest((tmp_path / b2["dir"] / "manifest.bin").read_bytes())
    m.check_signature([pubs[second]])
    with pytest.raises(man.ManifestError) as exc:
        m.check_signature([pubs[first]])  # a board that still trusts key 1 alone refuses it
    assert exc.value.code == man.UNKNOWN_KEY

    r = lanterne("release", "list", **run)
    rows = [ln.split() for ln in r.stdout.splitlines()]
    assert [(row[0], row[1], row[-1]) for row in rows] == [("1", "0.1.0", first), ("2", "0.1.0", second)]

    # The last active key cannot be retired: nothing would sign the next release.
    r = lanterne("release", "keys", "retire", second, **run)
    assert r.returncode == 1 and "only active key" in r.stderr and "lanterne release keys new" in r.stderr
    # A signing key others can read is refused, and nothing is built with it.
    os.chmod(folder / f"{second}.key", 0o644)
    r = lanterne("release", "build", timeout=120, **run)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{second}.key can be read by others (mode 0644)" in r.stderr and "chmod 600" in r.stderr
    assert sorted(p.name for p in (tmp_path / "releases").iterdir()) == ["000001-0.1.0", "000002-0.1.0", "images"]
    # An unknown id is named.
    r = lanterne("release", "keys", "retire", "ffff", **run)
    assert r.returncode == 1 and "no single key 'ffff'" in r.stderr


def _keys_on_board(h) -> list[str]:
    return json.loads((h.flash / "ota" / "keys.json").read_text())["keys"]


@pytest.mark.integration
def test_a_signing_key_rotated_over_the_air(virtual_boards, mosquitto, tmp_path):
    """Key 1 compromised (or due for rotation): `keys new`, push a release (still signed by key 1,
    listing both), `keys retire` key 1, push the next (signed by key 2 alone). The board then
    refuses what key 1 signs, with the reason, its running slot untouched."""
    keys_dir, rel_dir = tmp_path / "release-keys", tmp_path / "releases"
    common = ("--keys", keys_dir, "--releases", rel_dir)
    k1 = _new_key("first", "--keys", keys_dir)
    k = Kit(tmp_path, KeyStore(keys_dir), ReleaseStore(rel_dir), Registry(tmp_path / "fleet.sqlite"))
    pub1 = k.keys.trusted()[0]

    def build(version, note):
        src = firmware_tree(tmp_path / f"src-{version}", version,
                            {"lanterne/app.py": f"\n\ndef _release_note():\n    return {note!r}\n"})  # fmt: skip
        _build("--source", src, *common)
        return k.store.get(version)

    def push(rel, device):
        return lanterne("release", "push", rel.counter, device, "--registry", k.registry_path, "--releases", rel_dir,
                        "--broker", mosquitto.url, "--timeout", 90, timeout=120)  # fmt: skip

    r1 = build("0.1.0", "release 1")
    with Watcher(mosquitto.url, [f"lanterne/v1/{SITE}/ota-rot/#"]) as w:
        (h,) = boards_on(k, virtual_boards, mosquitto.url, r1, ["ota-rot"])
        w.wait_for(f"lanterne/v1/{SITE}/ota-rot/status", lambda m: b'"online"' in m.payload, timeout=30)
        assert _keys_on_board(h) == [pub1.hex()]

        # 1. A second key; the next release is signed by key 1 and teaches the board key 2.
        k2 = _new_key("second", "--keys", keys_dir)
        pub2 = k.keys.trusted()[1]
        r2 = build("0.2.0", "release 2: lists key 2")
        assert r2.meta["key_id"] == k1 and r2.meta["trusted_keys"] == [pub1.hex(), pub2.hex()]
        r = push(r2, "ota-rot")
        assert r.returncode == 0 and "ota-rot: committed" in r.stdout, r.stdout + r.stderr + h.console()[-2000:]
        assert _keys_on_board(h) == [pub1.hex(), pub2.hex()]
        assert not (h.flash / "ota" / "pending.man").exists()  # the commit finished

        # 2. Key 1 retired: the next release is signed by key 2 alone and lists only key 2.
        r = lanterne("release", "keys", "retire", k1, "--keys", keys_dir)
        assert r.returncode == 0, r.stderr
        r3 = build("0.3.0", "release 3: key 2 only")
        assert r3.meta["key_id"] == k2 and r3.meta["trusted_keys"] == [pub2.hex()]
        r = push(r3, "ota-rot")
        assert r.returncode == 0 and "ota-rot: committed" in r.stdout, r.stdout + r.stderr + h.console()[-2000:]
        w.wait_for(f"lanterne/v1/{SITE}/ota-rot/status", lambda m: b'"fw": "0.3.0"' in m.payload, timeout=30)
        assert _keys_on_board(h) == [pub2.hex()]  # key 1 forgotten

        # 3. Whoever still holds key 1 signs a release (a newer counter, listing key 1 again):
        # the board refuses it, says why, and keeps running release 3.
        old = KeyStore(tmp_path / "key-1-only")
        old.path.mkdir(mode=0o700)
        for suffix in (".key", ".pub"):
            shutil.copy2(keys_dir / f"{k1}{suffix}", old.path / f"{k1}{suffix}")
        (old.path / "keys.json").write_text(json.dumps({k1: {"name": "first", "created": 1.0, "state": "active"}}))
        rogue = special(k, r2, 4, "0.4.0", keys=old)
        assert rogue.meta["key_id"] == k1
        state, running = ota_state(h), slot_bytes(h, ota_state(h)["active"])
        r = push(rogue, "ota-rot")
        assert r.returncode == 1 and "ota-rot: refused" in r.stdout, r.stdout + r.stderr
        assert f"signed by key {k1}, which this board does not trust" in r.stdout
        progress = [json.loads(m.payload) for m in w.matching(f"lanterne/v1/{SITE}/ota-rot/ota/progress")]
        assert progress[-1]["state"] == "refused" and progress[-1]["code"] == "unknown_key", progress[-1]
        assert ota_state(h) == state and slot_bytes(h, state["active"]) == running
        assert _keys_on_board(h) == [pub2.hex()]
        assert last_status(w, "ota-rot")["fw"] == "0.3.0"
