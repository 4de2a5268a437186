"""A second host on this machine, for tests and benchmarks of a run across hosts: a Linux
network namespace joined to this one by a veth pair (root, and `ip` from iproute2). Made
here, removed after, whatever happens in between."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class OtherHost:
    namespace: str  # run a command there: ["ip", "netns", "exec", namespace, ...]
    link: str  # this side's end of the veth pair (capture it to see what crosses)
    here: str  # this side's address
    there: str  # the other host's address

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@contextmanager
def other_host() -> Iterator[OtherHost]:
    """A namespace and a /30 between it and this one (names and subnet chosen at random, so
    runs side by side do not meet). Its default route is this side's end, so two such hosts
    reach each other's `here` (this host's addresses), as hosts of one network would."""
    tag = f"{os.getpid() % 10000}{random.randrange(1000)}"
    net = f"10.{random.randrange(64, 128)}.{random.randrange(256)}"
    host = OtherHost(f"seda{tag}", f"sd{tag}a", f"{net}.1", f"{net}.2")
    peer = f"sd{tag}b"
    try:
        _ip("netns", "add", host.namespace)
        _ip("link", "add", host.link, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", host.namespace)
        _ip("addr", "add", f"{host.here}/30", "dev", host.link)
        _ip("link", "set", host.link, "up")
        for args in (("addr", "add", f"{host.there}/30", "dev", peer),
                     ("link", "set", peer, "up"), ("link", "set", "lo", "up"),
                     ("route", "add", "default", "via", host.here)):
            _ip("netns", "exec", host.namespace, "ip", *args)
        yield host
    finally:
        # the namespace takes its end of the pair with it, and the pair dies whole
        subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", host.link], capture_output=True, timeout=30)
