"""systemd's readiness protocol (sd_notify), for `Type=notify` units: one datagram to the
socket named by $NOTIFY_SOCKET ("READY=1" once the graph serves, "STOPPING=1" when it starts
to drain). No dependency: the protocol is a line of text on a Unix datagram socket."""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        """Takes NOTIFY_SOCKET out of the environment, so the processes the run starts (and
        handlers' own libraries) do not notify in the supervisor's name."""
        env = os.environ if environ is None else environ
        path = env.pop("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path  # @: abstract

    def __call__(self, *fields: str) -> bool:
        """Send `fields` ("READY=1", "STATUS=...") as one message; False if there is no
        socket to tell or it cannot be reached (a manager that went away is not our fault)."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(fields).encode())
            return True
        except OSError:
            return False
