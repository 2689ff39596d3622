"""Shared fixtures: the unix-port runner, virtual boards, a real Mosquitto broker.

- `micropython(code, heapsize=...)` runs a script on the MicroPython unix port.
- `emulator` is one `Emulator` (asyncio supervisor) for the whole session.
- `virtual_boards(n, board=..., config=..., firmware=True)` starts N virtual boards, each
  with its own flash folder and pty, optionally with the firmware deployed, and returns
  their `BoardHandle`s (world set/get, power_cut/power_on, console, wait_for).
- `mosquitto` is a real Mosquitto on a free loopback port (one per session).
- `postgres` is a real PostgreSQL (Debian's, initdb + pg_ctl in a temporary directory, as the
  `postgres` user when run as root), started once per session; `pg_url` is a fresh empty
  database on it for one test; `bridge_db` runs a test once on SQLite and once on PostgreSQL.

Plain helpers (`from conftest import ...`): `lanterne(*args)` runs the `lanterne` command as
a person does, in its own process; `lanterne_emulate(*args)` serves a board with it.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys

import pytest

from host_tools import boards
from host_tools.backoffice.brokers import Mosquitto
from host_tools.emulator.supervisor import Emulator
from host_tools.fleet import deploy
from host_tools.runtime import unix_port


@pytest.fixture(scope="session")
def micropython():
    """Run a script on the MicroPython unix port: `micropython(code, heapsize=...) -> stdout`."""
    return unix_port.run


@pytest.fixture(scope="session")
def emulator():
    emu = Emulator()
    yield emu
    emu.close()


@pytest.fixture(scope="session")
def mosquitto():
    with Mosquitto() as broker:
        yield broker


@pytest.fixture(scope="session")
def postgres():
    from host_tools.backoffice.postgres import PostgresServer

    with PostgresServer(durable=False) as server:
        yield server


_databases = itertools.count()


@pytest.fixture
def pg_url(postgres):
    """A new, empty PostgreSQL database for this test: its postgresql:// URL."""
    return postgres.create_database(f"test_{next(_databases)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def bridge_db(request, tmp_path):
    """A database URL for the bridge: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "bridge.sqlite")
    return request.getfixturevalue("pg_url")


_counter = itertools.count()


@pytest.fixture
def virtual_boards(emulator, tmp_path):
    """Factory: `virtual_boards(n, board="esp32-devkitc", config=None, firmware=True, files=None)`.

    The firmware goes on as the factory programs it: the compiled library in slot A of the board's
    ROMFS partition (romfs=False: on the filesystem under /lib); `image` programs a built release's
    ROMFS image instead, `trusted_keys` the release keys the board trusts (docs/ota.md)."""
    made = []

    def start(n=1, board="esp32-devkitc", config=None, firmware=True, files=None, world_values=None, power_on=True,
              romfs=True, image=None, trusted_keys=None, **kw):
        from host_tools.emulator.world import World

        b = boards.load(board)
        handles = []
        for _ in range(n):
            i = next(_counter)
            flash = tmp_path / f"board{i}" / "flash"
            flash.mkdir(parents=True)
            if firmware:
                cfg = dict(config or {})
                cfg.setdefault("device", f"dev-{i}")
                deploy.copy_to_flash(b, cfg, flash, romfs=romfs, image=image, trusted_keys=trusted_keys)
            for name, data in (files or {}).items():
                p = flash / name
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data.encode() if isinstance(data, str) else data)
            world = World(seed=i, **(world_values or {}))
            h = emulator.add_board(b, flash, port_path=tmp_path / f"board{i}" / "tty", world=world, power_on=power_on, **kw)
            handles.append(h)
            made.append(h)
        return handles

    yield start
    for h in made:
        h.close()


LANTERNE = [sys.executable, "-m", "host_tools.cli"]


def lanterne(*args, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """`lanterne ARGS` in its own process, as typed in a shell: its exit code, stdout and stderr."""
    return subprocess.run([*LANTERNE, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


@contextlib.contextmanager
def lanterne_emulate(*args, lines: int = 1):
    """`lanterne emulate ARGS` as a person runs it in a shell: yields the line it prints first
    (the board and its port), or its first `lines` lines; stopped (as Ctrl-C would) on leaving."""
    proc = subprocess.Popen([*LANTERNE, "emulate", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield "".join(proc.stdout.readline() for _ in range(lines))
    finally:
        proc.terminate()
        proc.wait(10)
