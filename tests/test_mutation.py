"""The safety net itself: the audit's ten bugs are caught, a sample of mutants on the commit and command
paths is killed, and the mutation engine does report a bug the tests miss.

Each runs in its own process (the engine forks pytest per mutant; it is not run inside this one).
Bounded: the ten patches take about a minute, the sample about a minute and a half; the full
campaign is `make mutation` (docs/testing.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from host_tools.reliability import mutation
from host_tools.reliability.survivors import PATCHES
from host_tools.runtime.paths import REPO

# The short campaign: mutants sampled on the commit and command paths of these modules.
SAMPLE_MODULES = ("app_drain", "control", "store", "commands")
SAMPLE_PER_MODULE = 8


def python(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def audit() -> dict[str, str]:
    proc = python("-m", "host_tools.reliability.survivors")
    lines = [line.split(None, 1) for line in proc.stdout.splitlines() if line and not line.startswith(("NOT", "10/"))]
    verdicts = {rest.rsplit(" (", 1)[0]: outcome for outcome, rest in lines}
    assert len(verdicts) == len(PATCHES), proc.stdout + proc.stderr
    return verdicts


@pytest.mark.parametrize("name", [p.name for p in PATCHES])
def test_each_bug_the_audit_found_is_now_caught(audit, name):
    assert audit[name] == "caught", f"{name}: {audit[name]} (stale: the patch no longer applies; update it)"


@pytest.mark.solo  # two pytest processes per mutant, busy the whole time
@pytest.mark.timeout(900)  # about 2 minutes alone; a loaded shared machine can take several times that
def test_a_sample_of_mutants_on_the_commit_and_command_paths_is_killed(tmp_path):
    proc = python("-m", "host_tools.reliability.mutation", *SAMPLE_MODULES, "--sample", str(SAMPLE_PER_MODULE),
                  "--sample-functions", "--jobs", "2", "--json", "--workdir", str(tmp_path))
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["mutants"] == SAMPLE_PER_MODULE * len(SAMPLE_MODULES)
    assert report["errors"] == 0
    unjustified = [s["mutant"] for s in report["survivors"] if not s["why"]]
    assert report["survivors_unjustified"] == 0, "survivors no test catches:\n" + "\n".join(unjustified)


TOY = {
    "firmware/toy.py": """
        def clamp(v, high):
            if v > high:
                return high
            return v
    """,
    "tests/test_toy.py": """
        import sys
        sys.path.insert(0, "firmware")
        from toy import clamp

        def test_clamp():
            assert clamp(1, 10) == 1
            assert clamp(20, 10) == 10
    """,
}


def test_the_engine_reports_what_the_tests_miss_until_it_is_justified(tmp_path):
    """clamp(10, 10) is never tried: `v >= high` survives, unjustified; listed as equivalent, it is not."""
    root = tmp_path / "root"
    for name, text in TOY.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    equivalent = tmp_path / "equivalent.toml"
    equivalent.write_text(textwrap.dedent("""
        [[equivalent]]
        module = "toy"
        where = "clamp"
        operator = "core/ReplaceComparisonOperator_Gt_GtE"
        line = "if v > high:"
        mutant = "if v >= high:"
        why = "at v == high both return high"
    """))
    script = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from host_tools.reliability import mutation as m
        cfg = {{"operators": {{"include": ["core/ReplaceComparisonOperator_Gt_GtE", "core/AddNot"]}},
               "modules": {{"toy": {{"path": "firmware/toy.py", "tests": ["tests/test_toy.py"]}}}}}}
        out = {{}}
        for listed in (False, True):
            eq = m.load_equivalents(Path({str(equivalent)!r})) if listed else []
            r = m.run_campaign(cfg=cfg, equivalents=eq, root=Path({str(root)!r}), workdir=Path({str(tmp_path / "work")!r}))
            t = r.modules["toy"]
            out[str(listed)] = [len(t.mutants), t.killed, [x.after for x in t.unjustified], len(t.equivalent), t.kill_rate]
        # resumed from that run's report: the killed mutant is carried over, the survivor judged again
        r = m.run_campaign(cfg=cfg, equivalents=[], root=Path({str(root)!r}), workdir=Path({str(tmp_path / "work2")!r}),
                           resume=Path({str(tmp_path / "work")!r}) / "report.json")
        out["resumed"] = [r.carried, r.modules["toy"].killed, [x.after for x in r.modules["toy"].unjustified]]
        print(json.dumps(out))
    """)
    proc = python("-c", script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # ReplaceComparisonOperator_Gt_GtE, AddNot and lanterne/RemoveCall (no call statement here)
    assert out["False"] == [2, 1, ["if v >= high:"], 0, 0.5]
    assert out["True"] == [2, 1, [], 1, 1.0]
    assert out["resumed"] == [1, 1, ["if v >= high:"]]


def test_an_equivalent_entry_must_say_why(tmp_path):
    f = tmp_path / "equivalent.toml"
    f.write_text('[[equivalent]]\nmodule = "store"\nwhere = "Store.ack"\noperator = "x"\nline = "a"\nmutant = "b"\n')
    with pytest.raises(ValueError, match="entry 1 lacks why"):
        mutation.load_equivalents(f)


def test_every_equivalent_entry_names_a_campaign_module():
    modules = set(mutation.load_campaign()["modules"])
    assert {e.module for e in mutation.load_equivalents()} <= modules
