"""The `machine`/`network`/`socket` shims reach the simulated world through the HAL server."""

from __future__ import annotations

import json
import socket

from host_tools import boards
from host_tools.emulator import ROM
from host_tools.emulator.devices import I2CDevice
from host_tools.emulator.hal import StandaloneHal
from host_tools.emulator.world import World
from host_tools.runtime import unix_port


class EchoRegisters(I2CDevice):
    """A minimal register-file part at 0x42 on i2c0 (test double below the bus seam)."""

    name = "echo"
    address = 0x42

    def __init__(self, world):
        super().__init__(world)
        self.regs = bytearray(range(256))
        self.ptr = 0

    def write(self, data):
        if data:
            self.ptr = data[0]
            for i, b in enumerate(data[1:]):
                self.regs[(self.ptr + i) % 256] = b

    def read(self, n):
        return bytes(self.regs[(self.ptr + i) % 256] for i in range(n))


class FixedAdc:
    adc_pins = (34,)

    def adc_read_uv(self, pin):
        return 1_234_000


def run(hal, code):
    return unix_port.run(code, path=[ROM], env=hal.env())


def test_pins_pwm_adc_i2c_through_the_hal():
    world = World()
    board = boards.load("esp32-devkitc").data
    with StandaloneHal(board, world) as hal:
        hal.parts.parts.clear()
        hal.parts.i2c["i2c0"].clear()
        hal.parts.adc.clear()
        hal.parts.add(EchoRegisters(world), {"bus": "i2c0"})
        hal.parts.add(FixedAdc())
        out = run(
            hal,
            "import machine, json\n"
            "p = machine.Pin(2, machine.Pin.OUT); p.on()\n"
            "pwm = machine.PWM(machine.Pin(25), freq=1000, duty_u16=32768)\n"
            "i2c = machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21))\n"
            "i2c.writeto_mem(0x42, 0x10, b'\\xaa\\xbb')\n"
            "buf = bytearray(3); i2c.readfrom_mem_into(0x42, 0x0f, buf)\n"
            "try:\n    i2c.readfrom(0x55, 1); err = None\nexcept OSError as e:\n    err = e.errno\n"
            "adc = machine.ADC(machine.Pin(34), atten=machine.ADC.ATTN_11DB)\n"
            "print(json.dumps([i2c.scan(), list(buf), err, adc.read_uv()]))\n",
        )
        scan, regs, err, uv = json.loads(out.strip().splitlines()[-1])
        assert scan == [0x42]
        assert regs == [0x0F, 0xAA, 0xBB]
        assert err == 19  # ENODEV, as the ESP32 port reports a NACKed address
        assert uv == 1_234_000
        assert world.pin_level(2) == 1
        assert world.pwm(25) == {"freq": 1000, "duty_u16": 32768}
        world.inject("echo", "nack")
        out = run(hal, "import machine\nprint(machine.I2C(0).scan())\n")
        assert out.strip() == "[]"


def test_link_down_is_seen_by_network_and_sockets():
    world = World()
    board = boards.load("esp32-devkitc").data
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    code = (
        "import network, socket, json\n"
        "w = network.WLAN(network.STA_IF); w.active(True); w.connect('x', 'y')\n"
        "s = socket.socket()\n"
        "try:\n    s.connect(socket.getaddrinfo('127.0.0.1', %d)[0][-1]); r = 'connected'\n"
        "except OSError as e:\n    r = e.errno\n"
        "print(json.dumps([w.isconnected(), r]))\n" % port
    )
    with StandaloneHal(board, world) as hal:
        up = json.loads(run(hal, code).strip().splitlines()[-1])
        assert up == [True, "connected"]
        world.set(link_up=False)
        down = json.loads(run(hal, code).strip().splitlines()[-1])
        assert down == [False, 113]  # EHOSTUNREACH
    server.close()
