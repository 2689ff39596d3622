"""Access bollard (or barrier) on a relay: interlock on the presence input, travel timeout, confirmed position.

    bollard = Bollard(Pin(32, Pin.OUT), position=Pin(33, Pin.IN), presence=Pin(39, Pin.IN), travel_ms=3000)
    result = bollard.command(UP)      # OK, or REFUSED_INTERLOCK
    bollard.update()                  # every 50..200 ms from the main loop
    bollard.state                     # UP, DOWN, MOVING or UNKNOWN; bollard.fault

Wiring facts (levels configurable): relay output 1 = drive up; position input 1 =
the up limit switch is made (confirmed up), 0 = down; presence input 1 = something
is there (loop detector, light barrier).

Interlock: the bollard never moves towards the guarded position while presence is
active. The guarded position is DOWN by default (lowering onto what stands there:
barrier arms, dropping posts); a rising bollard, which must never rise under a
vehicle, is built with `guard=UP`. A command towards the guarded position is
refused while presence is active (REFUSED_INTERLOCK); presence appearing during
such a move reverses it to where it came from (`interlock_trips` counts it).

The presence input is wired to a pin interrupt (`Pin.irq`, on the edge where presence
appears): the handler itself drives the relay away from the guarded position, within
a bytecode or two of the edge however busy the loop is (a single relay output cannot
merely stop: driving it away is what stops the move), and `update()` does the
bookkeeping later (`irq_trips` counts the moves the handler stopped first). `update()`
still checks the input on every call, should an edge be lost. On the ESP32 the handler
is scheduled (micropython.schedule): a long call into C (a TLS handshake's key
exchange, a flash erase) delays it; a hardware interlock in the bollard's controller
stays the last line of defence.

Travel: after a command the position input must confirm the target within
`timeout_ms` (default 1.5 x travel_ms + 500 ms) or FAULT_TRAVEL is set and the state
becomes UNKNOWN; the relay keeps its command (no hunting). Without a position input
the target is assumed reached after `travel_ms`. The input changing with no command
sets FAULT_POSITION (moved by hand, or a broken switch). A new command clears both.

At start-up the relay is driven to match the position the input reports: a reboot
never moves the bollard.
"""

import time

from micropython import const

from lanterne.actuators import FAULT_POSITION, FAULT_TRAVEL

DOWN = const(0)
UP = const(1)
MOVING = const(2)
UNKNOWN = const(3)

OK = const(0)
REFUSED_INTERLOCK = const(1)


class Bollard:
    def __init__(
        self,
        relay,
        position=None,
        presence=None,
        *,
        travel_ms=3000,
        timeout_ms=None,
        guard=DOWN,
        relay_up=1,
        position_up=1,
        presence_active=1,
        initial=DOWN,
    ):
        if guard not in (UP, DOWN):
            raise ValueError("guard is UP or DOWN")
        self.relay = relay
        self.position_input = position
        self.presence_input = presence
        self.travel_ms = travel_ms
        self.timeout_ms = travel_ms * 3 // 2 + 500 if timeout_ms is None else timeout_ms
        self.guard = guard
        self._relay_up = relay_up
        self._position_up = position_up
        self._presence_active = presence_active
        self.fault = 0
        self.interlock_trips = 0  # moves reversed because presence appeared
        self.irq_trips = 0  # ... of which the interrupt handler stopped first
        self.refusals = 0  # commands refused by the interlock
        self._tripped = False  # the handler reversed the move: update() books it
        self._t0 = time.ticks_ms()
        pos = self._read_position()
        self.position = initial if pos is None else pos  # last confirmed position
        self.target = self.position
        self.state = self.position
        self._drive(self.target)
        if presence is not None:
            self._arm(presence)

    def _arm(self, pin):
        try:
            irq = pin.irq
        except AttributeError:
            return  # an input without interrupts: update() polls it
        self._handler = self._on_presence  # bound once: the handler itself allocates nothing
        irq(handler=self._handler, trigger=pin.IRQ_RISING if self._presence_active else pin.IRQ_FALLING)

    def _on_presence(self, pin):
        # Pin interrupt: presence appeared. Stop a move towards the guarded position now.
        if self.state == MOVING and self.target == self.guard and pin.value() == self._presence_active:
            self._drive(1 - self.guard)
            self._tripped = True
            self.irq_trips += 1

    def _drive(self, target):
        self.relay.value(self._relay_up if target == UP else 1 - self._relay_up)

    def _read_position(self):
        if self.position_input is None:
            return None
        return UP if self.position_input.value() == self._position_up else DOWN

    def presence(self):
        """True while the presence input is active."""
        if self.presence_input is None:
            return False
        return self.presence_input.value() == self._presence_active

    def command(self, target, now_ms=None):
        """Move to UP or DOWN. Returns OK or REFUSED_INTERLOCK (nothing moves then)."""
        if target not in (UP, DOWN):
            raise ValueError("target is UP or DOWN")
        if target == self.guard and target != self.state and self.presence():
            self.refusals += 1
            return REFUSED_INTERLOCK
        self.fault &= ~(FAULT_TRAVEL | FAULT_POSITION)
        if target == self.target and self.state == target:
            return OK
        self._start(target, time.ticks_ms() if now_ms is None else now_ms)
        return OK

    def _start(self, target, now):
        self._tripped = False
        self.target = target
        self.state = MOVING
        self._t0 = now
        self._drive(target)
        if target == self.guard and self.presence():
            # presence came between the caller's check and the relay (the handler may have run
            # before the state said MOVING): stop at once, update() books it
            self._drive(1 - target)
            self._tripped = True

    def update(self, now_ms=None):
        """Watch the inputs: interlock during moves, confirmation, timeout. Returns the state."""
        now = time.ticks_ms() if now_ms is None else now_ms
        pos = self._read_position()
        if self.state == MOVING:
            elapsed = time.ticks_diff(now, self._t0)
            if self.target == self.guard and (self._tripped or self.presence()):
                self.interlock_trips += 1
                self._start(1 - self.guard, now)
            elif pos == self.target or (pos is None and elapsed >= self.travel_ms):
                self.position = self.target
                self.state = self.target
            elif elapsed > self.timeout_ms:
                self.fault |= FAULT_TRAVEL
                self.state = UNKNOWN
        elif pos is not None and self.state != UNKNOWN and pos != self.position:
            self.fault |= FAULT_POSITION
            self.position = pos
            self.state = pos
        elif self.state == UNKNOWN and pos == self.target:
            # late arrival after a timeout: the position is confirmed again (the fault stays until a command)
            self.position = pos
            self.state = pos
        return self.state
