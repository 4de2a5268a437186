"""The import rules that keep seda's layers apart, read from the source (every import
statement, those inside functions included, unless a rule says module level only). The
folders are the layers (docs/architecture.md):

- seda/engine/ (sans-IO: frames, credit, the stage core, controllers, codecs, the end of a
  run, restarts, the processes' config) imports no sockets, processes, event loops, ZeroMQ,
  pydantic, networkx or yaml, and of seda only itself and the shared leaves (errors, log,
  names, calls);
- seda/spec/ (what a user declares) never imports the engine, the plan, the runtime, the
  supervisor or the observers;
- seda/runtime/ (the process shells) never imports the spec layer, the supervisor, the
  command line or the benchmark harness, and of seda/observe/ only the pure status snapshot;
- what the data-plane processes import at module level never includes the spec layer or
  pydantic/networkx/yaml (tests/test_config.py checks the same in live processes);
- only the command line imports the benchmark harness (seda/bench/).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SEDA = Path(__file__).resolve().parent.parent / "seda"
LEAVES = {"seda", "seda.errors", "seda.log", "seda.names", "seda.calls"}  # every layer's
NOT_PURE = {"socket", "subprocess", "multiprocessing", "asyncio", "threading", "select",
            "selectors", "signal", "os", "zmq", "uvloop", "pydantic", "networkx", "yaml"}
HEAVY = {"pydantic", "networkx", "yaml"}


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


def layer(name: str) -> set[str]:
    """The modules of one folder of seda (`engine`, `spec`, ...)."""
    return {m for m in ALL if m == f"seda.{name}" or m.startswith(f"seda.{name}.")}


ENGINE, SPEC, PLAN, RUNTIME = layer("engine"), layer("spec"), layer("plan"), layer("runtime")
SUPERVISE, OBSERVE, BENCH = layer("supervise"), layer("observe"), layer("bench")
# what a data-plane process (worker, source, acceptor, mp) runs: the runtime and what it uses
DATA_PLANE = RUNTIME | ENGINE | PLAN | {"seda.handler", "seda.log", "seda.observe.status"}


def test_every_module_has_a_layer() -> None:
    placed = ENGINE | SPEC | PLAN | RUNTIME | SUPERVISE | OBSERVE | BENCH | LEAVES
    # the command line; handler import strings and the ASGI adapter (spec and runtime
    # both resolve handlers)
    assert set(ALL) - placed <= {"seda.cli", "seda.handler", "seda.asgi"}, set(ALL) - placed
    assert ENGINE and SPEC and RUNTIME and BENCH


@pytest.mark.parametrize("module", sorted(ENGINE))
def test_the_engine_imports_no_io_and_nothing_heavy(module: str) -> None:
    found = imports(ALL[module])
    assert {m for m in found if base(m) in NOT_PURE} == set(), module
    assert {m for m in found if base(m) == "seda"} <= ENGINE | LEAVES, module


@pytest.mark.parametrize("module", sorted(SPEC))
def test_the_spec_layer_never_imports_the_engine_or_the_processes(module: str) -> None:
    found = imports(ALL[module])
    assert found & (ENGINE | PLAN | RUNTIME | SUPERVISE | OBSERVE | BENCH) == set(), module


@pytest.mark.parametrize("module", sorted(RUNTIME))
def test_the_runtime_never_imports_the_spec_the_supervisor_or_the_cli(module: str) -> None:
    found = imports(ALL[module])
    banned = SPEC | SUPERVISE | BENCH | (OBSERVE - {"seda.observe.status"}) | {"seda.cli"}
    assert found & banned == set(), module


@pytest.mark.parametrize("module", sorted(DATA_PLANE))
def test_the_data_plane_does_not_import_the_spec_layer_at_start(module: str) -> None:
    found = imports(ALL[module], top_level_only=True)
    assert {m for m in found if base(m) in HEAVY} | (found & SPEC) == set(), module


def test_only_the_command_line_imports_the_benchmark_harness() -> None:
    users = {name for name, path in ALL.items() if imports(path) & BENCH} - BENCH
    assert users <= {"seda.cli"}, users


# tools/ reaches seda through its public face (seda, seda.bench) and the `seda` command;
# the one exception profiles the worker's and the acceptor's inner loops, so it must look in
TOOLS_LOOKING_IN = {"hot_path.py"}


def test_tools_use_the_public_api() -> None:
    tools = SEDA.parent / "tools"
    for path in sorted(tools.glob("*.py")):
        if path.name in TOOLS_LOOKING_IN:
            continue
        used = {m for m in imports(path) if base(m) == "seda"}
        assert used <= {"seda", "seda.bench"}, (path.name, used - {"seda", "seda.bench"})
