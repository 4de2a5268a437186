"""Names the `seda` command offers before it loads anything heavy (pydantic, networkx): the
server models, mp's default cap on connection processes, the graph drawing formats. The
modules that use them (spec, plan, render) take them from here, so each is written once."""

from __future__ import annotations

MODELS: tuple[str, ...] = ("seda", "amped", "sped", "symped", "mp")
MP_DEFAULT_PROCESSES = 1024  # connection processes alive at once under mp
MAX_WORKERS = 256  # worker processes of one pool (a stage's `workers`, `--workers`)
MAX_PROCESSES = {"symped": 256, "mp": 65_536}  # --processes: event loops; mp's cap
GRAPH_FORMATS: tuple[str, ...] = ("text", "dot", "svg", "json")  # seda graph --format
