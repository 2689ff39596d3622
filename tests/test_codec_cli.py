"""`lanterne encode` and `lanterne decode`, as a person uses them: JSON in, hex out, and back."""

from __future__ import annotations

import base64
import io
import json

import pytest

from host_tools.cli import main

READING = {"temperature": 21.5, "humidity": 45.5, "pressure": 1013.2, "illuminance": 350.0, "fill": 42,
           "lamp": 80, "lamp_fault": False, "voltage": 12.34, "status": [], "seq": 12345, "age": 2}


def lanterne(monkeypatch, capsys, *argv, stdin: str = ""):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def series(n: int) -> list[dict]:
    return [dict(READING, temperature=20 + i / 10, seq=100 + i, age=600 * (n - i)) for i in range(n)]


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_encode_one_reading_then_decode_it(monkeypatch, capsys, runtime):
    code, out, err = lanterne(monkeypatch, capsys, "encode", "--runtime", runtime, stdin=json.dumps(READING))
    assert code == 0, err
    lines = out.split()
    assert len(lines) == 1 and len(bytes.fromhex(lines[0])) == 13 and lines[0].startswith("02")
    code, out, err = lanterne(monkeypatch, capsys, "decode", lines[0])
    assert code == 0, err
    got = json.loads(out)["readings"][0]
    assert got["temperature"] == 21.5 and got["seq"] == 12345 and got["voltage"] == 12.3


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_lorawan_framing_leaves_the_version_to_the_fport(monkeypatch, capsys, runtime):
    code, mqtt, err = lanterne(monkeypatch, capsys, "encode", "--runtime", runtime, stdin=json.dumps(READING))
    code, out, err = lanterne(monkeypatch, capsys, "encode", "--lorawan", "-v", "--runtime", runtime,
                              stdin=json.dumps(READING))
    assert code == 0, err
    assert "12 bytes, FPort 102, readings 0..0" in err
    payload = out.strip()
    assert len(bytes.fromhex(payload)) == 12 and mqtt.strip() == "02" + payload
    code, out, err = lanterne(monkeypatch, capsys, "decode", "--fport", "102", payload)
    assert code == 0, err
    assert json.loads(out) == json.loads(lanterne(monkeypatch, capsys, "decode", mqtt.strip())[1])
    code, out, err = lanterne(monkeypatch, capsys, "decode", payload)  # without --fport: read as MQTT
    assert code == 1 and "unsupported format version 166 (0xa6)" in err


def test_runtimes_print_the_same_frames(monkeypatch, capsys):
    text = json.dumps(series(40))
    _, on_board, _ = lanterne(monkeypatch, capsys, "encode", stdin=text)
    _, on_host, _ = lanterne(monkeypatch, capsys, "encode", "--runtime", "cpython", stdin=text)
    assert on_board == on_host and len(on_board.split()) >= 2


@pytest.mark.parametrize("lorawan", [False, True])
@pytest.mark.parametrize("budget", [11, 51, 115, 222, 242, 1024])
def test_a_list_is_split_into_frames_within_the_budget(monkeypatch, capsys, budget, lorawan):
    readings = [dict(r, status=[]) for r in series(60)]
    for r in readings:
        del r["fill"], r["lamp"], r["lamp_fault"]  # small enough for an 11-byte frame
        if budget == 11:
            del r["temperature"], r["humidity"], r["pressure"], r["seq"]
    framing = ["--lorawan"] if lorawan else []
    code, out, err = lanterne(
        monkeypatch, capsys, "encode", "--runtime", "cpython", "--budget", str(budget), *framing,
        stdin=json.dumps(readings),
    )
    assert code == 0, err
    frames = out.split()
    assert all(len(bytes.fromhex(f)) <= budget for f in frames)
    fport = ["--fport", "102"] if lorawan else []
    code, out, err = lanterne(monkeypatch, capsys, "decode", *fport, "-", stdin="\n".join(frames) + "\n")
    assert code == 0, err
    decoded = [r for line in out.splitlines() for r in json.loads(line)["readings"]]
    assert len(decoded) == len(readings)
    assert [r.get("voltage") for r in decoded] == [12.3] * len(readings)


def test_decode_output_encodes_back_to_the_same_frame(monkeypatch, capsys):
    _, frame, _ = lanterne(monkeypatch, capsys, "encode", stdin=json.dumps(series(5)))
    _, decoded, _ = lanterne(monkeypatch, capsys, "decode", frame.strip())
    code, again, err = lanterne(monkeypatch, capsys, "encode", stdin=decoded)
    assert code == 0, err
    assert again == frame


def test_decode_accepts_spaced_hex_and_base64(monkeypatch, capsys):
    _, frame, _ = lanterne(monkeypatch, capsys, "encode", "--runtime", "cpython", stdin=json.dumps(READING))
    raw = bytes.fromhex(frame.strip())
    _, spaced, _ = lanterne(monkeypatch, capsys, "decode", raw.hex(" "))
    _, b64, _ = lanterne(monkeypatch, capsys, "decode", "--base64", base64.b64encode(raw).decode())
    _, pretty, _ = lanterne(monkeypatch, capsys, "decode", "--indent", "2", frame.strip())
    assert json.loads(spaced) == json.loads(b64) == json.loads(pretty)
    assert pretty.count("\n") > 5


@pytest.mark.parametrize(
    "stdin, args, message",
    [
        ("", [], "no input"),
        ("{not json", [], "stdin is not valid JSON"),
        ('"hello"', [], "expected a JSON object"),
        ('{"temp": 21}', [], "reading 0: unknown field 'temp'"),
        ('[{"seq": 1}, {"temperature": 120}]', [], "reading 1: temperature: 120 degC is out of range -40..85"),
        ('{"humidity": "wet"}', [], "humidity: expected a number"),
        ('{"status": ["on_fire"]}', [], "status: unknown flag 'on_fire'"),
        ('{"lamp_fault": true}', [], "lamp_fault is sent with the lamp level"),
        (json.dumps(READING), ["--budget", "11"], "reading 0: needs 13 bytes on its own, more than the 11-byte budget"),
        (json.dumps(READING), ["--budget", "11", "--lorawan"], "reading 0: needs 12 bytes on its own, more than the 11-byte budget"),
        (json.dumps(READING), ["--budget", "2"], "--budget 2 is out of range"),
    ],
)
@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_encode_errors_name_the_reading_and_field(monkeypatch, capsys, stdin, args, message, runtime):
    code, out, err = lanterne(monkeypatch, capsys, "encode", "--runtime", runtime, *args, stdin=stdin)
    assert code == 1 and out == ""
    assert message in err and err.startswith("lanterne encode: error: ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["decode", "01ff00ff"], "byte 0: unsupported format version 1 (0x01): this decoder reads versions 2 and 3"),
        (["decode", "02a675bd"], "truncated"),
        (["decode", "--fport", "1", "a675bd"], "FPort 1 is not a Lanterne payload port"),
        (["decode", "--fport", "101", "a675bd"], "FPort 101: unsupported format version 1"),
        (["decode", "01zz"], "is not hex"),
        (["decode", "--base64", "***"], "is not base64"),
    ],
)
def test_decode_errors_say_what_and_where(monkeypatch, capsys, argv, message):
    code, out, err = lanterne(monkeypatch, capsys, *argv)
    assert code == 1 and out == ""
    assert message in err and "lanterne decode: error:" in err


def test_decode_stdin_reports_each_bad_frame_and_keeps_going(monkeypatch, capsys):
    _, frame, _ = lanterne(monkeypatch, capsys, "encode", "--runtime", "cpython", stdin=json.dumps(READING))
    code, out, err = lanterne(monkeypatch, capsys, "decode", "-", stdin=f"{frame.strip()}\n0200\n{frame.strip()}\n")
    assert code == 1
    assert len(out.splitlines()) == 2
    assert "frame 2: invalid payload: byte 1: truncated: 2 bytes" in err
