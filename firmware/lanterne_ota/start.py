# When the application cannot start, or crashes (main.py calls these; they are here rather than in
# main.py, which is compiled from source at every boot and keeps its bytecode on the heap while
# the application runs). A crash is recorded and resets the board, so a release that dies at
# start-up is rolled back (lanterne_ota.boot) instead of leaving a dark REPL; with no library
# mounted (safe mode), the board stays reachable for updates (lanterne_ota.safe).
import sys


def failed(e, imported):
    """main.py: the application crashed (`imported`: lanterne.app was), or `import lanterne.app`
    failed. The application's modules are dropped first: a crash out of memory leaves a full heap,
    and recording it must not fail the same way (the board would stay in the REPL)."""
    sys.print_exception(e)
    for name in [n for n in sys.modules if n.split(".")[0] in ("lanterne", "umqtt")]:
        del sys.modules[name]
    import gc

    gc.collect()
    if not imported:
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
