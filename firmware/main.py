# Lanterne main.py: start the application from the slot boot.py mounted. Ctrl-C drops to the
# REPL. A crash is recorded and resets the board, so a release that dies at start-up is rolled
# back (lanterne_ota.boot) instead of leaving a dark REPL; with no library mounted (safe mode),
# the board stays reachable for updates (lanterne_ota.safe).
import sys

try:
    import lanterne.app as _app
except ImportError as _e:
    _app = _e
if isinstance(_app, ImportError):
    sys.print_exception(_app)
    import os

    try:
        os.stat("/rom/lib/lanterne")
        mounted = True
    except OSError:
        mounted = False
    if mounted:  # the slot's own import failed: a crash of that release
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
    except Exception as _e:
        sys.print_exception(_e)
        import lanterne_ota.boot

        lanterne_ota.boot.crashed(_e)
