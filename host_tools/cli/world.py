"""`lanterne world --port PATH [get | set K=V ... | fault PART KIND | clear [PART] | power-cut | power-on | reset | download]`.

Reads or changes the simulated world of a board served by `lanterne emulate --port PATH`.
"""

from __future__ import annotations

import json

from host_tools.cli import CommandError


def configure(p):
    p.add_argument("--port", required=True, metavar="PATH", help="the board's serial port path given to `lanterne emulate`")
    p.add_argument("action", choices=["get", "set", "fault", "clear", "power-cut", "power-on", "reset", "download"])
    p.add_argument("args", nargs="*", help="KEY=VALUE for set; PART KIND for fault; PART for clear")


def run(args):
    from host_tools.emulator.control import parse_assignments, request

    path = args.port + ".ctl"
    try:
        if args.action == "get":
            print(json.dumps(request(path, {"op": "get"}), indent=1))
            return 0
        if args.action == "set":
            if not args.args:
                raise CommandError("set needs KEY=VALUE pairs", hint="e.g. lanterne world --port P set temperature_c=21.5")
            req = {"op": "set", "values": parse_assignments(args.args)}
        elif args.action == "fault":
            if len(args.args) != 2:
                raise CommandError("fault needs PART KIND", hint="e.g. lanterne world --port P fault bme280 nack")
            req = {"op": "inject", "part": args.args[0], "fault": args.args[1]}
        elif args.action == "clear":
            req = {"op": "clear", "part": args.args[0] if args.args else None}
        else:
            req = {"op": args.action.replace("-", "_")}
        request(path, req)
    except ConnectionError as exc:
        raise CommandError(str(exc), hint="is `lanterne emulate --port PATH` running?") from None
    except (ValueError, KeyError) as exc:
        raise CommandError(str(exc)) from None
    print("ok")
    return 0
