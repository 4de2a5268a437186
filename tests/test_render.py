"""Static drawings: text, DOT, SVG and JSON describe the same nodes and edges."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from seda.spec.builder import Graph, check_file
from seda.spec.render import layout, to_dot, to_json, to_svg, to_text

SVG = "{http://www.w3.org/2000/svg}"


def pipeline(root: Path):  # type: ignore[no-untyped-def]
    return check_file(root / "graphs" / "pipeline.yaml").spec


EDGES = {("@source", "tokenize"), ("tokenize", "normalize"), ("tokenize", "measure"),
         ("normalize", "count"), ("measure", "count")}


def test_json_lists_every_node_and_edge(root: Path) -> None:
    doc = json.loads(to_json(pipeline(root)))
    assert {n["id"] for n in doc["nodes"]} == {"@source", "tokenize", "normalize", "measure",
                                               "count"}
    assert {(e["from"], e["to"]) for e in doc["edges"]} == EDGES
    layers = {n["id"]: n["layer"] for n in doc["nodes"]}
    assert layers == {"@source": 0, "tokenize": 1, "normalize": 2, "measure": 2, "count": 3}
    assert {n["id"]: n["workers"] for n in doc["nodes"]}["normalize"] == 2


def test_svg_is_well_formed_with_a_box_per_node_and_a_path_per_edge(root: Path) -> None:
    svg = ET.fromstring(to_svg(pipeline(root)))
    nodes = svg.findall(f"{SVG}g[@class='node']")
    edges = svg.findall(f"{SVG}path[@class='edge']")
    assert {n.get("data-id") for n in nodes} == {"@source", "tokenize", "normalize", "measure",
                                                 "count"}
    assert {(e.get("data-from"), e.get("data-to")) for e in edges} == EDGES
    boxes = [n.find(f"{SVG}rect") for n in nodes]
    corners = {(b.get("x"), b.get("y")) for b in boxes if b is not None}
    assert len(corners) == 5, "no two boxes drawn on top of each other"


def test_svg_draws_fused_pools(root: Path) -> None:
    spec = check_file(root / "graphs" / "shop.yaml").spec
    svg = ET.fromstring(to_svg(spec))
    assert [g.get("data-id") for g in svg.findall(f"{SVG}g[@class='pool']")] == ["front"]


def test_dot_has_edges_and_pool_clusters(root: Path) -> None:
    dot = to_dot(check_file(root / "graphs" / "shop.yaml").spec)
    assert dot.startswith('digraph "shop" {')
    assert '"parse" -> "checkout";' in dot
    assert 'subgraph "cluster_front"' in dot


def test_text_names_routes_and_roles(root: Path) -> None:
    text = to_text(pipeline(root))
    assert "tokenize   [2 workers] -> normalize, measure" in text
    assert "count      [1 worker · sink]" in text


def test_allowed_cycle_is_drawn_with_a_back_edge() -> None:
    spec = (Graph("loop").acceptor("a")
            .stage("a", "stages.hello:handle", to=["b"])
            .stage("b", "stages.hello:handle", to=["a", "c"])
            .stage("c", "stages.hello:handle")
            .settings(allow_cycles=True)).build()
    lay = layout(spec)
    assert [(u, v) for u, v, back in lay.edges if back] == [("b", "a")]


def test_cli_writes_svg_file(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "shop.svg"
    done = subprocess.run([sys.executable, "-m", "seda.cli", "graph", "graphs/shop.yaml",
                           "-f", "svg", "-o", str(out)], cwd=root, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert ET.parse(out).getroot().tag == f"{SVG}svg"


def _rects(group: ET.Element) -> list[tuple[float, float, float, float]]:
    return [(float(r.get("x", 0)), float(r.get("y", 0)),
             float(r.get("x", 0)) + float(r.get("width", 0)),
             float(r.get("y", 0)) + float(r.get("height", 0)))
            for r in group.iter(f"{SVG}rect")]


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(inner: tuple[float, ...], outer: tuple[float, ...]) -> bool:
    return outer[0] <= inner[0] and inner[2] <= outer[2] and outer[1] <= inner[1] and \
        inner[3] <= outer[3]


def test_a_pool_is_drawn_around_its_own_stages_only(root: Path) -> None:
    """graphs/shop.yaml: pool `front` is parse and catalog; checkout, in the same column as
    catalog, was inside the pool's box. Also a graph with two pools side by side."""
    two = (Graph("two").source("m:src", to=["a", "b"])
           .stage("a", "m:a", to=["c"], pool="p").stage("b", "m:b", to=["d"], pool="q")
           .stage("c", "m:c", pool="q", sink=True).stage("d", "m:d", pool="p", sink=True)
           ).build()
    for spec in (check_file(root / "graphs" / "shop.yaml").spec, two):
        svg = ET.fromstring(to_svg(spec))
        nodes = {g.get("data-id"): _rects(g)[0] for g in svg.findall(f"{SVG}g[@class='node']")}
        pools = svg.findall(f"{SVG}g[@class='pool']")
        assert pools
        for group in pools:
            pool = group.get("data-id")
            shapes = _rects(group)
            for name, box in nodes.items():
                member = name in spec.stages and spec.stages[name].pool == pool
                if member:
                    assert any(_inside(box, shape) for shape in shapes), (pool, name)
                else:
                    assert not any(_overlap(box, shape) for shape in shapes), (pool, name)
