"""Running `seda run` for real in tests: a subprocess with a deadline, its process tree, and
a guarantee that nothing it started outlives the test."""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

TESTS = Path(__file__).resolve().parent
GUARDS = TESTS / "guards"  # sitecustomize.py: the no-pickle guard


def run_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a `seda run` in a test: the test handlers (stagekit) and the example
    stages (the repository's `stages` package, which is not installed) importable, and the
    no-pickle guard loaded by every process, logging to tmp/pickle.log (see pickle_uses)."""
    path = [str(GUARDS), str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path),
            "SEDA_PICKLE_LOG": str(tmp / "pickle.log"), **extra}


def pickle_uses(tmp: Path) -> str:
    """What the no-pickle guard saw in the processes of runs with run_env(tmp)."""
    log = tmp / "pickle.log"
    return log.read_text() if log.exists() else ""


def live_descendants() -> set[int]:
    """Pids of this test process's descendants that are still running (not zombies). With
    the test process a subreaper (conftest), this includes orphans of exited processes."""
    out = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                out.add(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` until it is truthy or `timeout` passes (then fail naming `what`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def summary_counts(stderr: str) -> dict[str, int]:
    """A service summary's figures: {'requests': n, 'responses': n, 'rejected': n, ...}."""
    line = next(ln for ln in stderr.splitlines() if "stopped after draining" in ln)
    figures = line.split(": ", 2)[2]
    parts = [part.split(" -> ")[0] for part in figures.split(", ")]  # (" -> " a file)
    return {part.split(" ", 1)[1].replace(" ", "_"): int(part.split(" ", 1)[0])
            for part in parts}


def balanced(stderr: str) -> dict[str, int]:
    """Every request the service read got exactly one answer, by the summary's books:
    requests == responses + rejected + timeouts + failed. Returns the figures."""
    c = summary_counts(stderr)
    assert c["requests"] == c["responses"] + c["rejected"] + c["timeouts"] + c["failed"], c
    return c


class Stream:
    """A socket's one buffered reader, handed to every HTTPResponse in turn (which closes
    what it was given once its body is read: here, that does nothing), so responses to
    pipelined requests are read one after another from the same bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def makefile(self, *_args: Any, **_kw: Any) -> Stream:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def close(self) -> None:
        pass


def pipelined(port: int, requests: list[bytes], timeout: float = 20
              ) -> list[tuple[int, bytes]]:
    """Send `requests` (raw HTTP) in one write; read exactly one response per request, in
    order: (status, body). Fails on a close or a timeout before every answer is in."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"".join(requests))
        stream = Stream(sock)
        out = []
        for _ in requests:
            response = http.client.HTTPResponse(stream)  # type: ignore[arg-type]
            response.begin()
            out.append((response.status, response.read()))
        return out


class SedaRun:
    """One `seda run` in a temporary folder. Use as a context manager."""

    def __init__(self, tmp: Path, graph: str, *args: str, nofile: int = 0,
                 env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.graph = tmp / "graph.yaml"
        self.graph.write_text(graph)
        self.output = tmp / "out.jsonl"
        env = run_env(tmp, **(env or {}))
        self.err_file = tmp / "stderr.txt"
        with open(self.err_file, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "seda.cli", "run", str(self.graph), "--no-progress",
                 "-o", str(self.output), *args],
                cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True,
                start_new_session=True,  # its own process group: see signal_group
                preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
                if nofile else None)  # `nofile`: the run's descriptor limit (soft and hard)
        self.pid = self.proc.pid
        self.seen: dict[int, psutil.Process] = {}
        self.stderr = ""
        # every process of the run, seen while it is alive (a check after the run ends could
        # not see what its parent left behind, nor what started and ended unseen)
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while self.proc.poll() is None:
            self.tree()
            time.sleep(0.1)

    def __enter__(self) -> SedaRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def tree(self) -> list[psutil.Process]:
        """The live children of the supervisor (remembered, so leaks can be checked)."""
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for kid in kids:
            self.seen.setdefault(kid.pid, kid)
        return kids

    def workers(self, title: str) -> list[psutil.Process]:
        out = []
        for kid in self.tree():
            try:
                if " ".join(kid.cmdline()).startswith(title):
                    out.append(kid)
            except psutil.NoSuchProcess:
                pass
        return out

    def wait(self, timeout: float = 120) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cleanup()
            raise AssertionError(f"seda run did not finish in {timeout} s") from None
        self.stderr = self.err_file.read_text()
        return int(self.proc.returncode)

    def port(self, timeout: float = 30) -> int:
        """The port from the 'listening on' line (the run was given --listen ...:0)."""
        def find() -> int:
            match = re.search(r"listening on \w+://[^:]+:(\d+)", self.err_file.read_text())
            if self.proc.poll() is not None:
                raise AssertionError(f"seda run exited: {self.err_file.read_text()}")
            return int(match.group(1)) if match else 0

        return int(wait_for(find, timeout, "the listening line"))

    def status_url(self, timeout: float = 30) -> str:
        """The status endpoint from the 'status on' line."""
        match = wait_for(lambda: re.search(r"status on (http://\S+)", self.err_file.read_text()),
                         timeout, "the status line")
        return str(match.group(1))

    def status(self, timeout: float = 30) -> dict[str, Any]:
        """The live snapshot from /api/status (waiting for the first one)."""
        url = f"{self.status_url(timeout)}/api/status"

        def fetch() -> dict[str, Any]:
            with urllib.request.urlopen(url, timeout=5) as response:
                data: dict[str, Any] = json.load(response)
            return data if data.get("stages") else {}

        return dict(wait_for(fetch, timeout, "a status snapshot"))

    def run_dirs(self) -> list[Path]:
        """Run directories (live or left over) of runs of this test's graph file: their plans
        put the dead-letter file next to it."""
        found = []
        for plan in Path(tempfile.gettempdir()).glob("seda-*/plan.json"):
            try:
                letters = Path(json.loads(plan.read_text())["dead_letter"])
            except (OSError, ValueError, KeyError):
                continue  # one being written or removed
            if letters.parent == self.tmp:
                found.append(plan.parent)
        return found

    def run_dir(self, timeout: float = 30) -> Path:
        """The run directory of this (live) run."""
        [path] = wait_for(self.run_dirs, timeout, "the run directory")
        return Path(path)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def signal_group(self, signum: int) -> None:
        """Signal the run's whole process group, as systemd, `timeout` or a shell's Ctrl-C do."""
        os.killpg(self.pid, signum)

    def results(self) -> list[Any]:
        if not self.output.exists():
            return []
        return [json.loads(line) for line in self.output.read_text().splitlines()]

    def leftovers(self) -> list[int]:
        alive = []
        for pid, proc in list(self.seen.items()):
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        return alive

    def cleanup(self) -> None:
        """End everything this run started (by pid), then fail if anything had leaked."""
        self.tree()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._watcher.join(timeout=5)
        try:
            wait_for(lambda: not self.leftovers(), 3.0, "children to exit")
        except AssertionError:
            for pid in self.leftovers():
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"leaked processes: {self.leftovers()}") from None
        finally:
            self.remove_run_dirs()
        used = pickle_uses(self.tmp)
        assert not used, f"pickle was used (the wire format is msgpack only):\n{used}"

    def remove_run_dirs(self) -> None:
        """A supervisor killed with SIGKILL cannot remove its run directory: do it for it."""
        for path in self.run_dirs():
            shutil.rmtree(path, ignore_errors=True)


class SteadyClient(threading.Thread):
    """A normal client beside a fault: keep-alive GETs of `path` one after another (10 ms
    apart) until `stop` is set, each expected to be 200 with `expect`; records latencies and
    anything else as failures."""

    def __init__(self, port: int, path: str = "/steady", expect: bytes = b"GET /steady"
                 ) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.expect = port, path, expect
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                conn.request("GET", self.path)
                answer = conn.getresponse()
                body = answer.read()
                if answer.status != 200 or body != self.expect:
                    self.failures.append(f"{answer.status} {body!r}")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
            self.latencies.append(time.monotonic() - started)
            time.sleep(0.01)
        conn.close()
