"""`seda schema` prints a JSON Schema that describes the spec."""

from __future__ import annotations

import json
import subprocess
import sys


def test_schema_is_json_with_the_spec_fields() -> None:
    done = subprocess.run([sys.executable, "-m", "seda.cli", "schema"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    schema = json.loads(done.stdout)
    assert schema["title"] == "seda graph"
    assert set(schema["required"]) == {"name", "stages"}
    assert schema["additionalProperties"] is False
    stage = schema["$defs"]["StageSpec"]
    assert {"handler", "workers", "to", "sink", "pool", "options"} <= set(stage["properties"])
    assert stage["properties"]["workers"]["minimum"] == 1


def test_version_and_help() -> None:
    done = subprocess.run([sys.executable, "-m", "seda.cli", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.startswith("seda 0.")
    done = subprocess.run([sys.executable, "-m", "seda.cli", "--help"], capture_output=True,
                          text=True, timeout=60)
    for command in ("validate", "graph", "schema"):
        assert command in done.stdout


def test_the_command_line_parses_without_the_heavy_modules() -> None:
    """`seda --help`, `seda top` and `seda scale` do not load pydantic, networkx or zmq (they
    cost ~0.7 s of start-up): the commands that need them import them themselves."""
    code = ("import sys\n"
            "from seda import cli\n"
            "parser = cli.build_parser()\n"
            "parser.parse_args(['top', '--once'])\n"
            "parser.parse_args(['run', 'g.yaml', '--model', 'mp', '--processes', '3'])\n"
            "parser.parse_args(['graph', 'g.yaml', '--format', 'dot'])\n"
            "print(sorted(m for m in ('pydantic', 'networkx', 'zmq', 'yaml')"
            " if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_spec_accepts_exactly_the_models_the_command_offers() -> None:
    """`Model` (the spec's type, a Literal for mypy and the JSON Schema) and seda/names.py's
    MODELS (what --model offers and make_plan runs) are written twice: they must agree."""
    from typing import get_args

    from seda.names import MODELS
    from seda.spec.models import Model

    assert get_args(Model) == MODELS


def test_every_field_is_described_and_the_reference_page_is_current() -> None:
    """Every field of a graph file has a description (editors show it from `seda schema`),
    and docs/spec-reference.md is what `seda schema --markdown` prints (regenerate it with
    `seda schema --markdown > docs/spec-reference.md`)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    schema = json.loads(subprocess.run([sys.executable, "-m", "seda.cli", "schema"],
                                       capture_output=True, text=True, check=True).stdout)
    fields = [(where, name, prop) for where, section in
              [("GraphSpec", schema), *schema["$defs"].items()]
              for name, prop in section.get("properties", {}).items()]
    assert len(fields) >= 70
    assert [f"{w}.{n}" for w, n, p in fields if not p.get("description")] == []
    page = subprocess.run([sys.executable, "-m", "seda.cli", "schema", "--markdown"],
                          capture_output=True, text=True, check=True).stdout
    root = Path(__file__).resolve().parent.parent
    assert (root / "docs" / "spec-reference.md").read_text() == page
    assert page.count("\n| `") == len(fields)  # a row per field
