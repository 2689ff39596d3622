"""Unmodified mpremote against the virtual board, chained as technicians use it."""

from __future__ import annotations

import subprocess
import sys

import pytest


def mpremote(port, *args, timeout=60):
    proc = subprocess.run(
        [sys.executable, "-m", "mpremote", "connect", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc


@pytest.fixture
def board(virtual_boards):
    (h,) = virtual_boards(
        1, firmware=False, files={"boot.py": "print('boot.py ran')\n", "main.py": "print('main.py ran')\n"}
    )
    h.wait_for(">>> ")
    return h


def test_fs_cp_ls_cat_rm_chained(board, tmp_path):
    src = tmp_path / "app.py"
    src.write_text("VALUE = 41 + 1\nprint('app imported', VALUE)\n")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 40)
    r = mpremote(
        board.port, "fs", "cp", str(src), ":app.py", "+", "fs", "cp", str(blob), ":blob.bin", "+", "fs", "ls", "+",
        "fs", "cat", ":app.py",
    )
    assert r.returncode == 0, r.stderr
    assert "app.py" in r.stdout and "10240 blob.bin" in r.stdout
    assert "VALUE = 41 + 1" in r.stdout
    assert (board.flash / "blob.bin").read_bytes() == blob.read_bytes()
    back = tmp_path / "back.bin"
    r = mpremote(board.port, "fs", "cp", ":blob.bin", str(back))
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == blob.read_bytes()
    r = mpremote(board.port, "exec", "import app", "+", "fs", "rm", ":app.py", "+", "fs", "ls")
    assert r.returncode == 0, r.stderr
    assert "app imported 42" in r.stdout
    assert not (board.flash / "app.py").exists()


def test_run_exec_and_soft_reset(board, tmp_path):
    script = tmp_path / "script.py"
    script.write_text("import machine\nprint('run says', 6 * 7, machine.reset_cause())\n")
    r = mpremote(board.port, "run", str(script), "+", "exec", "print('exec says', 2 ** 10)", "+",
                 "exec", "import sys, os; print('platform', sys.platform, os.uname().sysname)")
    assert r.returncode == 0, r.stderr
    assert "run says 42 1" in r.stdout and "exec says 1024" in r.stdout
    assert "platform esp32 esp32" in r.stdout  # through the raw REPL too, as on the ESP32
    boots = board.boots
    r = mpremote(board.port, "soft-reset")
    assert r.returncode == 0, r.stderr
    assert board.boots > boots


def test_cp_main_then_soft_reset_runs_new_code_after_reset(board, tmp_path):
    main = tmp_path / "main.py"
    main.write_text("print('new main', 123)\n")
    since = board.console_offset()
    r = mpremote(board.port, "fs", "cp", str(main), ":main.py", "+", "soft-reset")
    assert r.returncode == 0, r.stderr
    # a soft reset from the raw REPL does not run main.py (as on the ESP32) ...
    assert "new main 123" not in board.console()[-2000:]
    # ... a hard reset does: boot.py then the new main.py
    r = mpremote(board.port, "reset")
    assert r.returncode == 0, r.stderr
    m = board.wait_for(r"boot\.py ran\r\nnew main 123", since=since)
    assert m


def test_mkdir_and_nested_copy(board, tmp_path):
    d = tmp_path / "pkg"
    d.mkdir()
    (d / "__init__.py").write_text("NAME = 'pkg'\n")
    r = mpremote(board.port, "fs", "cp", "-r", str(d), ":", "+", "exec", "import pkg; print(pkg.NAME)")
    assert r.returncode == 0, r.stderr
    assert "pkg" in r.stdout
    assert (board.flash / "pkg" / "__init__.py").exists()
