"""The pool controller's step response: workers and queue depth over time for a step in load.

    python tools/bench_pool.py [--low 100] [--high 600] [--phases 10,25,25] [--out docs/overload]

Runs `graphs/work.yaml` with `scale: {min: 1, max: 6, after: 1, idle: 5}` on its `work`
stage (started with 1 worker) and drives `/io` (5 ms of blocking wait per request: one worker
does about 200 a second, so more workers help even on 2 cores) open loop with seda's
generator: `--low` req/s, then `--high`, then `--low` again, for the three `--phases`
(seconds). Samples `/api/status` every 0.5 s; prints a timeline (workers, pending in front of
`work`, done/s), and writes OUT/pool-step.json and, when matplotlib is installed,
OUT/pool-step.png.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seda.bench import BenchOptions, Server, graph_data  # noqa: E402


def status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/api/status", timeout=5) as response:
        data: dict[str, Any] = json.load(response)
        return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--low", type=float, default=100.0)
    parser.add_argument("--high", type=float, default=600.0)
    parser.add_argument("--phases", default="10,25,25")
    parser.add_argument("--out", default=str(ROOT / "docs" / "overload"))
    args = parser.parse_args()
    phases = [float(x) for x in args.phases.split(",")]
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    spec = graph_data(ROOT / "graphs" / "work.yaml")
    spec["stages"]["work"].update(workers=1, scale={"min": 1, "max": 6, "after": 1.0,
                                                    "idle": 5.0})
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / "work-scaled.yaml"
        graph.write_text(yaml.safe_dump(spec, sort_keys=False))
        log = out / "logs" / "pool-step.log"
        server = Server(BenchOptions(str(graph), ["seda"], [64]), "seda", log)
        try:
            port = server.start("/hello")
            url = re.search(r"status on (http://\S+)", log.read_text()).group(1)  # type: ignore[union-attr]
            start = time.monotonic()
            for rate, seconds in zip([args.low, args.high, args.low], phases, strict=True):
                gen = subprocess.Popen(
                    [sys.executable, "-m", "seda.bench.loadgen", f"http://127.0.0.1:{port}/io",
                     "-c", "32", "-r", str(rate), "-d", str(seconds), "-t", "10"],
                    stdout=subprocess.PIPE, text=True)
                while gen.poll() is None:
                    snap = status(url)
                    work = snap["stages"]["work"]
                    samples.append({"t": round(time.monotonic() - start, 1), "offered": rate,
                                    "workers": work["workers"], "pending": work["pending"],
                                    "done_per_s": work["throughput"],
                                    "wait_p90_ms": work["wait_ms"].get("p90")})
                    time.sleep(0.5)
                figures = json.loads(gen.communicate()[0])
                print(f"phase {rate:g} req/s for {seconds:g} s: {figures['goodput']:,.0f} "
                      f"2xx/s, p90 {figures['ok_p90_ms']:.0f} ms, errors {figures['errors']}",
                      flush=True)
        finally:
            server.stop()
        decisions = [ln for ln in log.read_text().splitlines() if "seda: scale:" in ln]
    print("\n".join(decisions))
    print("t (s) | offered | workers | pending | done/s")
    for s in samples[::2]:
        print(f"{s['t']:5.1f} | {s['offered']:7g} | {s['workers']:7} | {s['pending']:7} | "
              f"{s['done_per_s']:7.0f}")
    (out / "pool-step.json").write_text(json.dumps({"samples": samples,
                                                    "decisions": decisions}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    t = [s["t"] for s in samples]
    top.step(t, [s["workers"] for s in samples], where="post", label="workers")
    top.set_ylabel("workers")
    twin = top.twinx()
    twin.plot(t, [s["offered"] for s in samples], color="grey", linestyle=":", label="offered")
    twin.set_ylabel("offered req/s")
    bottom.plot(t, [s["pending"] for s in samples], label="pending in front of work")
    bottom.plot(t, [s["done_per_s"] / 10 for s in samples], label="done/s / 10")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper right")
    fig.suptitle("pool controller: step from "
                 f"{args.low:g} to {args.high:g} req/s and back (/io, 5 ms each)")
    fig.tight_layout()
    fig.savefig(out / "pool-step.png", dpi=100)
    return 0


if __name__ == "__main__":
    from seda.bench import stop_on_sigterm

    stop_on_sigterm()
    sys.exit(main())
