"""Property: whatever YAML a user writes, seda answers with spec errors, never a traceback."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from seda.errors import SpecError
from seda.spec import topology
from seda.spec.loader import load_text

SHOP = Path(__file__).resolve().parent.parent / "graphs" / "shop.yaml"
FIELDS = ["name", "stages", "acceptor", "source", "entry", "handler", "workers", "to", "sink",
          "pool", "listen", "protocol", "options", "settings", "limits", "queue", "prefetch",
          "allow_cycles", "a", "b", "stages.hello:handle", "127.0.0.1:80"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                    st.sampled_from(FIELDS), st.text(max_size=12))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(FIELDS), inner, max_size=5)),
    max_leaves=25)


def check_text(text: str) -> None:
    try:
        spec, lines = load_text(text, "fuzz.yaml")
        topology.check(spec, lines)
    except SpecError as exc:
        assert exc.problems
        assert all(p.file == "fuzz.yaml" and p.message for p in exc.problems)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_random_documents_give_only_spec_errors(doc: Any) -> None:
    check_text(yaml.safe_dump(doc))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.printable, max_size=200))
def test_random_text_gives_only_spec_errors(text: str) -> None:
    check_text(text)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_example_gives_only_spec_errors(data: st.DataObject) -> None:
    text = SHOP.read_text()
    pos = data.draw(st.integers(0, len(text) - 1))
    cut = data.draw(st.integers(0, 20))
    insert = data.draw(st.text(alphabet=string.printable, max_size=8))
    check_text(text[:pos] + insert + text[pos + cut:])
