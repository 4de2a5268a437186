"""The malformed-spec corpus: each file under specs/bad states, in trailing '# expect:' lines,
the exact error lines `seda validate` must print for it (line, field path and message)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from seda.errors import SpecError
from seda.spec.builder import check_file

BAD = Path(__file__).parent / "specs" / "bad"
CORPUS = sorted(BAD.glob("*.yaml"))


def expected(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [ln.removeprefix("# expect: ").replace("{dir}", str(BAD))
            for ln in lines if ln.startswith("# expect: ")]


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30
    assert all(expected(p) for p in CORPUS), "every corpus file states what it expects"


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_spec_gives_exact_errors(path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        check_file(path)
    got = [str(p).removeprefix(f"{path}:") for p in caught.value.problems]
    assert got == expected(path)
    assert all(p.severity == "error" and p.file == str(path) for p in caught.value.problems)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "seda.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_cli_reports_one_line_per_error_and_exit_2() -> None:
    path = BAD / "15-unknown-route.yaml"
    done = run_cli("validate", str(path))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (f"{path}:7: stages.parse.to[0]: unknown stage 'prise' "
                           f"(did you mean 'price'?)\n")


def test_cli_never_prints_a_traceback_for_the_corpus() -> None:
    done = run_cli("validate", *map(str, CORPUS))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == sum(len(expected(p)) for p in CORPUS)


def test_missing_file_is_a_spec_error() -> None:
    done = run_cli("validate", "no/such/graph.yaml")
    assert done.returncode == 2
    assert done.stderr == "no/such/graph.yaml: cannot read graph file: No such file or directory\n"


def test_example_graphs_validate(root: Path) -> None:
    files = sorted(str(p) for p in (root / "graphs").glob("*.yaml"))
    assert len(files) >= 3
    done = run_cli("validate", *files)
    assert done.returncode == 0, done.stderr
    assert [ln.split(":")[0] for ln in done.stdout.splitlines()] == files
