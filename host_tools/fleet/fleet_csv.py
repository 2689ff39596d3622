"""Provision a fleet from a CSV: every row checked first (errors with their line number), then in parallel.

`read_fleet_csv` reads and checks the file; `provision_fleet` registers every good row and
provisions them one thread per port, sharing one image per board type and one status waiter
per broker.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from host_tools.fleet import ProvisionError
from host_tools.fleet.config import FLAG_FIELDS, coerce, firmware_config
from host_tools.fleet.deploy import MpyCross
from host_tools.fleet.first_status import StatusWaiter
from host_tools.fleet.provision import (
    ProvisionReport,
    Request,
    _open_registry,
    check_port,
    make_request,
    register,
    run_request,
)
from host_tools.fleet.registry import Registry, RegistryError

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
    trusted_keys: list[bytes] | None = None,
    release_store=None,
    skip_modem: bool = False,
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

    # Every row checked on its own first: a request, or why not.
    checked: list[tuple[int, dict | None, Request | None, ProvisionError | str | None]] = []
    for line, cells, error in raw:
        if error:
            checked.append((line, None, None, error))
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
            checked.append((line, cells, None, exc))
            continue
        req.line = line
        checked.append((line, cells, req, None))

    # Duplicates: a device id or a port on two rows is ambiguous (which row is right?), so every
    # such row is refused, whether or not the row is otherwise valid. A row with the wrong number
    # of fields has no columns to compare and is refused on its own.
    duplicate: dict[int, str] = {}
    for column, what in (("device", "device id"), ("port", "port")):
        seen: dict[str, list[int]] = {}
        for line, cells, _req, _error in checked:
            value = (cells or {}).get(column, "")
            if value:
                seen.setdefault(value, []).append(line)
        for value, lines in seen.items():
            if len(lines) > 1:
                for n in lines:
                    others = ", ".join(str(o) for o in lines if o != n)
                    duplicate.setdefault(n, f"duplicate {what} {value!r} (also on line {others})")

    for line, cells, req, error in checked:
        device, port = (cells or {}).get("device", ""), (cells or {}).get("port", "")
        if line in duplicate:
            own = f"; the row is also invalid: {error}" if error else ""
            fail(line, device, port, duplicate[line] + own, "each device and each port on one row only; nothing of these rows is done")
        elif error:
            fail(line, device, port, error, None if isinstance(error, ProvisionError) else "fix the row; the other rows are provisioned")
        else:
            requests.append(req)

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
            check_port(req)
            if req.mqtt and req.broker in waiter_errors:
                raise waiter_errors[req.broker]
            rep = run_request(
                req, reg, wait_status=wait_status, replace=replace, status_timeout=status_timeout,
                connect_timeout=connect_timeout, mpy_cross=cross, status_waiter=waiters.get(req.broker), images=images,
                trusted_keys=trusted_keys, release_store=release_store, skip_modem=skip_modem,
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
