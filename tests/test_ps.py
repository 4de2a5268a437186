"""`seda ps`, `seda stop` and `seda deadletters` against real runs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from tests.runkit import SedaRun, run_env, wait_for

SERVICE = """
name: {name}
acceptor: {{listen: "127.0.0.1:0", protocol: http, entry: web}}
stages:
  web: {{handler: stagekit:web, workers: 1}}
settings: {{max_attempts: 2}}
"""


def seda(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "seda.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_ps_lists_running_graphs_and_stop_drains_one(tmp_path: Path) -> None:
    names = ("ps-alpha-x1", "ps-beta-x1")
    runs = []
    for name in names:
        (tmp_path / name).mkdir()
        runs.append(SedaRun(tmp_path / name, SERVICE.format(name=name), "--listen",
                            "127.0.0.1:0", "--status", "127.0.0.1:0"))
    with runs[0] as alpha, runs[1] as beta:
        ports = [alpha.port(), beta.port()]
        alpha.status_url(), beta.status_url()
        listed = json.loads(seda("ps", "--json").stdout)
        mine = {row["graph"]: row for row in listed if row["graph"] in names}
        assert set(mine) == set(names), listed
        assert mine[names[0]]["pid"] == alpha.pid and mine[names[1]]["pid"] == beta.pid
        assert mine[names[0]]["listen"] == f"http://127.0.0.1:{ports[0]}"
        assert mine[names[0]]["model"] == "seda" and mine[names[0]]["status"].startswith("http")
        text = seda("ps").stdout
        assert text.splitlines()[0].split()[:4] == ["GRAPH", "PID", "MODEL", "UP"]
        assert any(line.startswith(names[0]) and str(alpha.pid) in line
                   for line in text.splitlines()), text
        # a request in flight when the stop comes is answered: stop drains
        answers: list[bytes] = []
        slow = threading.Thread(target=lambda: answers.append(urllib.request.urlopen(
            f"http://127.0.0.1:{ports[0]}/sleep?s=1", timeout=30).read()))
        slow.start()
        wait_for(lambda: alpha.status().get("front", {}).get("requests", 0) >= 1, 10,
                 "the slow request read")
        stopped = seda("stop", names[0], "--timeout", "30")
        assert stopped.returncode == 0 and f"stopped '{names[0]}'" in stopped.stderr, stopped
        slow.join(30)
        assert answers == [b"slept"]
        assert alpha.wait(10) == 0 and "stopped after draining" in alpha.stderr
        still = {row["graph"] for row in json.loads(seda("ps", "--json").stdout)}
        assert names[0] not in still and names[1] in still
        assert beta.proc.poll() is None  # the other one runs on
        unknown = seda("stop", "no-such-graph-x1")
        assert unknown.returncode == 2
        assert unknown.stderr == ("seda stop: no running graph named 'no-such-graph-x1' of this "
                                  "user (seda ps lists them)\n")
        assert seda("stop", names[1]).returncode == 0
        assert beta.wait(30) == 0


def test_deadletters_shows_a_file_readably(tmp_path: Path) -> None:
    name = "dl-show-x1"
    with SedaRun(tmp_path, SERVICE.format(name=name), "--listen", "127.0.0.1:0") as run:
        port = run.port()
        for path in ("/boom", "/boom"):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20)
            except urllib.error.HTTPError as exc:
                assert exc.code == 500
        assert seda("stop", name).returncode == 0
        assert run.wait(30) == 0
    letters = tmp_path / "dead-letter.jsonl"
    shown = seda("deadletters", str(letters))
    assert shown.returncode == 0, shown.stderr
    blocks = shown.stdout.strip().split("\n\n")
    assert len(blocks) == 2
    head, error, payload = blocks[0].splitlines()
    assert f"graph {name}  stage web  id " in head and head.endswith("attempts 2")
    assert error == "  error: web: ValueError: boom"
    # (a request holds bytes: the file keeps its repr) cut to 200 characters, the size said
    assert payload.startswith("""  payload: {"repr": "{'method': 'GET', 'path': '/boom',""")
    assert payload.endswith(" characters)") and len(payload) < 250
    assert shown.stderr == f"2 of 2 dead letters in {letters}\n"
    last = seda("deadletters", str(letters), "--last", "1", "--traceback")
    assert last.stdout.count("error: web: ValueError: boom") == 1
    assert "Traceback (most recent call last):" in last.stdout
    assert 'raise ValueError("boom")' in last.stdout
    as_json = seda("deadletters", str(letters), "--json").stdout.splitlines()
    assert [json.loads(line)["error"] for line in as_json] == ["web: ValueError: boom"] * 2
    for args, why in (([str(tmp_path / "none.jsonl")], "no such file"),
                      ([str(tmp_path)], "not a regular file"),
                      ([str(letters), "--last", "0"], "--last must be 1 or more")):
        bad = seda("deadletters", *args)
        assert bad.returncode == 2 and why in bad.stderr and bad.stderr.count("\n") == 1, bad


POISONED = """
name: dl-place
source: {handler: stagekit:numbers, options: {n: 4}, to: [eat]}
stages:
  eat: {handler: stagekit:poison, options: {bad: 2}, sink: true}
settings: {max_attempts: 1}
"""


def test_dead_letters_go_beside_the_output_or_the_graph_wherever_seda_starts(tmp_path: Path
                                                                          ) -> None:
    """Not in the folder the command happens to start in: beside --output's file if there is
    one, else beside the graph file; --dead-letter puts them anywhere. A place where they
    cannot be written stops the run before it starts."""
    project, elsewhere, out = tmp_path / "project", tmp_path / "elsewhere", tmp_path / "out"
    for folder in (project, elsewhere, out):
        folder.mkdir()
    (project / "g.yaml").write_text(POISONED)
    env = run_env(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "seda.cli", "run", str(project / "g.yaml"),
                               "--no-progress", *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=120)

    def letters(path: Path) -> list[int]:
        return [json.loads(line)["payload"] for line in path.read_text().splitlines()]

    for args, place in (((), project / "dead-letter.jsonl"),
                        (("-o", str(out / "results.jsonl")), out / "dead-letter.jsonl"),
                        (("--dead-letter", "mine.jsonl"), elsewhere / "mine.jsonl")):
        done = run(*args)
        assert done.returncode == 0, done.stderr
        assert letters(place) == [2], (args, place)
        assert f"1 dead-lettered -> {place}" in done.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["mine.jsonl"]
    assert letters(project / "dead-letter.jsonl") == [2]  # each run wrote only its own place
    missing = run("--dead-letter", "gone/d.jsonl")
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr == (f"<command line>: --dead-letter gone/d.jsonl: the folder "
                              f"{elsewhere / 'gone'} does not exist\n")
    shown = seda("deadletters", str(project / "g.yaml"), cwd=elsewhere)  # (the graph's)
    assert shown.stderr == f"1 of 1 dead letters in {project / 'dead-letter.jsonl'}\n"
    plan = seda("plan", str(project / "g.yaml"), cwd=elsewhere)
    assert f"dead letters: {project / 'dead-letter.jsonl'} " in plan.stdout
