"""Fuzzing the parsers that face the network or a file (host_tools/reliability/fuzz.py): bounded here,
longer with `python -m host_tools.reliability.fuzz --cases N` (docs/reliability.md).

Each target's promise is checked on inputs hypothesis draws (raw bytes, and the fuzzer's own
mutations of valid seeds driven by hypothesis' random), on CPython, and on the MicroPython unix port
for the firmware's parsers. The firmware bugs the fuzzers found (below) are fixed, each with its own
test; a bug found and not fixed at once goes in fuzz.KNOWN_BUGS, its test marked xfail(strict).
Together: ~20 s.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from host_tools.reliability import fuzz, fuzz_unix

_DIR = Path(tempfile.mkdtemp(prefix="lanterne-test-fuzz-"))
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILE_TARGETS = ("config_json", "board_info", "board_file", "store_records", "http_request", "at_twin", "ota_manifest")


@pytest.mark.parametrize("target", FILE_TARGETS)
def test_raw_bytes_never_break_the_promise(target):
    check = fuzz.TARGETS[target][0]

    @SETTINGS
    @given(st.binary(max_size=700))
    def run(data):
        assume(not fuzz.known_bug(target, data))
        check(data, _DIR)

    run()


@pytest.mark.parametrize("target", FILE_TARGETS)
def test_mutated_seeds_never_break_the_promise(target):
    check, make = fuzz.TARGETS[target]
    gen = make()

    @SETTINGS
    @given(st.randoms(use_true_random=False))
    def run(rng):
        data = gen(rng)
        assume(not fuzz.known_bug(target, data))
        check(data, _DIR)

    run()


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
                     max_leaves=20)


@SETTINGS
@given(st.sampled_from(sorted(fuzz._LNS_PARSERS)), st.randoms(use_true_random=False), _json, st.booleans())
def test_network_server_json_gives_a_value_or_an_integration_error(kind, rng, value, mutate):
    seed = dict(fuzz._seed_lns())[kind]
    fuzz.check_lns_json(kind, fuzz.mutate_json(seed, rng) if mutate else value)


def test_the_seeds_themselves_parse():
    # the mutations start from what the real producers write: those must be accepted as they are
    for kind, value in fuzz._seed_lns():
        fuzz.check_lns_json(kind, value)
    fuzz.check_config_json(json.dumps(fuzz._seed_config()).encode(), _DIR)
    fuzz.check_board_file(json.dumps(fuzz._seed_board()).encode(), _DIR)
    fuzz.check_http_request(fuzz._seed_requests()[0])
    signed, key = fuzz._seed_manifest()
    fuzz.check_ota_manifest(signed)
    from host_tools.fleet.release import ota_module

    ota_module("manifest").Manifest(signed).check_signature([key])  # the seed is a manifest that verifies


def test_a_broken_promise_is_reported_with_its_input(monkeypatch, capsys):
    # the fuzzer can fail: a parser that raises something else than its own error is caught ...
    from host_tools.runtime import firmware_module

    def parse(buf, end):
        raise KeyError("boom")

    monkeypatch.setattr(firmware_module("http_request"), "parse", parse)
    with pytest.raises(fuzz.FuzzFailure, match="raised KeyError"):
        fuzz.check_http_request(fuzz._seed_requests()[0])
    signed, key = fuzz._seed_manifest()
    fuzz.check_ota_manifest(signed)
    from host_tools.fleet.release import ota_module

    ota_module("manifest").Manifest(signed).check_signature([key])  # the seed is a manifest that verifies
    monkeypatch.undo()
    # ... and the long-run command stops on it with the case and the input (boardinfo.load broken here)
    def load(path):
        raise KeyError("boom")

    monkeypatch.setattr(firmware_module("boardinfo"), "load", load)
    assert fuzz.main(["--cases", "50", "board_info"]) == 1
    err = capsys.readouterr().err
    assert "FAIL: board_info case" in err and "input (hex): " in err


@pytest.mark.slow
def test_the_firmware_parsers_on_the_unix_port():
    done = fuzz_unix.run_unix_port(fuzz_unix.UNIX_TARGETS, 400, log=lambda m: None, skip_known=True)
    assert done == {t: 400 for t in fuzz_unix.UNIX_TARGETS}


def test_long_run_command_counts_its_cases(capsys):
    assert fuzz.main(["--cases", "200", "--skip-known", "http_request", "lns_json"]) == 0
    out = capsys.readouterr().out
    assert "http_request: 200 cases" in out and "lns_json: 200 cases" in out


# -- firmware bugs the fuzzers found, fixed ----------------

@pytest.mark.parametrize("interpreter", ["cpython", "micropython"])
def test_a_config_json_that_is_not_utf8_falls_back_instead_of_raising(interpreter, tmp_path):
    # A corrupted config.json (a flipped bit, a latin-1 site name copied by hand) must give the
    # last-known-good or default config and an error naming the file, as bad JSON does: the board
    # boots and says so. Today config.load raises and App() never starts.
    from host_tools.runtime import unix_port
    from host_tools.runtime.paths import FIRMWARE

    (tmp_path / "config.json").write_bytes(b'{"device": "lamp-\xe9t\xe9", "site": "x"}')
    code = (f"import sys\nsys.path.insert(0, {str(FIRMWARE)!r})\nfrom lanterne import config\n"
            f"try:\n    cfg, errors = config.load({str(tmp_path / 'config.json')!r}, {str(tmp_path / 'lkg')!r})\n"
            "    print('ERRORS', errors)\nexcept Exception as e:\n    print('RAISED', repr(e))\n")
    if interpreter == "cpython":
        import subprocess
        import sys

        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    else:
        out = unix_port.run(code)
    assert "RAISED" not in out and "config.json" in out



def test_a_config_json_with_a_number_as_key_falls_back_instead_of_raising(tmp_path):
    # MicroPython's json module accepts {"device": "x", 2: 3} (CPython's refuses it); config.validate
    # then sorts the keys, str against int, and config.load raises: the board does not start.
    from host_tools.runtime import unix_port
    from host_tools.runtime.paths import FIRMWARE

    (tmp_path / "config.json").write_text('{"device": "lamp-01", 2: 3}')
    out = unix_port.run(f"import sys\nsys.path.insert(0, {str(FIRMWARE)!r})\nfrom lanterne import config\n"
                        f"try:\n    print('ERRORS', config.load({str(tmp_path / 'config.json')!r}, {str(tmp_path / 'lkg')!r})[1])\n"
                        "except Exception as e:\n    print('RAISED', repr(e))\n")
    assert "RAISED" not in out and "config.json" in out



def test_a_manifest_whose_version_text_is_not_utf8_is_refused_as_malformed():
    # Manifest() raised UnicodeError (UnicodeDecodeError on CPython): the parse runs before the
    # signature is checked, so the updater reported "update stopped: UnicodeError" instead of the
    # manifest's refusal. Now a ManifestError "malformed", on both interpreters.
    from host_tools.runtime.parity import both
    from host_tools.runtime.paths import FIRMWARE

    signed, _key = fuzz._seed_manifest()
    at = signed.index(b"1.2.3")  # the version text, after its length byte
    bad = signed[:at] + b"\xff\xfe\xfd\xfc\xfb" + signed[at + 5:]
    code = (f"import json, sys\nsys.path.insert(0, {str(FIRMWARE)!r})\nfrom lanterne_ota import manifest as M\n"
            f"try:\n    M.Manifest(bytes.fromhex({bad.hex()!r}))\n    out = ['parsed']\n"
            "except M.ManifestError as e:\n    out = [e.code, e.reason]\n"
            "except Exception as e:\n    out = ['raised', type(e).__name__]\nprint(json.dumps(out))\n")
    cp, mp = both(code)
    assert cp == mp == ["malformed", "manifest version text is not UTF-8"]


def test_a_board_json_that_is_not_an_object_is_refused(tmp_path):
    from host_tools.runtime import firmware_module

    boardinfo = firmware_module("boardinfo")
    (tmp_path / "board.json").write_text("[1, 2]")
    board, error = boardinfo.load(str(tmp_path / "board.json"))
    assert isinstance(board, dict) and error and "board.json" in error


# -- host bugs the fuzzers found, fixed ---------------------------------------------------------------
def test_a_board_file_that_is_not_utf8_or_names_a_bus_oddly_is_refused_with_its_field(tmp_path):
    from host_tools import boards

    seed = fuzz._seed_board()
    f = tmp_path / "odd.json"
    f.write_bytes(json.dumps(seed).encode().replace(b"esp32-devkitc", b"esp32-d\xe9vkitc", 1))
    with pytest.raises(boards.BoardError, match=r"odd.json: not UTF-8 text \(byte 0xe9"):
        boards.load_file(f)
    seed["sensors"][0]["bus"] = {}
    f.write_text(json.dumps(seed))
    with pytest.raises(boards.BoardError, match=r"sensors\[0\]\.bus.*names no bus"):
        boards.load_file(f)
