# Lanterne main.py: start the application from the slot boot.py mounted. Ctrl-C: the REPL. When it
# cannot start, or crashes, lanterne_ota/start.py takes over: a crash recorded for the boot selector
# and a reset, or safe mode when no library is mounted. Kept this short: its bytecode stays on the
# heap while the application runs. A battery board (docs/battery.md) runs one wake instead, then
# deep sleep: lanterne.wake.run() never returns.
_app = None
try:
    import lanterne.power

    if lanterne.power.battery():
        import lanterne.wake

        lanterne.wake.run()
    del lanterne.power  # (a mains board: the check leaves the heap)
    __import__("sys").modules.pop("lanterne.power")
    import lanterne.app as _app

    _app.main(_ota)  # (what boot.py's slot selector found)
except Exception as _e:  # noqa: KeyboardInterrupt and SystemExit go to the REPL
    _app = _app is not None  # (the module let go: a crash may have left the heap full)
    import lanterne_ota.start

    lanterne_ota.start.failed(_e, _app)
