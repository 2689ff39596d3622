# Virtual ESP32: link from the HAL shims (machine, network ...) to the emulator's HAL server.
# One TCP connection to 127.0.0.1, one text line per request, one line per reply
# ("OK [value]" or "E errno"). See host_tools/emulator/hal.py for the other side.
#
# Pin interrupts are scheduled callbacks (micropython.schedule), as on the ESP32 port, so one
# may run between two bytecodes of a request in progress: a request made from inside such a
# callback goes over a second connection, never into the middle of the first exchange.
#
# Ctrl-C while user code runs comes as one byte on the *Ctrl-C channel* (a connection opened at
# boot, `INTR`), not as a signal: the unix port (threads without a GIL) raises KeyboardInterrupt
# from its SIGINT handler at whatever C instruction runs, the garbage collector's included, and
# jumping out of a collection leaves the heap locked for good ("MemoryError: memory allocation
# failed, heap is locked" at the next allocation, then a reboot). The ESP32 raises it between two
# bytecodes. Here the ROM raises it itself, from Python, where user code calls the ROM: each HAL
# request, each select.poll (the asyncio loop, _irqpoll.py) and each sleep (_esp32time.py).
# Code that reaches none of these for a second gets the signal after all (board.py).
import os
import _thread
import usocket

_sock = None
_irq_sock = None
_busy = False
intr = None  # the Ctrl-C channel (non-blocking), once open_interrupts() ran
in_callback = [0]  # > 0 while a scheduled callback (pin interrupt, timer) runs: see take_interrupt
_one = bytearray(1)
_MAIN_THREAD = _thread.get_ident()  # the interpreter's: the only one a Ctrl-C interrupts
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


def open_interrupts():
    """The Ctrl-C channel: the emulator writes one byte per Ctrl-C typed while user code runs."""
    global intr
    s = _open()
    _exchange(s, "INTR")
    s.setblocking(False)
    intr = s


def take_interrupt():
    # True once per Ctrl-C: reads its byte and answers it (the emulator then knows the
    # KeyboardInterrupt is on its way and sends no signal). Only on the interpreter's thread and
    # never inside a scheduled callback: MicroPython prints and drops what a callback raises,
    # and the Ctrl-C would be lost.
    s = intr
    if s is None or in_callback[0] or _thread.get_ident() != _MAIN_THREAD:
        return False
    try:
        n = s.readinto(_one)
    except OSError:
        return False
    if not n:
        return False  # None: no Ctrl-C (0, the emulator went away: the board is ending)
    try:
        s.write(_one)
    except OSError:
        pass
    return True


def check_interrupt():
    if take_interrupt():
        raise KeyboardInterrupt


def drain_interrupts():
    # User code is over: a Ctrl-C that came as a signal after all (board.py) left its byte.
    s = intr
    if s is None:
        return
    try:
        while s.readinto(_one):
            pass
    except OSError:
        pass


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
        reply = _exchange(_sock, line)
    finally:
        _busy = False
    if intr is not None:
        check_interrupt()  # a Ctrl-C: after the request, which is done (as _exchange does)
    return reply


def _exchange(s, line):
    # A Ctrl-C sent as SIGINT after all (board.py) may land in the middle of a request: finish
    # the exchange first so the next request does not read this one's reply, then let it through.
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
