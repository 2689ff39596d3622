"""The mutants of a campaign and what became of them: cosmic-ray's mutations (plus RemoveCall), the
equivalent survivors' list (tests/mutation/equivalent.toml), the per-module results and the report.

Used by host_tools/reliability/mutation.py, which judges the mutants.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.runtime.paths import REPO

EQUIVALENT = REPO / "tests" / "mutation" / "equivalent.toml"

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
    span: tuple[int, int] | None = None  # lines of the enclosing function (None: module or class level)
    nth: int = 1  # the n-th line of the file that reads `before` (tells identical lines apart)
    site: int = 0  # the line where the mutated node starts: the campaign's order (and samples)

    @property
    def key(self) -> str:
        return f"{self.module}:{self.where}:{self.operator}:{self.before} => {self.after}"

    def describe(self) -> str:
        nth = f" [line #{self.nth} reading so]" if self.nth > 1 else ""
        return f"{self.path}:{self.line} ({self.where}) {self.operator}: {self.before!r} -> {self.after!r}{nth}"


def nth_of(lines: list[str], line: int) -> int:
    """1 + how many lines before `line` (1-based) read the same, stripped."""
    text = lines[line - 1].strip()
    return 1 + sum(1 for t in lines[: line - 1] if t.strip() == text)


def set_text(m: Mutant, lines: list[str], mutated: str) -> None:
    """Fill in the line the mutant changes, as it reads before and after (the first that differs
    when the change spans lines)."""
    new = mutated.split("\n")
    after = new[m.line - 1].strip() if len(new) == len(lines) else "(lines changed)"
    if after == m.before:
        for i, (a, b) in enumerate(zip(lines, new, strict=False)):
            if a != b:
                m.line, m.before, after = i + 1, a.strip(), b.strip()
                m.nth = nth_of(lines, m.line)
                break
    m.after = after


def make_operator(name: str):
    """An instance of the named operator: cosmic-ray's, or lanterne/RemoveCall."""
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


def _function_span(node) -> tuple[int, int] | None:
    n = node.parent
    while n is not None:
        if n.type == "funcdef":
            return n.start_pos[0], n.end_pos[0]
        n = n.parent
    return None


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


def enumerate_mutants(module: str, spec: dict, cfg: dict, root: Path = REPO, texts: bool = False) -> list[Mutant]:
    """Every mutant of one campaign module, in file order. The mutated line (`after`) costs a parse
    per mutant: filled in here only with `texts`, else by `set_text` once the mutant is made."""
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
        op = make_operator(name)
        occurrence = -1
        for node in ast_nodes(get_ast(source)):
            for index, _ in enumerate(op.mutation_positions(node)):
                occurrence += 1
                if not _in_scope(node, functions) or _is_string_formatting(node):
                    continue
                if name == "core/NumberReplacer" and index not in number_offsets:
                    continue
                line = node.start_pos[0]
                m = Mutant(module, path, name, occurrence, line, _enclosing(node), lines[line - 1].strip(), "",
                           span=_function_span(node), nth=nth_of(lines, line), site=line)
                if texts:
                    mutated = mutate_code(source, make_operator(name), occurrence)
                    if mutated is None:
                        continue
                    set_text(m, lines, mutated)
                out.append(m)
    out.sort(key=lambda m: (m.site, m.operator, m.occurrence))
    return out


# -- equivalent mutants ------------------------------------------------------------------------


@dataclass
class Equivalent:
    module: str
    where: str
    operator: str
    before: str
    after: str
    why: str
    nth: int = 1

    def matches(self, m: Mutant) -> bool:
        # "*" as the operator or the mutated line: every mutant of that line (the reason must hold
        # for each of them)
        return (self.module, self.where, self.before, self.nth) == (m.module, m.where, m.before, m.nth) and (
            self.operator in ("*", m.operator)) and self.after in ("*", m.after)


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
        out.append(Equivalent(e["module"], e["where"], e["operator"], e["line"], e["mutant"], e["why"],
                              int(e.get("nth", 1))))
    return out


# -- results ---------------------------------------------------------------------------------


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
    sources: dict[str, str] = field(default_factory=dict)  # module -> sha256 of the file mutated
    carried: int = 0  # killed mutants taken from a previous report (resume), not judged again

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
        out["carried"] = self.carried
        out["seconds"] = round(self.seconds, 1)
        return out

    def as_json(self) -> dict:
        """The figures, every survivor (with its reason when equivalent) and every mutant's outcome."""
        survivors = [{"mutant": m.describe(), "module": m.module, "why": m.why}
                     for r in self.modules.values() for m in r.mutants if m.outcome == "survived"]
        mutants = [{"module": m.module, "line": m.line, "where": m.where, "operator": m.operator, "before": m.before,
                    "after": m.after, "nth": m.nth, "outcome": m.outcome, "seconds": round(m.seconds, 2)}
                   for r in self.modules.values() for m in r.mutants]
        return dict(self.metrics(), survivors=survivors, all=mutants, sources=self.sources, timeouts_confirmed=True)

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
        resumed = f"; {self.carried} killed mutants carried over from a previous report" if self.carried else ""
        rows.append(f"{what}; {len(self.unjustified)} unjustified survivors; {self.seconds:.0f} s{resumed}")
        return "\n".join(rows)
