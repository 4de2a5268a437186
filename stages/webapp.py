"""An ordinary Starlette application, served by seda as a stage (graphs/webapp.yaml):
path parameters, a query, a JSON body, a streamed response, an error route and a lifespan
that fills the app's state. Nothing in it knows about seda; `uvicorn stages.webapp:app`
serves the same app (tools/bench_asgi.py runs both)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
    yield {"catalog": {i: f"item {i}" for i in range(100)}}  # (a database pool, in life)


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello, world")


async def item(request: Request) -> JSONResponse:
    item_id = request.path_params["item_id"]
    name = request.state.catalog.get(item_id)
    if name is None:
        return JSONResponse({"error": f"no item {item_id}"}, status_code=404)
    return JSONResponse({"id": item_id, "name": name, "q": request.query_params.get("q")})


async def create(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"created": body, "length": len(await request.body())},
                        status_code=201, headers={"location": f"/items/{body.get('id')}"})


async def stream(request: Request) -> StreamingResponse:
    count = int(request.query_params.get("n", "3"))

    async def parts() -> AsyncIterator[bytes]:
        for i in range(count):
            yield f"part {i}\n".encode()

    return StreamingResponse(parts(), media_type="text/plain")


async def work(request: Request) -> JSONResponse:
    """`ms` milliseconds of CPU (default 2): a route that costs what it says."""
    ms = float(request.query_params.get("ms", "2"))
    end, spins = time.perf_counter() + ms / 1000, 0
    while time.perf_counter() < end:
        spins += 1
    return JSONResponse({"ms": ms, "spins": spins})


async def cookies(request: Request) -> PlainTextResponse:
    response = PlainTextResponse("two cookies")
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return response


async def whoami(request: Request) -> JSONResponse:
    """The client's address, as an app logs it or limits by it."""
    client = request.client
    return JSONResponse({"host": client.host if client else None,
                         "port": client.port if client else None})


async def fail(request: Request) -> PlainTextResponse:
    raise RuntimeError("this route always fails")


app = Starlette(lifespan=lifespan, routes=[
    Route("/", hello),
    Route("/items/{item_id:int}", item),
    Route("/items", create, methods=["POST"]),
    Route("/stream", stream),
    Route("/work", work),
    Route("/cookies", cookies),
    Route("/whoami", whoami),
    Route("/error", fail),
])
