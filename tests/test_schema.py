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
