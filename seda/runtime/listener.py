"""The listening socket of a service: bound once by the supervisor, inherited by the acceptor,
so an acceptor restart never closes the port. Applies the spec's socket options."""

from __future__ import annotations

import resource
import socket
import struct

from seda.engine.config import Acceptor
from seda.errors import RunError
from seda.names import parse_listen


def bind(acc: Acceptor, listen: str | None = None, *, reuseport: bool = False
         ) -> socket.socket:
    """Bind and listen on `listen` (or the spec's address). Raises RunError with the reason.
    `reuseport` forces SO_REUSEPORT (symped binds one socket per process on one port)."""
    host, port = parse_listen(listen or acc.listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise RunError(f"cannot resolve listen address '{host}': {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if acc.reuseport or reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if acc.defer_accept:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, acc.defer_accept)
        if acc.congestion:  # accepted sockets inherit it
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, acc.congestion.encode())
            except OSError:
                raise RunError(f"TCP congestion algorithm '{acc.congestion}' is not available "
                               f"(see /proc/sys/net/ipv4/tcp_available_congestion_control)"
                               ) from None
        sock.bind(address)
        sock.listen(acc.backlog)
    except OSError as exc:
        sock.close()
        raise RunError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def address(sock: socket.socket) -> str:
    """HOST:PORT of a bound socket, in the form `--listen` takes."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url(sock: socket.socket, protocol: str) -> str:
    scheme = {"http": "http", "resp": "redis"}.get(protocol, protocol)
    return f"{scheme}://{address(sock)}"


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE towards `wanted` (up to the hard limit); returns the new soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def tune(sock: socket.socket | None, acc: Acceptor) -> None:
    """Per-connection socket options from the spec (TCP_NODELAY, SO_LINGER); the congestion
    algorithm is set on the listening socket and inherited."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(acc.nodelay))
    if acc.linger is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, acc.linger))
