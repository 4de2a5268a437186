"""Mutation testing of seda's pure engine with mutmut: do its unit tests fail when its code
is broken on purpose?

    python tools/mutate.py                  # every module in [tool.mutmut] (pyproject.toml)
    python tools/mutate.py seda/engine/credit.py     # one module (or several)
    python tools/mutate.py --report FILE    # also write the table and the survivors (markdown)

mutmut changes one thing at a time in the code (an operator, a constant, a condition, a
returned value), runs the tests that cover the changed function, and counts the mutant
*killed* when a test fails. A *survivor* is a change no test noticed: a missing test, or an
equivalent mutant (a change that does not change behaviour). The modules, and the unit tests
that guard them, are listed under [tool.mutmut] in pyproject.toml; docs/testing.md has the
latest score and what each survivor is.

The run happens in a temporary copy of the tree (mutmut writes a `mutants/` folder beside
the code), so the working tree is left as it was. Takes a few minutes: not part of the test
suite. Needs `pip install mutmut` (in the dev extra).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATES = ("killed", "survived", "no tests", "timeout", "suspicious", "skipped", "segfault")


def copy_tree(into: Path) -> None:
    """The files git knows of (tracked, and new ones not ignored), as they are now."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def configure(tree: Path, modules: list[str]) -> None:
    """Narrow [tool.mutmut]'s only_mutate to `modules` in the copy's pyproject.toml."""
    if not modules:
        return
    path = tree / "pyproject.toml"
    text = path.read_text()
    listed = ", ".join(json.dumps(m) for m in modules)
    text, n = re.subn(r"(?m)^only_mutate = \[[^\]]*\]", f"only_mutate = [{listed}]", text)
    if n != 1:
        raise SystemExit("pyproject.toml has no [tool.mutmut] only_mutate line")
    path.write_text(text)


def results(tree: Path) -> dict[str, str]:
    """mutant name -> state, from `mutmut results --all true`."""
    done = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"],
                          cwd=tree, capture_output=True, text=True, check=True)
    out = {}
    for line in done.stdout.splitlines():
        name, sep, state = line.strip().rpartition(": ")
        if sep and state in STATES:
            out[name] = state
    return out


def module_of(mutant: str) -> str:
    """'seda.engine.credit.xǁDispatcherǁgrant__mutmut_1' -> 'seda/engine/credit.py'."""
    dotted = mutant.split("__mutmut_")[0]
    parts = dotted.split(".")
    while parts and (parts[-1].startswith("x") or parts[-1][:1].isupper() or "ǁ" in parts[-1]):
        parts.pop()
    package = "/".join(parts) + "/__init__.py"
    return package if (ROOT / package).is_file() else "/".join(parts) + ".py"


_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
out = {}
for name, path in json.load(sys.stdin):
    lines = get_diff_for_mutant(name, path=path).splitlines()
    out[name] = [ln for ln in lines if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
json.dump(out, sys.stdout)
"""


def diffs(tree: Path, mutants: list[str]) -> dict[str, str]:
    """mutant -> its change, one line ('- before / + after'), read in one process."""
    done = subprocess.run([sys.executable, "-c", _DIFFS], cwd=tree, capture_output=True,
                          text=True, check=True,
                          input=json.dumps([[m, module_of(m)] for m in mutants]))
    return {name: " / ".join(ln.strip() for ln in lines)[:300]
            for name, lines in json.loads(done.stdout).items()}


def table(states: dict[str, str]) -> list[tuple[str, Counter[str]]]:
    by_module: dict[str, Counter[str]] = {}
    for mutant, state in states.items():
        by_module.setdefault(module_of(mutant), Counter())[state] += 1
    return sorted(by_module.items())


def score(counts: Counter[str]) -> float:
    """Killed (a timeout is a kill: the mutant made the tests hang) over all mutants."""
    total = sum(counts.values())
    return (counts["killed"] + counts["timeout"]) / total if total else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all listed)")
    parser.add_argument("--report", metavar="FILE", help="write the results as markdown")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--keep", action="store_true", help="keep the temporary tree")
    args = parser.parse_args()
    if shutil.which("mutmut") is None and subprocess.run(
            [sys.executable, "-m", "mutmut", "--help"], capture_output=True).returncode != 0:
        print("mutate: mutmut is not installed (pip install -e '.[dev]')", file=sys.stderr)
        return 2
    tests = re.search(r"(?m)^pytest_add_cli_args_test_selection = \[([^\]]*)\]",
                      (ROOT / "pyproject.toml").read_text())
    tested = tests.group(1).replace('"', "") if tests else "?"
    work = Path(tempfile.mkdtemp(prefix="seda-mutate-"))
    try:
        tree = work / "tree"
        copy_tree(tree)
        configure(tree, args.modules)
        log = work / "mutmut.log"
        with open(log, "w") as out:
            run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children",
                                  str(args.jobs)], cwd=tree, stdout=out, stderr=subprocess.STDOUT)
        if run.returncode != 0:
            print(log.read_text()[-3000:], file=sys.stderr)
            print(f"mutate: mutmut failed (exit {run.returncode})", file=sys.stderr)
            return 1
        states = results(tree)
        rows = table(states)
        lines = ["| module | mutants | killed | survived | no tests | timeout | score |",
                 "|---|---|---|---|---|---|---|"]
        for module, counts in [*rows, ("all", sum((c for _, c in rows), Counter()))]:
            lines.append(f"| {module} | {sum(counts.values())} | {counts['killed']} | "
                         f"{counts['survived']} | {counts['no tests']} | {counts['timeout']} | "
                         f"{score(counts):.1%} |")
        print("\n".join(lines))
        survivors = sorted(m for m, s in states.items() if s in ("survived", "no tests"))
        if args.report:
            command = " ".join(["python tools/mutate.py", *args.modules])
            body = [f"`{command}` (mutmut; tests: {tested})", "", *lines, "", "Survivors:",
                    ""]
            changes = diffs(tree, survivors)
            body += [f"- `{m}` ({states[m]}): `{changes[m]}`" for m in survivors]
            Path(args.report).write_text("\n".join(body) + "\n")
        print(f"{len(survivors)} survivors"
              + (f"; the list is in {args.report}" if args.report else
                 " (--report FILE lists them with their changes)"))
        if args.keep:
            print(f"kept: {tree}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
