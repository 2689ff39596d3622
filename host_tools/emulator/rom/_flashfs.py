# Virtual ESP32: the board's flash filesystem, a host folder mounted at "/" (like littlefs on the board).
# Wraps a root-less VfsPosix and resolves every path inside the folder, so ".." cannot leave it.
import os


def _norm(cwd, path):
    if not path.startswith("/"):
        path = cwd + "/" + path
    parts = []
    for seg in path.split("/"):
        if seg == "" or seg == ".":
            continue
        if seg == "..":
            if parts:
                parts.pop()
            continue
        parts.append(seg)
    return "/" + "/".join(parts)


class FlashFS:
    def __init__(self, root, size_bytes, tmpfs=False):
        self.root = root.rstrip("/")
        self.size = size_bytes
        self.tmpfs = tmpfs  # the folder is a tmpfs of the partition's size: the kernel counts
        self.p = os.VfsPosix()
        self.cwd = "/"

    def _h(self, path):
        n = _norm(self.cwd, path)
        return self.root if n == "/" else self.root + n

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def ilistdir(self, path):
        # (name, type, inode, size) as littlefs gives, so tools can show sizes.
        host = self._h(path)
        for entry in self.p.ilistdir(host):
            size = 0 if entry[1] & 0x4000 else self.p.stat(host + "/" + entry[0])[6]
            yield (entry[0], entry[1], 0, size)

    def chdir(self, path):
        n = _norm(self.cwd, path)
        if not self.p.stat(self._h(n))[0] & 0x4000:
            raise OSError(20)  # ENOTDIR
        self.cwd = n

    def getcwd(self):
        return self.cwd

    def mkdir(self, path):
        self.p.mkdir(self._h(path))

    def remove(self, path):
        self.p.remove(self._h(path))

    def rename(self, old, new):
        self.p.rename(self._h(old), self._h(new))

    def rmdir(self, path):
        self.p.rmdir(self._h(path))

    def stat(self, path):
        return self.p.stat(self._h(path))

    def _used(self, host):
        total = 0
        for entry in self.p.ilistdir(host):
            name, kind = entry[0], entry[1]
            sub = host + "/" + name
            if kind & 0x4000:
                total += 4096 + self._used(sub)
            else:
                total += (self.p.stat(sub)[6] + 4095) // 4096 * 4096
        return total

    def statvfs(self, path):
        # Report the board's filesystem partition, not the host disk (littlefs: 4 KiB blocks); on a
        # tmpfs of its size, what the kernel says, which is what a write will meet.
        if self.tmpfs:
            return self.p.statvfs(self.root)
        blocks = self.size // 4096
        free = max(0, blocks - self._used(self.root) // 4096)
        return (4096, 4096, blocks, free, free, 0, 0, 0, 0, 255)

    def open(self, path, mode):
        return self.p.open(self._h(path), mode)
