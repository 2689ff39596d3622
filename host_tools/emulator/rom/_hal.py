# Virtual ESP32: link from the HAL shims (machine, network ...) to the emulator's HAL server.
# One TCP connection to 127.0.0.1, one text line per request, one line per reply
# ("OK [value]" or "E errno"). See host_tools/emulator/hal.py for the other side.
import os
import usocket

_sock = None
_posix = None
_run_dir = os.getenv("LANTERNE_RUN_DIR") or ""


def connect():
    global _sock
    port = int(os.getenv("LANTERNE_HAL_PORT") or "0")
    addr = usocket.getaddrinfo("127.0.0.1", port)[0][-1]
    s = usocket.socket()
    s.connect(addr)
    _sock = s
    call("HELLO " + (os.getenv("LANTERNE_BOARD_TOKEN") or "-"))


def call(line):
    if _sock is None:
        connect()
    s = _sock
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


def link_up():
    # Cheap link check for every socket operation: the emulator creates this file while the link is down.
    try:
        posix().stat(_run_dir + "/link_down")
        return False
    except OSError:
        return True
