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
    from seda.spec import Model

    assert get_args(Model) == MODELS
