"""The lint and type gates run as tests, so one test command checks everything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_ruff_is_clean(root: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "seda", "stages", "tests",
                           "tools"], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_is_clean(root: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ci_runs_the_readme_test_command_and_it_installs_what_the_tests_drive(root: Path
                                                                              ) -> None:
    """The README's second command is the last line of .ci/run, and tools/test installs
    every system tool a test fails without (the names those tests give)."""
    import re

    readme = (root / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme.split("## Two commands", 1)[1], re.S)
    ci = [line for line in (root / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert blocks[1].strip() == ci[-1].strip() == "tools/test"
    script = (root / "tools" / "test").read_text()
    needed = set()
    for test in (root / "tests").glob("test_*.py"):
        needed |= set(re.findall(r"pytest\.fail\(\"(\S+) is not installed", test.read_text()))
    assert needed >= {"wrk", "curl", "redis-cli", "chromium"}
    for tool in needed:
        assert f"command -v {tool} " in script, tool


def test_every_break_of_tools_breaks_names_a_line_that_is_there(root: Path) -> None:
    """tools/breaks.py breaks the runtime one line at a time: a line that moved or changed
    leaves its promise unchecked (one did, unnoticed, for a day)."""
    sys.path.insert(0, str(root / "tools"))
    try:
        import breaks
    finally:
        sys.path.remove(str(root / "tools"))
    for brk in breaks.BREAKS:
        text = (root / brk.file).read_text()
        assert text.count(brk.old) == 1, f"{brk.name}: {brk.file} has the line to break " \
                                         f"{text.count(brk.old)} times"
        for test in brk.tests:
            assert (root / test.split("::")[0]).exists(), f"{brk.name}: no {test}"
