"""What compiling seda's per-request path with mypyc gains: interpreted and compiled seda
side by side in one run, with the minimal server as the yardstick.

    python tools/bench_compiled.py [--rounds 3] [--duration 4] [--connections 64]
                                   [--keep DIR]
    (needs wrk, a C compiler, and mypy -- mypyc is part of it, a dev dependency)

seda is not compiled when installed: this measures an option. The script copies this tree to
a temporary directory and compiles there, with mypyc, the modules every request of an AMPED
service passes through (the HTTP codec, the envelope, flow control, the node, the acceptor,
the stage core and the worker), and the other process classes built on the node, which
mypyc requires to be compiled with it. Then it runs graphs/hello.yaml under AMPED with one
worker from each tree in turn, `--rounds` times, and the minimal uvloop + httptools server
of bench_http.py once per round, each under `wrk -t1 -cN -dS` after 1 s of warm-up. Prints
every run, then the median req/s of each and the ratios. Compiling takes a few minutes.
`--keep DIR` builds the compiled copy in DIR/tree and leaves it there (for
`python tools/cost_per_request.py --tree DIR/tree`); `--rounds 0` only builds it.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from bench_http import wrk_seda, wrk_written  # noqa: E402

# the per-request modules of the acceptor and the worker, and every class that derives from a
# compiled one (an interpreted class cannot inherit from a compiled class)
COMPILED = ["seda/engine/codec/__init__.py", "seda/engine/codec/http.py",
            "seda/engine/wire.py", "seda/engine/credit.py", "seda/engine/stage.py",
            "seda/runtime/node.py", "seda/runtime/acceptor.py", "seda/runtime/worker.py",
            "seda/runtime/source.py", "seda/runtime/mp.py"]


def compiled_copy(where: Path) -> Path:
    """A copy of this tree with COMPILED built by mypyc, in place (the .so files beside the
    sources, which Python imports first)."""
    tree = where / "tree"
    for part in ("seda", "stages", "graphs"):
        shutil.copytree(ROOT / part, tree / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "pyproject.toml", tree)  # mypy's settings, as for `mypy`
    done = subprocess.run([sys.executable, "-m", "mypyc", *COMPILED], cwd=tree,
                          capture_output=True, text=True, timeout=1800)
    built = sorted(tree.glob("seda/**/*.so"))
    if done.returncode != 0 or len(built) != len(COMPILED):
        raise SystemExit(f"mypyc failed ({len(built)} of {len(COMPILED)} modules built):\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--keep", type=Path, help="build the compiled copy in DIR/tree and "
                        "keep it")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep = args.keep.resolve()  # the servers run with the copy as their directory
    if args.keep is not None and (args.keep / "tree").exists():
        parser.error(f"{args.keep / 'tree'} exists: remove it, or keep the copy elsewhere")
    with tempfile.TemporaryDirectory() as tmp:
        print("compiling with mypyc ...", flush=True)
        trees = {"interpreted": ROOT, "compiled": compiled_copy(args.keep or Path(tmp))}
        if args.rounds < 1:
            print(f"compiled copy: {trees['compiled']}")
            return
        rates: dict[str, list[float]] = {"baseline": [], "interpreted": [], "compiled": []}
        for round_ in range(args.rounds):
            order = list(trees.items())
            for name, tree in order if round_ % 2 == 0 else order[::-1]:
                rates[name].append(wrk_seda(args.connections, args.duration, "--model",
                                            "amped", "--workers", "hello=1",
                                            tree=tree)[0])
                print(f"  round {round_ + 1}: {name:<12} {rates[name][-1]:>9,.0f} req/s",
                      flush=True)
            rates["baseline"].append(
                wrk_written("--serve-baseline", args.connections, args.duration)[0])
            print(f"  round {round_ + 1}: {'baseline':<12} {rates['baseline'][-1]:>9,.0f} "
                  f"req/s", flush=True)
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"\nAMPED, graphs/hello.yaml, 1 worker; wrk -t1 -c{args.connections} "
          f"-d{args.duration}s; median of {args.rounds}")
    for name in ("baseline", "interpreted", "compiled"):
        print(f"  {name:<12} {median[name]:>9,.0f} req/s  "
              f"{median[name] / median['baseline']:.2f}x the minimal server")
    print(f"  compiled / interpreted: {median['compiled'] / median['interpreted']:.2f}")


if __name__ == "__main__":
    from seda.bench import stop_on_sigterm

    stop_on_sigterm()
    main()
