"""`seda run` on pipelines, with real processes and sockets: results, fusion, dispatch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from stages.text import word_counts
from tests.runkit import SedaRun

PIPELINE = (Path(__file__).resolve().parent.parent / "graphs" / "pipeline.yaml").read_text()


def test_word_count_is_exact(tmp_path: Path) -> None:
    with SedaRun(tmp_path, PIPELINE) as run:
        assert run.wait() == 0, run.stderr
        assert run.results() == [word_counts()]
        assert "finished: 2000 items" in run.stderr
        assert "0 handler errors, 0 dead-lettered" in run.stderr


def test_fused_and_amped_give_the_same_answer(tmp_path: Path) -> None:
    fused = PIPELINE.replace("    to: [normalize, measure]",
                             "    to: [normalize, measure]\n    pool: front")
    fused = fused.replace("    to: [count]", "    to: [count]\n    pool: front")
    fused = fused.replace("    workers: 2\n", "    workers: 1\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with SedaRun(tmp_path / "a", fused) as run:
        assert run.wait() == 0, run.stderr
        assert run.results() == [word_counts()]
    with SedaRun(tmp_path / "b", PIPELINE, "--model", "amped") as run:
        assert run.wait() == 0, run.stderr
        assert run.results() == [word_counts()]


def test_results_stream_to_stdout_without_output_flag(root: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "seda.cli", "run", "graphs/pipeline.yaml",
                           "--no-progress"], cwd=root, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == [word_counts()]


def test_bad_graph_exits_2_before_starting_anything(tmp_path: Path) -> None:
    bad = PIPELINE.replace("to: [count]", "to: [cont]", 1)
    with SedaRun(tmp_path, bad) as run:
        assert run.wait() == 2
        assert "stages.normalize.to[0]: unknown stage 'cont' (did you mean 'count'?)" \
            in run.stderr
        assert run.seen == {}


LOAD_AWARE = """
name: loadaware
source:
  handler: stagekit:numbers
  to: [work]
  options: {n: 21, pause_after: 0, pause: 0.3, gap: 0.01, after_file: "MARK"}
stages:
  work:
    handler: stagekit:timed
    workers: 2
    prefetch: 8
    to: [out]
    options: {long: 0, seconds: 2.0, mark: "MARK"}
  out:
    handler: stagekit:echo
    sink: true
"""


def test_busy_worker_does_not_collect_a_queue(tmp_path: Path) -> None:
    """Two workers; item 0 takes 2 s; the 20 short items that follow (0.3 s after it started:
    the source waits for the file its handler creates, so a slow start of the workers cannot
    bunch them up with it) all go to the other worker and are done while the long one
    still runs."""
    graph = LOAD_AWARE.replace("MARK", str(tmp_path / "long-started"))
    with SedaRun(tmp_path, graph) as run:
        assert run.wait() == 0, run.stderr
    results = {r["x"]: r for r in run.results()}
    assert sorted(results) == list(range(21)), run.stderr
    long = results.pop(0)
    t0 = long["start"]
    table = [(x, r["pid"], round(r["start"] - t0, 3), round(r["end"] - t0, 3))
             for x, r in sorted(results.items())]  # shown if an assertion fails
    assert all(r["pid"] != long["pid"] for r in results.values()), (long["pid"], table)
    assert max(r["end"] for r in results.values()) < long["end"], (long["end"] - t0, table)


def test_what_handlers_print_stays_out_of_the_results(tmp_path: Path) -> None:
    """Results go to stdout alone (one JSON value a line); a handler's print() goes to
    stderr, where the run's own lines are."""
    import json
    import subprocess
    import sys

    from tests.runkit import run_env

    (tmp_path / "g.yaml").write_text(
        "name: chatty\nsource: {handler: stagekit:numbers, to: [talk], options: {n: 50}}\n"
        "stages:\n  talk: {handler: stagekit:chatty, workers: 2, to: [out]}\n"
        "  out: {handler: stagekit:echo, sink: true}\n")
    done = subprocess.run([sys.executable, "-m", "seda.cli", "run", "g.yaml", "--no-progress"],
                          cwd=tmp_path, env=run_env(tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(line) for line in done.stdout.splitlines()) == list(range(50))
    assert sum(line.startswith("noise from the handler ") for line in
               done.stderr.splitlines()) == 50
