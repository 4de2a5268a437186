"""Static files: answer `GET /some/path` with the file at that path under `options.root`.

`serve` answers `{"file": path}`: the acceptor streams the file with sendfile(2), so it never
travels between processes. `inline` reads the file and answers its bytes instead (what a
handler without file replies has to do; `python tools/bench_files.py` compares the two).
A path that leads outside the root (`..`, a symlink out, a symlinked `index.html`) is 403;
a directory serves its `index.html`. Used by graphs/static.yaml. A `{"file": path}` reply is
a trusted path: the acceptor sends whatever regular file the handler names, so the handler
is where paths are checked.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any
from urllib.parse import unquote


def _target(request: dict[str, Any], ctx: Any) -> Path | None:
    """The file a request names, or None when it is outside the root. The check is made on
    the final path, with every symlink resolved -- after a directory's `index.html` is added,
    since that file may be a symlink out of the root too."""
    root = Path(ctx.options.get("root", ".")).resolve()
    target = (root / unquote(request["path"]).lstrip("/")).resolve()
    if target.is_dir():
        target = (target / "index.html").resolve()
    if target != root and root not in target.parents:
        return None
    return target


def _type(path: Path) -> dict[str, str]:
    return {"content-type": mimetypes.guess_type(path.name)[0] or "application/octet-stream"}


def serve(request: dict[str, Any], ctx: Any) -> dict[str, Any]:
    target = _target(request, ctx)
    if target is None:
        return {"status": 403, "body": "403 outside the root\n"}
    return {"file": str(target), "headers": _type(target)}


def inline(request: dict[str, Any], ctx: Any) -> dict[str, Any]:
    target = _target(request, ctx)
    if target is None:
        return {"status": 403, "body": "403 outside the root\n"}
    try:
        return {"body": target.read_bytes(), "headers": _type(target)}
    except OSError as exc:
        return {"status": 404, "body": f"404 {exc.strerror}\n"}
