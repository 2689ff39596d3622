"""The OTA package's pure parts, on CPython and on the MicroPython unix port at the board's heap:
Ed25519 (RFC 8032's test vectors), SHA-512, the signed manifest, delta recipes, the boot
selector's decisions; and the host's signing keys."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zlib

import pytest

from host_tools import boards
from host_tools.fleet.release import ReleaseError, ota_module
from host_tools.fleet.release.build import build_image, sign
from host_tools.fleet.release.delta import recipes
from host_tools.fleet.release.keys import KeyStore
from host_tools.runtime import parity, unix_port
from host_tools.runtime.paths import FIRMWARE, REPO

VECTORS = REPO / "tests" / "data" / "rfc8032_ed25519.json"
HEAP = boards.load("esp32-devkitc").heap_bytes


def test_ed25519_rfc8032_vectors_on_both_interpreters():
    code = f"""
import json
from lanterne_ota import ed25519
doc = json.loads(open({str(VECTORS)!r}).read())
out = []
for v in doc["vectors"]:
    pk, msg, sig = bytes.fromhex(v["public_key"]), bytes.fromhex(v["message"]), bytes.fromhex(v["signature"])
    flip_r = bytearray(sig); flip_r[5] ^= 1
    flip_s = bytearray(sig); flip_s[40] ^= 1
    other = bytearray(pk); other[0] ^= 1
    big_s = sig[:32] + (int.from_bytes(sig[32:], "little") + ed25519.L).to_bytes(32, "little")
    out.append([v["name"], ed25519.verify(pk, msg, sig), ed25519.verify(pk, msg, bytes(flip_r)),
                ed25519.verify(pk, msg, bytes(flip_s)), ed25519.verify(pk, msg + b"x", sig),
                ed25519.verify(bytes(other), msg, sig), ed25519.verify(pk, msg, big_s)])
# y >= p is no point; neither is a y with no x on the curve
out.append(ed25519.decode_point((2**255 - 18).to_bytes(32, "little")) is None)
out.append(ed25519.decode_point((2).to_bytes(32, "little")) is None)
print(json.dumps(out))
"""
    cp, mp = parity.both(code, heapsize=HEAP)
    assert cp == mp
    *rows, off_curve, no_point = mp
    assert [r[0] for r in rows] == ["TEST 1", "TEST 2", "TEST 3", "TEST 1024", "TEST SHA(abc)"]
    for r in rows:
        assert r[1:] == [True, False, False, False, False, False], r  # S + L: a non-canonical S is refused
    assert off_curve and no_point


def test_sha512_matches_hashlib_on_micropython():
    code = """
from lanterne_ota.ed25519 import sha512
import json
print(json.dumps([sha512(bytes(range(256)) * (n // 256) + bytes(range(n % 256))).hex() for n in (0, 1, 111, 112, 127, 128, 129, 255, 256, 1000)]))
"""
    got = unix_port.run_json(code, heapsize=HEAP)
    want = [hashlib.sha512(bytes(range(256)) * (n // 256) + bytes(range(n % 256))).hexdigest()
            for n in (0, 1, 111, 112, 127, 128, 129, 255, 256, 1000)]  # fmt: skip
    assert got == want


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    keys = KeyStore(tmp_path_factory.mktemp("keys"))
    keys.new("test")
    image, _files = build_image(FIRMWARE, "0.5.0", 5)
    manifest, meta = sign(image, "0.5.0", 5, keys, mpy=(6, 3, 0), created=1767225600)
    return keys, image, manifest, meta


def test_a_host_signed_manifest_verifies_on_the_board(signed, tmp_path):
    keys, image, manifest, _meta = signed
    slot_bytes = boards.load("esp32-devkitc").romfs_bytes // 2
    (tmp_path / "m.bin").write_bytes(manifest)
    good = keys.trusted()[0].hex()
    code = f"""
import json
from lanterne_ota import manifest as M
raw = open({str(tmp_path / "m.bin")!r}, "rb").read()
key = bytes.fromhex({good!r})
out = {{}}
m = M.Manifest(raw)
m.check_signature([key])
out["fields"] = [m.counter, m.version, m.length, m.nblocks, list(m.mpy), list(m.micropython), m.created, len(m.keys)]
def refused(f):
    try:
        f()
    except M.ManifestError as e:
        return e.code
    return None
body = bytearray(raw); body[7] ^= 1  # the counter, changed after signing
out["counter_changed"] = refused(lambda: M.Manifest(bytes(body)).check_signature([key]))
out["unknown_key"] = refused(lambda: m.check_signature([bytes(32)]))
out["truncated"] = refused(lambda: M.Manifest(raw[:-1]))
out["not_a_manifest"] = refused(lambda: M.Manifest(b"x" * 200))
t = m.check_target
slot = {slot_bytes}  # a library slot: half the board's ROMFS partition
out["ok"] = refused(lambda: t((6, 3, 2), (1, 29, 0), slot, 4))
out["native_elsewhere"] = refused(lambda: t((6, 1, 2), (1, 29, 0), slot, 4))
out["mpy7"] = refused(lambda: t((7, 0, 2), (1, 30, 0), slot, 4))
out["old_micropython"] = refused(lambda: t((6, 3, 2), (1, 24, 1), slot, 4))
out["too_big"] = refused(lambda: t((6, 3, 2), (1, 29, 0), {len(image) - 1}, 4))
out["same"] = refused(lambda: t((6, 3, 2), (1, 29, 0), slot, 5))
out["downgrade"] = refused(lambda: t((6, 3, 2), (1, 29, 0), slot, 9))
out["forced"] = refused(lambda: t((6, 3, 2), (1, 29, 0), slot, 9, True))
print(json.dumps(out))
"""
    cp, mp = parity.both(code, heapsize=HEAP)
    assert cp == mp
    assert mp["fields"] == [5, "0.5.0", len(image), (len(image) + 4095) // 4096, [6, 3, 0], [1, 25, 0], 1767225600, 1]
    assert mp["counter_changed"] == "bad_signature" and mp["unknown_key"] == "unknown_key"
    assert mp["truncated"] == mp["not_a_manifest"] == "malformed"
    assert mp["ok"] is None and mp["native_elsewhere"] is None and mp["forced"] is None  # bytecode: any arch
    assert mp["mpy7"] == "mpy_mismatch" and mp["old_micropython"] == "micropython_too_old"
    assert mp["too_big"] == "too_big" and mp["same"] == "same_release" and mp["downgrade"] == "downgrade"


def test_verify_cost_on_the_unix_port_at_the_board_heap(signed, tmp_path):
    keys, _image, manifest, _meta = signed
    (tmp_path / "m.bin").write_bytes(manifest)
    code = f"""
import gc, json
from lanterne_ota import manifest as M
raw = open({str(tmp_path / "m.bin")!r}, "rb").read()
m = M.Manifest(raw)
key = bytes.fromhex({keys.trusted()[0].hex()!r})
m.check_signature([key])
gc.collect()
print(json.dumps(gc.mem_free()))
"""
    assert unix_port.run_json(code, heapsize=48 * 1024) > 0  # verified with room to spare in 48 KB


def test_delta_recipes_rebuild_the_new_image_on_micropython(tmp_path):
    old, _ = build_image(FIRMWARE, "0.1.0", 1)
    src = tmp_path / "fw"
    import shutil

    shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
    app = src / "lanterne" / "app.py"
    app.write_text(app.read_text().replace("BATCH_MAX = 24", "BATCH_MAX = 20") + "\n\ndef _note():\n    return 'changed'\n")
    new, _ = build_image(src, "0.2.0", 2)
    rs = recipes(old, new)
    full = recipes(None, new)
    delta_bytes, full_bytes = sum(len(r) for _f, r in rs), sum(len(r) for _f, r in full)
    app_mpy = zlib.compress(__import__("host_tools.fleet.deploy", fromlist=["x"]).mpy_compile(app.read_bytes(), "lanterne/app.py"), 9)
    assert delta_bytes < len(app_mpy)  # less than the changed module, compressed: what changed in it
    assert full_bytes < 0.85 * len(new)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    (tmp_path / "recipes.json").write_text(json.dumps([[f, r.hex()] for f, r in rs + full]))
    code = f"""
import io, json, hashlib, deflate
from lanterne_ota import delta
old = open({str(tmp_path / "old")!r}, "rb").read()
new = open({str(tmp_path / "new")!r}, "rb").read()
rs = json.loads(open({str(tmp_path / "recipes.json")!r}).read())
n = (len(new) + 4095) // 4096
staging = bytearray(256)
out = []
for j, (flags, r) in enumerate(rs):
    i = j % n
    buf = bytearray(4096)
    def sink(pos, piece):
        buf[pos:pos + len(piece)] = piece
    length = min(4096, len(new) - i * 4096)
    s = io.BytesIO(bytes.fromhex(r))
    if flags:
        s = deflate.DeflateIO(s, deflate.RAW, delta.WBITS)
    delta.apply(s, length, old if j < n else b"", sink, staging)
    out.append(bytes(buf[:length]) == new[i * 4096 : i * 4096 + length])
def refused(recipe, base=old):
    try:
        delta.apply(io.BytesIO(recipe), 4096, base, lambda p, x: None, staging)
    except delta.RecipeError:
        return True
    return False
bad = [refused(delta.encode([("copy", len(old) - 10, 4096)])), refused(delta.encode([("data", b"x" * 5000)])),
       refused(b"\\x07"), refused(delta.encode([("copy", 0, 4096)]) + b"\\x01"), refused(delta.encode([("copy", 0, 100)]))]
print(json.dumps([all(out), len(out), bad]))
"""
    ok, count, bad = unix_port.run_json(code, heapsize=1024 * 1024)  # the test holds both images and every recipe
    assert ok and count == 2 * ((len(new) + 4095) // 4096)
    assert bad == [True, True, True, True, True]  # out of range, overrun, unknown op, trailing bytes, short


def test_boot_selector_decisions():
    boot = ota_module("boot")
    state = ota_module("state")

    def committed():
        st = state.fresh()
        st["slots"] = [{"n": 1, "len": 100, "sha": "aa", "ver": "1"}, {"n": 2, "len": 100, "sha": "bb", "ver": "2"}]
        st["active"] = 0
        return st

    def trial():
        st = committed()
        st["trial"] = {"slot": 1, "boots": 0}
        return st

    # A trial's first boot runs it; power cuts keep it on trial, up to ten boots.
    st = trial()
    assert boot._decide(st, 5, None)[0] == 1 and st["trial"]["boots"] == 1
    for _ in range(9):  # ten boots in all
        assert boot._decide(st, boot.PWRON_RESET, None)[0] == 1
    assert boot._decide(st, boot.PWRON_RESET, None)[0] == 0 and "in 10 boots" in st["event"]["reason"]
    # A crash (recorded by main.py) or a watchdog reset during the trial: back to slot A at once.
    for cause, crash, why in ((5, "crashed: RuntimeError('x')", "crashed"), (boot.WDT_RESET, None, "hung")):
        st = trial()
        boot._decide(st, 5, None)
        st["crash"] = crash
        slot, _ = boot._decide(st, cause, None)
        assert slot == 0 and st["trial"] is None and st["slots"][1] is None and st["failed"] == 2
        assert why in st["event"]["reason"] and st["event"]["from"] == "2" and st["event"]["to"] == "1"
    # Resets that are not power cuts, and no commit: the third boot rolls back.
    st = trial()
    boot._decide(st, 5, None)
    assert boot._decide(st, 2, None)[0] == 1 and boot._decide(st, 2, None)[0] == 0
    # A committed release that keeps crashing: at the third crash in a row, the other slot.
    st = committed()
    for n in (1, 2):
        st["crash"] = "crashed: ValueError()"
        assert boot._decide(st, 5, None)[0] == 0 and st["unhealthy"] == n
    assert boot._decide(st, boot.WDT_RESET, None)[0] == 1 and st["event"]["kind"] == "rolled_back"
    # ... and with nothing to go back to: safe mode (no slot mounted).
    st = committed()
    st["slots"][1] = None
    st["unhealthy"] = 2
    assert boot._decide(st, boot.WDT_RESET, None)[0] is None and "3 crashes in a row" in st["safe"]


def test_a_commit_installs_the_release_keys_and_drops_its_manifest(tmp_path, monkeypatch):
    """boot.finish_commit, as the commit calls it and as the next boot does after a power cut
    between the state and the keys: a committed release's keys installed, a manifest a transfer
    owns or a trial waits on kept, one of a release that rolled back dropped."""
    boot, state, man = ota_module("boot"), ota_module("state"), ota_module("manifest")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ota").mkdir()
    ks = KeyStore(tmp_path / "keys")
    ks.new("1")
    ks.new("2")
    image = bytes(range(256)) * 20
    lib, _ = sign(image, "0.2.0", 2, ks, mpy=(6, 3, 0))
    fw, _ = sign(image, "v1.29.1", 3, ks, mpy=(0, 0, 0), micropython=(0, 0, 0), flags=man.FIRMWARE, block=32768)
    old = ["11" * 32]
    both = [k.hex() for k in ks.trusted()]

    def put(manifest, job=False):
        (tmp_path / "ota" / "keys.json").write_text(json.dumps({"keys": old}))
        (tmp_path / "ota" / "pending.man").write_bytes(manifest)
        job_file = tmp_path / "ota" / "job.json"
        job_file.write_text("{}") if job else job_file.unlink(missing_ok=True)

    def after(st):
        boot.finish_commit(st)
        keys = json.loads((tmp_path / "ota" / "keys.json").read_text())["keys"]
        return keys, (tmp_path / "ota" / "pending.man").exists()

    sha = hashlib.sha256(image).hexdigest()
    committed = state.fresh()
    committed["slots"] = [{"n": 1, "len": 9, "sha": "aa", "ver": "0.1.0"}, {"n": 2, "len": len(image), "sha": sha, "ver": "0.2.0"}]
    committed["active"] = 1
    put(lib)
    assert after(committed) == (both, False)  # installed, manifest dropped
    put(lib, job=True)
    assert after(committed) == (old, True)  # a transfer owns it (a forced push of the same release)
    on_trial = dict(committed, active=0, trial={"slot": 1, "boots": 1})
    put(lib)
    assert after(on_trial) == (old, True)  # its trial decides
    rolled_back = dict(committed, active=0, slots=[committed["slots"][0], None], failed=2)
    put(lib)
    assert after(rolled_back) == (old, False)  # taught nothing, dropped
    # A MicroPython image's release: on trial, kept; confirmed, its keys; rolled back, dropped.
    put(fw)
    assert after(dict(committed, fw_trial={"label": "ota_1", "n": 3, "ver": "v1.29.1", "from": "ota_0"})) == (old, True)
    assert after(dict(committed, fw={"n": 3, "ver": "v1.29.1", "label": "ota_1"})) == (both, False)
    put(fw)
    assert after(dict(committed, fw={"n": 2, "ver": "v1.29.0", "label": "ota_0"})) == (old, False)


def test_signing_keys_are_owner_only_and_rotate(tmp_path):
    ks = KeyStore(tmp_path / "keys")
    first = ks.new("2026")
    assert stat.S_IMODE(os.stat(ks.path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ks.path / f"{first.key_id}.key").st_mode) == 0o600
    assert not any(b"PRIVATE" in p.read_bytes() for p in ks.path.glob("*.pub"))
    second = ks.new("2027")
    assert ks.trusted() == [first.public, second.public]  # releases list both: boards learn the new key
    assert ks.signing_key()[0].key_id == first.key_id  # ... from a release signed by the key they trust
    ks.retire(first.key_id)
    assert ks.trusted() == [second.public] and ks.signing_key()[0].key_id == second.key_id
    with pytest.raises(ReleaseError, match="only active key"):
        ks.retire(second.key_id)
    os.chmod(ks.path / f"{second.key_id}.key", 0o644)
    with pytest.raises(ReleaseError, match="can be read by others"):
        ks.signing_key()


def test_safe_mode_command_gate_speaks_the_command_format(tmp_path):
    from host_tools.runtime import firmware_module

    cmd = firmware_module("commands")
    safe = ota_module("safe")
    key = bytes(range(32))
    gate = safe.Gate("lamp-7", key.hex(), state_file=str(tmp_path / "cmdstate.json"))
    digest = bytes(range(32, 64))
    frame = cmd.build(key, "lamp-7", 41, cmd.OTA_START, {"counter": 9, "force": True, "digest": digest})
    code, counter, op, args = gate.check(frame)
    assert (code, counter, op) == (safe.OK, 41, cmd.OTA_START)
    assert cmd.decode_args(op, args) == {"counter": 9, "force": True, "digest": digest}
    ack = cmd.parse_ack(key, "lamp-7", gate.ack(counter, op, safe.OK))
    assert ack["counter"] == 41 and ack["command"] == "ota_start" and ack["reason"] == "ok"
    assert gate.check(frame)[0] == safe.REPLAY  # the counter is used up (and persisted for the app)
    assert json.loads((tmp_path / "cmdstate.json").read_text())["counter"] == 41
    forged = cmd.build(bytes(32), "lamp-7", 42, cmd.REBOOT, {"delay_s": 1})
    assert gate.check(forged)[0] == safe.BAD_TAG
    assert gate.check(cmd.build(key, "lamp-8", 43, cmd.REBOOT, {"delay_s": 1}))[0] == safe.WRONG_DEVICE


def test_virtual_flash_works_in_a_fragmented_heap(tmp_path):
    # On the chip esp32.Partition's table read, erase and write run in ESP-IDF, outside the
    # MicroPython heap. The virtual board's model of them must not need a large block of the
    # board's heap either: a 4 KB erase buffer and a 3 KB partition-table read made MicroPython
    # image updates fail with MemoryError once the heap was fragmented. Here the heap is cut
    # into 1 KB holes before the calls, and the data path must stay nearly allocation-free.
    import struct

    from host_tools.emulator import ROM

    flash = tmp_path / "flash.bin"
    table = b"".join(
        struct.pack("<HBBII16sI", 0x50AA, ptype, sub, off, size, label.encode(), 0)
        for ptype, sub, off, size, label in [(1, 0x00, 0xD000, 0x2000, "otadata"),
                                             (0, 0x10, 0x10000, 0x10000, "ota_0"),
                                             (0, 0x11, 0x20000, 0x10000, "ota_1")]  # fmt: skip
    )
    image = bytearray(b"\xff" * 0x30000)
    image[0x8000 : 0x8000 + len(table)] = table
    flash.write_bytes(bytes(image))
    code = """
import gc, json, esp32
piece, buf = bytearray(b"\\x5a" * 256), bytearray(256)
keep = [None] * 400
gc.collect()
n = 0
try:  # fill the heap with 1 KB buffers, then free every other one: no free block over ~1 KB
    while n < len(keep):
        keep[n] = bytearray(1024)
        n += 1
except MemoryError:
    pass
for i in range(0, n, 2):
    keep[i] = None
gc.collect()
nxt = esp32.Partition(esp32.Partition.RUNNING).get_next_update()  # reads the partition table
gc.collect()
gc.disable()
a = gc.mem_alloc()
nxt.ioctl(6, 3)                   # erase a sector
nxt.writeblocks(3, piece, 0)      # program 256 bytes of it
piece[:] = b"\\xa5" * 256
nxt.writeblocks(3, piece, 256)    # and the next 256
nxt.readblocks(3, buf, 0)
first = bytes(buf[:4])
nxt.writeblocks(4, piece)         # a plain write: erase, then program
used = gc.mem_alloc() - a
gc.enable()
nxt.set_boot()                    # otadata: a sector erased and an entry written
nxt.readblocks(3, buf, 256)
print(json.dumps([n, used, first.hex(), bytes(buf[:4]).hex()]))
"""
    n, used, first, second = unix_port.run_json(code, path=[ROM], heapsize=HEAP, env={
        "LANTERNE_SPI_FLASH": str(flash), "LANTERNE_RUNNING_APP": "ota_0"})  # fmt: skip
    assert 20 < n < 400  # the heap was filled: the calls ran in its 1 KB holes
    assert (first, second) == ("5a5a5a5a", "a5a5a5a5")
    data = flash.read_bytes()
    assert data[0x20000 + 4 * 4096 : 0x20000 + 4 * 4096 + 256] == b"\xa5" * 256  # ota_1, block 4
    assert data[0x20000 + 4 * 4096 + 256 : 0x20000 + 5 * 4096] == b"\xff" * (4096 - 256)
    seq, state = struct.unpack_from("<I20sI", data, 0xD000)[0::2]  # set_boot wrote otadata
    assert (seq, state) == (2, 0)
    assert used < 1024, f"{used} bytes of the board's heap to erase and write 4 KB of flash"


def test_ota_start_on_a_link_without_updates_is_refused_with_its_reason():
    # The update channel is optional in the link contract (LoRaWAN has none): ota_start is refused
    # at once, saying why, and nothing of the OTA seam is loaded. The MQTT link has the channel.
    # (The link is MicroPython's: its Flag is built on asyncio's core.)
    code = """
import json
import sys
from lanterne import commands as cmd
from lanterne import execute
from lanterne.transport.link import Link
from lanterne.transport.mqtt import MqttLink

class App:
    ota = None
    ota_info = {"slot": "A", "release": 1}
    def __init__(self):
        self.link = Link(lambda frame: None)
        self.cfg = {"transport": "lorawan"}
        self.assets = None
        self.lines = []
    def log(self, line):
        self.lines.append(line)

app = App()
code, data = execute.run(app, cmd.OTA_START, {"counter": 2, "force": False, "digest": bytes(32)})
print(json.dumps({"code": code, "data": data.decode(), "lines": app.lines, "seam": "lanterne.ota" in sys.modules,
                  "ota": app.ota, "mqtt_has_channel": hasattr(MqttLink, "updates"), "link_has_channel": hasattr(Link, "updates")}))
"""
    mp = unix_port.run_json(code)
    assert mp["code"] == 9 and mp["data"] == "no update channel"  # commands.REFUSED
    assert mp["lines"] == ["ota: refused: no update channel on the lorawan link: update this board over USB (lanterne provision)"]
    assert mp["seam"] is False and mp["ota"] is None
    assert mp["mqtt_has_channel"] is True and mp["link_has_channel"] is False
