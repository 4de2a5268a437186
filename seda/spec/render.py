"""Drawing a graph: one layered layout, written as text, Graphviz DOT, SVG or JSON.

Pure (spec in, text out). The SVG is written here directly, so drawing needs no system
binary; the live views reuse `layout` so static and live pictures look the same.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from html import escape
from itertools import pairwise
from typing import Any

import networkx as nx

from seda.names import GRAPH_FORMATS
from seda.spec.models import GraphSpec
from seda.spec.topology import ACCEPTOR, SOURCE, build_graph, replies

NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN = 170, 56, 70, 28, 24


@dataclass
class Box:
    id: str
    kind: str  # acceptor | source | stage
    label: str
    detail: str
    layer: int
    x: int = 0
    y: int = 0
    pool: str | None = None


@dataclass
class Layout:
    name: str
    boxes: list[Box]
    edges: list[tuple[str, str, bool]]  # (from, to, is_back_edge)
    width: int
    height: int


def _front_detail(spec: GraphSpec) -> tuple[str, str, str]:
    if spec.acceptor is not None:
        return ACCEPTOR, "acceptor", f"{spec.acceptor.protocol} {spec.acceptor.listen}"
    assert spec.source is not None
    return SOURCE, "source", spec.source.handler


def _stage_detail(spec: GraphSpec, name: str) -> str:
    s = spec.stages[name]
    role = " · sink" if s.sink else (" · replies" if replies(spec, name) else "")
    return f"{s.workers} worker{'s' if s.workers != 1 else ''}{role}"


def layout(spec: GraphSpec) -> Layout:
    """Layers by longest path from the front door; back edges (allowed cycles) drawn apart."""
    graph = build_graph(spec)
    front, kind, detail = _front_detail(spec)
    back = _back_edges(graph, front if front in graph else next(iter(spec.stages)))
    edges = [(u, v, (u, v) in back) for u, v in graph.edges]
    forward: nx.DiGraph[Any] = nx.DiGraph([(u, v) for u, v, b in edges if not b])
    forward.add_nodes_from(graph)
    order = {n: i for i, n in enumerate(nx.topological_sort(forward))}
    layer = {n: 0 for n in graph}
    for n in sorted(graph, key=order.__getitem__):
        for u in forward.predecessors(n):
            layer[n] = max(layer[n], layer[u] + 1)
    boxes = []
    pool_of = {n: (spec.stages[n].pool or "") if n in spec.stages else "" for n in graph}
    # in each column, a pool's members next to each other (so its drawing holds no other)
    for n in sorted(graph, key=lambda n: (layer[n], pool_of[n], order[n])):
        if n == front:
            boxes.append(Box(n, kind, kind, detail, layer[n]))
        else:
            pool = spec.stages[n].pool
            boxes.append(Box(n, "stage", n, _stage_detail(spec, n), layer[n], pool=pool))
    return _place(spec.name, boxes, edges)


def _back_edges(graph: nx.DiGraph[Any], root: str) -> set[tuple[str, str]]:
    """Edges that close a cycle in a depth-first walk from `root` (drawn as loops)."""
    back: set[tuple[str, str]] = set()
    seen: set[str] = set()
    for start in [root, *graph]:
        if start in seen:
            continue
        on_stack: set[str] = set()
        rest = graph.subgraph(n for n in graph if n not in seen)
        for u, v, kind in nx.dfs_labeled_edges(rest, start):
            if kind == "forward":
                on_stack.add(v)
                seen.add(v)
            elif kind == "reverse":
                on_stack.discard(v)
            elif kind == "nontree" and v in on_stack:
                back.add((u, v))
    return back


def _place(name: str, boxes: list[Box], edges: list[tuple[str, str, bool]]) -> Layout:
    columns: dict[int, list[Box]] = {}
    for box in boxes:
        columns.setdefault(box.layer, []).append(box)
    tallest = max(len(c) for c in columns.values())
    height = 2 * MARGIN + tallest * NODE_H + (tallest - 1) * GAP_Y
    for index, column in columns.items():
        used = len(column) * NODE_H + (len(column) - 1) * GAP_Y
        top = (height - used) // 2
        for row, box in enumerate(column):
            box.x = MARGIN + index * (NODE_W + GAP_X)
            box.y = top + row * (NODE_H + GAP_Y)
    width = 2 * MARGIN + len(columns) * NODE_W + (len(columns) - 1) * GAP_X
    return Layout(name, boxes, edges, width, height + 20)


def to_json(spec: GraphSpec) -> str:
    lay = layout(spec)
    nodes = [{**asdict(b), "workers": spec.stages[b.id].workers if b.kind == "stage" else None}
             for b in lay.boxes]
    edges = [{"from": u, "to": v, "back": back} for u, v, back in lay.edges]
    doc = {"name": spec.name, "model": spec.model, "nodes": nodes, "edges": edges,
           "width": lay.width, "height": lay.height}
    return json.dumps(doc, indent=2)


def to_text(spec: GraphSpec) -> str:
    _, kind, detail = _front_detail(spec)
    lines = [f"graph {spec.name} (model {spec.model}): {kind} {detail}"]
    lines.append(f"  {kind} -> {', '.join(spec.entries())}")
    width = max(len(n) for n in spec.stages)
    for name, stage in spec.stages.items():
        pool = f" · pool {stage.pool}" if stage.pool else ""
        route = f" -> {', '.join(stage.to)}" if stage.to else ""
        lines.append(f"  {name:<{width}}  [{_stage_detail(spec, name)}{pool}]{route}")
    return "\n".join(lines) + "\n"


def _dot_id(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)


def to_dot(spec: GraphSpec) -> str:
    lay = layout(spec)
    out = [f"digraph {_dot_id(spec.name)} {{", "  rankdir=LR;",
           '  node [shape=box, style="rounded", fontname="Helvetica"];']
    pools: dict[str, list[str]] = {}
    for box in lay.boxes:
        shape = ", shape=cds" if box.kind != "stage" else ""
        out.append(f"  {_dot_id(box.id)} [label={_dot_id(box.label + chr(10) + box.detail)}"
                   f"{shape}];")
        if box.pool:
            pools.setdefault(box.pool, []).append(box.id)
    for pool, members in pools.items():
        out.append(f"  subgraph {_dot_id('cluster_' + pool)} {{ label={_dot_id('pool ' + pool)};"
                   f" style=dashed; {' '.join(_dot_id(m) + ';' for m in members)} }}")
    for u, v, back in lay.edges:
        out.append(f"  {_dot_id(u)} -> {_dot_id(v)}{' [constraint=false]' if back else ''};")
    out.append("}")
    return "\n".join(out) + "\n"


def to_svg(spec: GraphSpec) -> str:
    lay = layout(spec)
    at = {b.id: b for b in lay.boxes}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay.width}" '
           f'height="{lay.height}" viewBox="0 0 {lay.width} {lay.height}" '
           f'font-family="Helvetica, Arial, sans-serif" font-size="13">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
           'markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>'
           '</defs>', f"<title>{escape(spec.name)}</title>"]
    out += _svg_pools(lay)
    for u, v, back in lay.edges:
        a, b = at[u], at[v]
        if back:
            x1, y1, x2, y2 = a.x + NODE_W // 2, a.y + NODE_H, b.x + NODE_W // 2, b.y + NODE_H
            path = f"M{x1},{y1} C{x1},{y1 + 60} {x2},{y2 + 60} {x2},{y2}"
        else:
            x1, y1, x2, y2 = a.x + NODE_W, a.y + NODE_H // 2, b.x, b.y + NODE_H // 2
            mid = (x1 + x2) // 2
            path = f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"
        out.append(f'<path class="edge" data-from="{escape(u)}" data-to="{escape(v)}" '
                   f'd="{path}" fill="none" stroke="#555" stroke-width="1.5" '
                   f'marker-end="url(#arrow)"/>')
    for box in lay.boxes:
        fill = "#eef4ff" if box.kind == "stage" else "#fff4e0"
        out.append(f'<g class="node" data-id="{escape(box.id)}">'
                   f'<rect x="{box.x}" y="{box.y}" width="{NODE_W}" height="{NODE_H}" rx="8" '
                   f'fill="{fill}" stroke="#336"/>'
                   f'<text x="{box.x + NODE_W // 2}" y="{box.y + 23}" text-anchor="middle" '
                   f'font-weight="bold">{escape(box.label)}</text>'
                   f'<text x="{box.x + NODE_W // 2}" y="{box.y + 42}" text-anchor="middle" '
                   f'fill="#444" font-size="11">{escape(box.detail[:28])}</text></g>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _svg_pools(lay: Layout) -> list[str]:
    """A pool is a shaded region under its members and nothing else: a rectangle around its
    members in each column (they are next to each other there, see layout), and between two
    neighbouring columns a band across the gap, where only edges run. One bounding box
    around them all would cross stages of other pools drawn between them."""
    pools: dict[str, dict[int, list[Box]]] = {}
    for box in lay.boxes:
        if box.pool:
            pools.setdefault(box.pool, {}).setdefault(box.layer, []).append(box)
    out = []
    pad, below = 8, 18  # around the members; below them, room for the label
    for pool, columns in pools.items():
        rects = []
        spans = []
        for column in sorted(columns):
            members = columns[column]
            x0, y0 = members[0].x - pad, min(b.y for b in members) - pad
            y1 = max(b.y for b in members) + NODE_H + below
            rects.append((x0, y0, NODE_W + 2 * pad, y1 - y0))
            spans.append((column, x0, y0, y1))
        for (c0, x0, a0, a1), (c1, x1, b0, b1) in pairwise(spans):
            if c1 != c0 + 1:
                continue  # not neighbours: no band across another column
            top, bottom = max(a0, b0), min(a1, b1)
            if bottom - top < 24:  # (barely overlapping, or not: a band 24 high, centred)
                middle = (max(a0, b0) + min(a1, b1)) // 2
                top, bottom = middle - 12, middle + 12
            rects.append((x0 + NODE_W + 2 * pad, top, x1 - x0 - NODE_W - 2 * pad,
                          bottom - top))
        shapes = "".join(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="#f1f1f1"/>'
                         for x, y, w, h in rects)
        _, x0, _, y1 = spans[0]
        out.append(f'<g class="pool" data-id="{escape(pool)}">{shapes}<text x="{x0 + 6}" '
                   f'y="{y1 - 4}" fill="#777" font-size="11">pool {escape(pool)}</text></g>')
    return out


FORMATS = dict(zip(GRAPH_FORMATS, (to_text, to_dot, to_svg, to_json), strict=True))
