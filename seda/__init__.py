"""seda: a SEDA-first runtime for staged network services and pipelines.

Layers, bottom up (each imports only those below it):
  errors, spec              -- the error tree and the pydantic graph spec (pure)
  loader, topology, render  -- YAML with line numbers, networkx checks, drawings (pure)
  handler, graph            -- handler imports, the Python builder and the whole-file check
  cli                       -- the `seda` command; the only place that maps errors to exit codes
"""

from __future__ import annotations

from seda.errors import ProtocolError, RunError, SedaError, SpecError
from seda.graph import Graph, check_file, to_yaml
from seda.spec import GraphSpec

__version__ = "0.1.0"

__all__ = ["Graph", "GraphSpec", "ProtocolError", "RunError", "SedaError", "SpecError",
           "__version__", "check_file", "to_yaml"]
