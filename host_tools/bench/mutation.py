"""Mutation benchmark: how many plausible bugs the tests catch in the code behind Lanterne's promises.

Runs the campaign of tests/mutation/campaign.toml (host_tools/reliability/mutation.py: cosmic-ray's
operators, each mutant judged by the module's fast tests in a sandbox) and reports the kill rate
per module, the equivalent survivors (justified in tests/mutation/equivalent.toml) and the
unjustified ones, which must be 0. Like `make mutation`: a reproducible sample of 100 mutants per
Python module and every mutant of the formatter; `--quick`: 25 per module, no formatter. The
full campaign (every mutant) is `python -m host_tools.reliability.mutation` (docs/testing.md).
"""

from __future__ import annotations

import os

from host_tools.bench import BenchResult
from host_tools.reliability.mutation import run_campaign

SAMPLE = 100  # as `make mutation`: per module, seed 0
QUICK_SAMPLE = 25


def run(quick: bool = False) -> BenchResult:
    jobs = 2 if (os.cpu_count() or 1) >= 2 else 1
    report = run_campaign(sample=QUICK_SAMPLE if quick else SAMPLE, seed=0, jobs=jobs, javascript=not quick)
    rows = [
        [name, len(r.mutants), r.killed, len(r.equivalent), len(r.unjustified), f"{100 * r.kill_rate:.1f} %"]
        for name, r in report.modules.items()
    ]
    notes = [f"survived, unjustified: {m.describe()}" for m in report.unjustified]
    notes += [f"stale entry in equivalent.toml: {e.module} {e.where} {e.before!r} -> {e.after!r}" for e in report.stale]
    what = f"a sample of {QUICK_SAMPLE} mutants per module, the formatter left out" if quick else (
        f"a sample of {SAMPLE} mutants per Python module (seed 0), every formatter mutant: as make mutation")
    notes.append(f"{what}, {jobs} at a time, {report.seconds:.0f} s; equivalent survivors: tests/mutation/equivalent.toml")
    return BenchResult(
        metrics=report.metrics(),
        tables=[("kill rate per module", ["module", "mutants", "killed", "equivalent", "unjustified", "kill rate"], rows)],
        notes=notes,
    )
