"""CurveZMQ for a run's sockets: the run's key pair (files `seda keys` makes), the socket
options that make an inbox a CURVE server and an outbox its client, and the ZAP handler
that admits only peers holding the run's key.

The model: a run has one key pair. Every process of the run holds it (the secret key file
is its credential) and uses it both ways: its inbox is a CURVE server with it, its outbox
a CURVE client that presents it. A peer that connects with any other key is refused by
ZAP (counted: `refused_peers` in the process's figures); one without CURVE gets no
handshake at all. So what crosses the network is encrypted, and only a holder of the
secret file joins the run. Files: `run.key` (the public key, 0644) and `run.key_secret`
(both keys, 0600), in ZeroMQ's certificate format (zmq.auth can read them).
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from seda.errors import Problem, SpecError

PUBLIC, SECRET = "run.key", "run.key_secret"
DOMAIN = "seda"  # the ZAP domain of every seda inbox


@dataclass(frozen=True)
class Keys:
    public: bytes  # z85
    secret: bytes  # z85


def _certificate(public: bytes, secret: bytes | None) -> str:
    lines = ["#   seda run key (made by `seda keys`); the secret file is a credential:",
             "#   whoever holds it can join the run", "metadata", "curve",
             f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def make_keys(folder: str | Path) -> tuple[Path, Path]:
    """A new key pair in `folder` (made 0700 if it does not exist): (public file, secret
    file). Never overwrites: existing key files are an error."""
    where = Path(folder)
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    paths = where / PUBLIC, where / SECRET
    for path, text, mode in ((paths[1], _certificate(public, secret), 0o600),
                             (paths[0], _certificate(public, None), 0o644)):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            raise SpecError([Problem(f"{path} exists already: seda keys never overwrites a "
                                     f"key (remove it first, or choose another folder)",
                                     str(path))]) from None
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
        os.chmod(path, mode)  # (whatever the umask)
    return paths


def secret_file(path: str | Path) -> Path:
    """The secret key file `path` names: the file itself, or a folder holding run.key_secret."""
    where = Path(path)
    return where / SECRET if where.is_dir() else where


def load_keys(path: str | Path) -> Keys:
    """The run's key pair from its secret file (or a folder holding it). A file that others
    may read (group or world permissions, as ssh refuses a private key) or that holds no
    secret key is an error that names the file."""
    file = secret_file(path)
    try:
        mode = file.stat().st_mode
    except OSError as exc:
        raise SpecError([Problem(f"cannot read the key file: {exc.strerror}", str(file))]) \
            from None
    if stat.S_IMODE(mode) & 0o077:
        raise SpecError([Problem(f"the key file may be read by others (mode "
                                 f"{stat.S_IMODE(mode):o}): chmod 600 {file}", str(file))])
    try:
        public, secret = zmq.auth.load_certificate(file)
    except (OSError, ValueError) as exc:
        raise SpecError([Problem(f"not a seda key file: {exc}", str(file))]) from None
    if not secret:
        raise SpecError([Problem("this file holds a public key only; a process of the run "
                                 f"needs the secret one ({SECRET}, from seda keys)",
                                 str(file))])
    return Keys(public, secret)


def serve(sock: zmq.Socket[bytes], keys: Keys) -> None:
    """Make `sock` (an inbox) a CURVE server with the run's key, checked by ZAP."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.zap_domain = DOMAIN.encode()
    sock.curve_server = True


def connect_as(sock: zmq.Socket[bytes], keys: Keys) -> None:
    """Make `sock` (an outbox) a CURVE client that presents the run's key (set before it
    connects: options apply to the connections made after)."""
    sock.curve_serverkey = keys.public
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret


class Gate:
    """The ZAP handler of one process's zmq context (pyzmq's authenticator, in a thread of
    its own: it runs only during handshakes). Admits the run's key; counts the others."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], keys: Keys) -> None:
        self.allowed = keys.public
        self.refused = 0
        self._lock = threading.Lock()
        self.auth = ThreadAuthenticator(context)
        self.auth.start()
        self.auth.configure_curve_callback(DOMAIN, credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP's question: may the peer presenting `key` (z85) in? (the auth thread)"""
        if key == self.allowed:
            return True
        with self._lock:
            self.refused += 1
        return False

    def close(self) -> None:
        self.auth.stop()


def wildcard(endpoint: str) -> bool:
    """An endpoint whose port is chosen when it is bound (tcp://HOST:*): its address is
    known only once its process reports it."""
    return endpoint.endswith(":*")


def moving_peers(sock: zmq.Socket[bytes]) -> None:
    """An outbox whose peers move (a tcp run: a process that comes back binds another port):
    queue only on connections that are up (ZMQ_IMMEDIATE). Otherwise a message for a peer
    that died waits in its old, reconnecting connection -- a send that "succeeds" and is
    never delivered, while the peer's new incarnation listens elsewhere; now the send fails
    and is tried again, as any send to a peer not connected is."""
    sock.setsockopt(zmq.IMMEDIATE, 1)
