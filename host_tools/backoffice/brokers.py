"""MQTT brokers for demos and tests: Mosquitto (real, Debian's) and an embedded amqtt broker.

`Mosquitto(...)` starts `mosquitto -c <generated conf>` on a free loopback port,
optionally with a password file, an ACL file and TLS, and stops it on exit.
`SystemMosquitto(conf, port)` starts it on a conf written by `lanterne broker-files`, the way
Debian's service does (as root, Mosquitto drops to the conf's `user`).
`EmbeddedBroker` runs amqtt in-process (for `lanterne broker` and `make demo`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class BrokerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and os.path.exists(cand):
            return cand
    raise BrokerError("mosquitto is not installed (make test installs Debian's mosquitto)")


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BrokerError(f"broker did not listen on {host}:{port} within {timeout} s")


class Mosquitto:
    def __init__(
        self,
        port: int | None = None,
        *,
        password_file: str | Path | None = None,
        acl_file: str | Path | None = None,
        tls: dict | None = None,
        max_queued: int = 100000,
    ):
        self.port = port or free_port()
        self.password_file = password_file
        self.acl_file = acl_file
        self.tls = tls  # {"cafile":..., "certfile":..., "keyfile":..., "port": N}
        self.tls_port = (tls or {}).get("port") or (free_port() if tls else None)
        self.max_queued = max_queued
        self.dir = Path(tempfile.mkdtemp(prefix="lanterne-mosquitto-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        lines = [
            "per_listener_settings false",
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.password_file else 'true'}",
            f"max_queued_messages {self.max_queued}",
            "persistence true",
            "set_tcp_nodelay true",  # small MQTT packets (commands, acks) leave at once
            f"persistence_location {self.dir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto would switch to its own user, which cannot read our temp files.
            lines.append("user root")
        if self.password_file:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        if self.tls:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.tls['cafile']}",
                f"certfile {self.tls['certfile']}",
                f"keyfile {self.tls['keyfile']}",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> Mosquitto:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(self.config_text())
        self.log = open(self.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)], stdout=self.log, stderr=self.log, start_new_session=True
        )
        try:
            wait_port("127.0.0.1", self.port)
        except BrokerError:
            self.stop()
            raise BrokerError(f"mosquitto failed to start: {(self.dir / 'mosquitto.log').read_text()[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


class SystemMosquitto:
    """Mosquitto started the way Debian's service starts it: `mosquitto -c CONF`, as this process's user
    (as root, Mosquitto then drops to the conf's `user`). For a conf written by `lanterne broker-files`."""

    def __init__(self, conf: str | Path, port: int, host: str = "127.0.0.1"):
        self.conf, self.port, self.host = Path(conf), port, host
        self.proc: subprocess.Popen | None = None
        self.output = b""

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> SystemMosquitto:
        self._log = tempfile.TemporaryFile()  # its log (log_dest stderr), read on stop
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_port(self.host, self.port)
        except BrokerError:
            self.stop()
            raise BrokerError(f"mosquitto -c {self.conf} did not start: {self.output.decode(errors='replace')[-2000:]}") from None
        return self

    def uid(self) -> int:
        """The user id the broker runs as now (after it dropped privileges)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
        raise BrokerError("no Uid line in /proc")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.seek(0)
        self.output = self._log.read()
        self._log.close()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class EmbeddedBroker:
    """amqtt broker on its own thread and loop (no external process)."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1"):
        self.host = host
        self.port = port or free_port()
        self._thread = None
        self._loop = None
        self._broker = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        import asyncio
        import logging
        import threading

        from amqtt.broker import Broker

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "sys_interval": 0,
            "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
            "topic-check": {"enabled": False},
        }
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors = []

        def run():
            asyncio.set_event_loop(self._loop)

            async def boot():
                try:
                    self._broker = Broker(config)
                    await self._broker.start()
                except Exception as exc:  # surface to the caller
                    errors.append(exc)
                ready.set()

            self._loop.run_until_complete(boot())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="amqtt", daemon=True)
        self._thread.start()
        ready.wait(20)
        if errors:
            raise BrokerError(f"embedded broker failed to start: {errors[0]}")
        wait_port(self.host, self.port)
        return self

    def stop(self) -> None:
        import asyncio

        if self._broker and self._loop:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._broker = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
