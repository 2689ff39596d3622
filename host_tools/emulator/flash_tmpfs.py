"""A virtual board's flash folder backed by a tmpfs of the partition's size: writes past it fail
with ENOSPC from the kernel, as littlefs refuses them on a full board (docs/emulator.md, "A flash
that fills up").

`TmpfsFlash(folder, size).mount()` mounts a tmpfs of `size` bytes on the folder, with what the
folder held copied in; `unmount()` copies what the tmpfs holds back into the folder underneath
and unmounts. Mounting needs root (CAP_SYS_ADMIN) in a mount namespace that allows it: where the
host refuses, `mount()` raises `FlashMountError` saying why, and nothing is left mounted (the caller
decides what to do without: `mount_refused()` asks beforehand).

Never a mount left behind: each mount has a reaper, a small shell in a session of its own holding
the read end of a pipe whose write end only this process has. If this process dies (a crash, a
SIGKILL), the pipe closes and the reaper unmounts (lazily, should an interpreter still hold a
file); the folder then shows what it held before the mount. An orderly `unmount()` tells the reaper
it is done first. The tmpfs is named `lanterne-flash` in /proc/mounts, so one left by a machine
that lost its reaper too is recognised and unmounted before the folder is mounted again.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = "lanterne-flash"  # the tmpfs's "device" name in /proc/mounts


class FlashMountError(RuntimeError):
    """The host does not let a tmpfs be mounted on the flash folder (the message says why)."""


def _mounted_here(folder: Path) -> bool:
    # A lanterne-flash tmpfs mounted on exactly this folder (/proc/self/mountinfo: field 5 is the
    # mount point, the source follows the " - fstype " separator).
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    target = str(folder)
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) > 4 and fields[4].replace("\\040", " ") == target and tail[:2] == ["tmpfs", SOURCE]:
            return True
    return False


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def mount_refused() -> str | None:
    """None when this host lets a tmpfs be mounted (tried on a scratch folder), else why not."""
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "no mount/umount command on this host"
    with tempfile.TemporaryDirectory(prefix="lanterne-tmpfs-probe-") as d:
        r = _run("mount", "-t", "tmpfs", "-o", "size=64k", SOURCE, d)
        if r.returncode != 0:
            return f"mount -t tmpfs refused: {(r.stderr or r.stdout).strip() or 'exit %d' % r.returncode}"
        _run("umount", d)
    return None


def _move_contents(src: Path, dst: Path) -> None:
    # Everything in src into dst (dst's own entries of the same names replaced).
    for entry in os.scandir(src):
        target = dst / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        shutil.move(entry.path, target)


class TmpfsFlash:
    def __init__(self, folder: str | Path, size_bytes: int):
        self.folder = Path(folder).resolve()
        self.size = int(size_bytes)
        self.mounted = False
        self._reaper: subprocess.Popen | None = None

    def mount(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if _mounted_here(self.folder):  # left by a run whose reaper died with it (a host reboot cannot)
            _run("umount", "-l", str(self.folder))
        with tempfile.TemporaryDirectory(prefix="lanterne-flash-in-") as staging:
            held = Path(staging) / "flash"
            shutil.copytree(self.folder, held, symlinks=True)
            r = _run("mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", SOURCE, str(self.folder))
            if r.returncode != 0:
                why = (r.stderr or r.stdout).strip() or f"exit {r.returncode}"
                raise FlashMountError(f"cannot back the flash folder {self.folder} by a tmpfs of {self.size} bytes: {why} "
                                      "(mounting needs root with CAP_SYS_ADMIN; run without the tmpfs option otherwise)")
            self.mounted = True
            self._start_reaper()
            atexit.register(self.unmount)
            try:
                _move_contents(held, self.folder)
            except OSError as e:
                self.unmount(copy_back=False)
                raise FlashMountError(f"the flash folder {self.folder} holds more than its {self.size}-byte partition: {e}") from e

    def _start_reaper(self) -> None:
        # Unmounts when our end of its stdin closes without "done": this process died.
        self._reaper = subprocess.Popen(
            ["sh", "-c", 'read line; [ "$line" = done ] || umount -l "$1"', "lanterne-flash-reaper", str(self.folder)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

    def unmount(self, copy_back: bool = True) -> None:
        """Copy what the tmpfs holds back to the folder underneath (unless copy_back=False), unmount."""
        if not self.mounted:
            return
        self.mounted = False
        atexit.unregister(self.unmount)
        with tempfile.TemporaryDirectory(prefix="lanterne-flash-out-") as staging:
            out = Path(staging) / "flash"
            if copy_back:
                shutil.copytree(self.folder, out, symlinks=True)
            if _run("umount", str(self.folder)).returncode != 0:
                _run("umount", "-l", str(self.folder))  # an interpreter still holds a file: detach it now
            if copy_back:
                for entry in list(os.scandir(self.folder)):  # the folder underneath, as it was before the mount
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                _move_contents(out, self.folder)
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            try:
                reaper.stdin.write(b"done\n")
                reaper.stdin.close()
            except OSError:
                pass
            try:
                reaper.wait(5)
            except subprocess.TimeoutExpired:
                reaper.kill()

    def free_bytes(self) -> int:
        st = os.statvfs(self.folder)
        return st.f_bavail * st.f_frsize
