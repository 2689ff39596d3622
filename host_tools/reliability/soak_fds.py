"""paho-mqtt in a process holding more than 1 023 file descriptors (the soak's: the whole fleet's
ptys, pipes, HAL and proxy sockets): `paho_without_fd_limit()` gives paho a `select` over poll()
(docs/reliability.md, "Findings")."""

from __future__ import annotations

import select


class PollSelect:
    """`select.select` for paho-mqtt, over poll(). select() cannot watch a descriptor numbered 1024
    or above (FD_SETSIZE), and a soak process holds thousands (each board's pty, pipes, HAL and
    proxy sockets): paho's loop would take the ValueError for a lost connection, forever, and a
    client made after the fleet (the back office's, a probe's) would never connect, a probe would
    look refused. The rest of `select` is the module's own."""

    def __getattr__(self, name):
        return getattr(select, name)

    @staticmethod
    def select(rlist, wlist, xlist, timeout=None):
        poller = select.poll()
        masks: dict[int, int] = {}
        objects: dict[tuple[int, int], object] = {}
        for objs, bit in ((rlist, select.POLLIN), (wlist, select.POLLOUT)):
            for o in objs:
                fd = o if isinstance(o, int) else o.fileno()
                if fd < 0:
                    raise ValueError("file descriptor cannot be a negative integer")
                masks[fd] = masks.get(fd, 0) | bit
                objects[(fd, bit)] = o
        for fd, mask in masks.items():
            poller.register(fd, mask)
        ready = poller.poll(None if timeout is None else max(0.0, timeout) * 1000)
        r, w = [], []
        for fd, ev in ready:
            if (fd, select.POLLIN) in objects and ev & (select.POLLIN | select.POLLERR | select.POLLHUP | select.POLLNVAL):
                r.append(objects[(fd, select.POLLIN)])
            if (fd, select.POLLOUT) in objects and ev & (select.POLLOUT | select.POLLERR | select.POLLHUP):
                w.append(objects[(fd, select.POLLOUT)])
        return r, w, []


def paho_without_fd_limit() -> None:
    import paho.mqtt.client as paho_client

    if not isinstance(paho_client.select, PollSelect):
        paho_client.select = PollSelect()
