"""Pipeline throughput: seda against hand-written baselines, side by side in one run.

    python tools/bench_pipeline.py [--items 200000] [--repeat 3]

Shapes (each stage one process, ~100-byte messages):
  chain    source -> double -> sink
  fan      source -> split -> (left, right) -> sink      (fan-out and fan-in)
Contenders:
  seda        `seda run` on the same shape, as a user writes it: no prefetch, no batching
              (startup included, like the others)
  seda-tuned  the same with `prefetch: 512` on every stage (the best hand-tuned setting)
  zmq-batch   hand-written pyzmq PUSH/PULL + msgpack, 256 messages per frame: the practical
              ceiling for Python processes talking over zmq (no acks, no retries, no credit)
  mp-queue    multiprocessing.Queue between processes, one item per put
  pypeln      pypeln.process stages (if installed)
Prints messages/s (best of --repeat, wall clock end to end) and each one's ratio to seda.
Every process here runs on this machine's cores; the figures are for comparison, not absolutes.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zmq

ROOT = Path(__file__).resolve().parent.parent
PAD = "x" * 80  # payload ~100 bytes with the number


def item(i: int) -> list[Any]:
    return [i, PAD]


# ------------------------------------------------------------------ handlers for seda
def numbers(options: dict[str, Any]) -> Any:
    return (item(i) for i in range(int(options["n"])))


def double(x: list[Any], ctx: Any) -> list[Any]:
    return [x[0] * 2, x[1]]


def split(x: list[Any], ctx: Any) -> None:
    ctx.emit("left" if x[0] % 2 else "right", x)


class Total:
    def setup(self, ctx: Any) -> None:
        self.count = self.total = 0

    def handle(self, x: list[Any], ctx: Any) -> None:
        self.count += 1
        self.total += x[0]

    def finish(self, ctx: Any) -> dict[str, int]:
        return {"count": self.count, "sum": self.total}

    @staticmethod
    def merge(parts: list[dict[str, int]]) -> dict[str, int]:
        return {"count": sum(p["count"] for p in parts), "sum": sum(p["sum"] for p in parts)}


CHAIN = """
name: bench-chain
source: {{handler: "bench_pipeline:numbers", to: [double], options: {{n: {n}}}}}
stages:
  double: {{handler: "bench_pipeline:double"{tune}, to: [sink]}}
  sink: {{handler: "bench_pipeline:Total"{tune}, sink: true}}
"""
FAN = """
name: bench-fan
source: {{handler: "bench_pipeline:numbers", to: [split], options: {{n: {n}}}}}
stages:
  split: {{handler: "bench_pipeline:split"{tune}, to: [left, right]}}
  left: {{handler: "bench_pipeline:double"{tune}, to: [sink]}}
  right: {{handler: "bench_pipeline:double"{tune}, to: [sink]}}
  sink: {{handler: "bench_pipeline:Total"{tune}, sink: true}}
"""
TUNED = ", prefetch: 512"  # the hand-tuned setting (queue: 2 x prefetch by default)


STEADY: dict[str, list[float]] = {}


def run_seda(shape: str, n: int, *extra: str, tune: str = "") -> float:
    """`seda run` on the shape, with the defaults (or `tune` added to every stage)."""
    text = (CHAIN if shape == "chain" else FAN).format(n=n, tune=tune)
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / "graph.yaml"
        graph.write_text(text)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "tools")}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "seda.cli", "run", str(graph),
                               "--no-progress", "-o", str(Path(tmp) / "out.jsonl"), *extra],
                              cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        match = re.search(r"items in [0-9.]+ s \(([0-9]+)/s", done.stderr)
        if match:  # seda's own rate, from the first item read to the end (no start-up)
            STEADY.setdefault(shape + tune + "".join(extra), []).append(float(match.group(1)))
        check(eval_total(Path(tmp) / "out.jsonl"), n, shape)
    return elapsed


def eval_total(path: Path) -> dict[str, int]:
    import json

    [total] = [json.loads(line) for line in path.read_text().splitlines()]
    return dict(total)


def check(total: dict[str, int], n: int, shape: str) -> None:
    want = {"count": n, "sum": 2 * n * (n - 1) // 2}
    if total != want:
        raise RuntimeError(f"{shape}: wrong result {total}, expected {want}")


# ------------------------------------------------------------------ zmq-batch baseline
BATCH = 256


def _zmq_source(out: str, n: int, fan: bool) -> None:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(out)
    for start in range(0, n, BATCH):
        push.send(msgpack.packb([item(i) for i in range(start, min(n, start + BATCH))]))
    push.send(b"")
    push.close(linger=-1)


def _zmq_stage(inp: str, outs: list[str], fn: str, ends: int) -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(inp)
    pushes = []
    for out in outs:
        sock = ctx.socket(zmq.PUSH)
        sock.connect(out)
        pushes.append(sock)
    seen = 0
    while seen < ends:
        frame = pull.recv()
        if not frame:
            seen += 1
            continue
        batch = msgpack.unpackb(frame)
        if fn == "double":
            pushes[0].send(msgpack.packb([[x[0] * 2, x[1]] for x in batch]))
        else:  # split
            left = [x for x in batch if x[0] % 2]
            right = [x for x in batch if not x[0] % 2]
            pushes[0].send(msgpack.packb(left))
            pushes[1].send(msgpack.packb(right))
    for sock in pushes:
        sock.send(b"")
        sock.close(linger=-1)


def _zmq_sink(inp: str, ends: int, result: Any) -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(inp)
    count = total = seen = 0
    while seen < ends:
        frame = pull.recv()
        if not frame:
            seen += 1
            continue
        for x in msgpack.unpackb(frame):
            count += 1
            total += x[0]
    result.put({"count": count, "sum": total})


def run_zmq(shape: str, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        ep = {k: f"ipc://{tmp}/{k}" for k in ("a", "l", "r", "s")}
        result: Any = mp.Queue()
        start = time.perf_counter()
        if shape == "chain":
            procs = [mp.Process(target=_zmq_sink, args=(ep["s"], 1, result)),
                     mp.Process(target=_zmq_stage, args=(ep["a"], [ep["s"]], "double", 1)),
                     mp.Process(target=_zmq_source, args=(ep["a"], n, False))]
        else:
            procs = [mp.Process(target=_zmq_sink, args=(ep["s"], 2, result)),
                     mp.Process(target=_zmq_stage, args=(ep["l"], [ep["s"]], "double", 1)),
                     mp.Process(target=_zmq_stage, args=(ep["r"], [ep["s"]], "double", 1)),
                     mp.Process(target=_zmq_stage, args=(ep["a"], [ep["l"], ep["r"]], "split",
                                                         1)),
                     mp.Process(target=_zmq_source, args=(ep["a"], n, True))]
        total, elapsed = _run(procs, result, start)
    check(total, n, shape)
    return elapsed


def _run(procs: list[Any], result: Any, start: float,
         feed: Callable[[], None] | None = None) -> tuple[dict[str, int], float]:
    """Start the processes, feed them (if the parent is the source), wait for the total."""
    for p in procs:
        p.start()
    if feed is not None:
        feed()
    total = result.get(timeout=600)
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    return total, elapsed


# ------------------------------------------------------------------ multiprocessing.Queue
def _q_stage(inp: Any, outs: list[Any], fn: str, ends: int) -> None:
    seen = 0
    while seen < ends:
        x = inp.get()
        if x is None:
            seen += 1
            continue
        if fn == "double":
            outs[0].put([x[0] * 2, x[1]])
        else:
            outs[x[0] % 2 == 0].put(x)
    for q in outs:
        q.put(None)


def _q_sink(inp: Any, ends: int, result: Any) -> None:
    count = total = seen = 0
    while seen < ends:
        x = inp.get()
        if x is None:
            seen += 1
            continue
        count += 1
        total += x[0]
    result.put({"count": count, "sum": total})


def run_queue(shape: str, n: int) -> float:
    a, left, right, s, result = (mp.Queue(maxsize=10_000) for _ in range(5))
    start = time.perf_counter()
    if shape == "chain":
        procs = [mp.Process(target=_q_stage, args=(a, [s], "double", 1)),
                 mp.Process(target=_q_sink, args=(s, 1, result))]
    else:
        procs = [mp.Process(target=_q_stage, args=(a, [left, right], "split", 1)),
                 mp.Process(target=_q_stage, args=(left, [s], "double", 1)),
                 mp.Process(target=_q_stage, args=(right, [s], "double", 1)),
                 mp.Process(target=_q_sink, args=(s, 2, result))]
    def feed() -> None:
        for i in range(n):
            a.put(item(i))
        a.put(None)

    total, elapsed = _run(procs, result, start, feed)
    check(total, n, shape)
    return elapsed


# ------------------------------------------------------------------ pypeln
def _double_item(x: list[Any]) -> list[Any]:
    return [x[0] * 2, x[1]]


def run_pypeln(shape: str, n: int) -> float:
    import pypeln as pl

    start = time.perf_counter()
    items = (item(i) for i in range(n))
    if shape == "chain":
        stage = pl.process.map(_double_item, items, workers=1, maxsize=10_000)
    else:
        odd = pl.process.filter(lambda x: x[0] % 2 == 1, items, workers=1, maxsize=10_000)
        stage = pl.process.map(_double_item, odd, workers=1, maxsize=10_000)
    count = total = 0
    for x in stage:
        count += 1
        total += x[0]
    elapsed = time.perf_counter() - start
    if shape == "chain":
        check({"count": count, "sum": total}, n, shape)
    return elapsed


def best(fn: Callable[[str, int], float], shape: str, n: int, repeat: int) -> float:
    return min(fn(shape, n) for _ in range(repeat))


def status_cost(n: int, repeat: int) -> None:
    """What the live status (snapshots, /api/status, /metrics) costs: seda with and without
    it, interleaved run by run so drift hits both alike."""
    print(f"{n} messages, best of {repeat}, seda with and without --no-status")
    for shape in ("chain", "fan"):
        for _ in range(repeat):
            run_seda(shape, n)
            run_seda(shape, n, "--no-status")
        on, off = max(STEADY[shape]), max(STEADY[shape + "--no-status"])
        print(f"  {shape}: status on {on:,.0f} msgs/s, off {off:,.0f} msgs/s: on/off "
              f"{on / off:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-pypeln", action="store_true", help="skip pypeln (slow)")
    parser.add_argument("--status-cost", action="store_true",
                        help="only seda, with and without its status endpoint (--no-status)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tools"))
    contenders: dict[str, Callable[[str, int], float]] = {
        "seda": run_seda, "seda-tuned": lambda shape, n: run_seda(shape, n, tune=TUNED),
        "zmq-batch": run_zmq, "mp-queue": run_queue}
    if args.status_cost:
        status_cost(args.items, args.repeat)
        return
    try:
        import pypeln  # noqa: F401

        if not args.no_pypeln:
            contenders["pypeln"] = run_pypeln
    except ImportError:
        print("(pypeln not installed: pip install pypeln to include it)")
    print(f"{args.items} messages of ~100 bytes, best of {args.repeat}, on {os.cpu_count()} "
          f"cores; wall clock including process start-up")
    for shape in ("chain", "fan"):
        rates = {}
        for name, fn in contenders.items():
            if name == "pypeln" and shape == "fan":
                continue  # pypeln has no fan-in of two branches into one stage
            rates[name] = args.items / best(fn, shape, args.items, args.repeat)
        print(f"\n{shape}:")
        print(f"  {'contender':<11} {'msgs/s':>10} {'seda / it':>10}")
        for name, rate in rates.items():
            print(f"  {name:<11} {rate:>10,.0f} {rates['seda'] / rate:>10.2f}")
        for label, key in (("seda", shape), ("seda-tuned", shape + TUNED)):
            if STEADY.get(key):
                steady = max(STEADY[key])
                print(f"  {label} without its start-up (first item to last): {steady:,.0f} "
                      f"msgs/s; vs zmq-batch {steady / rates['zmq-batch']:.2f}, vs mp-queue "
                      f"{steady / rates['mp-queue']:.2f}")


if __name__ == "__main__":
    from seda.bench import stop_on_sigterm

    stop_on_sigterm()
    main()
