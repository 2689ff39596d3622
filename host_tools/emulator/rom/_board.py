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
_hal.open_interrupts()  # the Ctrl-C channel: a Ctrl-C raises KeyboardInterrupt between bytecodes

import _flashfs
import _vfs
import machine
import network
import esp32
import ntptime
import socket
import _esp32os
import _esp32sys
import _esp32time

try:
    import ssl
except ImportError:
    pass

if _romfs.SIZE:  # the ROMFS build (its image has the romfs partition); stock MicroPython has no rom_ioctl
    sys.modules["vfs"] = _vfs
# What user code imports as sys and os says what an ESP32 says: sys.platform, os.uname(); its
# time sleeps as the ESP32's does (a Ctrl-C ends a sleep).
sys.modules["sys"] = _esp32sys
sys.modules["os"] = _esp32os
sys.modules["time"] = _esp32time


_frozen = None  # the image's frozen package: a VfsRom image in a buffer of the ROM's, at /.frozen
_FROZEN_AT = "/.frozen"


def _load_frozen():
    # The Lanterne image freezes the OTA package (host_tools/emulator/frozen.py). Its compiled
    # modules, a VfsRom image, are read into a buffer of the ROM's and mounted, so an import runs
    # in place as frozen code does; each module is imported once and dropped again, so its names
    # are interned now, as the image's static qstrs (the ROM's share of the heap), and the
    # firmware pays for the modules it imports, as it does on the chip.
    global _frozen
    path = os.getenv("LANTERNE_FROZEN_IMAGE")
    if not path:
        return
    import vfs

    _frozen = bytearray(os.stat(path)[6])
    with open(path, "rb") as f:
        f.readinto(_frozen)
    vfs.mount(vfs.VfsRom(_frozen), _FROZEN_AT)
    saved = sys.path[:]
    sys.path[:] = [_FROZEN_AT]
    try:
        for name in (os.getenv("LANTERNE_FROZEN_MODULES") or "").split():
            __import__(name)
            gc.collect()
    finally:
        sys.path[:] = saved
        for name in [n for n in sys.modules if n.split(".")[0] == "lanterne_ota"]:
            del sys.modules[name]
            gc.collect()
    # (a collection after each import and each drop: with one at the end only, whether ~10 KB of the
    # dropped modules stayed reachable from a stale word the GC scans conservatively depended on
    # the package's exact bytes; one more string constant in it flipped it, and with it the ROM's
    # share of every board's heap)
    gc.collect()


_load_frozen()
_ROM_MODULES = set(sys.modules)  # what the ROM itself loaded: the rest is the user's

EXIT_SOFT_FRIENDLY = 80
EXIT_SOFT_RAW = 81

_out = sys.stdout
_in = sys.stdin.buffer
_c1 = bytearray(1)

BANNER = "MicroPython v%s on %s; %s\nType \"help()\" for more information.\n" % (
    _esp32os.VERSION,
    _esp32os.BUILD_DATE,
    _esp32os.MACHINE,
)


def _w(s):
    _out.write(s)


def _getc():
    # One byte from the serial port. A Ctrl-C the emulator sent as SIGINT (for user code that
    # reached no point where the ROM takes it, see _hal.py) may still arrive: report it as the byte.
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
    os.mount(_flashfs.FlashFS(root, size, os.getenv("LANTERNE_FLASH_TMPFS") == "1"), "/")
    os.chdir("/")
    # As the esp32 port: mp_init() gives ['', '.frozen'] and mounts the ROMFS (adding '/rom',
    # '/rom/lib'), then main.c appends '/lib'. The ROM's modules come before /lib's.
    sys.path.clear()
    sys.path.append("")
    sys.path.append(".frozen")
    if _frozen is not None:  # the image's frozen package (the chip finds it under ".frozen")
        sys.path.append(_FROZEN_AT)
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
            break
        except KeyboardInterrupt:
            pass
    _hal.drain_interrupts()


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
# Line editing as MicroPython's shared/readline does it with the ESP32 port's options: the line
# being typed is appended to the statement so far, a continuation line is auto-indented (4
# spaces per level of the line above, one more after a ':'), a space or tab typed right after
# an auto-indent turns it off for the statement, backspace over leading spaces removes 4 at a
# time, tab after whitespace inserts 4 spaces; up/down walk a history of 8 lines. Whether a
# statement continues follows py/repl.c. Not here: cursor movement within a line, tab completion.
_HISTORY_SIZE = 8
_history = []  # most recent first
_indent_on = True
_indent_just_added = False

_COMPOUND = ("if", "while", "for", "try", "with", "def", "class", "async")


def _starts_with_word(text, word):
    if not text.startswith(word):
        return False
    rest = text[len(word) : len(word) + 1]
    return not rest or not (rest.isalpha() or rest.isdigit() or rest == "_")


def _continues(text):
    # py/repl.c mp_repl_continue_with_input: open brackets or triple quotes, a trailing
    # backslash, or a compound statement whose last line is not empty yet.
    if not text:
        return False
    compound = text[0] == "@" or any(_starts_with_word(text, w) for w in _COMPOUND)
    paren = brack = brace = 0
    quote = 0  # 0: none, 1: ' 2: " 3: three ' 4: three "
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "'":
            if quote in (0, 3) and text[i + 1 : i + 3] == "''":
                i += 2
                quote = 3 - quote
            elif quote in (0, 1):
                quote = 1 - quote
        elif c == '"':
            if quote in (0, 4) and text[i + 1 : i + 3] == '""':
                i += 2
                quote = 4 - quote
            elif quote in (0, 2):
                quote = 2 - quote
        elif c == "\\" and text[i + 1 : i + 2] in ("'", '"', "\\") and i + 1 < n:
            if quote:
                i += 1
        elif quote == 0:
            if c == "(":
                paren += 1
            elif c == ")":
                paren -= 1
            elif c == "[":
                brack += 1
            elif c == "]":
                brack -= 1
            elif c == "{":
                brace += 1
            elif c == "}":
                brace -= 1
        i += 1
    if quote >= 3:
        return True
    if (paren > 0 or brack > 0 or brace > 0) and quote == 0:
        return True
    if text[-1] == "\\":
        return True
    return compound and text[-1] != "\n"


def _back(n):
    # The cursor n columns left, as readline moves it: backspaces, or one VT100 sequence past 4.
    if n > 4:
        _w("\x1b[%dD" % n)
    elif n > 0:
        _w("\b" * n)


def _auto_indent(buf):
    # After the "... " prompt: indent as the line above, one level more after its ':'; none after
    # two blank lines in a row (that is how a block is ended by just pressing Enter).
    global _indent_just_added
    n = len(buf)
    if not _indent_on or n < 2 or buf[-1] != 10:
        return
    i = n - 1
    while i > 0 and buf[i - 1] != 10:
        i -= 1  # start of the line above
    j = i
    while j < n and buf[j] == 32:
        j += 1  # its first non-space
    if i > 0 and j + 1 == n:  # the line above is blank: so is the one before it?
        k = i - 1
        while k > 0:
            if buf[k - 1] == 10:
                return
            if buf[k - 1] != 32:
                break
            k -= 1
    level = (j - i) // 4 + (1 if buf[n - 2] == 58 else 0)
    if level:
        buf.extend(b"    " * level)
        _w("    " * level)
        _indent_just_added = True


def _readline(buf, prompt):
    # Edits `buf` (the statement so far) from its current end: 0 at Enter, or the control code
    # that ended the line (Ctrl-C always; Ctrl-A/B/D/E only on an empty line).
    global _indent_on, _indent_just_added
    start = len(buf)
    if not start:
        _indent_on = True
    _w(prompt)
    _auto_indent(buf)
    hist = -1
    while True:
        c = _getc()
        just_added = _indent_just_added
        _indent_just_added = False
        if c == 3:
            return 3
        if 1 <= c <= 5:
            if len(buf) == start:
                return c
            continue  # on the ESP32 these move the cursor within a non-empty line
        if c == 13:
            _w("\n")
            line = bytes(buf[start:])
            if line and (not _history or _history[0] != line):
                _history.insert(0, line)
                del _history[_HISTORY_SIZE:]
            return 0
        if c == 27:
            c = _getc()
            if c == 79:  # ESC O H / ESC O F: home / end
                _getc()
            elif c == 91:
                c = _getc()
                if 48 <= c <= 57:
                    _getc()  # ESC [ n ~: home, end, delete
                elif (c == 65 and hist + 1 < len(_history)) or (c == 66 and hist >= 0):
                    hist += 1 if c == 65 else -1
                    old = len(buf) - start
                    buf[start:] = b""
                    if hist >= 0:
                        buf.extend(_history[hist])
                    _back(old)
                    if len(buf) - start < old:
                        _w("\x1b[K")
                    _out.buffer.write(bytes(buf[start:]))
        elif c in (8, 127):
            if len(buf) > start:
                spaces = len(buf) - start
                for b in buf[start:]:
                    if b != 32:
                        spaces = 0
                        break
                k = 4 if spaces >= 4 else 1
                buf[len(buf) - k :] = b""  # (MicroPython's bytearray has no del of a slice)
                _back(k)
                _w("\x1b[K")
        elif just_added and c in (9, 32):
            # indentation typed right after the auto-indent: the user indents from here on
            _indent_on = False
            if c == 32:
                buf[len(buf) - 3 :] = b""
                _back(3)
        elif c == 9:
            if buf and buf[-1] in (9, 10, 32):
                buf.extend(b"    ")
                _w("    ")
            # else: tab completion, which the virtual board does not do
        elif 32 <= c <= 126:
            buf.append(c)
            _out.buffer.write(bytes((c,)))


def friendly_repl():
    _w(BANNER)
    while True:
        try:
            buf = bytearray()
            r = _readline(buf, ">>> ")
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
            if not buf:
                continue
            cancelled = False
            while _continues(buf.decode()):
                buf.append(10)
                r = _readline(buf, "... ")
                if r == 3:
                    _w("\n")
                    cancelled = True
                    break
                if r == 4:
                    break  # Ctrl-D on an empty line: run what was typed
            if cancelled:
                continue
            src = buf.decode()
            buf = None
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


def _pad_qstr_pools():
    # On the ESP32, machine, network, socket ... are C modules whose names are static qstrs in
    # flash. Here they are Python, and their ~500 names fill MicroPython's dynamic qstr pools,
    # which double in size (10, 20 ... 640, 1280 entries) and must each be allocated in one
    # piece. Left so, the firmware's names would need the 1280-entry pool (a 14 KB block) some
    # 500 names earlier than on the board, mid-run, in a fragmented heap. So the ROM interns
    # throwaway names until that pool exists, allocated now in a clean heap, and reports its
    # bytes as the firmware's (BOOTED below), not the ROM's: the firmware pays for ~1280 names
    # of pool, as on the board, where its names fill pools 10 ... 640 (about the same bytes)
    # and cross the next doubling at about the same count. Returns the pool's bytes.
    entry = (8 if sys.maxsize > 2**32 else 4) + 3  # pointer, hash, length
    pad = _Pad()
    for i in range(4000):
        before = gc.mem_alloc()
        getattr(pad, "\x01%d" % i, None)  # interns the name
        if gc.mem_alloc() - before >= entry * 1280:
            return entry * 1280 + 64
    return 0


class _Pad:
    pass


def main():
    boot = os.getenv("LANTERNE_BOOT") or "hard"
    _mount()
    del sys.modules["_flashfs"]
    pool = _pad_qstr_pools()
    gc.collect()
    _hal.call("BOOTED %d %d" % (gc.mem_alloc() - _romfs.pinned - pool, gc.mem_free()))
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
