"""A raw-REPL session with one board over mpremote (`SerialTransport`): probe, write, commit, reset.

`BoardLink(port)` interrupts the application (Ctrl-C), enters the raw REPL and soft-resets
(a fresh interpreter, main.py not run), with errors a person can act on instead of
mpremote's prints. `probe()` runs one script on the board that reports its MicroPython
version, `.mpy` format (`sys.implementation._mpy`), hardware id, free flash, its ROMFS
partition and the sha256 of every file in /, /lib and /rom, hashed on the board so that only
hashes travel. `write_romfs()` programs the ROMFS partition block by block. Files are
written base64 in chunks to temp names, checked by hash on the board, then renamed into
place in one command. Every byte written to the port is counted (`link.serial.sent`).
Closing the link puts a board still in the raw REPL back to its REPL and soft-reboots it,
so its application runs again.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import time
from dataclasses import dataclass

from host_tools.fleet import PORT_HINT, ProvisionError, missing_port

TMP_SUFFIX = ".lnt-new"  # files being written; renamed into place only once checked
CHUNK = 3072  # raw bytes per write command (4 KiB of base64): small next to the board's heap





_PROBE = r"""
import os, sys, binascii, hashlib
_b = bytearray(1024)
def _h(p):
    h = hashlib.sha256()
    m = memoryview(_b)
    with open(p, 'rb') as f:
        while True:
            n = f.readinto(_b)
            if not n:
                break
            h.update(m[:n])
    return binascii.hexlify(h.digest()).decode()
def _walk(d):
    for e in os.ilistdir(d):
        p = (d if d != '/' else '') + '/' + e[0]
        if p == '/rom' and d == '/':
            continue  # a mount point: walked on its own below
        if e[1] & 0x4000:
            print(repr(('D', p, 0, '')))
            _walk(p)
        else:
            print(repr(('F', p, e[3] if len(e) > 3 else os.stat(p)[6], _h(p) if d == '/' or p.startswith('/lib/') or p.startswith('/rom/') or p == '/ota/keys.json' else '')))
def _mv(a, b):
    try:
        os.rename(a, b)
    except OSError:
        os.remove(b)
        os.rename(a, b)
def _rm(p):
    try:
        os.remove(p)
    except OSError:
        pass
try:
    import machine
    _uid = binascii.hexlify(machine.unique_id()).decode()
except Exception:
    _uid = ''
def _rom():
    # The ROMFS partition (esp32.Partition on a ROMFS build), or None when the firmware has none.
    try:
        import vfs
        if vfs.rom_ioctl(1) < 1:
            return None
        _d = vfs.rom_ioctl(2, 0)
        return None if isinstance(_d, int) or not hasattr(_d, 'ioctl') else _d
    except Exception:
        return None
_rd = _rom()
_s = os.statvfs('/')
print(repr(('I', getattr(sys.implementation, '_mpy', 0), '.'.join(str(v) for v in sys.implementation.version[:3]), sys.platform, _uid, _s[0] * _s[4], _rd.ioctl(4, 0) * _rd.ioctl(5, 0) if _rd else 0)))
_walk('/')
try:
    os.stat('/rom')
    _walk('/rom')
except OSError:
    pass
"""


@dataclass
class BoardFile:
    path: str
    size: int
    sha256: str  # '' when not hashed (data outside / and /lib)


@dataclass
class BoardInfo:
    mpy: int
    micropython: str
    platform: str
    hw_id: str
    free_bytes: int
    files: dict[str, BoardFile]
    dirs: set[str]
    romfs_bytes: int = 0  # size of the ROMFS partition (0: the firmware has none)


class CountingSerial:
    """Wraps mpremote's serial object: counts the bytes each way."""

    def __init__(self, serial):
        self._serial = serial
        self.sent = 0
        self.received = 0

    def write(self, data):
        self.sent += len(data)
        return self._serial.write(data)

    def read(self, n=1):
        data = self._serial.read(n)
        self.received += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._serial, name)


def _deflate(data: bytes) -> bytes:
    """Raw deflate with a 512-byte window (wbits 9: what a board's DeflateIO(..., RAW, 9) reads)."""
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, -9)
    return c.compress(data) + c.flush()


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


class BoardLink:
    """A raw-REPL session with one board over mpremote's `SerialTransport`."""

    def __init__(self, port: str, timeout: float = 5.0):
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        self.port = port
        self.console = bytearray()
        self.romfs_blocks_written = 0
        if missing_port(port):
            raise ProvisionError(f"no serial port {port}", hint=PORT_HINT)
        try:
            self.transport = SerialTransport(port, baudrate=115200)
        except TransportError:
            raise ProvisionError(
                f"cannot open {port}: busy or not permitted",
                hint="close any serial monitor (screen, mpremote repl) using it; on Linux join the dialout group",
            ) from None
        self.serial = CountingSerial(self.transport.serial)
        self.transport.serial = self.serial
        try:
            self._enter_raw_repl(timeout)
        except BaseException:
            self.close()
            raise

    def _enter_raw_repl(self, timeout: float, attempts: int = 3) -> None:
        # A Ctrl-C that lands while the board is between boot.py and main.py (just reset) is
        # only a byte in its input buffer, not an interrupt, on the ESP32 as here: main.py then
        # starts and keeps the REPL away. Try again rather than give up on the first race.
        for attempt in range(attempts):
            try:
                return self._enter_raw_repl_once(timeout if attempt == attempts - 1 else min(timeout, 3.0))
            except ProvisionError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.3)

    def _enter_raw_repl_once(self, timeout: float) -> None:
        # mpremote's enter_raw_repl(soft_reset=True), with errors a person can act on instead of a print.
        t, s = self.transport, self.serial
        banner = b"raw REPL; CTRL-B to exit\r\n"
        s.write(b"\r\x03")  # Ctrl-C: interrupt the running application
        time.sleep(0.05)
        s.write(b"\x03")  # ... and cancel whatever it left on the REPL line
        time.sleep(0.05)
        while s.in_waiting:  # drop what it printed until now (as mpremote does)
            s.read(s.in_waiting)
        s.write(b"\r\x01")  # Ctrl-A: raw REPL
        data = t.read_until(1, banner + b">", timeout=timeout, timeout_overall=timeout)
        if not data.endswith(banner + b">"):
            heard = data.decode("utf-8", "replace").strip()
            raise ProvisionError(
                f"the board on {self.port} is not answering"
                + (f" (it said {heard[-60:]!r})" if heard else f" (silent for {timeout:g} s)"),
                hint="is MicroPython flashed (lanterne flash)? press the board's reset (EN) button and try again",
            )
        s.write(b"\x04")  # Ctrl-D: soft reset, a fresh interpreter without main.py
        data = t.read_until(1, b"soft reboot\r\n", timeout=timeout, timeout_overall=timeout)
        data += t.read_until(1, banner, timeout=timeout, timeout_overall=timeout)
        if not data.endswith(banner):
            heard = data.decode("utf-8", "replace").strip()
            raise ProvisionError(
                f"the board on {self.port} did not come back from a soft reset"
                + (f" (it said {heard[-80:]!r})" if heard else " (silent)"),
                hint="press its reset button and try again",
            )
        t.in_raw_repl = True

    def exec(self, code: str, what: str = "", timeout: float | None = None) -> bytes:
        """Run `code` in the raw REPL; its output. `timeout`: the longest silence allowed (mpremote's
        default, 10 s, when None)."""
        from mpremote.transport import TransportError, TransportExecError

        try:
            if timeout is None:
                return self.transport.exec(code)
            out, err = self.transport.exec_raw(code, timeout=timeout)
            if err:
                raise TransportExecError(out, err.decode("utf-8", "replace"))
            return out
        except TransportExecError as exc:
            raise ProvisionError(
                f"board error{' ' + what if what else ''}: {_one_line(exc.error_output)}",
                hint="run again; if it persists, check the board's filesystem (mpremote df)",
            ) from None
        except TransportError as exc:
            raise ProvisionError(f"lost the board on {self.port}{' ' + what if what else ''}: {exc}", hint="check the cable and run again") from None

    def probe(self) -> BoardInfo:
        out = self.exec(_PROBE, "reading its files").decode("utf-8", "replace")
        info = None
        files: dict[str, BoardFile] = {}
        dirs: set[str] = set()
        for line in out.splitlines():
            line = line.strip()
            if not line.startswith("("):
                continue
            rec = ast.literal_eval(line)
            if rec[0] == "I":
                info = rec
            elif rec[0] == "D":
                dirs.add(rec[1])
            else:
                files[rec[1]] = BoardFile(rec[1], int(rec[2]), rec[3])
        if info is None:
            raise ProvisionError(f"the board on {self.port} did not answer the probe", hint="press its reset button and try again")
        romfs = int(info[6]) if len(info) > 6 else 0
        return BoardInfo(int(info[1]), info[2], info[3], info[4], int(info[5]), files, dirs, romfs)

    def read_file(self, path: str) -> bytes:
        out = self.exec(
            f"with open({path!r}, 'rb') as _f:\n print(binascii.b2a_base64(_f.read()).decode().strip())", f"reading {path}"
        )
        return base64.b64decode(out.strip() or b"")

    def write_file(self, path: str, data: bytes) -> None:
        """Write `data` to `path` (the caller uses a temp name) in base64 chunks."""
        self.exec(f"_f = open({path!r}, 'wb')", f"creating {path}")
        for i in range(0, len(data), CHUNK):
            b64 = base64.b64encode(data[i : i + CHUNK]).decode()
            self.exec(f"_f.write(binascii.a2b_base64({b64!r}))", f"writing {path}")
        self.exec("_f.close()", f"closing {path}")

    def write_romfs(self, image: bytes) -> str:
        """Write a ROMFS image into the board's ROMFS partition (after probe()); return its sha256
        as read back from the flash. /rom is unmounted first (as mpremote romfs deploy does). Only
        the blocks whose bytes differ are written (each block hashed on the board first). Block 0,
        which holds the image's header, is erased first and written last: a write cut short leaves
        no valid image (the board says so at boot) rather than a mix of two."""
        self.exec("import vfs\ntry:\n vfs.umount('/rom')\nexcept OSError:\n pass", "unmounting /rom")
        block = int(self.exec("print(_rd.ioctl(5, 0))", "reading the ROMFS block size").strip())
        blocks = (len(image) + block - 1) // block
        read_back = (
            f"_n = {len(image)}\n_bb = bytearray({block})\n"
            f"def _blk(_i):\n _rd.readblocks(_i, _bb)\n return memoryview(_bb)[:min({block}, _n - _i * {block})]\n"
        )
        out = self.exec(
            read_back + f"for _i in range({blocks}):\n print(binascii.hexlify(hashlib.sha256(_blk(_i)).digest()[:16]).decode())",
            "reading the ROMFS partition",
        )
        on_board = out.decode().split()
        todo = [b for b in range(blocks)
                if b >= len(on_board) or on_board[b] != hashlib.sha256(image[b * block : (b + 1) * block]).hexdigest()[:32]]
        self.romfs_blocks_written = len(todo) + (1 if todo and 0 not in todo else 0)
        # Blocks go deflate-compressed when the board has the deflate module (as the ESP32
        # build does), as mpremote romfs deploy sends them.
        try:
            self.transport.exec("from io import BytesIO\nfrom deflate import DeflateIO, RAW")
            deflate = True
        except Exception:
            deflate = False
        if todo:
            self.exec("_rd.ioctl(6, 0)", "erasing the ROMFS header")
            for b in [b for b in todo if b] + [0]:
                if b:
                    self.exec(f"_rd.ioctl(6, {b})", "erasing the ROMFS partition")
                data = image[b * block : (b + 1) * block]
                packed = _deflate(data) if deflate else b""
                if deflate and len(packed) < len(data):  # one command per block: <= 5.5 KB of base64
                    b64 = base64.b64encode(packed).decode()
                    self.exec(f"_rd.writeblocks({b}, DeflateIO(BytesIO(binascii.a2b_base64({b64!r})), RAW, 9).read(), 0)",
                              "writing the ROMFS partition")
                    continue
                for off in range(0, len(data), CHUNK):
                    b64 = base64.b64encode(data[off : off + CHUNK]).decode()
                    self.exec(f"_rd.writeblocks({b}, binascii.a2b_base64({b64!r}), {off})", "writing the ROMFS partition")
        out = self.exec(
            read_back + f"_hh = hashlib.sha256()\nfor _i in range({blocks}):\n _hh.update(_blk(_i))\n"
            "print(binascii.hexlify(_hh.digest()).decode())",
            "checking the ROMFS partition",
        )
        return out.decode().strip()

    def reset_ota_state(self) -> None:
        """Forget the over-the-air update state (NVS key "ota" of namespace "lanterne", the transfer
        files): the boot selector then adopts slot A of the ROMFS partition as it is."""
        self.exec(
            "try:\n import esp32\n _n = esp32.NVS('lanterne')\n _n.erase_key('ota')\n _n.commit()\nexcept Exception:\n pass\n"
            "for _p in ('ota/job.json', 'ota/pending.man', 'ota/state.json'):\n try:\n  os.remove(_p)\n except OSError:\n  pass",
            "resetting the update state",
        )

    def hashes(self, paths: list[str]) -> dict[str, str]:
        out = self.exec(f"for _p in {paths!r}:\n print(repr((_p, _h(_p))))", "checking what it received").decode()
        return dict(ast.literal_eval(ln.strip()) for ln in out.splitlines() if ln.strip().startswith("("))

    def mkdirs(self, dirs: list[str]) -> None:
        if dirs:
            self.exec(f"for _d in {dirs!r}:\n os.mkdir(_d)", "creating folders")

    def commit(self, renames: list[tuple[str, str]], removals: list[str], rmdirs: list[str] = ()) -> None:
        """Rename the checked temp files into place, remove `removals`, then the folders `rmdirs`
        (deepest first) that are empty by then; a folder still holding files stays."""
        self.exec(
            f"for _a, _b2 in {renames!r}:\n _mv(_a, _b2)\nfor _p in {removals!r}:\n _rm(_p)\n"
            f"for _d in {list(rmdirs)!r}:\n try:\n  os.rmdir(_d)\n except OSError:\n  pass",
            "renaming files into place",
        )

    def remove(self, paths: list[str]) -> None:
        if paths:
            self.exec(f"for _p in {paths!r}:\n _rm(_p)", "removing files")

    def hard_reset(self) -> None:
        """machine.reset(): boot.py, then main.py, as after power-on."""
        from mpremote.transport import TransportError

        try:
            self.transport.exec_raw_no_follow("import machine\nmachine.reset()")
        except TransportError as exc:
            raise ProvisionError(f"could not reset the board on {self.port}: {exc}", hint="press its reset button") from None
        self.transport.in_raw_repl = False

    def read_console(self) -> str:
        """Whatever the board printed since the last call (non-blocking), kept for diagnostics."""
        try:
            n = self.serial.in_waiting
            if n:
                self.console += self.serial.read(n)
        except OSError:
            pass
        del self.console[:-8192]
        return self.console.decode("utf-8", "replace")

    def close(self, restart: bool = True) -> None:
        """Release the port. A board still in the raw REPL goes back to the friendly REPL and, with
        `restart`, soft-reboots there (Ctrl-D), which runs main.py: it never stays stopped."""
        try:
            if self.transport.in_raw_repl:
                self.serial.write(b"\r\x02" + (b"\x04" if restart else b""))
                self.transport.in_raw_repl = False
                time.sleep(0.05)
        except Exception:
            pass
        try:
            self.transport.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


