"""A throwaway PostgreSQL server in a temporary directory, for the bridge's tests and benchmark.

`PostgresServer()` runs Debian's `initdb` and `pg_ctl` (PostgreSQL 15 from the `postgresql`
package; `make test` installs it) on a free loopback port with its socket in the same
directory, and stops and removes everything on exit, the way `brokers.Mosquitto` does for
the broker. PostgreSQL refuses to run as root: as root, the server runs as the `postgres`
user the Debian package creates, and owns its directory.

`server.create_database(name)` returns the `postgresql://` URL of a new, empty database.
A city runs its own PostgreSQL; this is not how to deploy one (see docs/bridge.md).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from host_tools.backoffice.brokers import free_port

SUPERUSER = "lanterne"


class PostgresError(RuntimeError):
    pass


def binaries() -> Path:
    """The directory holding initdb, pg_ctl and postgres (Debian's newest installed version first)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]), reverse=True)
    if found:
        return Path(found[0]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    raise PostgresError("PostgreSQL is not installed (make test installs Debian's postgresql)")


class PostgresServer:
    """`with PostgresServer() as pg: url = pg.create_database("x")`."""

    def __init__(self, *, durable: bool = True, port: int | None = None):
        self.durable = durable  # False: fsync off, for tests that only need a server quickly
        self.port = port or free_port()
        self.bin = binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="lanterne-postgres-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._user: str | None = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresError("running as root needs the `postgres` user (Debian's postgresql package)") from None
            self._user = "postgres"
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o700)
        self.started = False

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kw = {"user": self._user, "group": self._user, "extra_groups": []} if self._user else {}
        proc = subprocess.run(
            [str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=self.dir, **kw
        )
        if proc.returncode:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise PostgresError(f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}")
        return proc

    def start(self) -> PostgresServer:
        self._run(self.bin / "initdb", "-D", self.data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        options = [
            f"-p {self.port}",
            f"-k {self.dir}",  # the unix socket beside the data, not in /var/run
            f"-c listen_addresses={self.host}",
            "-c max_connections=50",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.log, "-o", " ".join(options), "-w", "-t", "60", "start")
        self.started = True
        return self

    def execute(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, name: str) -> str:
        """A new empty database `name` (dropped first if it exists); returns its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}: letters, digits and _ only")
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            try:
                self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", timeout=60)
            except (PostgresError, subprocess.TimeoutExpired):
                self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "stop", timeout=60)
            self.started = False

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()
