"""Board files are data, validated with errors naming the file and the field."""

from __future__ import annotations

import json

import pytest

from host_tools import boards


def test_every_shipped_board_is_valid():
    names = boards.names()
    assert {"esp32-devkitc", "olimex-esp32-poe", "esp32-rak3172"} <= set(names)
    kinds = {boards.load(n).data["network"]["kind"] for n in names}
    assert kinds >= {"wlan", "lan", "lorawan"}
    for n in names:
        b = boards.load(n)
        assert 32 * 1024 <= b.heap_bytes <= 8 * 1024 * 1024


def _write(tmp_path, mutate):
    data = json.loads(boards.load("esp32-devkitc").path.read_text())
    mutate(data)
    p = tmp_path / "my-board.json"
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (lambda d: d.update(colour="red"), "colour", "unknown field"),
        (lambda d: d["actuators"][0].update(pwm=34), "actuators[0].pwm", "input-only"),
        (lambda d: d["actuators"][0].update(pwm=7), "actuators[0].pwm", "SPI flash"),
        (lambda d: d["actuators"][0].update(pwm=44), "actuators[0].pwm", "does not exist"),
        (lambda d: d["sensors"][2].update(adc=4), "sensors[2].adc", "ADC1"),
        (lambda d: d["sensors"][0].update(bus="i2c9"), "sensors[0].bus", "names no bus"),
        (lambda d: d["sensors"][0].update(address=0x90), "sensors[0].address", "0x08..0x77"),
        (lambda d: d.update(heap_bytes=1000), "heap_bytes", "between"),
        (lambda d: d.pop("network"), "network", "missing"),
        (lambda d: d["actuators"][0].update(pwm=21), "actuators[0].pwm", "already used"),
        (lambda d: d["sensors"].append({"type": "geiger"}), "sensors[3].type", "must be one of"),
    ],
)
def test_wrong_board_file_is_rejected_naming_file_and_field(tmp_path, mutate, field, words):
    p = _write(tmp_path, mutate)
    with pytest.raises(boards.BoardError) as exc:
        boards.load(p)
    msg = str(exc.value)
    assert msg.startswith("my-board.json: field '" + field + "'"), msg
    assert words in msg


def test_malformed_json_names_line(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{"name": "x",\n "chip": }')
    with pytest.raises(boards.BoardError, match=r"broken.json: not valid JSON \(line 2"):
        boards.load(p)


def test_cli_lists_and_validates(tmp_path, capsys):
    from host_tools.cli import main

    assert main(["boards"]) == 0
    out = capsys.readouterr().out
    assert "esp32-devkitc" in out and "olimex-esp32-poe" in out
    # Which heap is which: the board's (100 KiB) and what the firmware needs of it (70 KiB, as the README says).
    assert "board heap" in out and "100 KiB" in out and "Without PSRAM the firmware needs 70 KiB of it" in out
    # The LoRaWAN board is offered like the others: its transport is in the firmware, no board has a note.
    assert "esp32-rak3172" in out
    assert [line for line in out.splitlines() if line.startswith("note:")] == []
    assert "battery 8.5 Ah" in out  # the battery bin says what it runs on
    bad = _write(tmp_path, lambda d: d["actuators"][0].update(pwm=36))
    assert main(["boards", "--check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "my-board.json: field 'actuators[0].pwm'" in err
