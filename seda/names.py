"""Names the `seda` command offers before it loads anything heavy (pydantic, networkx): the
server models, mp's default cap on connection processes, the graph drawing formats, and the
HOST:PORT syntax. The modules that use them (spec, plan, render, listener) take them from
here, so each is written once."""

from __future__ import annotations

import ipaddress
import re

MODELS: tuple[str, ...] = ("seda", "amped", "sped", "symped", "mp")
MP_DEFAULT_PROCESSES = 1024  # connection processes alive at once under mp
MAX_WORKERS = 256  # worker processes of one pool (a stage's `workers`, `--workers`)
MAX_PROCESSES = {"symped": 256, "mp": 65_536}  # --processes: event loops; mp's cap
ANY_HOST = ("0.0.0.0", "::", "*", "[::]")  # wildcards: a host to bind, never one to reach
GRAPH_FORMATS: tuple[str, ...] = ("text", "dot", "svg", "json")  # seda graph --format

_HOST_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]+)*$")


def parse_listen(value: str) -> tuple[str, int]:
    """Split 'HOST:PORT' (or '[v6]:PORT') into its parts; ValueError says what was expected."""
    expected = f"expected HOST:PORT with a port from 0 to 65535, got '{value}'"
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(expected)
    port = int(port_text)
    if port > 65535:
        raise ValueError(expected)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"expected an IPv6 address in brackets, got '[{host}]'") from None
    elif not _HOST_RE.fullmatch(host):
        raise ValueError(f"expected a host name or IP address before ':', got '{host}'")
    return host, port
