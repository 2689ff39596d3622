# Lanterne setup button: on a normal boot, the button held for 1 s within 5 s of power-up
# restarts the board into setup mode (lanterne/field.py decides, at the next boot, that it is a
# setup boot; lanterne/setup_mode.py serves the page). A module of its own so that the rest of
# field.py, boot-only, is not kept in the heap while the button is watched.
import time

try:
    from micropython import const
except ImportError:  # CPython

    def const(value):
        return value


_WATCH_MS = const(5000)
_HOLD_MS = const(1000)
REQUEST_FILE = "setup.req"  # the button was held: the next boot is a setup boot


async def _button_held(board, pin_factory=None):
    """True when the button is held for 1 s within the first 5 s (False at once without a button)."""
    gpio = board.get("setup_button")
    if gpio is None:
        return False
    if pin_factory is None:
        from machine import Pin

        pin_factory = Pin
    pin = pin_factory(gpio, pin_factory.IN)  # pulled up on the board: 0 while held
    import asyncio

    t0 = time.ticks_ms()
    since = None
    while True:
        now = time.ticks_ms()
        if pin.value() == 0:
            if since is None:
                if time.ticks_diff(now, t0) > _WATCH_MS:
                    return False
                since = now
            elif time.ticks_diff(now, since) >= _HOLD_MS:
                return True
        else:
            since = None
            if time.ticks_diff(now, t0) > _WATCH_MS:
                return False
        await asyncio.sleep_ms(50)


async def watch_button(app):
    """A normal boot: the button held for 1 s within 5 s of power-up restarts the board into setup mode."""
    if await _button_held(app.board):
        with open(REQUEST_FILE, "w") as f:
            f.write("button")
        app.log("setup button held: restarting into setup mode")
        import machine

        machine.reset()
