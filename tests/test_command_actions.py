"""`lanterne command`'s words: the host refuses exactly what the board refuses, says the range, guesses typos."""

from __future__ import annotations

import pytest

from host_tools.backoffice import actions
from host_tools.backoffice.actions import ACTIONS, ActionError, config_change, number_range, parse
from host_tools.fleet.config import firmware_config

cmd = actions.cmd
KEY = bytes(range(32))


def board_takes(action, args) -> bool:
    """The board's gate on a signed frame (lanterne.commands.Verifier), then, for set-period, the config
    schema its set_config applies: what the firmware does with the command."""
    try:
        frame = cmd.build(KEY, "lamp-7", 5, action.opcode, args)
    except Exception:  # does not even fit the frame's field
        return False
    try:
        _op, _counter, decoded = cmd.Verifier("lamp-7", KEY, 1).check(frame)
    except cmd.CommandError:
        return False
    if action.opcode == cmd.SET_PERIOD:
        _cfg, errors = firmware_config().validate({f"{decoded['what']}_period_s": decoded["seconds"]})
        return not errors
    return True


CASES = [("dim", "level", {"level": 0, "ramp_s": 0, "duration_min": 0}),
         ("dim", "ramp_s", {"level": 0, "ramp_s": 0, "duration_min": 0}),
         ("dim", "duration_min", {"level": 0, "ramp_s": 0, "duration_min": 0}),
         ("set-period", "seconds", {"what": "sample", "seconds": 60}),
         ("set-period", "seconds", {"what": "status", "seconds": 60}),
         ("reboot", "delay_s", {"delay_s": 1})]


@pytest.mark.parametrize("word, key, base", CASES)
def test_the_host_range_is_the_boards(word, key, base):
    action = ACTIONS[word]
    (arg,) = [a for a in action.numbers if a.key == key]
    lo, hi = number_range(action, arg, base)
    assert board_takes(action, {**base, key: lo}) and board_takes(action, {**base, key: hi})
    assert not board_takes(action, {**base, key: lo - 1}) and not board_takes(action, {**base, key: hi + 1})


def test_out_of_range_is_refused_before_sending_with_the_range():
    with pytest.raises(ActionError, match=r"^dim: LEVEL 140 is out of range: 0\.\.100 %$"):
        parse("dim", ["140"])
    with pytest.raises(ActionError, match=r"^dim: --ramp 4000 is out of range: 0\.\.3600 s$"):
        parse("dim", ["50"], ramp=4000)
    with pytest.raises(ActionError, match=r"^set-period status: SECONDS 3 is out of range: 5\.\.86400 s$"):
        parse("set-period", ["status", "3"])  # the command's field takes 1 s; the board's config schema 5
    with pytest.raises(ActionError, match=r"^set-profile: LEVEL 150 is out of range: 0\.\.100 %$"):
        parse("set-profile", ["23:00-05:00:150"])
    with pytest.raises(ActionError, match="at most 8 dimming steps"):  # the firmware's own words
        parse("set-profile", ["00:00-01:00:10"] * 9)
    with pytest.raises(ActionError, match=r"^set-config: lat 95: must be between -90 and 90$"):
        parse("set-config", ["lat", "95"])
    with pytest.raises(ActionError, match=r"^set-config: bin_full_mm 900: must be less than bin_empty_mm$"):
        parse("set-config", ["bin_full_mm", "900"], config={"bin_empty_mm": 800})
    with pytest.raises(ActionError, match=r"^set-config: 'wifi_key' may not be set by command") as exc:
        parse("set-config", ["wifi_key", "x"])
    assert "lanterne provision" in exc.value.hint
    assert parse("dim", ["100"])[1] == {"level": 100, "ramp_s": 0, "duration_min": 0}


@pytest.mark.parametrize("typed, meant", [("dimm", "dim"), ("stauts", "status"), ("set-lamp", "dim"), ("set_lamp", "dim"),
                                          ("request_status", "status"), ("set-perod", "set-period"), ("rotate_key", "rotate-key")])
def test_a_typo_gets_a_did_you_mean(typed, meant):
    with pytest.raises(ActionError, match=f"^unknown action '{typed}': did you mean '{meant}'\\?$"):
        parse(typed, [])


def test_typos_in_arguments_get_a_did_you_mean_too():
    with pytest.raises(ActionError, match=r"set-period: the period is sample or status, got 'sampel': did you mean 'sample'\?"):
        parse("set-period", ["sampel", "30"])
    with pytest.raises(ActionError, match=r"bollard: the action is raise or lower, got 'rasie': did you mean 'raise'\?"):
        parse("bollard", ["rasie"])
    with pytest.raises(ActionError, match=r"unknown config field 'sample_perod_s': did you mean 'sample_period_s'\?"):
        parse("set-config", ["sample_perod_s", "30"])
    with pytest.raises(ActionError, match=r"^dim takes LEVEL \[--ramp S\] \[--duration MIN\], got nothing$") as exc:
        parse("dim", [])
    assert exc.value.hint.startswith("usage: lanterne command DEVICE dim LEVEL")


def test_what_an_acked_command_changed_is_what_the_board_stored():
    assert config_change(*parse("set-period", ["status", "10"])) == {"status_period_s": 10}
    assert config_change(*parse("set-config", ["lat", "48.85661"])) == {"lat": 48.857}  # sent in thousandths
    assert config_change(*parse("set-config", ["sample_period_s", "30"])) == {"sample_period_s": 30}
    assert config_change(*parse("dim", ["30"])) == {}


def test_every_action_has_help_with_its_ranges():
    table = actions.actions_table()
    for word, action in ACTIONS.items():
        assert f"  {word} {action.usage}".rstrip() in table
    assert "LEVEL: 0..100 %" in table and "SECONDS for status: 5..86400 s" in table and "lat              -90..90" in table


def test_lanterne_command_help_shows_one_action_or_all():
    from conftest import lanterne

    one = lanterne("command", "dim", "--help")
    assert one.returncode == 0
    assert one.stdout.splitlines()[0] == "lanterne command DEVICE dim LEVEL [--ramp S] [--duration MIN]"
    assert "LEVEL: 0..100 %" in one.stdout and "set-period" not in one.stdout
    assert lanterne("command", "lamp-1", "set-period", "--help").stdout.splitlines()[0] == \
        "lanterne command DEVICE set-period sample|status SECONDS"
    every = lanterne("command", "--help")
    assert every.returncode == 0 and "--broker" in every.stdout and actions.actions_table() in every.stdout


def test_a_missing_device_is_named_as_such():
    from conftest import lanterne

    r = lanterne("command", "dim", "40")
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == "lanterne command: error: 'dim' is an action: which device? lanterne command DEVICE dim 40"
