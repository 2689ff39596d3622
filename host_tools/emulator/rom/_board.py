# Virtual ESP32: what the board's firmware image does around the user's code.
# Mounts the flash at "/", runs boot.py then main.py (main.py only when the boot was not a
# soft reboot from the raw REPL, as the ESP32 port does), then serves the REPL on the serial
# port: friendly REPL, raw REPL (Ctrl-A), raw-paste mode, paste mode (Ctrl-E), Ctrl-C, and
# Ctrl-D as a soft reboot. The emulator restarts the interpreter for every reboot; the exit
# status tells it how to restart (see host_tools/emulator/board.py).
import gc
import os
import sys

import _romfs  # first: its partition buffer goes at the start of the heap

import _hal

_hal.connect()

import _flashfs
import _vfs
import machine
import network
import esp32
import ntptime
import socket

try:
    import ssl
except ImportError:
    pass

if _romfs.SIZE:  # the ROMFS build (its image has the romfs partition); stock MicroPython has no rom_ioctl
    sys.modules["vfs"] = _vfs


def _load_frozen():
    # The Lanterne image freezes the OTA package (host_tools/emulator/frozen.py): loaded here,
    # as part of the image, so its code and names are the ROM's, as frozen code is on the chip.
    where = os.getenv("LANTERNE_FROZEN")
    if not where:
        return
    sys.path.insert(0, where)
    try:
        for name in (os.getenv("LANTERNE_FROZEN_MODULES") or "").split():
            __import__(name)
    finally:
        sys.path.pop(0)


def _fresh_qstr_pool():
    # On the chip the image's own names (machine, network, the REPL, frozen modules) sit in its
    # static qstr pool, and the firmware's first new name opens a fresh dynamic pool while the
    # heap is empty. Here the shims' names fill the first dynamic pools instead, so the firmware
    # would meet the next pool doubling (one large contiguous block) at a different, later point,
    # in a fragmented heap. Start it on a fresh pool too: intern placeholder names until the
    # interpreter allocates a new pool (a jump of several KB), all as part of the ROM's heap.
    probe = object()
    for i in range(4000):
        before = gc.mem_alloc()
        getattr(probe, "_rom_q%d" % i, None)  # looking an attribute up interns its name
        if gc.mem_alloc() - before > 4000:
            return


_load_frozen()
_fresh_qstr_pool()
_ROM_MODULES = set(sys.modules)  # what the ROM itself loaded: the rest is the user's

EXIT_SOFT_FRIENDLY = 80
EXIT_SOFT_RAW = 81

_out = sys.stdout
_in = sys.stdin.buffer
_c1 = bytearray(1)

BANNER = (
    "MicroPython v1.29.0-preview on 2026-07-05; Generic ESP32 module with ESP32\n"
    'Type "help()" for more information.\n'
)


def _w(s):
    _out.write(s)


def _getc():
    # One byte from the serial port. Ctrl-C arrives as SIGINT (the emulator turns the byte
    # into a signal so it also interrupts running code): report it as the byte.
    try:
        n = _in.readinto(_c1)
    except KeyboardInterrupt:
        return 3
    if not n:
        sys.exit(0)  # serial side closed: the emulator is shutting down
    return _c1[0]


def _mount():
    root = os.getenv("LANTERNE_FLASH")
    size = int(os.getenv("LANTERNE_FS_BYTES") or "2097152")
    os.umount("/")
    os.mount(_flashfs.FlashFS(root, size), "/")
    os.chdir("/")
    # As the esp32 port: mp_init() gives ['', '.frozen'] and mounts the ROMFS (adding '/rom',
    # '/rom/lib'), then main.c appends '/lib'. The ROM's modules come before /lib's.
    sys.path.clear()
    sys.path.append("")
    sys.path.append(".frozen")
    _romfs.mount(sys.path)
    sys.path.append("/lib")


_globals = {"__name__": "__main__"}
_ROM_DIR = __file__.rsplit("/", 1)[0]


def _print_exception(e):
    # As the board prints it: the ROM's own frames (this file, the shims) are not shown.
    import io

    buf = io.StringIO()
    sys.print_exception(e, buf)
    for line in buf.getvalue().split("\n"):
        if line and _ROM_DIR not in line:
            _w(line + "\n")


def _exec_file(name):
    try:
        os.stat(name)
    except OSError:
        return 0
    try:
        _hal.call("EXEC 1")
        with open(name) as f:
            src = f.read()
        code = compile(src, name, "exec")
        src = None
        exec(code, _globals)
    except SystemExit:
        return 1
    except BaseException as e:  # noqa: also KeyboardInterrupt, as on the board
        _print_exception(e)
    finally:
        _idle()
    return 0


def _idle():
    # Leaving user code: from now on a Ctrl-C byte is a REPL character again.
    while True:
        try:
            _hal.call("EXEC 0")
            return
        except KeyboardInterrupt:
            pass


def _execute(src, mode, raw):
    # Returns True when the code asked for a soft reboot (SystemExit / machine.soft_reset()).
    try:
        _hal.call("EXEC 1")
        code = compile(src, "<stdin>", mode)
        src = None
        exec(code, _globals)
        _idle()
        if raw:
            _w("\x04")
    except SystemExit:
        _idle()
        if raw:
            _w("\x04\x04")
        return True
    except BaseException as e:  # noqa
        _idle()
        if raw:
            _w("\x04")
        _print_exception(e)
    if raw:
        _w("\x04")
    return False


# -- friendly REPL ---------------------------------------------------------------------------
_history = []

_COMPOUND = ("if", "while", "for", "try", "def", "class", "with", "async", "@", "elif", "else", "except", "finally", "match")


def _needs_more(text):
    # Same idea as MicroPython's mp_repl_continue_with_input: open brackets or triple quotes,
    # a trailing colon or backslash, or a compound statement not yet closed by an empty line.
    depth = 0
    i = 0
    n = len(text)
    quote = None
    while i < n:
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = None
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "'\"":
            quote = text[i : i + 3] if text[i : i + 3] in ("'''", '"""') else c
            i += len(quote) - 1
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        i += 1
    if quote and len(quote) == 3 or depth > 0:
        return True
    last = text.split("\n")[-1]
    if last.endswith(":") or last.endswith("\\"):
        return True
    first = text.lstrip().split(" ")[0].split("(")[0].rstrip(":")
    if "\n" in text and (first in _COMPOUND or first.startswith("@")):
        return last.strip() != ""
    return False


def _readline(prompt):
    # Returns the line (str) or a control code (int) for Ctrl-A/B/C/D/E.
    _w(prompt)
    line = bytearray()
    hist = len(_history)
    while True:
        c = _getc()
        if c == 3:
            return 3
        if not line and c in (1, 2, 4, 5):
            return c
        if c == 13:
            _w("\n")
            return line.decode()
        if c in (8, 127):
            if line:
                line.pop()
                _w("\b \b")
        elif c == 27:
            # Escape sequence: up/down walk the history, the rest is ignored.
            if _getc() == 91:
                k = _getc()
                if k in (65, 66) and _history:
                    hist = max(0, hist - 1) if k == 65 else min(len(_history), hist + 1)
                    _w("\b \b" * len(line))
                    line = bytearray(_history[hist] if hist < len(_history) else b"")
                    _w(line.decode())
        elif c == 9:
            pass  # no tab completion on the virtual board
        elif c >= 32:
            line.append(c)
            _out.buffer.write(bytes((c,)))


def friendly_repl():
    _w(BANNER)
    while True:
        try:
            r = _readline(">>> ")
            if r == 1:
                _w("\n")
                return 1  # to the raw REPL
            if r == 2:
                _w("\n" + BANNER)
                continue
            if r == 3:
                _w("\n")
                continue
            if r == 4:
                _w("\n")
                return EXIT_SOFT_FRIENDLY
            if r == 5:
                src = _paste_mode()
                if src is None:
                    continue
                if _execute(src, "exec", False):
                    return EXIT_SOFT_FRIENDLY
                continue
            if not r:
                continue
            src = r
            cancelled = False
            while _needs_more(src):
                more = _readline("... ")
                if more == 3:
                    _w("\n")
                    cancelled = True
                    break
                if more == 4:
                    break
                if isinstance(more, int):
                    continue
                src += "\n" + more
                if more == "" and src.rstrip("\n").count("\n") and not _needs_more(src):
                    break
            if cancelled:
                continue
            if len(_history) > 16:
                _history.pop(0)
            _history.append(src.split("\n")[0].encode())
            if _execute(src + "\n", "single", False):
                return EXIT_SOFT_FRIENDLY
        except KeyboardInterrupt:
            _w("\n")


def _paste_mode():
    _w("\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\n=== ")
    buf = bytearray()
    while True:
        c = _getc()
        if c == 3:
            _w("\n")
            return None
        if c == 4:
            _w("\n")
            return buf.decode()
        buf.append(c)
        if c == 13:
            _w("\n=== ")
        else:
            _out.buffer.write(bytes((c,)))


# -- raw REPL --------------------------------------------------------------------------------
_WINDOW = 128  # raw-paste flow-control window: half of the ESP32's 256-byte stdin buffer


def _raw_paste():
    _out.buffer.write(b"R\x01" + bytes((_WINDOW & 0xFF, _WINDOW >> 8)) + b"\x01")
    buf = bytearray()
    remain = _WINDOW
    while True:
        c = _getc()
        if c == 4:
            _w("\x04")
            break
        if c == 3:
            _w("\x04")
            return None
        buf.append(c)
        remain -= 1
        if remain == 0:
            _out.buffer.write(b"\x01")
            remain = _WINDOW
    return buf.decode()


def raw_repl():
    _w("raw REPL; CTRL-B to exit\n")
    line = bytearray()
    while True:
        try:
            line = bytearray()
            _w(">")
            while True:
                c = _getc()
                if c == 1:
                    if len(line) == 2 and line[0] == 5:
                        if line[1] != 65:  # only 'A' (raw-paste) is supported
                            _out.buffer.write(b"R\x00")
                            line = bytearray()
                            continue
                        src = _raw_paste()
                        line = bytearray()
                        if src is not None and _execute(src, "exec", True):
                            return EXIT_SOFT_RAW
                        _w(">")
                        continue
                    _w("raw REPL; CTRL-B to exit\n")
                    line = bytearray()
                    _w(">")
                    continue
                if c == 2:
                    _w("\n")
                    return 2  # to the friendly REPL
                if c == 3:
                    line = bytearray()
                    continue
                if c == 4:
                    break
                line.append(c)
            _w("OK")
            if not line:
                _w("\n")
                return EXIT_SOFT_RAW
            src = line.decode()
            line = None
            gc.collect()
            if _execute(src, "exec", True):
                return EXIT_SOFT_RAW
        except KeyboardInterrupt:
            pass


def main():
    boot = os.getenv("LANTERNE_BOOT") or "hard"
    _mount()
    del sys.modules["_flashfs"]
    gc.collect()
    _hal.call("BOOTED %d %d" % (gc.mem_alloc() - _romfs.pinned, gc.mem_free()))
    if _exec_file("boot.py"):
        return EXIT_SOFT_FRIENDLY if boot != "soft-raw" else EXIT_SOFT_RAW
    mode = "raw" if boot == "soft-raw" else "friendly"
    if mode == "friendly" and _exec_file("main.py"):
        return EXIT_SOFT_FRIENDLY
    while True:
        try:
            if mode == "raw":
                r = raw_repl()
                if r == 2:
                    mode = "friendly"
                    continue
            else:
                r = friendly_repl()
                if r == 1:
                    mode = "raw"
                    continue
            return r
        except MemoryError:
            # The firmware left the heap full (its modules stay loaded after Ctrl-C): the
            # REPL itself must survive that, as the ESP32's C REPL does.
            gc.collect()


_code = main()
# The interpreter ends here: drop what the user's code left on the heap first, so saying
# goodbye cannot fail on a heap the firmware filled (the ESP32 prints this from C).
_globals.clear()
for _name in list(sys.modules):
    if _name not in _ROM_MODULES:
        del sys.modules[_name]
gc.collect()
_out.buffer.write(b"MPY: soft reboot\n")
sys.exit(_code)
