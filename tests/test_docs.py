"""The tutorial, run as written: its files are written, its commands run in order (a
`sh background` block is started and left running until a later command stops it), and
each command block's output is compared with the `text output` block after it. The
tutorial's port 8080 becomes a free port; `seda` is this interpreter's."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.runkit import wait_for

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```(\w+)(?: (.+?))?\n(.*?)^```$", re.S | re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def blocks(page: str) -> list[tuple[str, str, str]]:
    """(language, info, text) of each fenced block, in order."""
    return [(m[1], m[2] or "", m[3]) for m in BLOCK.finditer(page)]


def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "tutorial.md").read_text()
    port = str(free_port())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "seda").write_text(f"#!/bin/sh\nexec {sys.executable} -m seda.cli \"$@\"\n")
    (bin_dir / "seda").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    work = tmp_path / "work"
    work.mkdir()
    background: list[subprocess.Popen[str]] = []
    ran = 0
    last_output: str | None = None
    try:
        for lang, info, text in blocks(page):
            text = text.replace("8080", port)
            if info.startswith("file="):
                path = work / info.removeprefix("file=")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            elif lang == "sh" and info == "background":
                log = tmp_path / f"background{len(background)}.txt"
                with open(log, "w") as err:
                    proc = subprocess.Popen(["bash", "-c", text], cwd=work, env=env,
                                            stdout=subprocess.DEVNULL, stderr=err, text=True,
                                            start_new_session=True)
                background.append(proc)
                wait_for(lambda log=log, proc=proc: "listening on" in log.read_text()
                         or proc.poll() is not None, 30, "the service")
                assert proc.poll() is None, log.read_text()
            elif lang == "sh":
                done = subprocess.run(["bash", "-ec", text], cwd=work, env=env,
                                      capture_output=True, text=True, timeout=120)
                assert done.returncode == 0, (text, done.stdout, done.stderr)
                last_output = done.stdout
                ran += 1
            elif lang == "text" and info == "output":
                assert last_output is not None, "an output block after no command"
                assert last_output.rstrip("\n") == text.rstrip("\n"), (text, last_output)
                last_output = None
        assert ran >= 5
        for proc in background:  # stopped by the tutorial's own `seda stop`
            assert proc.wait(30) == 0
    finally:
        for proc in background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
