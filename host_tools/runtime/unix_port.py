"""Run code on the MicroPython unix port: the seam tests and benchmarks use to run firmware modules.

`run(code)` executes a script with the firmware package (and the fetched
MicroPython libraries) on the interpreter's path, at a given heap size, and
returns its stdout. A non-zero exit raises `MicroPythonError` with the
interpreter's output, so a firmware traceback shows up in the test report.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from pathlib import Path

from host_tools.runtime.paths import FIRMWARE, MPYLIB, micropython_binary

# Enough for the ROM's shims (compiled from source on import: compiling machine.py alone peaks
# above 100 KB) and a firmware module under test. Heap limits are tested with explicit sizes.
DEFAULT_HEAP = 256 * 1024


class MicroPythonError(RuntimeError):
    def __init__(self, message: str, output: str = ""):
        super().__init__(message + ("\n" + output if output else ""))
        self.output = output


def micropython_path(extra: list[str | Path] | None = None) -> str:
    # ".frozen" as on the board: asyncio and friends are frozen into the unix port too
    parts = [str(p) for p in (extra or [])] + [".frozen", str(FIRMWARE), str(MPYLIB)]
    return ":".join(parts)


def run(
    code: str,
    *,
    heapsize: int = DEFAULT_HEAP,
    path: list[str | Path] | None = None,
    stdin: bytes | None = None,
    timeout: float = 60.0,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run `code` as a script on the unix port and return what it printed."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
        script = f.name
    try:
        run_env = dict(os.environ, **(env or {}), MICROPYPATH=micropython_path(path))
        proc = subprocess.run(
            [micropython_binary(), "-X", f"heapsize={heapsize}", script],
            input=stdin,
            capture_output=True,
            timeout=timeout,
            env=run_env,
            cwd=cwd,
        )
    finally:
        os.unlink(script)
    out = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise MicroPythonError(f"micropython exited with {proc.returncode}", out)
    return proc.stdout.decode("utf-8", "replace")


def run_json(code: str, **kwargs):
    """Run `code`, whose last printed line is JSON, and return that value."""
    out = run(code, **kwargs).strip().splitlines()
    if not out:
        raise MicroPythonError("script printed nothing")
    return json.loads(out[-1])


@functools.cache
def version() -> str:
    """This unix port's MicroPython version as its banner writes it: 'v1.29.0-preview' (what a virtual board runs)."""
    major, minor, micro, *rest = run_json("import sys, json; print(json.dumps(list(sys.implementation.version)))")
    return f"v{major}.{minor}.{micro}" + (f"-{rest[0]}" if rest and rest[0] else "")
