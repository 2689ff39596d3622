# Virtual ESP32: `socket`, real host sockets that stop working while the board's link is down.
# A socket used during an outage is dead for good (as a TCP connection through a dropped
# Wi-Fi/cellular link usually is): it stalls until its timeout, then raises, and after the
# link returns it raises ECONNRESET; connecting during an outage fails with EHOSTUNREACH.
import io
import time
import usocket as _s
import _hal

AF_INET = _s.AF_INET
AF_INET6 = _s.AF_INET6
SOCK_STREAM = _s.SOCK_STREAM
SOCK_DGRAM = _s.SOCK_DGRAM
SOL_SOCKET = _s.SOL_SOCKET
SO_REUSEADDR = _s.SO_REUSEADDR
IPPROTO_TCP = 6
IPPROTO_UDP = 17
getaddrinfo = _s.getaddrinfo
inet_ntop = _s.inet_ntop
inet_pton = _s.inet_pton

_EHOSTUNREACH = 113
_ECONNRESET = 104
_ETIMEDOUT = 110


_zombies = []


def _bury():
    # The link is back: what the board closed during the outage can really close now.
    while _zombies:
        try:
            _zombies.pop().close()
        except OSError:
            pass


class socket(io.IOBase):
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0):
        self._s = _s.socket(af, type, proto)
        self._timeout = None
        self._dead = False

    def _check(self):
        if self._dead:
            raise OSError(_ECONNRESET)
        if not _hal.link_up():
            self._dead = True
            # Nothing gets through: wait as long as the caller was ready to wait.
            if self._timeout:
                time.sleep(self._timeout)
            raise OSError(_ETIMEDOUT)

    def connect(self, addr):
        if not _hal.link_up():
            time.sleep_ms(100)
            raise OSError(_EHOSTUNREACH)
        self._s.connect(addr)
        _bury()

    def settimeout(self, t):
        self._timeout = t
        self._s.settimeout(t)

    def setblocking(self, flag):
        self._timeout = None if flag else 0
        self._s.setblocking(flag)

    def setsockopt(self, *a):
        self._s.setsockopt(*a)

    def send(self, b):
        self._check()
        return self._s.send(b)

    def sendall(self, b):
        self._check()
        return self._s.sendall(b)

    def write(self, b, n=None):
        self._check()
        return self._s.write(b) if n is None else self._s.write(b, n)

    def recv(self, n):
        self._check()
        return self._s.recv(n)

    def read(self, n=None):
        self._check()
        return self._s.read() if n is None else self._s.read(n)

    def readinto(self, b, n=None):
        self._check()
        return self._s.readinto(b) if n is None else self._s.readinto(b, n)

    def readline(self):
        self._check()
        return self._s.readline()

    def recvfrom(self, n):
        self._check()
        return self._s.recvfrom(n)

    def sendto(self, b, a):
        self._check()
        return self._s.sendto(b, a)

    def bind(self, a):
        self._s.bind(a)

    def listen(self, n=0):
        self._s.listen(n)

    def accept(self):
        return self._s.accept()

    def fileno(self):
        return self._s.fileno()

    def makefile(self, *a, **k):
        return self

    def close(self):
        if self._dead or not _hal.link_up():
            # Through a dropped link the peer never hears of the close: keep the host socket
            # open (no FIN) until the link is back, so the broker finds out only through its
            # keepalive, as it would for a board whose Wi-Fi went away.
            _zombies.append(self._s)
            return
        self._s.close()

    def ioctl(self, req, arg):
        # Stream ioctls for the TLS layer and select.poll: 3 = poll, 4 = close.
        if req == 3:
            import select

            p = select.poll()
            p.register(self._s, arg)
            r = p.poll(0)
            return (r[0][1] & arg) if r else 0
        if req == 4:
            self._s.close()
        return 0

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
