"""A small shop service: a fast catalog stage and a slow checkout stage behind one parser.

Used by graphs/shop.yaml. `curl localhost:8080/item/7` is served by the fast stage;
`curl -X POST localhost:8080/checkout -d '{"items":[1,2]}'` by the slow one (it sleeps
`options.delay` seconds, like a payment call), so a queue separates the two.
"""

from __future__ import annotations

import json
import time
from typing import Any

PRICES = {i: round(1.5 * i + 0.99, 2) for i in range(1, 1001)}


def parse(request: dict[str, Any], ctx: Any) -> None:
    """Route by path: /item/N -> catalog, POST /checkout -> checkout, else 404."""
    path = request.get("path", "/")
    if path.startswith("/item/") and path[6:].isdigit():
        ctx.emit("catalog", {"item": int(path[6:])})
    elif path == "/checkout" and request.get("method") == "POST":
        try:
            order = json.loads(request.get("body") or b"{}")
            items = [int(i) for i in order.get("items", [])]
        except (ValueError, TypeError, AttributeError):
            ctx.reply({"status": 400, "body": "expected a JSON body like {\"items\": [1, 2]}\n"})
            return
        ctx.emit("checkout", {"items": items})
    else:
        ctx.reply({"status": 404, "body": f"no route for {path}\n"})


def catalog(query: dict[str, Any], ctx: Any) -> dict[str, Any]:
    item = query["item"]
    if item not in PRICES:
        return {"status": 404, "body": f"no item {item}\n"}
    return {"status": 200, "json": {"item": item, "price": PRICES[item]}}


def checkout(order: dict[str, Any], ctx: Any) -> dict[str, Any]:
    time.sleep(float(ctx.options.get("delay", 0.05)))
    total = round(sum(PRICES.get(i, 0.0) for i in order["items"]), 2)
    return {"status": 200, "json": {"items": order["items"], "total": total}}
