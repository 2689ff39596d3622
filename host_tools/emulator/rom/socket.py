# Virtual ESP32: `socket`, real host sockets that stop working while the board's link is down.
# A socket used during an outage is dead for good (as a TCP connection through a dropped
# Wi-Fi/cellular link usually is): it stalls until its timeout, then raises, and after the
# link returns it raises ECONNRESET; connecting during an outage fails with EHOSTUNREACH.
# The simulated network beyond the link: a resolver (names go to the host's, the NTP pool's
# names to the simulated time server; it hangs while the world's "dns" fault is "hang", as a
# resolver whose server never answers does) and the time server itself, which every UDP
# datagram to port 123 reaches (host_tools/emulator/netsim.py).
# A listening socket (the setup page's server) binds one of the board's own addresses (its AP's,
# its station's or Ethernet's, or 0.0.0.0: any) and is served on a loopback port of the host,
# which the emulator publishes (`BoardHandle.http_url()`, `lanterne world get`).
import io
import os
import usocket as _s
import _esp32time
import _hal

AF_INET = _s.AF_INET
AF_INET6 = _s.AF_INET6
SOCK_STREAM = _s.SOCK_STREAM
SOCK_DGRAM = _s.SOCK_DGRAM
SOL_SOCKET = _s.SOL_SOCKET
SO_REUSEADDR = _s.SO_REUSEADDR
IPPROTO_TCP = 6
IPPROTO_UDP = 17
inet_ntop = _s.inet_ntop
inet_pton = _s.inet_pton

_EADDRINUSE = 98
_EADDRNOTAVAIL = 99
_EHOSTUNREACH = 113
_ECONNRESET = 104
_ETIMEDOUT = 110
_EAI_FAIL = -202  # what the esp32 port raises when lwIP's resolver gives up
_DNS_GIVE_UP_MS = 15000  # lwIP's resolver: 4 retries, backing off, ~15 s in all
_NTP_PORT = int(os.getenv("LANTERNE_NTP_PORT") or "0")
_NTP_NAMES = ("pool.ntp.org",)
_ntp_addr = []


def _numeric(host):
    for c in host:
        if c not in "0123456789.:":
            return False
    return True


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    if not _numeric(host):
        waited = 0
        while _hal.flag("dns_hang"):
            if waited >= _DNS_GIVE_UP_MS:
                raise OSError(_EAI_FAIL)
            _esp32time.sleep_ms(50)
            waited += 50
        for name in _NTP_NAMES:
            if host == name or host.endswith("." + name):
                host = "127.0.0.1"  # the simulated time server (sendto below routes port 123 to it)
    return _s.getaddrinfo(host, port, af, type, proto, flags)


def _port_of(addr):
    try:
        return addr[2] << 8 | addr[3]  # struct sockaddr_in: family (2), port (2, big-endian), ...
    except (TypeError, IndexError):
        return -1


def _route(addr):
    # UDP to port 123 reaches the board's simulated time server, wherever it was addressed.
    if _NTP_PORT and _port_of(addr) == 123:
        if not _ntp_addr:
            _ntp_addr.append(_s.getaddrinfo("127.0.0.1", _NTP_PORT)[0][-1])
        return _ntp_addr[0]
    return addr


_zombies = []


def _bury():
    # The link is back: what the board closed during the outage can really close now.
    while _zombies:
        try:
            _zombies.pop().close()
        except OSError:
            pass


def _board_addr(addr):
    # (ip, port) from what getaddrinfo gave: a tuple on the ESP32, a raw sockaddr_in here.
    if isinstance(addr, tuple):
        return addr[0], int(addr[1])
    a = bytes(addr)
    return "%d.%d.%d.%d" % (a[4], a[5], a[6], a[7]), (a[2] << 8) | a[3]


class socket(io.IOBase):
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0):
        self._s = _s.socket(af, type, proto)
        self._timeout = None
        self._dead = False
        self._served = 0  # the host's loopback port this listening socket is served on
        self._bound = None

    def _check(self):
        if self._dead:
            raise OSError(_ECONNRESET)
        if not _hal.link_up():
            self._dead = True
            # Nothing gets through: wait as long as the caller was ready to wait.
            if self._timeout:
                _esp32time.sleep(self._timeout)
            raise OSError(_ETIMEDOUT)

    def connect(self, addr):
        if not _hal.link_up():
            if self._timeout != 0:
                _esp32time.sleep_ms(100)  # a blocking connect finds out after the stack tried a while
            raise OSError(_EHOSTUNREACH)
        try:
            self._s.connect(addr)
        finally:
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
        return self._s.sendto(b, _route(a))

    def bind(self, a):
        ip, port = _board_addr(a)
        if ip != "0.0.0.0":
            import network

            if not network.has_address(ip):
                raise OSError(_EADDRNOTAVAIL)  # lwIP: no interface of the board has that address
        for _ in range(8):
            hp = int(_hal.call("PORT"))
            try:
                self._s.bind(_s.getaddrinfo("127.0.0.1", hp)[0][-1])
            except OSError as e:
                if e.errno == _EADDRINUSE:
                    continue  # taken meanwhile by another program of the host: another one
                raise
            self._served, self._bound = hp, (ip, port)
            return
        raise OSError(_EADDRINUSE)

    def listen(self, n=0):
        self._s.listen(n)
        if self._served:
            _hal.call("LISTEN %s %d %d" % (self._bound[0], self._bound[1], self._served))

    def accept(self):
        # The station's connection: through the board's own radio (its AP) or its LAN, not the
        # uplink the world can cut, so a plain host socket.
        return self._s.accept()

    def fileno(self):
        return self._s.fileno()

    def makefile(self, *a, **k):
        return self

    def close(self):
        if self._served:
            _hal.call("UNLISTEN %d" % self._served)
            self._served = 0
            self._s.close()
            return
        if self._dead or not _hal.link_up():
            # Through a dropped link the peer never hears of the close: keep the host socket
            # open (no FIN) until the link is back, so the broker finds out only through its
            # keepalive, as it would for a board whose Wi-Fi went away.
            _zombies.append(self._s)
            return
        self._s.close()

    def ioctl(self, req, arg):
        # Stream ioctls for the TLS layer and select.poll: 3 = poll, 4 = close, 10 = the file
        # descriptor, so that asyncio's poller waits on the host socket itself (a listening
        # socket among the link's sockets would otherwise only be looked at between timeouts).
        if req == 10:
            return self._s.fileno()
        if req == 3:
            import select

            p = select.poll()
            p.register(self._s, arg)
            r = p.poll(0)
            return (r[0][1] & arg) if r else 0
        if req == 4:
            if self._served:
                self.close()
            else:
                self._s.close()
        return 0

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
