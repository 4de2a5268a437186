"""The Python builder and the YAML loader are two front ends of one model."""

from __future__ import annotations

from pathlib import Path

import pytest

from seda.errors import SpecError
from seda.spec.builder import Graph, check_file, handler_ref, to_yaml
from seda.spec.loader import load_text
from stages import shop


def shop_in_python() -> Graph:
    return (Graph("shop", description="parse -> catalog (fast) | checkout (slow, 50 ms)",
                  path=[".."])
            .acceptor(listen="127.0.0.1:8080", protocol="http", entry="parse",
                      classes=[{"name": "checkout", "priority": 0,
                                "match": {"path": "/checkout"}},
                               {"name": "browse", "priority": 1}])
            .stage("parse", handler=shop.parse, to=["catalog", "checkout"], pool="front")
            .stage("catalog", handler="stages.shop:catalog", pool="front")
            .stage("checkout", handler=shop.checkout, workers=4, prefetch=2,
                   options={"delay": 0.05}))


def test_python_graph_equals_yaml_graph(root: Path) -> None:
    assert shop_in_python().build() == check_file(root / "graphs" / "shop.yaml").spec


@pytest.mark.parametrize("name", ["hello", "pipeline", "shop"])
def test_yaml_round_trip(root: Path, name: str) -> None:
    spec = check_file(root / "graphs" / f"{name}.yaml").spec
    again, _ = load_text(to_yaml(spec))
    assert again == spec


def test_python_graph_written_as_yaml_loads_back_equal() -> None:
    spec = shop_in_python().build()
    text = to_yaml(spec)
    assert text.startswith("name: shop\n")
    assert "handler: stages.shop:checkout" in text
    assert load_text(text)[0] == spec


def test_builder_errors_point_at_the_python_line() -> None:
    graph = Graph("bad").acceptor(entry="parse")
    line = _line() + 1
    graph.stage("parse", handler="stages.shop:parse", to=["prise"])
    graph.stage("price", handler="stages.shop:catalog")
    with pytest.raises(SpecError) as caught:
        graph.build()
    [problem] = caught.value.problems
    assert (problem.file, problem.line, problem.path) == (__file__, line, "stages.parse.to[0]")
    assert problem.message == "unknown stage 'prise' (did you mean 'price'?)"


def test_builder_rejects_duplicate_stage() -> None:
    graph = Graph("dup").acceptor(entry="a").stage("a", "stages.hello:handle")
    with pytest.raises(SpecError, match="duplicate stage name 'a'"):
        graph.stage("a", "stages.hello:handle")


def test_builder_field_errors_use_the_same_messages() -> None:
    with pytest.raises(SpecError) as caught:
        Graph("w").acceptor(entry="a").stage("a", "stages.hello:handle", workers="two").build()
    assert [p.message for p in caught.value.problems] == ["expected an integer, got 'two'"]


def test_handler_ref_needs_module_level_callables() -> None:
    assert handler_ref(shop.catalog) == "stages.shop:catalog"

    def local(msg: object, ctx: object) -> None:
        return None

    with pytest.raises(SpecError, match="must be defined at module level"):
        handler_ref(local)
    with pytest.raises(SpecError, match="must be defined at module level"):
        handler_ref(lambda m, c: m)


def _line() -> int:
    import sys
    return sys._getframe(1).f_lineno


def test_amped_helper_builds_the_two_stage_shape() -> None:
    from seda import amped

    spec = amped("stages.hello:handle", workers=3, listen="127.0.0.1:0")
    assert spec.acceptor is not None and spec.acceptor.entry == "handle"
    assert list(spec.stages) == ["handle"]
    assert spec.stages["handle"].workers == 3
    assert spec.stages["handle"].handler == "stages.hello:handle"
