"""Power-cut harness for the store: SIGKILL the firmware at random instants, reboot, verify.

One cohesive module just over 500 lines: the script the unix port runs, the receiver that
plays the broker, the cut-and-restart loop and the verification are one experiment, read
together.

The firmware store (firmware/lanterne/store.py) runs in a real MicroPython unix-port
process on a flash folder, as on the virtual board. The process appends readings and drains
them to a host-side receiver over its stdin/stdout (the "uplink"): it prints a line after
each append returns, prints every batch it sends, and acknowledges a batch in the store
only after the receiver answered "K" (a PUBACK). The harness SIGKILLs the process at a seeded
random point (one in five during boot and recovery, by the time boots take; the others after a
random number of the store's operations and a random instant within the next, so that a slow
host still cuts a working store) — the same fault as the virtual board's power cut: the interpreter
dies, the flash folder stays as it was — optionally damages the tail of the newest segment
or of the ack log the way a cut in the middle of a flash write would (a torn frame), and
starts it again on the same folder. After the last cut, one clean run drains everything.
With fs="littlefs" the store runs on littlefs over a flash device kept in a file in the
folder instead: after a SIGKILL only what littlefs had programmed is there, as on the board
(stricter about syncs than a folder, where unsynced writes survive in the page cache).

Verified at the end:
- every record whose append returned reached the receiver, with the seq it was given;
- nothing else arrived except the one record per cut whose append was under way;
- no record arrived corrupted, and no seq ever named two different records;
- a record arrived again only if the ack of the batch that carried it had not returned;
- each batch ascending by seq, and seq order is append order;
- nothing was dropped, nothing left pending, the folder within the configured capacity.

    python -m host_tools.reliability.powercut --cuts 1000          # the documented 1 000-cut run
    python -m host_tools.reliability.powercut --cuts 1000 --fs littlefs
    run_powercuts(200, seed=1, flash_dir=tmp) -> PowercutReport
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.runtime.paths import micropython_binary
from host_tools.runtime.unix_port import micropython_path

# littlefs on a NOR-flash-like block device kept in a host file (MicroPython side). What was
# programmed survives a SIGKILL, what littlefs had not programmed yet does not: a power cut
# with the board's filesystem semantics. Counts bytes programmed and blocks erased (wear).
FLASH_DEVICE = r"""
import vfs


class FileFlash:
    def __init__(self, path, block_size=4096, blocks=64):
        self.bs = block_size
        self.n = blocks
        self.programmed = 0
        self.erases = 0
        self.ff = b"\xff" * block_size
        try:
            self.f = open(path, "r+b")
        except OSError:
            self.f = open(path, "w+b")
            for _ in range(blocks):
                self.f.write(self.ff)

    def readblocks(self, block, buf, off=0):
        self.f.seek(block * self.bs + off)
        self.f.readinto(buf)

    def writeblocks(self, block, buf, off=None):
        if off is None:  # simple block protocol: erase then program whole blocks
            off = 0
            self.erases += len(buf) // self.bs
        self.f.seek(block * self.bs + off)
        self.f.write(buf)
        self.programmed += len(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.bs
        if op == 6:
            self.f.seek(arg * self.bs)
            self.f.write(self.ff)
            self.erases += 1
        return 0


def mount_flash(image, mountpoint="/flash", block_size=4096, blocks=64, format=False):
    dev = FileFlash(image, block_size, blocks)
    if format:
        vfs.VfsLfs2.mkfs(dev)
    vfs.mount(vfs.VfsLfs2(dev), mountpoint)
    return dev
"""

# The firmware side: argv = flash seed first_index mode capacity segment link_up fs.
CHILD = (
    FLASH_DEVICE
    + r"""
import sys
from binascii import hexlify
from lanterne.store import Store

a = sys.argv
path = a[1]
if a[8] == "littlefs":
    mount_flash(path + "/flash.img", blocks=int(a[9]), format=a[4] == "format")
    path = "/flash/store"
    if a[4] == "format":
        sys.exit(0)
x = int(a[2]) or 1
i = int(a[3])
final = a[4] == "final"
link = a[7] == "1"
out = sys.stdout


def rnd(n):
    global x  # xorshift32
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    return x % n


def payload(i):
    n = 8 + (i * 7) % 33
    b = bytearray(n)
    for k in range(4):
        b[k] = (i >> (8 * k)) & 0xFF
    for k in range(4, n):
        b[k] = (i * 31 + k * 17) & 0xFF
    return b


s = Store(path, int(a[5]), int(a[6]))
out.write("S %d %d %d\n" % (s.next_seq, s.pending, s.dropped))


def drain(budget):
    batch = s.peek(budget)
    if not batch:
        return 0
    out.write("B " + " ".join(["%d:%s" % (q, hexlify(r).decode()) for q, r in batch]) + "\n")
    if sys.stdin.readline()[:1] == "K":
        s.ack(batch)
        out.write("K\n")
    return len(batch)


if final:
    while drain(512):
        pass
    out.write("E %d %d %d %d\n" % (s.next_seq, s.pending, s.dropped, s.corrupt))
else:
    import time
    while True:
        if not link or rnd(100) < (60 if s.pending < 400 else 15):
            if s.pending > 1500:
                time.sleep_ms(1)
                continue
            for _ in range(1 + rnd(6)):
                seq = s.append(payload(i))
                out.write("A %d %d\n" % (seq, i))
                i += 1
        else:
            drain(40 + rnd(600))
"""
)


def payload(i: int) -> bytes:
    """The record the child appends as its i-th reading (8..40 bytes, index in the first 4)."""
    n = 8 + (i * 7) % 33
    return i.to_bytes(4, "little") + bytes((i * 31 + k * 17) & 0xFF for k in range(4, n))


@dataclass
class PowercutReport:
    cuts: int
    seed: int
    fs: str = "folder"
    seconds: float = 0.0
    appended: int = 0  # appends that returned (a line printed)
    delivered: int = 0  # distinct records the receiver got
    duplicates: int = 0  # deliveries of a record already received (its ack had not returned)
    inflight_delivered: int = 0  # records whose append was cut before its line, delivered anyway
    acks_returned: int = 0
    nacks: int = 0  # batches the receiver did not acknowledge (lost PUBACK)
    tears: int = 0  # torn tails written into the flash folder after a cut
    cut_while: dict = field(default_factory=dict)  # where the cuts landed, from the last line seen
    failed_appends: int = 0
    final: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [
            f"power cuts: {self.cuts} on {self.fs} (seed {self.seed}) in {self.seconds:.1f} s, "
            f"{self.tears} torn tails injected; cut while: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.cut_while.items())),
            f"appends returned: {self.appended}; delivered: {self.delivered} distinct "
            f"({self.inflight_delivered} cut mid-append but durable), {self.duplicates} duplicates "
            f"(ack lost: {self.nacks} batches not acknowledged)",
            f"final store: {self.final}",
            "OK: every appended record delivered, none corrupted, in order"
            if self.ok
            else f"FAILED ({len(self.problems)} problems):",
        ]
        lines += ["  " + p for p in self.problems[:20]]
        return "\n".join(lines)


class _Receiver:
    """The host end of the uplink: reads the child's lines, answers batches, keeps the tally."""

    def __init__(self, report: PowercutReport, rng: random.Random, ack_rate: float):
        self.report = report
        self.rng = rng
        self.ack_rate = ack_rate
        self.returned: dict[int, int] = {}  # reading index -> seq, for appends that returned
        self.seq_index: dict[int, int] = {}  # seq -> reading index, from appends and deliveries
        self.received: set[int] = set()  # seqs delivered
        self.acked: set[int] = set()  # seqs whose ack returned
        self.last_index = -1
        self.pending_ack: list[int] = []
        self.phase = "booting"
        self.up_at: float | None = None  # when the store was up in this run
        self.final_line: list[int] | None = None
        self.lines = 0  # lines read in this run since the store was up
        self.seen = threading.Condition()

    def new_run(self, first: int) -> None:
        self.last_index = first - 1
        self.pending_ack = []
        self.phase = "booting"  # until the store is up: boot, import, recovery
        self.up_at = None
        with self.seen:
            self.lines = 0

    def wait_working(self, lines: int, timeout: float) -> None:
        """Until the store is up and has done `lines` more things (appends, batches, acks), or
        `timeout` s: cuts aimed at a working store land on its work, however fast the host."""
        with self.seen:
            self.seen.wait_for(lambda: self.up_at is not None and self.lines >= lines, timeout)

    def problem(self, text: str) -> None:
        if len(self.report.problems) < 200:
            self.report.problems.append(text)

    def bind(self, seq: int, index: int) -> None:
        known = self.seq_index.setdefault(seq, index)
        if known != index:
            self.problem(f"seq {seq} names reading {known} and reading {index}")

    def serve(self, proc: subprocess.Popen) -> None:
        for raw in proc.stdout:
            if not raw.endswith(b"\n"):
                break  # cut mid-line: never counted
            parts = raw.decode("ascii", "replace").split()
            if not parts:
                continue
            kind = parts[0]
            self.phase = {"S": "running", "A": "appending", "B": "acking", "K": "draining"}.get(kind, kind)
            with self.seen:
                if kind == "S":
                    self.up_at = time.monotonic()
                    self.lines = 0
                else:
                    self.lines += 1
                self.seen.notify_all()
            if kind == "A":
                seq, index = int(parts[1]), int(parts[2])
                self.last_index = index
                if seq < 0:
                    self.report.failed_appends += 1
                    continue
                self.returned[index] = seq
                self.report.appended += 1
                self.bind(seq, index)
            elif kind == "B":
                self.batch(proc, parts[1:])
            elif kind == "K":
                self.acked.update(self.pending_ack)
                self.report.acks_returned += 1
            elif kind == "E":
                self.final_line = [int(p) for p in parts[1:]]

    def batch(self, proc: subprocess.Popen, items: list[str]) -> None:
        seqs = []
        for item in items:
            seq_text, _, hex_text = item.partition(":")
            seq = int(seq_text)
            record = bytes.fromhex(hex_text)
            index = int.from_bytes(record[:4], "little") if len(record) >= 4 else -1
            if index < 0 or record != payload(index):
                self.problem(f"seq {seq}: corrupted record {hex_text}")
                continue
            if seqs and seq <= seqs[-1]:
                self.problem(f"batch not ascending: {seqs[-1]} then {seq}")
            seqs.append(seq)
            self.bind(seq, index)
            if seq in self.received:
                self.report.duplicates += 1
                if seq in self.acked:
                    self.problem(f"seq {seq} delivered again after its ack returned")
            self.received.add(seq)
        self.pending_ack = seqs
        answer = b"K\n" if self.rng.random() < self.ack_rate else b"N\n"
        if answer == b"N\n":
            self.report.nacks += 1
        try:
            proc.stdin.write(answer)
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass


def _tear(flash: Path, rng: random.Random) -> bool:
    """Leave a torn write at the end of the newest segment or of the ack log."""
    segments = sorted(p for p in flash.glob("*.seg"))
    if rng.random() < 0.8:
        if not segments:
            return False
        target = segments[-1]
        if rng.random() < 0.7:
            # a frame cut short: its length byte promises more than follows
            length = rng.randint(1, 40)
            junk = bytes([length]) + rng.randbytes(rng.randint(0, length + 1))
        else:
            junk = rng.randbytes(rng.randint(1, 8))
    else:
        target = flash / "ack"
        if not target.exists():
            return False
        junk = rng.randbytes(rng.randint(1, 15))
    with open(target, "ab") as f:
        f.write(junk)
    return True


def run_powercuts(
    n_cuts: int,
    seed: int,
    flash_dir: str | os.PathLike,
    *,
    fs: str = "folder",
    capacity: int = 131072,
    segment: int | None = None,
    fs_blocks: int = 64,
    max_delay: float = 0.01,
    tear_rate: float = 0.3,
    ack_rate: float = 0.9,
    outage_rate: float = 0.2,
    heapsize: int = 100 * 1024,
    progress=None,
) -> PowercutReport:
    """Cut power `n_cuts` times at seeded random instants, then drain and verify (see module doc).

    fs="folder": the store on the host folder, as on the virtual board (torn tails injected at
    `tear_rate`). fs="littlefs": the store on littlefs over a file-backed flash device of
    `fs_blocks` 4 KiB blocks in the folder: only what littlefs programmed survives a cut.
    """
    if fs not in ("folder", "littlefs"):
        raise ValueError("fs is 'folder' or 'littlefs'")
    if segment is None:
        segment = 512 if fs == "folder" else 4096  # littlefs: one block per segment
    flash = Path(flash_dir)
    flash.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    report = PowercutReport(cuts=n_cuts, seed=seed, fs=fs)
    receiver = _Receiver(report, random.Random(rng.getrandbits(64)), ack_rate)
    inflight: set[int] = set()  # reading indexes that may have been appended without a line
    env = dict(os.environ, MICROPYPATH=micropython_path())
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "powercut_child.py"
        script.write_text(CHILD)

        def start(mode: str, first: int, link: str) -> subprocess.Popen:
            argv = [micropython_binary(), "-X", f"heapsize={heapsize}", str(script), str(flash)]
            argv += [str(rng.getrandbits(31)), str(first), mode, str(capacity), str(segment), link]
            argv += [fs, str(fs_blocks)]
            return subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            )

        if fs == "littlefs" and not (flash / "flash.img").exists():
            fmt = start("format", 0, "0")
            if fmt.wait(timeout=60) != 0:
                receiver.problem("formatting the flash image failed: " + fmt.stderr.read().decode()[-400:])
            for stream in (fmt.stdin, fmt.stdout, fmt.stderr):
                stream.close()
        first = 0
        boot = []  # seconds from spawn to the store being up, to aim the cuts
        for run in range(0 if report.problems else n_cuts + 1):
            final = run == n_cuts
            receiver.new_run(first)
            spawned = time.monotonic()
            proc = start("final" if final else "run", first, "0" if rng.random() < outage_rate else "1")
            reader = threading.Thread(target=receiver.serve, args=(proc,), daemon=True)
            reader.start()
            if final:
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    receiver.problem("final drain did not finish within 120 s")
            else:
                # One cut in five aimed at boot and recovery (by the time boots take here), the
                # rest while the store works: after a random number of its operations, then a
                # random instant within the next (by the count, not the clock: a loaded host runs
                # the child slower, and the cuts must still land on appends, not on an idle store).
                up = sorted(boot)[len(boot) // 2] if boot else 0.03
                if rng.random() < 0.2:
                    time.sleep(rng.uniform(0, up * 1.1))
                else:
                    receiver.wait_working(rng.randint(0, 12), timeout=30)
                    time.sleep(rng.uniform(0, max_delay))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            reader.join(timeout=30)
            if receiver.up_at is not None:
                boot = (boot + [receiver.up_at - spawned])[-20:]
            err = proc.stderr.read().decode("utf-8", "replace")
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    stream.close()
                except OSError:
                    pass
            if proc.returncode not in (0, -signal.SIGKILL):
                receiver.problem(
                    f"run {run}: micropython exited with {proc.returncode}: {err.strip()[-400:]}"
                )
                break
            if not final:
                report.cut_while[receiver.phase] = report.cut_while.get(receiver.phase, 0) + 1
                # The reading after the last printed line may be on flash: allowed, not required.
                inflight.add(receiver.last_index + 1)
                first = receiver.last_index + 2
                if fs == "folder" and rng.random() < tear_rate and _tear(flash, rng):
                    report.tears += 1
            if progress and run % 50 == 0:
                progress(run, report)
    report.seconds = time.monotonic() - t0
    _verify(report, receiver, inflight, flash, capacity if fs == "folder" else None)
    return report


def _verify(
    report: PowercutReport, rx: _Receiver, inflight: set[int], flash: Path, capacity: int | None
) -> None:
    delivered_index = {rx.seq_index[s] for s in rx.received}
    report.delivered = len(rx.received)
    for index, seq in rx.returned.items():
        if seq not in rx.received:
            rx.problem(f"reading {index} (seq {seq}) appended but never delivered")
    extra = delivered_index - set(rx.returned)
    report.inflight_delivered = len(extra & inflight)
    for index in sorted(extra - inflight)[:20]:
        rx.problem(f"reading {index} delivered but never appended")
    order = sorted(rx.returned.items())
    for (i1, s1), (i2, s2) in zip(order, order[1:], strict=False):
        if s2 <= s1:
            rx.problem(f"seq order is not append order: reading {i1} got {s1}, reading {i2} got {s2}")
            break
    if rx.final_line is None:
        rx.problem("the final drain did not finish")
    else:
        next_seq, pending, dropped, corrupt = rx.final_line
        report.final = {"next_seq": next_seq, "pending": pending, "dropped": dropped, "corrupt": corrupt}
        if pending or dropped or corrupt:
            rx.problem(f"final store not clean: {report.final}")
    if capacity is not None:
        on_flash = sum(p.stat().st_size for p in flash.glob("*.seg"))
        if on_flash > capacity:
            rx.problem(f"segments hold {on_flash} bytes, capacity {capacity}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m host_tools.reliability.powercut", description=__doc__.splitlines()[0])
    p.add_argument("--cuts", type=int, default=1000, help="number of power cuts (default 1000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--flash", help="flash folder to use (default: a fresh temporary folder)")
    p.add_argument("--heap", type=int, default=100 * 1024, help="MicroPython heap bytes (default 102400)")
    p.add_argument(
        "--fs",
        choices=["folder", "littlefs"],
        default="folder",
        help="the virtual board's flash folder (default), or littlefs on a file-backed flash device",
    )
    p.add_argument(
        "--segment",
        type=int,
        help="segment bytes (default 512 on a folder: many rollovers; 4096 on littlefs)",
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    def progress(run, report):
        if not args.quiet:
            print(
                f"  {run}/{args.cuts} cuts, {report.appended} appends returned, "
                f"{len(report.problems)} problems",
                file=sys.stderr,
            )

    with tempfile.TemporaryDirectory() as tmp:
        flash = args.flash or os.path.join(tmp, "flash")
        report = run_powercuts(
            args.cuts,
            args.seed,
            flash,
            fs=args.fs,
            heapsize=args.heap,
            segment=args.segment,
            progress=progress,
        )
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
