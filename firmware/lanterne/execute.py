# Lanterne command execution: what an authenticated command does on this board (the lamp, its
# profile, the bollard, periods and config, a status, a reboot, an over-the-air update).
# control.py has checked the frame (signature, counter, bounds) and acks the result. The app loads this module for the
# moment a command runs and drops it after: commands are rare, the heap is small.
import time

from lanterne import commands as cmd


def run(app, opcode, args):
    """(result code, result bytes) of one authenticated command; `app` is the running App."""
    a = app.assets
    if opcode == cmd.SET_LAMP:
        if a.lamp is None:
            return cmd.REFUSED, b""
        until = None
        if args["duration_min"] and app.clock_synced:
            until = app.now_utc() + args["duration_min"] * 60
        a.profile.override(args["level"], until)
        a.lamp.set(args["level"], ramp_ms=args["ramp_s"] * 1000)
        a.lamp.update()
        return cmd.OK, bytes((a.lamp.level,))
    if opcode == cmd.RESUME_PROFILE:
        if a.profile is None:
            return cmd.REFUSED, b""
        a.profile.override(None)
        return cmd.OK, b""
    if opcode == cmd.SET_PROFILE:
        if a.profile is None:
            return cmd.REFUSED, b""
        p = a.profile
        p.steps = tuple(args["steps"])
        p.dusk_offset_min = args["dusk_offset_min"]
        p.dawn_offset_min = args["dawn_offset_min"]
        p._day = None  # recompute tonight's events with the new offsets
        return cmd.OK, b""
    if opcode == cmd.BOLLARD:
        if a.bollard is None:
            return cmd.REFUSED, b""
        from lanterne.actuators import relay

        r = a.bollard.command(relay.UP if args["action"] == "raise" else relay.DOWN)
        return (cmd.OK if r == relay.OK else cmd.REFUSED), bytes((a.bollard.state,))
    if opcode == cmd.SET_PERIOD:
        if args["what"] == "sample":
            return set_config(app, "sample_period_s", args["seconds"])
        return set_config(app, "status_period_s", args["seconds"])
    if opcode == cmd.SET_CONFIG:
        return set_config(app, args["key"], args["value"])
    if opcode == cmd.REQUEST_STATUS:
        app.ask_status()  # the uplink task sends it after this command's ack
        return cmd.OK, b""
    if opcode == cmd.REBOOT:
        app.reboot_at = time.ticks_add(time.ticks_ms(), max(1, args["delay_s"]) * 1000)
        return cmd.OK, b""
    if opcode == cmd.OTA_START:
        return ota_start(app, args)
    return cmd.UNKNOWN_COMMAND, b""


def ota_start(app, args):
    """Accepted means the transfer started; its outcome goes to ota/progress and the status.
    The OTA seam (lanterne/ota.py) is loaded here when nothing loaded it at boot, with its task.
    Refused at once, the reason in the console and in the ack's data, on a board whose link has
    no update channel (link.py: LoRaWAN; a board with no link runs no command anyway)."""
    if app.link is None or not hasattr(app.link, "updates"):
        why = "no update channel on the %s link: update this board over USB (lanterne provision)" % app.cfg["transport"]
        app.log("ota: refused: " + why)
        return cmd.REFUSED, b"no update channel"
    if app.ota is None:
        import asyncio

        from lanterne import ota

        type(app).ota = ota.Ota(app, app.ota_info)  # (on the class: app.py, App.ota)
        asyncio.create_task(app.guard("ota", app.ota.run))
    ok, line = app.ota.start(args)
    app.log("ota: " + line)
    return (cmd.OK if ok else cmd.REFUSED), b""


def set_config(app, key, value):
    """Check with the config schema, then write config.json (and its last known good) atomically;
    refuse otherwise. One field is checked, against the config the board runs on (the rest of it
    was checked when it was loaded): at the board's smallest heap there is no room to validate the
    whole file again, nor for config.py (config_fields.py holds the schema and the file's writer)."""
    from lanterne import config_fields as config

    value, why = config.field_value(key, value)
    c = app.cfg
    if why is None and key in ("bin_empty_mm", "bin_full_mm"):
        full = value if key == "bin_full_mm" else c["bin_full_mm"]
        empty = value if key == "bin_empty_mm" else c["bin_empty_mm"]
        if full >= empty:
            why = "bin_full_mm must be less than bin_empty_mm"
    if why:
        app.log("config %s=%r refused: %s" % (key, value, why))
        return cmd.BAD_ARGUMENT, b""
    data = config.file_data()
    data[key] = value
    try:
        # the last known good too when the board runs on a config.json without errors
        config.write(data, not app.config_errors)
    except OSError as e:
        return cmd.FAILED, b""
    data = None
    app.cfg[key] = value
    app.sample_period = app.cfg["sample_period_s"]
    app.status_period = app.cfg["status_period_s"]
    if app.assets.fill is not None and key in ("bin_empty_mm", "bin_full_mm"):
        app.assets.fill.calibrate(app.cfg["bin_empty_mm"], app.cfg["bin_full_mm"])
    if app.assets.extra is not None:
        app.assets.extra.reconfigure(key, app.cfg)
    f = getattr(app, "field", None)
    if f and key in (f.get("fields") or {}):
        # An installer had changed it on site: the back office's value is in effect now, so it is
        # no longer a field change, and the status says so at once (lanterne/field.py).
        try:
            from lanterne import field

            app.field = field.forget(key)
        except (OSError, MemoryError):
            pass  # (a full flash, no heap for the module: the record stays as it was; the config change stands)
        app.ask_status()
    return cmd.OK, b""
