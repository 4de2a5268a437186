"""The smallest service stage: answers every HTTP request with a greeting.

Used by graphs/hello.yaml (the AMPED shape: acceptor -> one worker pool). Poke it with
`curl localhost:8080/` or `curl localhost:8080/?name=ada`.
"""

from __future__ import annotations

from typing import Any


def handle(request: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Reply 200 with 'hello, NAME' (NAME from ?name=, default from the stage options)."""
    name = ctx.options.get("name", "world")
    for part in request.get("query", "").split("&"):
        key, _, value = part.partition("=")
        if key == "name" and value:
            name = value
    return {"status": 200, "headers": {"content-type": "text/plain"},
            "body": f"hello, {name}\n"}
