"""The soak's fault injectors: one function per fault kind (soak_profile.FAULTS), each through
what the emulator and the back office already offer (docs/emulator.md): the board's power and
world (link, sensors, NTP, the wall clock), its `FaultProxy` to the broker, the flash folder,
the broker process, the bridge, the LoRaWAN uplink service.

`INJECTORS[kind](ctx, planned, rng)` injects the fault and returns the function that ends it
(called `planned.duration_s` later by `soak.Campaign`), or None when the fault ends by itself.
`ctx` is the running `soak.Campaign`: `ctx.boards[i]` (a `SoakBoard`: handle, world, flash,
kind), `ctx.broker`, `ctx.restart_backoffice(...)`.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from host_tools.reliability import soak_lorawan

FILL_NAME = "soak-fill.bin"  # the file that fills a board's flash (full_flash)
KEEP_BLOCKS = 9  # what full_flash leaves free, in 4 KiB blocks: the store's reserve (4) + a segment (1) + 4
WRITE_WATCH_S = 8.0  # how long power_cut_flash_write waits for the store to write


def _power_cut(ctx, p, rng):
    b = ctx.boards[p.board]
    b.handle.power_cut()
    b.expected_boots += 1
    return b.handle.power_on


def _store_sizes(store: Path) -> dict[str, int]:
    try:
        return {e.name: e.stat().st_size for e in os.scandir(store)}
    except OSError:
        return {}


def _power_cut_flash_write(ctx, p, rng):
    # The store's folder watched every millisecond: the moment a file in it grows or appears (a
    # reading appended: length byte, record, CRC, then the sync; or an ack-log entry), the power
    # goes. Where in the write the cut lands is the host's timing; the store's recovery must not care.
    b = ctx.boards[p.board]
    store = b.flash / "store"
    before = _store_sizes(store)
    deadline = time.monotonic() + WRITE_WATCH_S
    hit = False
    while time.monotonic() < deadline:
        now = _store_sizes(store)
        if now != before and any(now.get(k, 0) > before.get(k, -1) for k in now):
            hit = True
            break
        before = now
        time.sleep(0.001)
    b.handle.power_cut()
    b.expected_boots += 1
    p.arg["during_write"] = hit
    return b.handle.power_on


def _link_flap(ctx, p, rng):
    w = ctx.boards[p.board].world
    w.set(link_up=False)
    return lambda: w.set(link_up=True)


def _proxy(kind):
    def inject(ctx, p, rng):
        w = ctx.boards[p.board].world
        w.inject("broker", kind)
        return lambda: w.clear("broker")

    return inject


def _sensor_fault(ctx, p, rng):
    w = ctx.boards[p.board].world
    parts = {name: kinds for name, kinds in w.parts().items()
             if name not in ("lamp", "relay", "lorawan") and set(kinds) & {"missing", "nack", "stuck"}}
    if not parts:
        return None
    part = rng.choice(sorted(parts))
    kind = rng.choice(sorted(set(parts[part]) & {"missing", "nack", "stuck"}))
    w.inject(part, kind)
    p.arg.update(part=part, fault=kind)
    return lambda: w.clear(part)


def _clock_jump(ctx, p, rng):
    # NTP steps both ways: the board's next sync (at boot, hourly, every 10 s while failing) takes
    # the jump; readings must still be counted and ordered by seq, whatever time they carry.
    w = ctx.boards[p.board].world
    step = rng.choice((-1, 1)) * rng.uniform(3600, 30 * 86400)
    w.set(clock_offset_s=step)
    p.arg["step_s"] = round(step)
    return lambda: w.set(clock_offset_s=0.0)


def _ntp_silent(ctx, p, rng):
    w = ctx.boards[p.board].world
    w.inject("ntp", "silent")
    return lambda: w.clear("ntp")


def _used_blocks(root: Path) -> int:
    # As the virtual board's filesystem counts (rom/_flashfs.py): 4 KiB per folder, files rounded up.
    total = 0
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False):
            total += 1 + _used_blocks(Path(entry.path))
        else:
            total += (entry.stat().st_size + 4095) // 4096
    return total


def full_flash_tmpfs(profile) -> tuple[bool, str]:
    """Whether the campaign's boards get a tmpfs flash (the real full_flash: writes fail with
    ENOSPC), and why not when they do not: the profile injects no full_flash, or this host refuses
    a mount (then full_flash fills to the store's reserve, as before); "" when they do."""
    if not ((profile.faults or {}).get("full_flash") or {}).get("per_min"):
        return False, "the profile injects no full_flash"
    from host_tools.emulator.flash_tmpfs import mount_refused

    why = _mount_refused(mount_refused)
    return (why is None), (why or "")


_REFUSED: list = []


def _mount_refused(ask) -> str | None:
    # Asked once per process (each board of the fleet would otherwise try a mount of its own).
    if not _REFUSED:
        _REFUSED.append(ask())
    return _REFUSED[0]


def _fill_to_zero(path: Path) -> int:
    # Real blocks (a sparse file takes none on a tmpfs) until the kernel says ENOSPC; bytes written.
    with open(path, "ab", buffering=0) as f:
        for chunk in (1 << 16, 4096):
            try:
                while True:
                    f.write(bytes(chunk))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
    return path.stat().st_size


def _full_flash(ctx, p, rng):
    # On a board whose flash folder is a tmpfs of its partition (flash_tmpfs): another file takes
    # every free block, so the board's writes fail with ENOSPC for the fault's duration (mode
    # "enospc": the store holds its readings in RAM, the command gate runs nothing it cannot
    # persist). Elsewhere (the host refused the mount): the filesystem filled until only the
    # store's reserve and a little more is free (mode "to_reserve": no write fails; the store must
    # keep working in what is left). The ledger's fault log and printout say which one ran.
    b = ctx.boards[p.board]
    path = b.flash / FILL_NAME
    if getattr(b.handle.board, "tmpfs", None) is not None:
        p.arg["mode"] = "enospc"
        p.arg["filled_kib"] = _fill_to_zero(path) // 1024
    else:
        p.arg["mode"] = "to_reserve"
        p.arg["why"] = full_flash_tmpfs(ctx.profile)[1] or "the board's flash is a host folder"  # (no tmpfs)
        blocks = b.fs_bytes // 4096
        fill = blocks - _used_blocks(b.flash) - KEEP_BLOCKS
        if fill > 0:
            with open(path, "wb") as f:
                f.truncate(fill * 4096)  # sparse on the host; its size is what the board's statvfs counts
        p.arg["filled_kib"] = max(0, fill) * 4

    def clear():
        path.unlink(missing_ok=True)

    return clear


def _broker_restart(ctx, p, rng):
    ctx.broker.stop()  # SIGTERM: Mosquitto writes its persistence file
    ctx.broker.start()
    return None


def _broker_kill(ctx, p, rng):
    proc = ctx.broker.proc
    if proc is not None:
        proc.kill()  # SIGKILL: no chance to save anything
        proc.wait()
    ctx.broker.stop()  # collects its log; the process is gone already
    return ctx.broker.start


def _backoffice_restart(ctx, p, rng):
    ctx.stop_backoffice()
    return ctx.start_backoffice


def _uplink_service_restart(ctx, p, rng):
    # The LoRaWAN uplink service stopped as its process stops (its state file closed), down for the
    # duration, then started again on that file: it must start from exactly the ledgers it left.
    left = ctx.lora.stop_service()
    p.arg["devices"] = len(left)

    def start():
        p.arg["devices_restored"] = ctx.lora.start_service(left)

    return start


INJECTORS = {
    "power_cut": _power_cut,
    "power_cut_flash_write": _power_cut_flash_write,
    "link_flap": _link_flap,
    "proxy_stall": _proxy("silent"),
    "proxy_cut": _proxy("half_open"),
    "proxy_delay": _proxy("slow"),
    "sensor_fault": _sensor_fault,
    "clock_jump": _clock_jump,
    "ntp_silent": _ntp_silent,
    "full_flash": _full_flash,
    "broker_restart": _broker_restart,
    "broker_kill": _broker_kill,
    "backoffice_restart": _backoffice_restart,
    "uplink_service_restart": _uplink_service_restart,
    "lorawan_uplink_loss": soak_lorawan.uplink_loss,
    "lorawan_join_failure": soak_lorawan.join_failure,
}
