# Virtual ESP32: link from the HAL shims (machine, network ...) to the emulator's HAL server.
# One TCP connection to 127.0.0.1, one text line per request, one line per reply
# ("OK [value]" or "E errno"). See host_tools/emulator/hal.py for the other side.
#
# Pin interrupts are scheduled callbacks (micropython.schedule), as on the ESP32 port, so one
# may run between two bytecodes of a request in progress: a request made from inside such a
# callback goes over a second connection, never into the middle of the first exchange.
import os
import usocket

_sock = None
_irq_sock = None
_busy = False
_posix = None
_run_dir = os.getenv("LANTERNE_RUN_DIR") or ""


def _open():
    port = int(os.getenv("LANTERNE_HAL_PORT") or "0")
    addr = usocket.getaddrinfo("127.0.0.1", port)[0][-1]
    s = usocket.socket()
    s.connect(addr)
    _exchange(s, "HELLO " + (os.getenv("LANTERNE_BOARD_TOKEN") or "-"))
    return s


def connect():
    global _sock
    _sock = _open()


def open_events():
    """A third connection on which the server pushes one byte (the pin number) per pin interrupt."""
    s = _open()
    _exchange(s, "EVENTS")
    return s


def call(line):
    global _busy, _irq_sock
    if _sock is None:
        connect()
    if _busy:
        # a scheduled callback (pin interrupt, timer) interrupted a request in progress
        if _irq_sock is None:
            _irq_sock = _open()
        return _exchange(_irq_sock, line)
    _busy = True
    try:
        return _exchange(_sock, line)
    finally:
        _busy = False


def _exchange(s, line):
    # A Ctrl-C (SIGINT) may land in the middle of a request: finish the exchange first so
    # the next request does not read this one's reply, then let the interrupt through.
    interrupted = False
    data = line.encode() + b"\n"
    try:
        s.write(data)  # one short write on a local socket: done when the interrupt shows up
    except KeyboardInterrupt:
        interrupted = True
    while True:
        try:
            reply = s.readline()
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt
    if not reply:
        raise OSError(5)  # EIO: the emulator went away
    if reply[:2] == b"OK":
        return reply[3:-1].decode()
    raise OSError(int(reply[2:-1] or b"5"))


def posix():
    # The host filesystem, reachable by the shims after the flash is mounted at "/".
    global _posix
    if _posix is None:
        _posix = os.VfsPosix()
    return _posix


_flag_paths = {}


def flag(name):
    # A fact about the simulated network the emulator keeps as a file in the run folder (created
    # while true): "link_down", "dns_hang". Cheap enough for every socket operation.
    path = _flag_paths.get(name)
    try:
        if path is None:
            path = _flag_paths[name] = _run_dir + "/" + name
        posix().stat(path)
        return True
    except OSError:
        return False
    except MemoryError:
        return False  # from a finaliser (a socket closed by the GC: the heap is locked): say no


def link_up():
    return not flag("link_down")
