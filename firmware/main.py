# Lanterne main.py: start the application from the slot boot.py mounted. Ctrl-C drops to the
# REPL. A crash is recorded and resets the board, so a release that dies at start-up is rolled
# back (lanterne_ota.boot) instead of leaving a dark REPL; with no library mounted (safe mode),
# the board stays reachable for updates (lanterne_ota.safe).
import sys

try:
    import lanterne.app as _app
except Exception as _e:  # noqa: the release's own import failed, or there is no library
    _app = _e
if isinstance(_app, Exception):
    sys.print_exception(_app)
    import os

    try:
        os.stat("/rom/lib/lanterne")
        _mounted = True
    except OSError:
        _mounted = False
    if _mounted:  # the slot's import failed: a crash of that release
        import lanterne_ota.boot

        lanterne_ota.boot.crashed(_app)
    else:
        try:
            import lanterne_ota.safe
        except ImportError:
            raise _app
        lanterne_ota.safe.main()
else:
    try:
        _app.main()
    except Exception as _e:  # noqa: KeyboardInterrupt and SystemExit go to the REPL
        sys.print_exception(_e)
        import lanterne_ota.boot

        lanterne_ota.boot.crashed(_e)
