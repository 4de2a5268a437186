"""Steady pipeline throughput of two revisions of seda, interleaved run by run.

    python tools/compare_revisions.py BASE [NEW] [--repeat 5] [--items 200000] [--defaults]

BASE and NEW are git revisions (NEW defaults to the working tree). Each is checked out in a
temporary git worktree, and the chain pipeline of tools/bench_pipeline.py (source -> double
-> sink, one process each) runs under both, alternating, `--repeat` times. Prints seda's
own steady rate (first item to last, without start-up) and the CPU time all its processes
used per message (user + system, the run's start-up included) for each run, then the best
and the median of each with the ratio NEW/BASE. The chain runs hand-tuned (`prefetch: 512`)
unless --defaults (as a user writes it). Runs on a 2-core machine vary by 10-20% in rate;
CPU per message varies less (the machine's other load changes the rate more than the work):
the median ratios are the steadier figures; repeat before believing a few percent.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import bench_pipeline  # noqa: E402


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def steady_rate(tree: Path, items: int, tune: str = bench_pipeline.TUNED
                ) -> tuple[float, float]:
    """(msgs/s first item to last, us of CPU per message over every process of the run)."""
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / "graph.yaml"
        graph.write_text(bench_pipeline.CHAIN.format(n=items, tune=tune))
        cpu = _children_cpu()
        env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT / 'tools'}"}
        done = subprocess.run([sys.executable, "-m", "seda.cli", "run", str(graph),
                               "--no-progress", "--no-status", "-o", str(Path(tmp) / "out")],
                              cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
        cpu = _children_cpu() - cpu
        match = re.search(r"items in [0-9.]+ s \(([0-9]+)/s", done.stderr)
        if done.returncode != 0 or not match:
            raise RuntimeError(done.stderr)
        return float(match.group(1)), cpu / items * 1e6


@contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """Revision `rev` of this repository in a temporary git worktree, removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree),
                        rev], check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(tree)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base")
    parser.add_argument("new", nargs="?", help="a revision (default: the working tree)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--defaults", action="store_true",
                        help="the chain as a user writes it (no prefetch)")
    args = parser.parse_args()
    tune = "" if args.defaults else bench_pipeline.TUNED
    with checkout(args.base) as base_tree, \
            (checkout(args.new) if args.new else nullcontext(ROOT)) as new_tree:
        trees = {"base": base_tree, "new": new_tree}
        rates: dict[str, list[float]] = {"base": [], "new": []}
        cpus: dict[str, list[float]] = {"base": [], "new": []}
        for _ in range(args.repeat):
            for label, tree in trees.items():
                rate, cpu = steady_rate(tree, args.items, tune)
                rates[label].append(rate)
                cpus[label].append(cpu)
                print(f"  {label}: {rate:,.0f} msgs/s, {cpu:.2f} us CPU/msg", flush=True)
        for name, pick, least in (("best", max, min), ("median", statistics.median,
                                                      statistics.median)):
            base, new = pick(rates["base"]), pick(rates["new"])
            base_cpu, new_cpu = least(cpus["base"]), least(cpus["new"])
            print(f"{name} of {args.repeat}: base {base:,.0f}, new {new:,.0f} msgs/s; "
                  f"new/base {new / base:.3f}; CPU/msg base {base_cpu:.2f}, new "
                  f"{new_cpu:.2f} us, new/base {new_cpu / base_cpu:.3f}")


if __name__ == "__main__":
    from seda.bench import stop_on_sigterm

    stop_on_sigterm()
    main()
