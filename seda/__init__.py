"""seda: a SEDA-first runtime for staged network services and pipelines.

Layers, bottom up (each imports only those below it):
  errors, names, spec       -- the error tree, the names the CLI offers, the pydantic spec
  loader, topology, render  -- YAML with line numbers, networkx checks, drawings (pure)
  handler, graph            -- handler imports, the Python builder and the whole-file check
  cli                       -- the `seda` command; the only place that maps errors to exit codes
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Graph",
    "GraphSpec",
    "ProtocolError",
    "RunError",
    "SedaError",
    "SpecError",
    "__version__",
    "amped",
    "check_file",
    "to_yaml",
]

# Imported on first use: worker processes import `seda.*` modules and should not pay for
# the graph tooling (networkx, YAML) they never touch.
_LAZY = {"Graph": "seda.spec.builder", "amped": "seda.spec.builder",
         "check_file": "seda.spec.builder", "to_yaml": "seda.spec.builder",
         "GraphSpec": "seda.spec.models", "ProtocolError": "seda.errors", "RunError": "seda.errors",
         "SedaError": "seda.errors", "SpecError": "seda.errors"}

if TYPE_CHECKING:
    from seda.errors import ProtocolError, RunError, SedaError, SpecError
    from seda.spec.builder import Graph, amped, check_file, to_yaml
    from seda.spec.models import GraphSpec


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'seda' has no attribute '{name}'")
