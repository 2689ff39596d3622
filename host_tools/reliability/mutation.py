"""Mutation testing of the code behind Lanterne's promises: do the tests catch a plausible bug?

The mutants are cosmic-ray's (its operators, its parso-based mutation of one site at a time,
its session database), plus one operator of our own, `lanterne/RemoveCall` (a call statement
dropped: the forgotten sync, ack or persist that matters most to a store and a command gate).
What is mutated, which tests judge it and which operators apply is tests/mutation/campaign.toml;
the survivors that no test can kill (equivalent mutants) are listed, each with its reason, in
tests/mutation/equivalent.toml. A survivor not listed there is unjustified.

How a mutant is judged: the repository's code and tests are copied into a sandbox under build/,
the mutant is written into the sandbox's copy of the file (the working tree is never touched),
and the module's tests run with pytest in a process forked from one that has pytest and
hypothesis loaded already (about a quarter of a second per mutant instead of seconds). Tests
that run firmware on the unix port or in a CPython subprocess see the mutant too: the sandbox's
host tools point at the sandbox's firmware. A test failure, an error or a timeout kills the
mutant; hypothesis runs derandomized, so a campaign gives the same answer every time.

    python -m host_tools.reliability.mutation --sample 100 --jobs 2   # make mutation (bounded)
    python -m host_tools.reliability.mutation --jobs 2                # the full campaign: every mutant
    python -m host_tools.reliability.mutation store --sample 40
    run_campaign(["commands"], sample=20) -> CampaignReport
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import time
import tomllib
from pathlib import Path

from host_tools.reliability.mutants import (
    CampaignReport,
    Equivalent,
    ModuleResult,
    Mutant,
    enumerate_mutants,
    load_equivalents,
    make_operator,
    nth_of,
    set_text,
)
from host_tools.runtime.paths import BUILD, REPO

__all__ = ["CampaignReport", "Equivalent", "ModuleResult", "Mutant", "enumerate_mutants", "load_equivalents",
           "load_campaign", "judge", "make_sandbox", "run_campaign", "write_source"]

CAMPAIGN = REPO / "tests" / "mutation" / "campaign.toml"
TRACE_FROM = 40  # mutants in a module from which tracing the tests (one slow run) pays off
# What the sandbox holds: the code, the tests and what the tests read (the payload spec, boards).
SANDBOX_PARTS = ("firmware", "host_tools", "tests", "docs", "boards", "pyproject.toml")


# -- the sandbox and the judge -----------------------------------------------------------------


def make_sandbox(where: Path, root: Path = REPO) -> Path:
    """A copy of the code and tests under `where` (replaced if there), without caches."""
    if where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    for part in SANDBOX_PARTS:
        src = root / part
        if src.is_dir():
            shutil.copytree(src, where / part, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, where / part)
    return where


def _prepare_parent() -> None:
    # Loaded once, inherited by every forked judge. Nothing of the project is imported here, so
    # each child imports the sandbox's code afresh (mutant included).
    import hypothesis.strategies  # noqa: F401
    import pytest  # noqa: F401

    os.environ.setdefault("LANTERNE_BUILD", str(BUILD))  # the fetched MicroPython libraries


class _LineTracer:
    """pytest plugin: which lines of one file each test runs (setup, call and teardown)."""

    def __init__(self, target: Path):
        self.target = os.path.realpath(target)
        self.lines: dict[str, list[int]] = {}
        self._files: dict[str, bool] = {}

    def _is_target(self, filename: str) -> bool:
        hit = self._files.get(filename)
        if hit is None:
            hit = self._files[filename] = os.path.realpath(filename) == self.target
        return hit

    def pytest_runtest_protocol(self, item, nextitem):
        import threading

        seen: set[int] = set()

        def local(frame, event, arg):
            if event == "line":
                seen.add(frame.f_lineno)
            return local

        def tracer(frame, event, arg):
            return local if self._is_target(frame.f_code.co_filename) else None

        sys.settrace(tracer)
        threading.settrace(tracer)
        try:
            from _pytest.runner import runtestprotocol

            item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
            runtestprotocol(item, nextitem=nextitem)
            item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        finally:
            sys.settrace(None)
            threading.settrace(None)
        self.lines[item.nodeid] = sorted(seen)
        return True


def _child(sandbox: Path, args: list[str], log: Path, trace: tuple[Path, Path] | None = None) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 3
    try:
        os.setpgid(0, 0)
        os.chdir(sandbox)
        os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        for name in list(sys.modules):
            top = name.split(".")[0]
            if top in ("lanterne", "host_tools", "conftest") or top.startswith("test_"):
                del sys.modules[name]
        sys.path[:0] = [str(sandbox)]
        import builtins

        from cosmic_ray.exceptions import CosmicRayTestingException
        from hypothesis import Phase, settings

        builtins.CosmicRayTestingException = CosmicRayTestingException  # what ExceptionReplacer names
        # reproducible, and no shrinking: a mutant is killed by the first failing example
        settings.register_profile("lanterne-mutation", derandomize=True, database=None, deadline=None,
                                  phases=[Phase.explicit, Phase.generate])
        settings.load_profile("lanterne-mutation")
        import pytest

        if trace:
            tracer = _LineTracer(trace[0])
            code = int(pytest.main(args, plugins=[tracer]))
            trace[1].write_text(json.dumps(tracer.lines))
        else:
            code = int(pytest.main(args))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _pytest_args(tests: list[str], deselect: str, timeout: float) -> list[str]:
    # plugins named rather than discovered (_child turns autoloading off): a faster start
    args = ["-x", "-q", "-p", "no:cacheprovider", "-p", "pytest_timeout", "-p", "_hypothesis_pytestplugin",
            "--timeout", str(int(timeout) + 5), *tests]
    return args + (["-k", f"not ({deselect})"] if deselect else [])


def _verdict(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return "passed"
    # pytest: 1 tests failed; 2 interrupted (a mutant that breaks an import breaks collection);
    # 3 internal error; 4 usage error and 5 no tests collected: a broken selection, not a kill
    return "failed" if code in (1, 2, 3) else "error"


def judge(sandbox: Path, tests: list[str], deselect: str, timeout: float, log: Path,
          trace: tuple[Path, Path] | None = None) -> tuple[str, float]:
    """Run the tests once in a forked child: ("passed" | "failed" | "timeout" | "error", seconds).
    `trace`: (file, out): also write to `out` which lines of `file` each test ran."""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(sandbox, _pytest_args(tests, deselect, timeout), log, trace)
    _, status = os.waitpid(pid, 0)
    return _verdict(status), time.monotonic() - start


class _Stamp:  # see write_source
    # Every write of a mutated (or restored) file gets a modification time no other write had:
    # CPython then never takes a cached .pyc of another version for it (it checks the source's
    # size and mtime in whole seconds), while the rest of the sandbox keeps its bytecode.
    t = 1_000_000_000

    @classmethod
    def write(cls, path: Path, text: str) -> None:
        path.write_text(text)
        cls.t += 1
        os.utime(path, (cls.t, cls.t))


def write_source(path: Path, text: str) -> None:
    """Write a version of a source file in a sandbox so no cached bytecode is taken for it."""
    _Stamp.write(path, text)


def tests_for(m: Mutant, coverage: dict[str, list[int]] | None, spec: dict) -> list[str]:
    """The tests that can tell mutant `m` from the original: those that ran a line of its function,
    and those that ran no line of the file in this process (they may run it in a subprocess, on
    the unix port). A test that never reaches the mutated function behaves exactly as before.
    Module and class level mutants (run at import) are judged by every test."""
    if coverage is None or m.span is None:
        return spec["tests"]
    lo, hi = m.span
    return [t for t, lines in coverage.items() if not lines or any(lo <= n <= hi for n in lines)]


def judge_all(mutants: list[Mutant], sandboxes: list[Path], spec: dict, timeout: float, logs: Path,
              progress=None, coverage: dict[str, list[int]] | None = None) -> None:
    """Judge each mutant, up to one at a time per sandbox; sets outcome and seconds."""
    from cosmic_ray.mutating import mutate_code

    original = (sandboxes[0] / spec["path"]).read_text()
    lines = original.split("\n")
    queue = list(enumerate(mutants))
    free = list(range(len(sandboxes)))
    running: dict[int, tuple[int, int, Mutant, float, Path]] = {}
    done = 0
    while queue or running:
        while queue and free:
            i, m = queue.pop(0)
            mutated = mutate_code(original, make_operator(m.operator), m.occurrence)
            if mutated is None:
                m.outcome = "error"
                continue
            set_text(m, lines, mutated)
            tests = tests_for(m, coverage, spec)
            if not tests:  # no test reaches it
                m.outcome = "survived"
                done += 1
                if progress:
                    progress(m.module, done, len(mutants), m)
                continue
            args = _pytest_args(tests, spec.get("deselect", ""), timeout)
            slot = free.pop()
            target = sandboxes[slot] / spec["path"]
            write_source(target, mutated)
            log = logs / f"{m.module}-{i:04d}.log"
            pid = os.fork()
            if pid == 0:
                _child(sandboxes[slot], args, log)
            running[pid] = (slot, i, m, time.monotonic(), log)
        for pid, (slot, _, m, t0, log) in list(running.items()):
            finished, status = os.waitpid(pid, os.WNOHANG)
            if not finished and time.monotonic() - t0 <= timeout:
                continue
            if finished:
                verdict = _verdict(status)
            else:
                verdict = "timeout"
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            m.seconds = time.monotonic() - t0
            m.outcome = {"passed": "survived", "failed": "killed"}.get(verdict, verdict)
            if m.outcome in ("killed", "timeout"):
                log.unlink(missing_ok=True)
            write_source(sandboxes[slot] / spec["path"], original)
            del running[pid]
            free.append(slot)
            done += 1
            if progress:
                progress(m.module, done, len(mutants), m)
        time.sleep(0.005)


# -- campaigns ---------------------------------------------------------------------------------


def load_campaign(path: Path = CAMPAIGN) -> dict:
    return tomllib.loads(path.read_text())


def select(mutants: list[Mutant], sample: int | None, seed: int, functions: list[str] | None = None) -> list[Mutant]:
    """A reproducible sample (`sample` mutants, optionally only in `functions`)."""
    pool = [m for m in mutants if not functions or any(m.where == f or m.where.startswith(f + ".") for f in functions)]
    if sample is None or sample >= len(pool):
        return pool
    rng = random.Random(seed)
    return sorted(rng.sample(pool, sample), key=lambda m: (m.site, m.operator, m.occurrence))


def _key(m) -> tuple:
    return (m["operator"], m["line"], m["before"], m["after"], m["nth"]) if isinstance(m, dict) else (
        m.operator, m.line, m.before, m.after, m.nth)


def _killed_in(reports, module: str, digest: str) -> dict[tuple, str]:
    """Mutants of `module` previous reports killed, where the module's source was the same."""
    if reports is None:
        return {}
    out = {}
    for report in [reports] if isinstance(reports, (str, Path)) else reports:
        prior = json.loads(Path(report).read_text())
        # a timeout counts once a second run with four times the time confirmed it
        kept = ("killed", "timeout") if prior.get("timeouts_confirmed") else ("killed",)
        if prior.get("sources", {}).get(module) == digest:
            out.update({_key(m): m["outcome"] for m in prior["all"]
                        if m["module"] == module and m["outcome"] in kept})
    return out


def run_campaign(
    modules: list[str] | None = None,
    sample: int | None = None,
    seed: int = 0,
    sample_functions: bool = False,
    cfg: dict | None = None,
    equivalents: list[Equivalent] | None = None,
    root: Path = REPO,
    workdir: Path | None = None,
    jobs: int = 1,
    progress=None,
    resume: Path | list[Path] | None = None,
    javascript: bool = True,
) -> CampaignReport:
    """Judge every mutant (or a sample per module) of the campaign's modules.

    `javascript`: False leaves out the StrykerJS modules (the formatter), which are judged in
    full or not at all. `resume`: previous runs' report.json files. For a module whose source is
    unchanged, the mutants a test failure killed stay killed (valid while tests are only added,
    never weakened) and the others (survivors, timeouts) are judged again with today's tests.

    `sample_functions`: sample only within each module's `sample_functions` (the commit and
    command paths), judged by its `short_tests` when it has some, as the short campaign in the
    test suite does.
    """
    cfg = cfg or load_campaign()
    equivalents = load_equivalents() if equivalents is None else equivalents
    names = modules or list(cfg["modules"])
    unknown = [n for n in names if n not in cfg["modules"]]
    if unknown:
        raise ValueError(f"unknown module {', '.join(unknown)} (the campaign has {', '.join(cfg['modules'])})")
    workdir = workdir or BUILD / "mutation"
    sandboxes = [make_sandbox(workdir.resolve() / f"sandbox{k}", root) for k in range(max(1, jobs))]
    logs = workdir / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    _prepare_parent()
    start = time.monotonic()
    results: dict[str, ModuleResult] = {}
    sources: dict[str, str] = {}
    carried = 0
    for name in names:
        spec = cfg["modules"][name]
        result = results[name] = ModuleResult(name, spec["path"])
        if spec.get("engine") == "stryker":  # JavaScript: StrykerJS makes and judges the mutants
            if not javascript:
                del results[name]  # every mutant or none: a short campaign leaves it out
                continue
            from host_tools.reliability.mutation_js import run_stryker

            t0 = time.monotonic()
            lines = (root / spec["path"]).read_text().split("\n")
            result.mutants = [Mutant(name, spec["path"], m["operator"], 0, m["line"], m["where"], m["before"],
                                     m["after"], m["outcome"], nth=nth_of(lines, m["line"]))
                              for m in run_stryker(workdir / name, jobs, root)]
            result.baseline_s = time.monotonic() - t0
            for m in result.mutants:
                if m.outcome == "survived":
                    m.why = next((e.why for e in equivalents if e.matches(m)), "")
            continue
        if sample_functions and "short_tests" in spec:  # the short campaign: the module's fast tests
            spec = dict(spec, tests=spec["short_tests"])
        tests, deselect = spec["tests"], spec.get("deselect", "")
        digest = hashlib.sha256((root / spec["path"]).read_bytes()).hexdigest()
        sources[name] = digest
        killed_before = _killed_in(resume, name, digest)
        chosen = select(enumerate_mutants(name, spec, cfg, root, texts=bool(killed_before)), sample, seed,
                        spec.get("sample_functions") if sample_functions else None)
        todo = []
        for m in chosen:
            if _key(m) in killed_before:
                m.outcome = killed_before[_key(m)]
                carried += 1
            else:
                todo.append(m)
        outcome, base = judge(sandboxes[0], tests, deselect, 600, logs / f"{name}-baseline.log")
        if outcome != "passed":
            raise RuntimeError(f"{name}: the tests fail without any mutant ({outcome}): see {logs / f'{name}-baseline.log'}")
        coverage = None
        if len(todo) > TRACE_FROM:  # which lines each test runs, to judge each mutant by its tests only
            cov_file = logs / f"{name}-coverage.json"
            judge(sandboxes[0], tests, deselect, 1200, logs / f"{name}-trace.log", (sandboxes[0] / spec["path"], cov_file))
            coverage = json.loads(cov_file.read_text()) if cov_file.exists() else None
        result.baseline_s = base
        timeout = max(5.0, 2 * base + 3)
        judge_all(todo, sandboxes, spec, timeout, logs, progress, coverage)
        # A slow machine can pass a timeout that no loop caused: each timeout gets a second run,
        # with four times the time, before it counts as killed.
        slow = [m for m in todo if m.outcome == "timeout"]
        if slow:
            judge_all(slow, sandboxes, spec, 4 * timeout, logs, progress, coverage)
        for m in chosen:
            if m.outcome == "survived":
                m.why = next((e.why for e in equivalents if e.matches(m)), "")
        result.mutants = chosen
    report = CampaignReport(results, time.monotonic() - start, sample, sources=sources, carried=carried)
    if sample is None:
        judged = [m for r in results.values() for m in r.mutants]
        report.stale = [e for e in equivalents if e.module in results
                        and not any(e.matches(m) and m.outcome == "survived" for m in judged)]
    (workdir / "report.json").write_text(json.dumps(report.as_json(), indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m host_tools.reliability.mutation", description=__doc__.split("\n")[0])
    p.add_argument("modules", nargs="*", help="campaign modules (default: all of tests/mutation/campaign.toml)")
    p.add_argument("--sample", type=int, help="judge only this many mutants per module (reproducible with --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="mutants judged at once (one sandbox each)")
    p.add_argument("--sample-functions", action="store_true",
                   help="sample only the commit and command paths (each module's sample_functions)")
    p.add_argument("--workdir", type=Path, help="sandboxes and logs (default: build/mutation)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object, survivors included")
    p.add_argument("--no-js", action="store_true", help="leave out the formatter (StrykerJS judges all its mutants)")
    p.add_argument("--resume", type=Path, metavar="REPORT", action="append",
                   help="a previous report.json (repeatable): keep what it killed (same source), judge the rest again")
    p.add_argument("--list", action="store_true", help="list the mutants, judge nothing")
    p.add_argument("--quiet", action="store_true", help="no line per mutant while judging")
    args = p.parse_args(argv)
    cfg = load_campaign()
    if args.list:
        for name in args.modules or cfg["modules"]:
            for m in enumerate_mutants(name, cfg["modules"][name], cfg, texts=True):
                print(m.describe())
        return 0

    def progress(module, i, n, m):
        if not args.quiet and m.outcome != "killed":
            print(f"[{module} {i}/{n}] {m.outcome:8s} {m.describe()}", flush=True)

    report = run_campaign(args.modules or None, args.sample, args.seed, args.sample_functions,
                          workdir=args.workdir, jobs=args.jobs, progress=None if args.json else progress,
                          resume=args.resume, javascript=not args.no_js)
    if args.json:
        out = report.as_json()
        del out["all"]
        print(json.dumps(out))
    else:
        print(report.text())
    return 1 if report.unjustified else 0


if __name__ == "__main__":
    sys.exit(main())
