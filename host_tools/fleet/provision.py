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
   on a board whose firmware drives a LoRaWAN modem, writes the modem's settings and identity
   over AT and reads them back (`modem`);
5. hard-resets the board and waits for its first live retained status on the broker
   (device id and board must match), reading the board's console meanwhile so that a
   refusal (bad credentials, unreachable broker) is reported in its own words.

Fleets from a CSV: `fleet_csv.provision_fleet`. The image: `deploy`. The config's rules:
`config`. The first status: `first_status`.

Every error is a `ProvisionError`: one line, a hint, and nothing half-written on the board.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from host_tools import boards
from host_tools.fleet import PORT_HINT, ProvisionError, missing_port
from host_tools.fleet.boardlink import TMP_SUFFIX, BoardFile, BoardLink
from host_tools.fleet.config import (
    DEFAULT_BROKER,
    board_transport,
    check_config,
    config_bytes,
    firmware_config,
    transport_gap,
)
from host_tools.fleet.deploy import (
    OTA_KEYS_FILE,
    ROM_DIR,
    MpyCross,
    _image,
    firmware_hash,
    managed_extra,
    manifest,
    parse_mpy,
    rom_part,
    romfs_image,
    sha256_hex,
    stale_dirs,
    trusted_keys_file,
)
from host_tools.fleet.first_status import StatusWaiter, diagnose
from host_tools.fleet.modem import ModemReport, modem_spec, uses_modem, write_modem
from host_tools.fleet.registry import DEFAULT_PATH, RESERVED_IDS, SECRET_FIELDS, Registry, RegistryError


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
        return self.board.data["network"]["kind"] == "lorawan" or bool(self.board.data.get("lorawan"))

    @property
    def mqtt(self) -> bool:
        """The board reports over MQTT, so its first status can be awaited on the broker."""
        return self.config.get("transport", "mqtt") in ("mqtt", "failover")


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
    warnings: list[str] = field(default_factory=list)  # provisioned, but a user must know (a transport not there yet)
    modem: ModemReport | None = None  # a LoRaWAN board's modem, as written and read back

    def summary(self, warnings: bool = True) -> str:
        # Files counted as the plan counts them: every file of the image, the ROMFS image's all when it is written.
        n, rom = len(self.files_sent), sum(p.startswith(ROM_DIR + "/") for p in self.files_sent)
        where = f"{n - rom} to the filesystem" + (f", {rom} in the ROMFS image" if rom else "")
        sent = f"{n} file{'s' * (n != 1)} sent ({where}; {self.bytes_sent / 1024:.1f} KiB on the wire)"
        state = "online" if self.status else "reset, first status not awaited"
        if self.status:
            state = f"online (fw {self.status.get('fw')}, heap free {self.status.get('heap_free')})"
            if self.status.get("faults"):
                state += f", reporting faults: {'; '.join(map(str, self.status['faults']))}"
        return (
            f"{self.device} on {self.port}: {sent}, {self.files_unchanged} unchanged"
            + (f", {len(self.files_removed)} stale removed" if self.files_removed else "")
            + f"; {state} in {self.seconds:.1f} s"
            + (f"\n  {self.modem.summary()}" if self.modem else "")
            + "".join(f"\n  warning: {w}" for w in (self.warnings if warnings else ()))
        )

    def to_json(self) -> dict:
        return {
            "device": self.device, "port": self.port, "board": self.board, "site": self.site,
            "micropython": self.micropython, "mpy": self.mpy, "hw_id": self.hw_id,
            "files_sent": self.files_sent, "files_unchanged": self.files_unchanged,
            "files_removed": self.files_removed, "bytes_sent": self.bytes_sent, "payload_bytes": self.payload_bytes,
            "romfs_blocks": self.romfs_blocks,
            "firmware_hash": self.firmware_hash, "status": self.status, "seconds": round(self.seconds, 3),
            "phases": {k: round(v, 3) for k, v in self.phases.items()}, "warnings": self.warnings,
            "modem": self.modem.to_json() if self.modem else None,
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
    if board_transport(board_obj) != "mqtt":
        config.setdefault("transport", board_transport(board_obj))  # no IP link, or a LoRaWAN modem beside it
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
    trusted_keys: list[bytes] | None = None,
    release_store=None,
    skip_modem: bool = False,
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
            trusted_keys=trusted_keys, release_store=release_store, skip_modem=skip_modem,
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


def check_port(req: Request) -> None:
    """The request's serial port exists: checked first, before the broker, as without the board nothing else matters."""
    if not req.port:
        raise ProvisionError(f"{req.device}: no serial port given", hint="pass --port (or fill the CSV's port column)", field="port")
    if missing_port(req.port):
        raise ProvisionError(f"no serial port {req.port}", hint=PORT_HINT, field="port")


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
    trusted_keys: list[bytes] | None = None,
    release_store=None,
    skip_modem: bool = False,
) -> ProvisionReport:
    """`trusted_keys`: the release signing keys the board trusts (ota/keys.json); `release_store`
    (a host_tools.fleet.release.store.ReleaseStore): keeps the ROMFS image written, so the first
    over-the-air update of this board can be a delta against it. `skip_modem`: leave a LoRaWAN
    modem's identity to the firmware's first connect (a modem not fitted yet), with a warning."""
    say = log or (lambda msg: None)
    t0 = time.monotonic()
    check_port(req)
    rep = ProvisionReport(req.device, req.port, req.board.name, req.site)
    gap = transport_gap(req.config.get("transport", "mqtt"))
    if gap:
        rep.warnings.append(f"{req.device}: {gap}")
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
            if trusted_keys:
                image["/" + OTA_KEYS_FILE] = trusted_keys_file(trusted_keys)
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
            rom_image = romfs_image(rom_part(image)) if in_rom else b""
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
            # Counted as the result counts them (`summary`): every file of the image; the ROMFS image's
            # files all count when it is written (only its blocks that differ travel).
            where = f"{len(changed)} to the filesystem ({fs_bytes / 1024:.1f} KiB)"
            if in_rom:
                where += (f", {len(in_rom)} in the ROMFS image ({len(rom_image) / 1024:.1f} KiB)" if rom_changed
                          else f"; the ROMFS image ({len(in_rom)} files) unchanged")
            say(f"{len(changed) + len(sent_rom)} of {len(files)} files to send: {where}; {len(stale)} stale to remove")
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
                # Slot A holds this image now: forget the slot state (an earlier update's slot B, a
                # trial, a transfer), so that the boot selector adopts slot A as written (docs/ota.md).
                link.reset_ota_state()
                if release_store is not None:
                    release_store.add_image(rom_image)
            # 3. Into place, config.json last; stale files, then their emptied folders.
            link.commit([(p + TMP_SUFFIX, p) for p in changed], stale, old_dirs)
            rep.files_sent, rep.files_removed = rep.files_sent + changed, stale
            rep.phases["transfer"] = time.monotonic() - t1
            reg.add_or_update(
                req.device, port=req.port, hw_id=info.hw_id or None, firmware_hash=rep.firmware_hash, files=files, state="provisioned"
            )
            if uses_modem(req.board.data, full):  # the files are in place; the modem now (fleet/modem.py)
                if skip_modem:
                    spec = modem_spec(req.board.data)
                    rep.modem = ModemReport(f"{spec.get('modem', 'rak3172')} on {spec['bus']}", skipped=True)
                    rep.warnings.append(f"{req.device}: LoRaWAN modem not checked (--skip-modem): the firmware writes its"
                                        " identity at its first connect")
                else:
                    t3 = time.monotonic()
                    try:
                        rep.modem = write_modem(link, req.device, req.board.data, full, say)
                    except ProvisionError:
                        reg.add_or_update(req.device, state="modem-unwritten")
                        raise
                    rep.phases["modem"] = time.monotonic() - t3
            say("resetting the board")
            t2 = time.monotonic()
            link.hard_reset()
            rep.bytes_sent = link.serial.sent
            if status_waiter is not None:
                topic = f"lanterne/v1/{req.site}/{req.device}/status"
                say(f"waiting for its status on {topic}")
                doc = status_waiter.wait(topic, t2, status_timeout, poll=link.read_console)
                if doc is None:
                    message, hint = diagnose(link.read_console(), req.device)
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


