"""Read a board back and report its drift from the fleet registry.

`verify(port, registry)` probes the board over mpremote (the same raw-REPL probe as
provisioning: every firmware file's sha256, its hardware id), reads its config.json,
finds the device in the registry (by the config's device id, else by hardware id) and
compares:
- files: changed (hash differs), missing, extra (in the firmware's folder /lib/lanterne, a /lib copy of a module the ROM has, a file in /rom the image lacks,
  a stale .py that would shadow a .mpy, a temp file left by an interrupted provisioning);
- config: every field against the registry's config plus the device's secrets (a secret
  that differs is named, its values never shown); a value the firmware's schema rejects is
  shown as config.json holds it, with the schema's reason; a command key rotated by command
  (kept in /cmdstate.json, and in the registry) is the key in effect;
- hardware: the board is not the one the registry has for this device.
Config fields an installer changed on site with the setup page (the board's field.json names
them) are reported apart, as field changes: recorded in the registry, and no longer differences
once `lanterne registry accept DEVICE` adopted them.
Every finding comes with the command that resolves it (`Finding.run`).
Then it resets the board so its application runs again (as after provisioning).
Files outside / and /lib (the store's data) are the board's own and are not compared.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from host_tools import boards
from host_tools.fleet import ProvisionError
from host_tools.fleet.boardlink import BoardLink
from host_tools.fleet.config import firmware_config
from host_tools.fleet.deploy import MpyCross, build_image, firmware_hash, managed_extra, manifest, parse_mpy
from host_tools.fleet.registry import DEFAULT_PATH, SECRET_FIELDS, Registry
from host_tools.runtime import firmware_module

VerifyError = ProvisionError
CMD_STATE = "/cmdstate.json"  # the board's command state (firmware/lanterne/control.py): counter, rotated key


@dataclass
class ConfigDiff:
    field: str
    board: object  # the value in the board's config.json (None: not there)
    registry: object
    secret: bool = False
    rejected: str | None = None  # why the firmware's schema refuses the file's value (the board does not use it)

    def text(self) -> str:
        if self.secret:
            state = "missing on the board" if self.board is None else "not in the registry" if self.registry is None else "differs"
            if self.rejected:
                state = f"rejected by the schema ({self.rejected})"
            return f"config field '{self.field}' (secret): {state}"
        if self.rejected:
            return (f"config field '{self.field}': config.json holds {self.board!r}, which the schema rejects"
                    f" ({self.rejected}), so the board does not use it; registry {self.registry!r}")
        if self.board is None:
            return f"config field '{self.field}': missing on the board (registry: {self.registry!r})"
        if self.registry is None:
            return f"config field '{self.field}': on the board ({self.board!r}) but not in the registry"
        return f"config field '{self.field}': board {self.board!r}, registry {self.registry!r}"

    def to_json(self) -> dict:
        if self.secret:
            return {"field": self.field, "secret": True, "board_has": self.board is not None, "registry_has": self.registry is not None,
                    "rejected": self.rejected}
        return {"field": self.field, "board": self.board, "registry": self.registry, "rejected": self.rejected}


@dataclass
class Finding:
    """One difference from the registry, and the command that resolves it."""

    text: str
    run: str

    def to_json(self) -> dict:
        return {"text": self.text, "run": self.run}


@dataclass
class VerifyReport:
    port: str
    device: str
    board: str
    hw_id: str
    files_checked: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    config: list[ConfigDiff] = field(default_factory=list)
    field_changes: list[ConfigDiff] = field(default_factory=list)  # made on site, not accepted yet
    problems: list[str] = field(default_factory=list)  # drift that is neither a file nor a config field
    notes: list[str] = field(default_factory=list)  # worth knowing, not drift
    registry_flag: str = ""  # " --registry FILE" when not the default one: part of every command suggested
    problem_runs: dict[str, str] = field(default_factory=dict)  # problem -> what to run, when not a plain re-provisioning

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.extra or self.config or self.field_changes or self.problems)

    @property
    def drift_count(self) -> int:
        return len(self.changed) + len(self.missing) + len(self.extra) + len(self.config) + len(self.problems)

    def _provision(self, more: str = "") -> str:
        return f"lanterne provision --port {self.port} --device {self.device}{more}{self.registry_flag}"

    def findings(self) -> list[Finding]:
        """Every difference, each with what to run next."""
        again = self._provision()
        out = [Finding(f"changed: {p}", again) for p in self.changed]
        out += [Finding(f"missing: {p}", again) for p in self.missing]
        out += [Finding(f"extra:   {p}", again) for p in self.extra]
        out += [Finding(p, self.problem_runs.get(p, again)) for p in self.problems]
        choices = []
        for d in self.config:
            if d.secret or d.rejected or d.board is None:
                out.append(Finding(d.text(), again))  # the registry's (valid) value onto the board
            else:
                keep = json.dumps(d.board) if not isinstance(d.board, str) else d.board
                choices.append(Finding(d.text(), f"{again} (the registry's value onto the board), or"
                                                 f" {self._provision(f' --set {d.field}={keep}')} (keep the board's)"))
        for d in self.field_changes:  # made on site with the setup page: adopt them, or put the registry's back
            out.append(Finding(f"field change (setup page): {d.text()[len('config field '):]}",
                               f"lanterne registry accept {self.device}{self.registry_flag} (intended: adopt it), or {again}"
                               " (the registry's value back onto the board)"))
        return out + choices  # those with a choice last: the others share one `run:` line

    def lines(self) -> list[str]:
        head = f"{self.device} on {self.port} ({self.board}, hardware id {self.hw_id or '?'}): "
        if self.ok:
            state = "matches the registry"
        elif not self.drift_count:
            state = f"{len(self.field_changes)} field change(s) made on site, not accepted yet"
        else:
            state = f"{self.drift_count} difference(s) from the registry"
        out = [head + state]
        found = self.findings()
        for i, f in enumerate(found):
            out.append(f"  {f.text}")
            if i + 1 == len(found) or found[i + 1].run != f.run:  # findings fixed by the same command share its line
                out.append(f"    run: {f.run}")
        out += [f"  note: {n}" for n in self.notes]
        return out

    def to_json(self) -> dict:
        return {
            "port": self.port, "device": self.device, "board": self.board, "hw_id": self.hw_id, "ok": self.ok,
            "files_checked": self.files_checked, "changed": self.changed, "missing": self.missing, "extra": self.extra,
            "config": [d.to_json() for d in self.config], "field_changes": [d.to_json() for d in self.field_changes],
            "problems": self.problems, "notes": self.notes, "findings": [f.to_json() for f in self.findings()],
        }


def _config_diffs(board_cfg: dict, expected: dict) -> list[ConfigDiff]:
    """Differences in effect: a field left out counts as its default (the board runs on it). A field
    the schema rejects is shown with the file's value and the schema's reason, whatever the board falls back to."""
    schema = firmware_config()
    board_eff, errors = schema.validate(board_cfg)
    want_eff, _ = schema.validate(expected)
    rejected = {}
    for e in errors:
        m = re.match(r"[^:]*: field '([^']+)': (.*)", e)
        if m and m.group(1) in board_cfg and m.group(1) in schema.SCHEMA:
            why = m.group(2)
            rejected.setdefault(m.group(1), re.sub(r", got .*", "", why) if m.group(1) in SECRET_FIELDS else why)
    diffs = []
    for key in sorted(set(board_cfg) | set(expected)):
        if key not in schema.SCHEMA:
            continue  # reported by the schema check
        have, want = board_eff.get(key), want_eff.get(key)
        if key in SECRET_FIELDS:
            have, want = board_cfg.get(key), expected.get(key)
        if key in rejected:
            diffs.append(ConfigDiff(key, board_cfg[key], expected.get(key, want), secret=key in SECRET_FIELDS, rejected=rejected[key]))
            continue
        if isinstance(have, int | float) and isinstance(want, int | float) and not isinstance(have, bool):
            same = float(have) == float(want)
        else:
            same = have == want
        if not same:
            diffs.append(ConfigDiff(key, have, want, secret=key in SECRET_FIELDS))
    return diffs


def verify(
    port: str,
    registry: Registry | str | Path,
    *,
    connect_timeout: float = 5.0,
    restart: bool = True,
    check_checkout: bool = True,
    mpy_cross: str | Path | MpyCross | None = None,
) -> VerifyReport:
    """Compare the board on `port` with the registry; see the module docstring. Raises `ProvisionError`."""
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    link = BoardLink(port, timeout=connect_timeout)
    try:
        info = link.probe()
        board_cfg, cfg_problem = None, None
        if "/config.json" in info.files:
            try:
                board_cfg = json.loads(link.read_file("/config.json"))
                if not isinstance(board_cfg, dict):
                    board_cfg, cfg_problem = None, "config.json is not a JSON object"
            except ValueError as exc:
                cfg_problem = f"config.json is not valid JSON ({exc})"
        else:
            cfg_problem = "config.json is missing"
        rotated_key = None  # a command key rotated by command lives in the command state, beside the config
        if CMD_STATE in info.files:
            try:
                rotated_key = json.loads(link.read_file(CMD_STATE)).get("key") or None
            except (ValueError, AttributeError):
                rotated_key = None  # the board starts afresh from an unreadable state: its config's key is in effect
        field_doc = None
        if "/field.json" in info.files:
            try:
                field_doc = json.loads(link.read_file("/field.json"))
            except ValueError:
                field_doc = None
        named = board_cfg.get("device") if board_cfg else None
        rec = reg.get(named) if isinstance(named, str) else None
        if rec is None and info.hw_id:
            rec = reg.by_hw_id(info.hw_id)
        if rec is None:
            raise ProvisionError(
                f"the board on {port} is not in the registry {reg.path}"
                + (f" (its config.json says device {named!r}" if named else " (no device id in its config")
                + f", hardware id {info.hw_id or '?'})",
                hint="provision it (lanterne provision), or point --registry at the fleet's registry",
            )
    finally:
        link.close(restart=restart)  # the application runs again (soft reboot from the friendly REPL)

    rep = VerifyReport(port, rec.id, rec.board, info.hw_id)
    if reg.path != Path(DEFAULT_PATH):
        rep.registry_flag = f" --registry {reg.path}"
    expected_files = rec.files
    if not expected_files:
        rep.problems.append("the registry has no file list for this device: it was registered but never provisioned")
    on_board = {p: f for p, f in info.files.items() if f.sha256 or p in expected_files}
    rep.files_checked = len(expected_files)
    for path, digest in sorted(expected_files.items()):
        if path not in on_board:
            rep.missing.append(path)
        elif on_board[path].sha256 != digest and path != "/config.json":
            rep.changed.append(path)
    if expected_files:
        rep.extra = sorted(p for p in info.files if managed_extra(p, expected_files))
    if cfg_problem:
        rep.problems.append(cfg_problem)
    else:
        schema = firmware_config()
        expected = dict(rec.config)
        for name in reg.secret_names(rec.id):
            if name in schema.SCHEMA:
                expected[name] = reg.secret(rec.id, name)
        in_effect = dict(board_cfg)
        if rotated_key and "command_key" in in_effect:
            in_effect["command_key"] = rotated_key  # `lanterne command DEVICE rotate-key`: the registry has it too
        diffs = _config_diffs(in_effect, expected)
        editable = firmware_module("field").EDITABLE
        on_site = set((field_doc or {}).get("fields") or {}) & set(editable)
        rep.field_changes = [d for d in diffs if d.field in on_site and not d.rejected]
        rep.config = [d for d in diffs if d not in rep.field_changes]
        if isinstance(field_doc, dict) and field_doc.get("fields"):
            reg.record_field_changes(rec.id, field_doc)
            _seen, accepted = reg.field_changes(rec.id)
            names = ", ".join(sorted(field_doc["fields"]))
            if accepted == field_doc.get("hash") and not rep.field_changes:
                rep.notes.append(f"field changes made on site ({names}; {field_doc.get('n')} save(s)) accepted into the registry")
        _cfg, errors = schema.validate(board_cfg, "config.json")
        shown = {d.field for d in rep.config if d.rejected}
        rep.problems += [f"board config rejected by the schema: {e}" for e in errors
                         if not any(f"field '{name}'" in e for name in shown)]
        if "/config.json" in expected_files and on_board.get("/config.json") and not rep.config:
            if on_board["/config.json"].sha256 != expected_files["/config.json"]:
                rep.notes.append("config.json is formatted differently from what was written (same values)")
    if rec.hw_id and info.hw_id and rec.hw_id != info.hw_id:
        swapped = f"hardware: the registry has {rec.id} on hardware id {rec.hw_id}, this board is {info.hw_id} (board swapped?)"
        rep.problems.append(swapped)
        rep.problem_runs[swapped] = rep._provision(" --replace") + f" (this board becomes {rec.id})"
    if check_checkout and rec.firmware_hash:
        try:
            cross = mpy_cross if isinstance(mpy_cross, MpyCross) else MpyCross(mpy_cross)
            # Built as it was provisioned: for this board's native arch, the library in ROMFS or not.
            romfs = any(p.startswith("/rom/") for p in rec.files)
            march = parse_mpy(info.mpy)[2] if info.mpy else ""
            current = manifest(build_image(boards.load(rec.board), cross, march, romfs))
            if firmware_hash(current) != rec.firmware_hash:
                rep.notes.append(f"this checkout's firmware differs from the one provisioned: {rep._provision()} updates it")
        except (ProvisionError, boards.BoardError) as exc:
            rep.notes.append(f"could not build this checkout's firmware to compare: {exc}")
    return rep
