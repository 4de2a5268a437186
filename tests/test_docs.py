"""The tutorial, run as written: its files are written, its commands run in order (a
`sh background` block is started and left running until a later command stops it), and
each command block's output is compared with the `text output` block after it. The
tutorial's port 8080 becomes a free port; `seda` is this interpreter's."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.runkit import wait_for

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```(\w*)(?: (.+?))?\n(.*?)^```$", re.S | re.M)


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


# README commands that this test does not run, and why (any other command it meets and
# does not know how to run fails the test, so a new command in the README gets run)
EXEMPT = {
    "tools/test": "the test suite itself (.ci/run runs it)",
    "seda bench graphs/work.yaml --models all --path /mixed":
        "every model under load for minutes; test_bench runs `seda bench` on all models",
}


def readme_commands(page: str) -> list[str]:
    """Each command line of the README's sh blocks (comments kept: `# then:` matters), and
    each `$ command` of its plain blocks."""
    out = []
    for lang, _info, text in blocks(page):
        for line in text.splitlines():
            if lang == "sh" and line.strip():
                out.append(line.strip())
            elif lang in ("", "text") and line.startswith("$ "):
                out.append(line)
    return out


def test_the_readme_commands_run_as_written(tmp_path: Path) -> None:
    """From a copy of the example graphs and stages: every command of README.md, with the
    listen ports made free ones. A service is started in the background, its `# then:`
    commands run against it, and the commands after it (top, ps, deadletters, plan) run
    while the last one serves."""
    page = (ROOT / "README.md").read_text()
    for folder in ("graphs", "stages"):
        shutil.copytree(ROOT / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "dead-letter.jsonl"))
    shutil.copytree(ROOT / "tests" / "specs", tmp_path / "tests" / "specs")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "seda").write_text(f"#!/bin/sh\nexec {sys.executable} -m seda.cli \"$@\"\n")
    (bin_dir / "seda").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def sh(command: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["bash", "-ec", command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == code, (command, done.stdout, done.stderr)
        return done

    python = [text for lang, _i, text in blocks(page) if lang == "python"]
    assert python, "the README's Python example"
    for code in python:
        sh(f"{sys.executable} - <<'PY'\n{code}\nPY")
    served: list[subprocess.Popen[str]] = []
    ran = 0
    try:
        for line in readme_commands(page):
            command, _, comment = line.partition("#")
            command = command.strip()
            if command in EXEMPT:
                continue
            if line.startswith("$ "):  # an example with its output, shown after it
                expected = page.split(line + "\n", 1)[1].split("\n```", 1)[0]
                done = sh(line[2:], code=2)
                assert (done.stdout + done.stderr).rstrip("\n") == expected, done.stderr
            elif command.startswith("pip install -e . && "):  # (installed already)
                sh(command.removeprefix("pip install -e . && "))
            elif re.fullmatch(r"seda run graphs/(hello|shop|kv)\.yaml.*", command):
                for proc in served:  # one service at a time, stopped as `seda stop` does
                    proc.send_signal(signal.SIGTERM)
                    assert proc.wait(30) == 0
                served.clear()
                port = free_port()
                log = tmp_path / f"serve{ran}.txt"
                with open(log, "w") as err:
                    proc = subprocess.Popen(["bash", "-c", f"exec {command} --listen "
                                             f"127.0.0.1:{port}"], cwd=tmp_path, env=env,
                                            stdout=subprocess.DEVNULL, stderr=err, text=True,
                                            start_new_session=True)
                served.append(proc)
                wait_for(lambda log=log, proc=proc: "listening on" in log.read_text()
                         or proc.poll() is not None, 30, command)
                assert proc.poll() is None, log.read_text()
                then = comment.partition("then:")[2].strip()
                if then:
                    then = then.replace("localhost:8080", f"127.0.0.1:{port}").replace(
                        "-p 6380", f"-p {port}")
                    assert sh(then).stdout.strip(), then
            elif command == "seda top shop":  # (a live view: once, as a script would)
                assert "Stage" in sh("seda top shop --once").stdout
            elif re.fullmatch(r"seda (validate|graph|schema|run graphs/pipeline\.yaml|ps|"
                              r"deadletters|plan)\b.*", command):
                sh(command)
            else:
                raise AssertionError(f"a README command this test cannot run: {line!r}")
            ran += 1
        assert ran >= 12, ran
    finally:
        for proc in served:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def test_the_messages_in_troubleshooting_are_ones_seda_prints() -> None:
    """Each message the troubleshooting page quotes (its tables' first column, and the
    bodies it names) is made of pieces found in seda's source: when a message changes, the
    page must too. `...` marks the parts that vary."""
    page = (ROOT / "docs" / "troubleshooting.md").read_text()
    source = "\n".join(p.read_text() for p in (ROOT / "seda").rglob("*.py"))
    quoted = re.findall(r"^\| `([^`]+)` \|", page, re.M) + re.findall(r"body: `([^`]+)`", page)
    assert len(quoted) >= 18, quoted
    system = ("Address already in use",  # (the OS's words, after seda's)
              "503 Service Unavailable", "504 Gateway Timeout", "500 Internal Server Error",
              "502 Bad Gateway")  # (HTTP's reason phrases)
    pieces = [(message, piece.strip(" ':")) for message in quoted
              for piece in message.split("...")]
    missing = [(message, piece) for message, piece in pieces
               if len(piece) >= 8 and piece not in source and piece not in system]
    assert missing == [], missing


def test_the_plan_shown_in_the_models_page_is_what_seda_plan_prints(tmp_path: Path) -> None:
    """docs/models.md shows `seda plan` output: it is the command's output today (the
    dead-letter path aside, which names the reader's folder)."""
    page = (ROOT / "docs" / "models.md").read_text()
    [shown] = [text for _, _, text in blocks(page)
               if text.startswith("$ seda plan graphs/shop.yaml")]
    command, _, expected = shown.partition("\n")
    done = subprocess.run([sys.executable, "-m", "seda.cli", *command.split()[2:]],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr

    def same(text: str) -> list[str]:
        return [re.sub(r"dead letters: \S+", "dead letters: PATH", line)
                for line in text.strip().splitlines()]

    assert same(done.stdout) == same(expected)


def test_the_container_example_uses_real_flags_and_a_real_graph() -> None:
    """docs/deployment.md's Dockerfile: its CMD is a `seda run` whose every flag the command
    has, on a graph of this repository."""
    page = (ROOT / "docs" / "deployment.md").read_text()
    [dockerfile] = [text for lang, _, text in blocks(page) if lang == "dockerfile"]
    [cmd] = [line for line in dockerfile.splitlines() if line.startswith("CMD ")]
    argv = json.loads(cmd[len("CMD "):])
    assert argv[:2] == ["seda", "run"] and (ROOT / argv[2]).is_file()
    usage = subprocess.run([sys.executable, "-m", "seda.cli", "run", "--help"],
                           capture_output=True, text=True, timeout=60).stdout
    flags = [a for a in argv if a.startswith("--")]
    assert flags and all(f"{flag} " in usage or f"{flag}\n" in usage for flag in flags), flags


def test_the_kubernetes_example_joins_workers_with_real_flags() -> None:
    """docs/cluster.md's manifest: a supervisor pod running `seda run` with --remote STAGE,
    a Deployment of `seda worker --join` pods for that stage at the Service's port, the
    run's key from one Secret in both -- every flag one the commands have, the graph one of
    this repository with that stage."""
    import yaml

    page = (ROOT / "docs" / "cluster.md").read_text()
    [manifest] = [text for lang, _, text in blocks(page) if lang == "yaml" and "kind:" in text]
    docs = {d["kind"]: d for d in yaml.safe_load_all(manifest)}
    assert set(docs) == {"Service", "Pod", "Deployment"}
    [run] = docs["Pod"]["spec"]["containers"]
    [work] = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    run_argv, work_argv = run["command"], work["command"]
    assert run_argv[:2] == ["seda", "run"] and work_argv[:2] == ["seda", "worker"]

    def flag(argv: list[str], name: str) -> str:
        return argv[argv.index(name) + 1]

    for argv, command in ((run_argv, "run"), (work_argv, "worker")):
        usage = subprocess.run([sys.executable, "-m", "seda.cli", command, "--help"],
                               capture_output=True, text=True, timeout=60).stdout
        flags = [a for a in argv if a.startswith("--")]
        assert flags and all(f"{f} " in usage or f"{f}\n" in usage for f in flags), flags
    graph = yaml.safe_load((ROOT / run_argv[2]).read_text())
    stage = flag(run_argv, "--remote")
    assert stage in graph["stages"] and flag(work_argv, "--stage") == stage
    port = flag(run_argv, "--join-at").rsplit(":", 1)[1]
    service = docs["Service"]
    assert [p["port"] for p in service["spec"]["ports"]] == [int(port)]
    assert flag(work_argv, "--join") == f"tcp://{service['metadata']['name']}:{port}"
    assert service["spec"]["selector"] == docs["Pod"]["metadata"]["labels"]
    secrets = {v["secret"]["secretName"] for spec in (docs["Pod"]["spec"],
               docs["Deployment"]["spec"]["template"]["spec"]) for v in spec["volumes"]}
    assert len(secrets) == 1
    assert flag(work_argv, "--keys").startswith(flag(run_argv, "--keys"))
