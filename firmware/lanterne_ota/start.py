# When the application cannot start, or crashes (main.py calls these; they are here rather than in
# main.py, which is compiled from source at every boot and keeps its bytecode on the heap while
# the application runs). A crash is recorded and resets the board, so a release that dies at
# start-up is rolled back (lanterne_ota.boot) instead of leaving a dark REPL; with no library
# mounted (safe mode), the board stays reachable for updates (lanterne_ota.safe).
import sys


def failed(e, app):
    """main.py: the application crashed (`app`, its module, was imported), or `import lanterne.app`
    failed (`app` is None)."""
    sys.print_exception(e)
    if app is None:
        return no_app(e)
    from lanterne_ota import boot

    boot.crashed(e)


def no_app(e):
    """`import lanterne.app` failed: a crash of the mounted release, or no library (safe mode)."""
    import os

    try:
        os.stat("/rom/lib/lanterne")
        mounted = True
    except OSError:
        mounted = False
    if mounted:  # the slot's import failed: a crash of that release
        from lanterne_ota import boot

        boot.crashed(e)
        return
    try:
        from lanterne_ota import safe
    except ImportError:
        raise e
    safe.main()
