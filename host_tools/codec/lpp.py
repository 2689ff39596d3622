"""Cayenne LPP encoder for the codec benchmark: the same reading in the format most LoRaWAN devices use.

Each value is channel (1 byte) + IPSO type (1 byte) + data, big-endian. Types are
the myDevices originals plus the extended ones most LPP libraries and decoders
accept: percentage (120), voltage (116) and, for values LPP has no type for
(status flags, sequence number, age), generic sensor (100, 4-byte unsigned).
"""

from __future__ import annotations

from host_tools.codec.decoder import STATUS_NAMES

DIGITAL_INPUT = 0  # 1 byte
GENERIC_SENSOR = 100  # 4 bytes, unsigned
ILLUMINANCE = 101  # 2 bytes, 1 lx unsigned
TEMPERATURE = 103  # 2 bytes, 0.1 degC signed
HUMIDITY = 104  # 1 byte, 0.5 % unsigned
BAROMETER = 115  # 2 bytes, 0.1 hPa unsigned
VOLTAGE = 116  # 2 bytes, 0.01 V unsigned
PERCENTAGE = 120  # 1 byte, 1 % unsigned
DISTANCE = 130  # 4 bytes, 0.001 m unsigned

# field -> (channel, type, data bytes, scale, signed)
_LAYOUT = {
    "temperature": (1, TEMPERATURE, 2, 10, True),
    "humidity": (2, HUMIDITY, 1, 2, False),
    "pressure": (3, BAROMETER, 2, 10, False),
    "illuminance": (4, ILLUMINANCE, 2, 1, False),
    "fill": (5, PERCENTAGE, 1, 1, False),
    "distance": (6, DISTANCE, 4, 1, False),  # input in mm, LPP unit 0.001 m
    "lamp": (7, PERCENTAGE, 1, 1, False),
    "lamp_fault": (8, DIGITAL_INPUT, 1, 1, False),
    "voltage": (9, VOLTAGE, 2, 100, False),
    "status": (10, GENERIC_SENSOR, 4, 1, False),
    "seq": (11, GENERIC_SENSOR, 4, 1, False),
    "age": (12, GENERIC_SENSOR, 4, 1, False),
}


def encode(reading: dict) -> bytes:
    """One reading (JSON field names and units of docs/payload.md) as a Cayenne LPP payload.

    Values LPP cannot hold are saturated (illuminance above 65 535 lx).
    """
    out = bytearray()
    for name, (channel, kind, size, scale, signed) in _LAYOUT.items():
        value = reading.get(name)
        if value is None:
            continue
        if name == "status":
            value = sum(1 << STATUS_NAMES.index(flag) for flag in value)
        elif name == "lamp_fault":
            value = int(bool(value))
        else:
            value = round(value * scale)
        low, high = (-(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1) if signed else (0, (1 << (8 * size)) - 1)
        value = min(max(value, low), high)
        out += bytes((channel, kind)) + value.to_bytes(size, "big", signed=signed)
    return bytes(out)
