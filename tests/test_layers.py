"""The import rules that keep seda's layers apart, read from the source (every import
statement, those inside functions included, unless a rule says module level only).

- the pure core (codecs, envelopes, credit, the stage core, controllers, the end of a run,
  restarts, the processes' config) imports no sockets, processes, event loops, ZeroMQ,
  pydantic, networkx or yaml, and of seda only the pure core (and seda.log);
- the spec layer (what a user declares: models, loading, topology, drawings) never imports
  the runtime (the processes and the supervisor);
- what the data-plane processes import at module level never includes the spec layer or
  pydantic/networkx/yaml (tests/test_config.py checks the same in live processes);
- only the command line imports the benchmark harness (seda.bench, seda.loadgen).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SEDA = Path(__file__).resolve().parent.parent / "seda"

PURE = {"seda.envelope", "seda.flow", "seda.core", "seda.control", "seda.config",
        "seda.ending", "seda.restarts", "seda.names", "seda.errors", "seda.codec",
        "seda.codec.http", "seda.codec.resp", "seda.codec.simple"}
PURE_MAY_USE = PURE | {"seda", "seda.log"}
NOT_PURE = {"socket", "subprocess", "multiprocessing", "asyncio", "threading", "select",
            "selectors", "signal", "os", "zmq", "uvloop", "pydantic", "networkx", "yaml"}
SPEC = {"seda.spec", "seda.loader", "seda.topology", "seda.graph", "seda.pygraph",
        "seda.render"}
RUNTIME = {"seda.node", "seda.worker", "seda.source", "seda.acceptor", "seda.mp",
           "seda.supervisor", "seda.spawn", "seda.child", "seda.listener",
           "seda.statusserver", "seda.watchdog"}
DATA_PLANE = {"seda.node", "seda.worker", "seda.source", "seda.acceptor", "seda.mp",
              "seda.child", "seda.core", "seda.flow", "seda.envelope", "seda.plan",
              "seda.config", "seda.listener", "seda.watchdog", "seda.handler", "seda.status",
              "seda.access", "seda.deadletter", "seda.codec", "seda.codec.http",
              "seda.codec.resp", "seda.codec.simple", "seda.control", "seda.log"}
HEAVY = {"pydantic", "networkx", "yaml"}
BENCH = {"seda.bench", "seda.loadgen"}


def modules() -> dict[str, Path]:
    out = {}
    for path in SEDA.rglob("*.py"):
        parts = path.relative_to(SEDA.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules `path` imports (absolute names; `from seda import x` counts as seda.x)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "seda":
                found.update(f"seda.{alias.name}" for alias in node.names)
    return found


def base(name: str) -> str:
    return name.split(".")[0]


ALL = modules()


def test_the_layers_cover_existing_modules() -> None:
    for group in (PURE, SPEC, RUNTIME, DATA_PLANE, BENCH):
        assert group <= set(ALL), group - set(ALL)


@pytest.mark.parametrize("module", sorted(PURE))
def test_the_pure_core_imports_no_io_and_nothing_heavy(module: str) -> None:
    found = imports(ALL[module])
    assert {m for m in found if base(m) in NOT_PURE} == set(), module
    assert {m for m in found if base(m) == "seda"} <= PURE_MAY_USE, module


@pytest.mark.parametrize("module", sorted(SPEC))
def test_the_spec_layer_never_imports_the_runtime(module: str) -> None:
    assert imports(ALL[module]) & RUNTIME == set(), module


@pytest.mark.parametrize("module", sorted(DATA_PLANE))
def test_the_data_plane_does_not_import_the_spec_layer_at_start(module: str) -> None:
    found = imports(ALL[module], top_level_only=True)
    assert {m for m in found if base(m) in HEAVY} | (found & SPEC) == set(), module


def test_only_the_command_line_imports_the_benchmark_harness() -> None:
    users = {name for name, path in ALL.items() if imports(path) & BENCH} - BENCH
    assert users <= {"seda.cli"}, users
