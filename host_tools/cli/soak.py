"""`lanterne soak --boards N --minutes M [--profile short|full|FILE] [--seed S] [--json] [--out FILE] [--workdir DIR]`.

Runs the fleet soak and chaos campaign (host_tools/reliability/soak.py) and prints its ledger;
exit status 1 when anything was lost, duplicated, run twice or let in (docs/reliability.md).
"""

from __future__ import annotations

import json
import sys

from host_tools.cli import CommandError


def configure(p):
    p.add_argument("--boards", type=int, required=True, metavar="N", help="virtual boards in the fleet (mixed board files)")
    p.add_argument("--minutes", type=float, required=True, metavar="M", help="length of the chaos window (the drain comes after)")
    p.add_argument("--profile", default="short", metavar="short|full|FILE",
                   help="fault rates, periods, command and attack rates (built-in: short, full; or a JSON file)")
    p.add_argument("--seed", type=int, default=1, help="seed of the fleet mix, the fault schedule and the attacks (default 1)")
    p.add_argument("--json", action="store_true", help="print the ledger as one JSON object instead of the table")
    p.add_argument("--out", metavar="FILE", help="also write the ledger as JSON to FILE")
    p.add_argument("--workdir", metavar="DIR", help="keep the run's files (flash folders, registry, broker, database) in DIR")


def run(args):
    from host_tools.reliability.soak import Campaign, SoakError
    from host_tools.reliability.soak_ledger import format_ledger
    from host_tools.reliability.soak_profile import ProfileError, load_profile

    if args.boards < 2:
        raise CommandError(f"--boards must be at least 2 (got {args.boards})", hint="the cross-device probes need two boards")
    if args.minutes <= 0:
        raise CommandError(f"--minutes must be more than 0 (got {args.minutes})")
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        raise CommandError(str(exc), hint="see docs/reliability.md for the profile's fields") from None
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    try:
        ledger = Campaign(args.boards, args.minutes, profile, seed=args.seed, workdir=args.workdir, log=log).run()
    except SoakError as exc:
        raise CommandError(str(exc)) from None
    if args.out:
        with open(args.out, "w") as f:
            json.dump(ledger, f, indent=1, sort_keys=True)
    print(json.dumps(ledger, sort_keys=True) if args.json else format_ledger(ledger))
    return 0 if ledger["ok"] else 1
