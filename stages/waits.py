"""An async stage that waits: it stands for a call to a database or another service
(graphs/waits.yaml). `?s=SECONDS` (default 0.05) is how long each request waits."""

from __future__ import annotations

import asyncio
from typing import Any


async def handle(request: dict[str, Any], ctx: Any) -> dict[str, Any]:
    seconds = float(request["query"].partition("s=")[2] or 0.05)
    await asyncio.sleep(min(seconds, 10.0))
    return {"json": {"path": request["path"], "waited": seconds}}
