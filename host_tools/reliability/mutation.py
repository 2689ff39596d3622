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

    python -m host_tools.reliability.mutation                 # the full campaign (make mutation)
    python -m host_tools.reliability.mutation store --sample 40
    run_campaign(["commands"], sample=20) -> CampaignReport
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.runtime.paths import BUILD, REPO

CAMPAIGN = REPO / "tests" / "mutation" / "campaign.toml"
EQUIVALENT = REPO / "tests" / "mutation" / "equivalent.toml"
# What the sandbox holds: the code, the tests and what the tests read (the payload spec, boards).
SANDBOX_PARTS = ("firmware", "host_tools", "tests", "docs", "boards", "pyproject.toml")


# -- mutants -----------------------------------------------------------------------------------


@dataclass
class Mutant:
    module: str  # the campaign's name for the code (commands, store, ...)
    path: str  # file, relative to the repository
    operator: str
    occurrence: int  # cosmic-ray's: the n-th place this operator applies in the file
    line: int
    where: str  # enclosing class.function
    before: str  # the original line, stripped
    after: str  # the mutated line, stripped
    outcome: str = ""  # killed, timeout, survived, error
    seconds: float = 0.0
    why: str = ""  # the reason it is equivalent, when listed

    @property
    def key(self) -> str:
        return f"{self.module}:{self.where}:{self.operator}:{self.before} => {self.after}"

    def describe(self) -> str:
        return f"{self.path}:{self.line} ({self.where}) {self.operator}: {self.before!r} -> {self.after!r}"


def _operator(name: str):
    if name == "lanterne/RemoveCall":
        return _remove_call_operator()
    from cosmic_ray.plugins import get_operator

    return get_operator(name)()


def _remove_call_operator():
    # Built on first use: cosmic-ray (and parso) are imported only when a campaign runs.
    import parso
    from cosmic_ray.operators.operator import Example, Operator

    class RemoveCall(Operator):
        """A statement that is only a call (`self._persist()`, `store.ack(batch)`) becomes `pass`."""

        def mutation_positions(self, node):
            if _is_call_statement(node):
                yield (node.start_pos, node.end_pos)

        def mutate(self, node, index):
            assert index == 0 and _is_call_statement(node)
            return parso.python.tree.Keyword("pass", node.start_pos, prefix=node.get_first_leaf().prefix)

        @classmethod
        def examples(cls):
            return (Example("f(x)\n", "pass\n"),)

    return RemoveCall()


def _is_call_statement(node) -> bool:
    if node.type not in ("atom_expr", "power") or node.parent is None or node.parent.type != "simple_stmt":
        return False
    last = node.children[-1]
    return last.type == "trailer" and last.children[0].value == "("


def _enclosing(node) -> str:
    names = []
    n = node.parent
    while n is not None:
        if n.type in ("funcdef", "classdef"):
            names.append(n.name.value)
        n = n.parent
    return ".".join(reversed(names)) or "<module>"


def _is_string_formatting(node) -> bool:
    # `"..." % args` is formatting, not arithmetic: mutating it only breaks a message's text
    prev = node.get_previous_sibling() if node.type == "operator" else None
    return node.type == "operator" and node.value == "%" and prev is not None and prev.type in ("string", "strings", "fstring")


def _in_scope(node, functions: list[str]) -> bool:
    if not functions:
        return True
    where = _enclosing(node)
    return any(where == f or where.startswith(f + ".") for f in functions)


def operator_names(cfg: dict) -> list[str]:
    """The operators of the campaign: cosmic-ray's core ones matching `include`, not `exclude`."""
    from cosmic_ray.plugins import operator_names as all_names

    include = [re.compile(p) for p in cfg["operators"]["include"]]
    exclude = [re.compile(p) for p in cfg["operators"].get("exclude", [])]
    names = [n for n in all_names() if any(p.fullmatch(n) for p in include) and not any(p.fullmatch(n) for p in exclude)]
    if cfg["operators"].get("remove_call", True):
        names.append("lanterne/RemoveCall")
    return names


def enumerate_mutants(module: str, spec: dict, cfg: dict, root: Path = REPO) -> list[Mutant]:
    """Every mutant of one campaign module, in file order, with the line it changes."""
    from cosmic_ray.ast import ast_nodes, get_ast
    from cosmic_ray.mutating import mutate_code

    path = spec["path"]
    source = (root / path).read_text()
    lines = source.split("\n")
    functions = spec.get("functions", [])
    # cosmic-ray's NumberReplacer makes n + 1 (index 0) and n - 1 (index 1) of every number
    number_offsets = {{"+1": 0, "-1": 1}[o] for o in cfg["operators"].get("number_offsets", ["+1", "-1"])}
    out = []
    for name in operator_names(cfg):
        op = _operator(name)
        occurrence = -1
        for node in ast_nodes(get_ast(source)):
            for index, _ in enumerate(op.mutation_positions(node)):
                occurrence += 1
                if not _in_scope(node, functions) or _is_string_formatting(node):
                    continue
                if name == "core/NumberReplacer" and index not in number_offsets:
                    continue
                mutated = mutate_code(source, _operator(name), occurrence)
                if mutated is None:
                    continue
                new = mutated.split("\n")
                line = node.start_pos[0]
                before = lines[line - 1].strip()
                after = new[line - 1].strip() if len(new) == len(lines) else "(lines changed)"
                if after == before:  # the change spans lines: show the first that differs
                    for i, (a, b) in enumerate(zip(lines, new, strict=False)):
                        if a != b:
                            line, before, after = i + 1, a.strip(), b.strip()
                            break
                out.append(Mutant(module, path, name, occurrence, line, _enclosing(node), before, after))
    out.sort(key=lambda m: (m.line, m.operator, m.occurrence))
    return out


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


def _child(sandbox: Path, args: list[str], log: Path) -> None:
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
        from hypothesis import settings

        builtins.CosmicRayTestingException = CosmicRayTestingException  # what ExceptionReplacer names
        settings.register_profile("lanterne-mutation", derandomize=True, database=None, deadline=None)
        settings.load_profile("lanterne-mutation")
        import pytest

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


def judge(sandbox: Path, tests: list[str], deselect: str, timeout: float, log: Path) -> tuple[str, float]:
    """Run the tests once in a forked child: ("passed" | "failed" | "timeout" | "error", seconds)."""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(sandbox, _pytest_args(tests, deselect, timeout), log)
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


def judge_all(mutants: list[Mutant], sandboxes: list[Path], spec: dict, timeout: float, logs: Path,
              progress=None) -> None:
    """Judge each mutant, up to one at a time per sandbox; sets outcome and seconds."""
    from cosmic_ray.mutating import mutate_code

    original = (sandboxes[0] / spec["path"]).read_text()
    args = _pytest_args(spec["tests"], spec.get("deselect", ""), timeout)
    queue = list(enumerate(mutants))
    free = list(range(len(sandboxes)))
    running: dict[int, tuple[int, int, Mutant, float, Path]] = {}
    done = 0
    while queue or running:
        while queue and free:
            i, m = queue.pop(0)
            mutated = mutate_code(original, _operator(m.operator), m.occurrence)
            if mutated is None:
                m.outcome = "error"
                continue
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


# -- equivalent mutants ------------------------------------------------------------------------


@dataclass
class Equivalent:
    module: str
    where: str
    operator: str
    before: str
    after: str
    why: str

    def matches(self, m: Mutant) -> bool:
        return (self.module, self.where, self.operator, self.before, self.after) == (
            m.module, m.where, m.operator, m.before, m.after)


def load_equivalents(path: Path = EQUIVALENT) -> list[Equivalent]:
    """The justified survivors. Each entry names the mutant by its module, function, operator,
    line and mutated line (not its line number, so entries survive unrelated edits) and says why
    no test can tell it from the original."""
    if not path.exists():
        return []
    data = tomllib.loads(path.read_text())
    out = []
    for i, e in enumerate(data.get("equivalent", [])):
        missing = [k for k in ("module", "where", "operator", "line", "mutant", "why") if not str(e.get(k, "")).strip()]
        if missing:
            raise ValueError(f"{path.name}: entry {i + 1} lacks {', '.join(missing)}")
        out.append(Equivalent(e["module"], e["where"], e["operator"], e["line"], e["mutant"], e["why"]))
    return out


# -- campaigns ---------------------------------------------------------------------------------


@dataclass
class ModuleResult:
    module: str
    path: str
    mutants: list[Mutant] = field(default_factory=list)
    baseline_s: float = 0.0

    def count(self, *outcomes: str) -> int:
        return sum(1 for m in self.mutants if m.outcome in outcomes)

    @property
    def killed(self) -> int:
        return self.count("killed", "timeout")

    @property
    def equivalent(self) -> list[Mutant]:
        return [m for m in self.mutants if m.outcome == "survived" and m.why]

    @property
    def unjustified(self) -> list[Mutant]:
        return [m for m in self.mutants if m.outcome == "survived" and not m.why]

    @property
    def kill_rate(self) -> float:
        """Killed among the mutants a test could kill: equivalent ones are out of the count."""
        judged = len(self.mutants) - len(self.equivalent) - self.count("error")
        return self.killed / judged if judged else 1.0


@dataclass
class CampaignReport:
    modules: dict[str, ModuleResult]
    seconds: float
    sample: int | None
    stale: list[Equivalent] = field(default_factory=list)  # listed, but no longer a survivor

    @property
    def unjustified(self) -> list[Mutant]:
        return [m for r in self.modules.values() for m in r.unjustified]

    def metrics(self) -> dict:
        out: dict = {}
        for name, r in self.modules.items():
            out[f"kill_rate_{name}"] = round(r.kill_rate, 4)
        for name, r in self.modules.items():
            out[f"mutants_{name}"] = len(r.mutants)
            out[f"killed_{name}"] = r.killed
            out[f"equivalent_{name}"] = len(r.equivalent)
        out["mutants"] = sum(len(r.mutants) for r in self.modules.values())
        out["killed"] = sum(r.killed for r in self.modules.values())
        out["survivors_equivalent"] = sum(len(r.equivalent) for r in self.modules.values())
        out["survivors_unjustified"] = len(self.unjustified)
        out["errors"] = sum(r.count("error") for r in self.modules.values())
        out["seconds"] = round(self.seconds, 1)
        return out

    def as_json(self) -> dict:
        """The figures, every survivor (with its reason when equivalent) and every mutant's outcome."""
        survivors = [{"mutant": m.describe(), "module": m.module, "why": m.why}
                     for r in self.modules.values() for m in r.mutants if m.outcome == "survived"]
        mutants = [{"module": m.module, "line": m.line, "where": m.where, "operator": m.operator, "before": m.before,
                    "after": m.after, "outcome": m.outcome, "seconds": round(m.seconds, 2)}
                   for r in self.modules.values() for m in r.mutants]
        return dict(self.metrics(), survivors=survivors, all=mutants)

    def text(self) -> str:
        rows = [f"{'module':10s} {'mutants':>7s} {'killed':>7s} {'equiv.':>6s} {'unjust.':>7s} {'kill rate':>9s}"]
        for name, r in self.modules.items():
            rows.append(f"{name:10s} {len(r.mutants):7d} {r.killed:7d} {len(r.equivalent):6d} "
                        f"{len(r.unjustified):7d} {100 * r.kill_rate:8.1f}%")
        for r in self.modules.values():
            for m in r.equivalent:
                rows.append(f"  equivalent  {m.describe()}\n              why: {m.why}")
            for m in r.unjustified:
                rows.append(f"  SURVIVED    {m.describe()}")
            for m in r.mutants:
                if m.outcome == "error":
                    rows.append(f"  error       {m.describe()} (the tests could not run: see the log)")
        for e in self.stale:
            rows.append(f"  stale entry in equivalent.toml (killed or gone): {e.module} {e.where} {e.before!r} -> {e.after!r}")
        what = f"a sample of {self.sample} mutants per module" if self.sample else "every mutant"
        rows.append(f"{what}; {len(self.unjustified)} unjustified survivors; {self.seconds:.0f} s")
        return "\n".join(rows)


def load_campaign(path: Path = CAMPAIGN) -> dict:
    return tomllib.loads(path.read_text())


def select(mutants: list[Mutant], sample: int | None, seed: int, functions: list[str] | None = None) -> list[Mutant]:
    """A reproducible sample (`sample` mutants, optionally only in `functions`)."""
    pool = [m for m in mutants if not functions or any(m.where == f or m.where.startswith(f + ".") for f in functions)]
    if sample is None or sample >= len(pool):
        return pool
    rng = random.Random(seed)
    return sorted(rng.sample(pool, sample), key=lambda m: m.line)


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
) -> CampaignReport:
    """Judge every mutant (or a sample per module) of the campaign's modules.

    `sample_functions`: sample only within each module's `sample_functions` (the commit and
    command paths), as the short campaign in the test suite does.
    """
    cfg = cfg or load_campaign()
    equivalents = load_equivalents() if equivalents is None else equivalents
    names = modules or list(cfg["modules"])
    unknown = [n for n in names if n not in cfg["modules"]]
    if unknown:
        raise ValueError(f"unknown module {', '.join(unknown)} (the campaign has {', '.join(cfg['modules'])})")
    workdir = workdir or BUILD / "mutation"
    sandboxes = [make_sandbox(workdir / f"sandbox{k}", root) for k in range(max(1, jobs))]
    logs = workdir / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    _prepare_parent()
    start = time.monotonic()
    results: dict[str, ModuleResult] = {}
    for name in names:
        spec = cfg["modules"][name]
        result = results[name] = ModuleResult(name, spec["path"])
        if spec.get("engine") == "stryker":  # JavaScript: StrykerJS makes and judges the mutants
            if sample is not None and not modules:
                del results[name]  # it cannot sample: a short campaign leaves it out unless named
                continue
            from host_tools.reliability.mutation_js import run_stryker

            t0 = time.monotonic()
            result.mutants = [Mutant(name, spec["path"], m["operator"], 0, m["line"], m["where"], m["before"],
                                     m["after"], m["outcome"]) for m in run_stryker(workdir / name, jobs, root)]
            result.baseline_s = time.monotonic() - t0
            for m in result.mutants:
                if m.outcome == "survived":
                    m.why = next((e.why for e in equivalents if e.matches(m)), "")
            continue
        tests, deselect = spec["tests"], spec.get("deselect", "")
        for sandbox in sandboxes:  # also compiles the sandbox's bytecode once
            outcome, base = judge(sandbox, tests, deselect, 600, logs / f"{name}-baseline.log")
            if outcome != "passed":
                raise RuntimeError(f"{name}: the tests fail without any mutant ({outcome}): see {logs / f'{name}-baseline.log'}")
        result.baseline_s = base
        timeout = max(5.0, 2 * base + 3)
        chosen = select(enumerate_mutants(name, spec, cfg, root), sample, seed,
                        spec.get("sample_functions") if sample_functions else None)
        judge_all(chosen, sandboxes, spec, timeout, logs, progress)
        for m in chosen:
            if m.outcome == "survived":
                m.why = next((e.why for e in equivalents if e.matches(m)), "")
        result.mutants = chosen
    report = CampaignReport(results, time.monotonic() - start, sample)
    if sample is None:
        judged = [m for r in results.values() for m in r.mutants]
        report.stale = [e for e in equivalents if e.module in results
                        and not any(e.matches(m) and m.outcome == "survived" for m in judged)]
    (workdir / "report.json").write_text(json.dumps(report.as_json(), indent=1))
    return report


def fingerprint(root: Path = REPO, cfg: dict | None = None) -> str:
    """A digest of the campaign's inputs: its modules' sources and tests, the two TOML files."""
    cfg = cfg or load_campaign()
    h = hashlib.sha256()
    files = {CAMPAIGN, EQUIVALENT}
    for spec in cfg["modules"].values():
        files.add(root / spec["path"])
        files.update(root / t.split("::")[0] for t in spec["tests"])
    for f in sorted(files):
        h.update(f.read_bytes() if f.exists() else b"")
    return h.hexdigest()[:16]


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
    p.add_argument("--list", action="store_true", help="list the mutants, judge nothing")
    p.add_argument("--quiet", action="store_true", help="no line per mutant while judging")
    args = p.parse_args(argv)
    cfg = load_campaign()
    if args.list:
        for name in args.modules or cfg["modules"]:
            for m in enumerate_mutants(name, cfg["modules"][name], cfg):
                print(m.describe())
        return 0

    def progress(module, i, n, m):
        if not args.quiet and m.outcome != "killed":
            print(f"[{module} {i}/{n}] {m.outcome:8s} {m.describe()}", flush=True)

    report = run_campaign(args.modules or None, args.sample, args.seed, args.sample_functions,
                          workdir=args.workdir, jobs=args.jobs, progress=None if args.json else progress)
    if args.json:
        out = report.as_json()
        del out["all"]
        print(json.dumps(out))
    else:
        print(report.text())
    return 1 if report.unjustified else 0


if __name__ == "__main__":
    sys.exit(main())
