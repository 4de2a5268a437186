"""The acceptor's socket settings, read back from the kernel: on the listening socket the
supervisor binds, on a connection it accepts, and (backlog, congestion control) on a live
`seda run` through `ss`."""

from __future__ import annotations

import re
import signal
import socket
import struct
import subprocess
from pathlib import Path

from seda.runtime.listener import bind, tune
from seda.spec.models import AcceptorSpec
from tests.runkit import SedaRun


def spec(**settings: object) -> AcceptorSpec:
    return AcceptorSpec.model_validate({"listen": "127.0.0.1:0", "protocol": "http",
                                        "entry": "web", **settings})


def accepted(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    client = socket.create_connection(listener.getsockname()[:2])
    client.sendall(b"x")  # TCP_DEFER_ACCEPT holds a connection until data comes
    server, _ = listener.accept()
    return client, server


def test_listening_and_connection_options_are_what_the_spec_says() -> None:
    acc = spec(reuseport=True, defer_accept=5, congestion="reno", nodelay=True, linger=3)
    with bind(acc) as listener:
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        # the kernel keeps TCP_DEFER_ACCEPT in retransmission rounds; it reads back >= asked
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) >= 5
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16) \
            .rstrip(b"\0") == b"reno"
        assert listener.get_inheritable()  # passed to the acceptor process
        client, server = accepted(listener)
        with client, server:
            tune(server, acc)
            assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert struct.unpack("ii", server.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                         8)) == (1, 3)
            # the congestion algorithm is inherited from the listening socket
            assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16) \
                .rstrip(b"\0") == b"reno"


def test_defaults_and_switching_options_off() -> None:
    acc = spec(nodelay=False)
    with bind(acc) as listener:
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 0
        client, server = accepted(listener)
        with client, server:
            tune(server, acc)
            assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            assert struct.unpack("ii", server.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                         8))[0] == 0
    with bind(spec()) as listener:
        client, server = accepted(listener)
        with client, server:
            tune(server, spec())
            assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1  # default on


GRAPH = """
name: opts
acceptor:
  listen: 127.0.0.1:8080
  protocol: http
  entry: web
  backlog: 77
  congestion: reno
stages:
  web: {handler: stagekit:web, workers: 1}
"""


def test_a_running_service_listens_with_its_backlog_and_congestion_control(
        tmp_path: Path) -> None:
    with SedaRun(tmp_path, GRAPH, "--listen", "127.0.0.1:0") as run:
        port = run.port()
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                                   text=True, timeout=10).stdout
        # a listening socket's Send-Q column is its backlog
        assert re.search(r"LISTEN\s+\d+\s+77\s", listening), listening
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"GET /x HTTP/1.1\r\n\r\n")
            client.settimeout(10)
            assert client.recv(4096).endswith(b"GET /x")
            info = subprocess.run(["ss", "-tniH", "state", "established", f"sport = :{port}"],
                                  capture_output=True, text=True, timeout=10).stdout
            assert " reno " in f" {info} ", info  # the accepted connection inherited it
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0, run.stderr
