"""The actions of `lanterne command`: their words, arguments, help, and the firmware's own checks.

`parse(word, words, ...)` turns what a person typed into the opcode and argument dict that
`lanterne.commands.build` signs, or raises `ActionError` saying what is wrong, the valid range
and what was probably meant. Nothing is sent for a value the board would refuse, and the host
cannot disagree with the board about it: a value is checked by encoding it with the firmware's
`lanterne.commands.encode_args` and decoding it with the board's own `decode_args` (and, for
a config field, the firmware's config schema, which the board's `set_config` applies). The
ranges printed in messages and help are found the same way: the values those checks accept
(every bounded argument accepts one interval of whole numbers), so they change with the
firmware and are never written down twice.

`config_change(action, args)` is what an acknowledged command changed in the device's config
(`set-period`, `set-config`), as the board stores it: the registry records it.
"""

from __future__ import annotations

import difflib
import secrets
import struct
from dataclasses import dataclass

from host_tools.fleet.config import firmware_config
from host_tools.runtime import firmware_module

cmd = firmware_module("commands")

INT_MIN, UINT_MAX = -(2**31), 2**32 - 1


class ActionError(ValueError):
    """A command refused on the host, before anything is sent: one line and a hint."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Arg:
    key: str  # in lanterne.commands' argument dict
    name: str  # as the person writes it: LEVEL, --ramp
    unit: str = ""
    note: str = ""


@dataclass(frozen=True)
class Action:
    word: str
    opcode: int
    usage: str  # the arguments as typed
    help: str
    numbers: tuple[Arg, ...] = ()  # whole-number arguments whose range the firmware decides


ACTIONS: dict[str, Action] = {
    a.word: a
    for a in (
        Action("dim", cmd.SET_LAMP, "LEVEL [--ramp S] [--duration MIN]", "set the lamp to LEVEL %, overriding its profile",
               (Arg("level", "LEVEL", "%"), Arg("ramp_s", "--ramp", "s"), Arg("duration_min", "--duration", "min", "0: until another command"))),
        Action("resume-profile", cmd.RESUME_PROFILE, "", "back to the lamp profile (after dim)"),
        Action("set-profile", cmd.SET_PROFILE, "START-END:LEVEL ...",
               "the night's dimming steps, local time, e.g. 23:00-05:00:50", (Arg("level", "LEVEL", "%"),)),
        Action("bollard", cmd.BOLLARD, "raise|lower", "raise or lower the bollard"),
        Action("set-period", cmd.SET_PERIOD, "sample|status SECONDS",
               "how often the board samples its sensors, or sends its status", (Arg("seconds", "SECONDS", "s"),)),
        Action("status", cmd.REQUEST_STATUS, "", "ask for a status message now"),
        Action("reboot", cmd.REBOOT, "[DELAY_S]", "reboot the board after DELAY_S seconds (default 1)",
               (Arg("delay_s", "DELAY_S", "s"),)),
        Action("set-config", cmd.SET_CONFIG, "KEY VALUE", "change one config field the board allows by command"),
        Action("rotate-key", cmd.ROTATE_KEY, "", "derive a new command key on both sides (no key travels)"),
    )
}
BY_OPCODE = {a.opcode: a.word for a in ACTIONS.values()}
PERIOD_FIELDS = {"sample": "sample_period_s", "status": "status_period_s"}
CHOICES = {"bollard": ("raise", "lower"), "set-period": tuple(PERIOD_FIELDS)}


def word_for(opcode: int) -> str:
    """The action's word for an opcode (what the person typed), else the firmware's name."""
    return BY_OPCODE.get(opcode) or cmd.NAMES.get(opcode, f"0x{opcode:02x}")


def _did_you_mean(word: str, options, aliases: dict[str, str] | None = None) -> str:
    if aliases and word.lower() in aliases:
        return f"did you mean '{aliases[word.lower()]}'?"
    close = difflib.get_close_matches(word.lower(), list(options) + list(aliases or ()), n=1, cutoff=0.6)
    if close:
        return f"did you mean '{(aliases or {}).get(close[0], close[0])}'?"
    return ""


# The firmware's opcode names (set_lamp, request_status ...) as a person might type them.
_ALIASES = {alias: a.word for a in ACTIONS.values() for n in [cmd.NAMES[a.opcode]] for alias in (n, n.replace("_", "-"))
            if alias != a.word}


def find(word: str) -> Action:
    """The action named `word`, or ActionError with the closest one."""
    if word in ACTIONS:
        return ACTIONS[word]
    guess = _did_you_mean(word, ACTIONS, _ALIASES)
    raise ActionError(f"unknown action {word!r}" + (f": {guess}" if guess else ""),
                      hint="actions: " + ", ".join(ACTIONS) + " (`lanterne command --help` shows their arguments)")


# -- the firmware's checks, and the ranges they accept -----------------------------------------
def _schema_why(key: str, value, base: dict | None = None) -> str | None:
    """What the firmware's config schema says against `key`=`value` (None: accepted), as the board's set_config checks it."""
    _cfg, errors = firmware_config().validate({**(base or {}), key: value}, "config")
    mine = [e.split(": ", 2)[-1] for e in errors if f"'{key}'" in e]
    return mine[0] if mine else None


def _board_check(action: Action, args: dict) -> str | None:
    """Why the board would refuse `args` (None: it accepts them): its own decode_args, and the schema behind set-period."""
    try:
        decoded = cmd.decode_args(action.opcode, cmd.encode_args(action.opcode, args))
    except cmd.CommandError as exc:
        return exc.detail or str(exc)
    except (struct.error, OverflowError, TypeError, ValueError, KeyError):
        return "does not fit the command's field"
    if action.opcode == cmd.SET_PERIOD:  # the board applies it as a config field (lanterne/app.py)
        return _schema_why(PERIOD_FIELDS[decoded["what"]], decoded["seconds"])
    return None


def _interval(ok) -> tuple[int, int] | None:
    """The whole numbers `ok` accepts, as (low, high): it accepts one interval (None: no seed found)."""
    seed = next((v for v in (0, 1, 5, 60, 3600) if ok(v)), None)
    if seed is None:
        return None

    def edge(inside: int, outside: int) -> int:
        if ok(outside):
            return outside
        while abs(outside - inside) > 1:
            mid = (inside + outside) // 2
            inside, outside = (mid, outside) if ok(mid) else (inside, mid)
        return inside

    return edge(seed, INT_MIN), edge(seed, UINT_MAX)


def _args_with(action: Action, args: dict, key: str, value: int) -> dict:
    if action.opcode == cmd.SET_PROFILE:  # one step, the others as given: the level's range is per step
        return {**args, "steps": [(0, 0, value)]}
    return {**args, key: value}


def number_range(action: Action, arg: Arg, args: dict | None = None) -> tuple[int, int] | None:
    """The values of `arg` the board accepts, the other arguments as in `args`."""
    base = dict(args or _defaults(action))
    return _interval(lambda v: _board_check(action, _args_with(action, base, arg.key, v)) is None)


def config_range(key: str) -> tuple[int, int] | None:
    """The whole numbers the firmware's config schema accepts for `key` on its own (rules between
    fields, such as bin_full_mm < bin_empty_mm, are checked against the device's config in `parse`)."""
    config = firmware_config()
    kind = config.SCHEMA[key][0]
    return _interval(lambda v: config.check(key, float(v) if kind is float else v) is None)


def _span(r: tuple[int, int] | None, unit: str = "") -> str:
    return "?" if r is None else f"{r[0]}..{r[1]}" + (f" {unit}" if unit else "")


def _defaults(action: Action) -> dict:
    return {
        cmd.SET_LAMP: {"level": 0, "ramp_s": 0, "duration_min": 0},
        cmd.SET_PROFILE: {"steps": [(0, 0, 0)]},
        cmd.SET_PERIOD: {"what": "sample", "seconds": 60},
        cmd.REBOOT: {"delay_s": 1},
    }.get(action.opcode, {})


# -- parsing what was typed ---------------------------------------------------------------------
def _whole(action: Action, name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ActionError(f"{action.word}: {name} must be a whole number, got {text!r}", hint=usage_hint(action)) from None


def _choice(action: Action, name: str, text: str) -> str:
    options = CHOICES[action.word]
    if text in options:
        return text
    guess = _did_you_mean(text, options)
    raise ActionError(f"{action.word}: {name} is {' or '.join(options)}, got {text!r}" + (f": {guess}" if guess else ""),
                      hint=usage_hint(action))


def _hhmm(action: Action, text: str) -> int:
    h, sep, m = text.partition(":")
    try:
        value = int(h) * 60 + int(m or 0)
        if sep and not (0 <= int(h) <= 23 and 0 <= int(m) <= 59):
            raise ValueError
    except ValueError:
        raise ActionError(f"{action.word}: {text!r} is not a time of day (HH:MM, 00:00..23:59)", hint=usage_hint(action)) from None
    if not 0 <= value < 1440:
        raise ActionError(f"{action.word}: {text!r} is not a time of day (HH:MM, 00:00..23:59)", hint=usage_hint(action))
    return value


def usage_hint(action: Action) -> str:
    return f"usage: lanterne command DEVICE {action.word} {action.usage}".rstrip() + f"  (lanterne command {action.word} --help)"


def _config_value(action: Action, key: str, text: str, base: dict | None):
    schema = firmware_config().SCHEMA
    if key not in cmd.CONFIG_ALLOW:
        if key in schema:
            raise ActionError(f"set-config: {key!r} may not be set by command (allowed: {', '.join(cmd.CONFIG_ALLOW)})",
                              hint=f"change it on the board with `lanterne provision --port PORT --device DEVICE --set {key}=...`")
        guess = _did_you_mean(key, cmd.CONFIG_ALLOW)
        raise ActionError(f"set-config: unknown config field {key!r}" + (f": {guess}" if guess else ""),
                          hint="fields a command may set: " + ", ".join(cmd.CONFIG_ALLOW))
    kind = schema[key][0]
    try:
        value = int(text) if kind is int else float(text) if kind is float else text
    except ValueError:
        raise ActionError(f"set-config: {key} must be a {'whole number' if kind is int else 'number'}, got {text!r}",
                          hint=usage_hint(action)) from None
    why = _schema_why(key, value, base)
    if why:
        raise ActionError(f"set-config: {key} {text}: {why}", hint="`lanterne command set-config --help` lists the fields and their ranges")
    return value


def parse(word: str, words: list[str], *, ramp: int = 0, duration: int = 0, config: dict | None = None) -> tuple[Action, dict]:
    """What was typed -> (action, arguments for lanterne.commands.build). Raises ActionError.

    `config`: the device's config as the registry knows it (set-config checks a value against it,
    as the board checks against its own)."""
    action = find(word)
    n = len(words)
    fixed = {"dim": 1, "set-period": 2, "bollard": 1, "set-config": 2, "resume-profile": 0, "status": 0, "rotate-key": 0}
    if (word in fixed and n != fixed[word]) or (word == "reboot" and n > 1) or (word == "set-profile" and n == 0):
        got = " ".join(words) or "nothing"
        raise ActionError(f"{word} takes {action.usage or 'no arguments'}, got {got}", hint=usage_hint(action))
    if word == "dim":
        args = {"level": _whole(action, "LEVEL", words[0]), "ramp_s": ramp, "duration_min": duration}
    elif word == "set-profile":
        steps = []
        for step in words:
            window, _, level = step.rpartition(":")
            start, sep, end = window.partition("-")
            if not sep:
                raise ActionError(f"set-profile: {step!r} is not START-END:LEVEL (e.g. 23:00-05:00:50)", hint=usage_hint(action))
            steps.append((_hhmm(action, start), _hhmm(action, end), _whole(action, "LEVEL", level)))
        args = {"steps": steps}
    elif word == "bollard":
        args = {"action": _choice(action, "the action", words[0])}
    elif word == "set-period":
        args = {"what": _choice(action, "the period", words[0]), "seconds": _whole(action, "SECONDS", words[1])}
    elif word == "reboot":
        args = {"delay_s": _whole(action, "DELAY_S", words[0]) if words else 1}
    elif word == "set-config":
        args = {"key": words[0], "value": _config_value(action, words[0], words[1], config)}
    elif word == "rotate-key":
        args = {"nonce": secrets.token_bytes(16)}
    else:
        args = {}
    _check(action, args)
    return action, args


def _check(action: Action, args: dict) -> None:
    why = _board_check(action, args)
    if why is None:
        return
    for arg in action.numbers:  # name the argument that is out, with the range the board takes
        # ... each on its own: the other numbers at values the board takes, the rest as typed
        base = {**args, **{a.key: _defaults(action)[a.key] for a in action.numbers if a is not arg and a.key in args}}
        values = [s[2] for s in args["steps"]] if action.opcode == cmd.SET_PROFILE else [args[arg.key]]
        for value in values:
            if _board_check(action, _args_with(action, base, arg.key, value)) is not None:
                valid = number_range(action, arg, base)
                what = f" {args['what']}" if action.opcode == cmd.SET_PERIOD else ""
                raise ActionError(f"{action.word}{what}: {arg.name} {value} is out of range: {_span(valid, arg.unit)}",
                                  hint=usage_hint(action))
    raise ActionError(f"{action.word}: {why}", hint=usage_hint(action))


# -- what an acknowledged command changed --------------------------------------------------------
def config_change(action: Action, args: dict) -> dict:
    """The config fields an acknowledged command changed on the board, with the values the board stored."""
    if action.opcode not in (cmd.SET_PERIOD, cmd.SET_CONFIG):
        return {}
    decoded = cmd.decode_args(action.opcode, cmd.encode_args(action.opcode, args))  # what the board received
    if action.opcode == cmd.SET_PERIOD:
        return {PERIOD_FIELDS[decoded["what"]]: decoded["seconds"]}
    return {decoded["key"]: decoded["value"]}


# -- help ------------------------------------------------------------------------------------------
def action_help(action: Action) -> str:
    """What `lanterne command ACTION --help` prints: usage, what it does, each argument's range."""
    lines = [f"lanterne command DEVICE {action.word} {action.usage}".rstrip(), f"  {action.help}"]
    if action.opcode == cmd.SET_PERIOD:
        for what, key in PERIOD_FIELDS.items():
            r = number_range(action, action.numbers[0], {"what": what, "seconds": 60})
            lines.append(f"  SECONDS for {what}: {_span(r, 's')} (config field {key}; default "
                         f"{firmware_config().SCHEMA[key][1]} s)")
    elif action.opcode == cmd.SET_CONFIG:
        lines.append("  KEY, and the values the board's config schema takes:")
        for key in cmd.CONFIG_ALLOW:
            kind, default, _check_fn = firmware_config().SCHEMA[key]
            lines.append(f"    {key:16s} {_span(config_range(key))} ({'number' if kind is float else 'whole number'},"
                         f" default {default})")
    else:
        for arg in action.numbers:
            lines.append(f"  {arg.name}: {_span(number_range(action, arg), arg.unit)}" + (f" ({arg.note})" if arg.note else ""))
    if action.opcode == cmd.SET_PROFILE:
        lines.append("  START, END: local time HH:MM, 00:00..23:59; a window may cross midnight")
    return "\n".join(lines)


def actions_table() -> str:
    """Every action with its arguments and their ranges: the end of `lanterne command --help`."""
    out = ["actions (ranges are the firmware's own checks; `lanterne command ACTION --help` for one):"]
    for action in ACTIONS.values():
        head, *rest = action_help(action).splitlines()
        out.append("  " + head.removeprefix("lanterne command DEVICE "))
        out += ["  " + line for line in rest]
    return "\n".join(out)
