"""Run the same firmware code on CPython and on the MicroPython unix port and compare.

The pattern every pure firmware module uses to show it behaves identically on both
interpreters: `both(code)` runs `code` (which prints one JSON line last) under each
and returns the two decoded values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from host_tools.runtime import unix_port
from host_tools.runtime.paths import FIRMWARE, MPYLIB


def run_cpython(code: str, timeout: float = 60) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FIRMWARE), str(MPYLIB)]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"CPython failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def both(code: str, heapsize: int = unix_port.DEFAULT_HEAP):
    """(value on CPython, value on MicroPython) of the last JSON line `code` prints."""
    cp = json.loads(run_cpython(code).strip().splitlines()[-1])
    mp = json.loads(unix_port.run(code, heapsize=heapsize).strip().splitlines()[-1])
    return cp, mp


def both_on_flash(code: str, call: str, folder, heapsize: int = unix_port.DEFAULT_HEAP):
    """Run `code`, then print the JSON of the expression `call`, on both interpreters, each with a
    flash folder of its own under `folder` (`folder` in `call` names it): firmware that writes
    files (the store, the command counter) cannot share one. Both must agree; the value."""
    folders = {vm: folder / vm for vm in ("cpython", "micropython")}
    for f in folders.values():
        f.mkdir()
    code += "\nimport sys\nfolder = json.loads(%r)[sys.implementation.name]\nprint(json.dumps(%s))\n" % (
        json.dumps({k: str(v) for k, v in folders.items()}), call)
    cp, mp = both(code, heapsize=heapsize)
    if cp != mp:
        raise AssertionError(f"CPython and the unix port disagree:\n{cp}\n{mp}")
    return cp
