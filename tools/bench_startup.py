"""Start-up: how long `seda run` takes before it is useful, against `python -c pass`.

    python tools/bench_startup.py [--runs 7] [--tree DIR]

(--tree: run seda from another checkout, e.g. `git worktree add /tmp/old REV`, to compare.)

  pipeline   a 1-item chain (source -> double -> sink, tools/bench_pipeline.py's), the
             command's start to its exit
  service    graphs/hello.yaml under each model, the command's start to the first 200
             answered (a client polls the port every 5 ms)
  python     `python -c pass` and `python -c "import seda.cli"`, for scale
Prints the median and the range of --runs runs of each. Child processes write bytecode
caches as usual (PYTHONDONTWRITEBYTECODE is taken out of their environment: a user's
installed seda has its .pyc files).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import bench_pipeline  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)
    return time.perf_counter() - start


def pipeline_once(tmp: Path) -> float:
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [ENV.get("PYTHONPATH"),
                                                              str(ROOT / "tools")]))}
    return timed([sys.executable, "-m", "seda.cli", "run", str(tmp / "one.yaml"),
                  "--no-progress", "-o", str(tmp / "out.jsonl")], tmp, env)


def service_once(model: str) -> float:
    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "seda.cli", "run", "graphs/hello.yaml",
                             "--model", model, "--listen", f"127.0.0.1:{port}"],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while time.perf_counter() - start < 30:
            if proc.poll() is not None:
                raise RuntimeError(f"seda run exited with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    if sock.recv(100).startswith(b"HTTP/1.1 200"):
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.005)
        raise RuntimeError("no answer in 30 s")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def show(label: str, times: list[float]) -> None:
    print(f"  {label:<34} median {statistics.median(times):.3f} s  "
          f"(range {min(times):.3f}-{max(times):.3f}, {len(times)} runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tree", type=Path, help="run seda from this checkout")
    args = parser.parse_args()
    if args.tree:
        ENV["PYTHONPATH"] = str(args.tree.resolve())
    print(f"{os.cpu_count()} cores; seda from {args.tree or ROOT}")
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        (tmp / "one.yaml").write_text(bench_pipeline.CHAIN.format(n=1, tune=""))
        pipeline_once(tmp)  # (writes the bytecode caches)
        show("python -c pass", [timed([sys.executable, "-c", "pass"], tmp, ENV)
                                for _ in range(args.runs)])
        show("python -c 'import seda.cli'", [timed([sys.executable, "-c", "import seda.cli"],
                                                   tmp, ENV) for _ in range(args.runs)])
        show("pipeline: 1 item, start to exit", [pipeline_once(tmp) for _ in range(args.runs)])
    for model in ("seda", "amped", "sped", "symped", "mp"):
        show(f"service ({model}): first answer", [service_once(model)
                                                  for _ in range(args.runs)])


if __name__ == "__main__":
    from seda.bench import stop_on_sigterm

    stop_on_sigterm()
    main()
