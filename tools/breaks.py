"""Break the runtime on purpose, one line at a time, and check that the test suite notices.

    python tools/breaks.py              # every break below
    python tools/breaks.py drain-pipeline source-dedup     # some of them, by name

Each break is a one-line change to seda's code that keeps a promise of the docs from being
kept (a drain that drops its tail, a dead worker's messages dropped, a limit removed, ...),
with the tests that guard that promise. The break is applied to a temporary copy of the tree
and those tests are run against it: the break must make them fail. Prints CAUGHT or MISSED
per break; exits 1 if any was missed. Every break here was missed by the suite once
(docs/testing.md). Slow (each runs real processes): not part of the test suite.

mutmut (tools/mutate.py) does the same for the pure modules, automatically; these are the
promises that only real processes can show.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Break:
    name: str
    file: str
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


BREAKS = [
    Break("target-limit", "seda/engine/codec/http.py",
          "self.header_bytes += len(url)\n        if self.header_bytes > self.max_header:",
          "self.header_bytes += len(url)\n        if False:",
          ("tests/test_run_service.py::test_size_limits",
           "tests/test_codecs.py::test_http_faults_have_statuses")),
    Break("source-dedup", "seda/runtime/source.py",
          "repeats = self.seen.repeats([item[0] for item in items])", "repeats = []",
          ("tests/test_source.py",
           "tests/test_chaos.py::test_a_pipeline_loses_nothing_with_its_workers_killed_again_and_again")),
    Break("drain-pipeline", "seda/engine/ending.py",
          "            if quiet():\n                if self.service:",
          "            if (not self.service and self.phase == DRAINING) or quiet():\n"
          "                if self.service:",
          ("tests/test_run_faults.py::test_sigterm_drains_and_exits",
           "tests/test_ending.py")),
    Break("drain-service", "seda/engine/ending.py",
          "            if quiet():\n                if self.service:",
          "            if quiet() or (self.service and self.phase == DRAINING):\n"
          "                if self.service:",
          ("tests/test_run_service.py::test_a_drain_answers_every_request_in_flight",
           "tests/test_ending.py")),
    Break("suspects-never-halved", "seda/engine/credit.py",
          "            self.groups.extendleft((count - count // 2, count // 2))",
          "            self.groups.appendleft(count)",
          ("tests/test_flow.py",)),
    Break("async-timeout-retried", "seda/runtime/worker.py",
          "            self.fail(sender, key, env[ID], why, \"\", 504)",
          "            self.fail(sender, key, env[ID], why, \"\", 0)",
          ("tests/test_async.py::test_an_async_call_past_its_time_limit_is_answered_504_and_"
           "costs_only_itself",)),
    Break("done-before-failure", "seda/runtime/node.py",
          "        self._flush_acks()  # (failures before the DONEs of their frames)\n"
          "        if self.replies or self.after_results:\n            self._send_replies()\n",
          "        if self.replies or self.after_results:\n            self._send_replies()\n"
          "        self._flush_acks()\n",
          ("tests/test_run_service.py::test_a_request_whose_handler_always_fails_is_answered_"
           "500_at_once",)),
    Break("receipt-counted-twice", "seda/engine/credit.py",
          "            if frame is not None and not frame.received:",
          "            if frame is not None:",
          ("tests/test_flow.py",)),
    Break("column-types", "seda/engine/wire.py",
          "return values if len(values) == n and set(map(type, values)) <= types else None",
          "return values if len(values) == n else None",
          ("tests/test_fuzz_frames.py",)),
    Break("redelivery", "seda/engine/credit.py",
          "            kept.append((stage, env, book))",
          "            pass  # (dropped)",
          ("tests/test_run_faults.py::test_sigkill_of_a_worker_mid_run_loses_nothing",
           "tests/test_chaos.py::test_a_worker_killed_every_second_under_load")),
    Break("close-after-400", "seda/runtime/acceptor.py",
          "self.answer_now(self.codec.error_reply(exc), close=True)",
          "self.answer_now(self.codec.error_reply(exc), close=False)",
          ("tests/test_run_service.py::test_malformed_request_gets_400_and_others_are_still_served",)),
    Break("line-limit", "seda/engine/codec/simple.py",
          "        if len(buf) > self.limit:\n            raise ProtocolError(f\"line over",
          "        if False:\n            raise ProtocolError(f\"line over",
          ("tests/test_codecs.py::test_line_codec", "tests/test_fuzz_codecs.py")),
    Break("memory-per-connection", "seda/runtime/acceptor.py",
          "        self.eof = False  # the client half-closed",
          "        self.eof, self.scratch = False, bytearray(1 << 16)  # the client half-closed",
          ("tests/test_run_service.py::test_ten_thousand_keep_alive_connections",)),
    Break("admission-off", "seda/runtime/acceptor.py",
          "admission is not None and not admission.admit(mono, reserve, len(slots))):",
          "False):",
          ("tests/test_run_service.py::"
           "test_admission_by_response_time_sheds_load_with_503_and_retry_after",)),
    Break("batching-never-changes", "seda/engine/controllers.py",
          "return now_window if now_window != before else None",
          "return None",
          ("tests/test_scale.py::test_the_batching_controller_grows_a_window_its_senders_"
           "cannot_feed",)),
    Break("leftover-process", "seda/runtime/worker.py",
          "        self.core.setup()\n",
          "        self.core.setup()\n        __import__('subprocess').Popen(['sleep', '60'], "
          "start_new_session=True)\n",
          ("tests/test_run_pipeline.py::test_word_count_is_exact",)),
    # promises added since the list began: streamed replies and the calls' cutoffs
    Break("stream-rerun-kept", "seda/engine/front.py",
          "    if seq != slot.next_part:\n        return False",
          "    if False:\n        return False",
          ("tests/test_streaming.py::test_a_worker_killed_mid_stream_cuts_that_reply_and_no_"
           "other",)),
    Break("stream-parts-held", "seda/runtime/acceptor.py",
          "                if parts:\n                    transport.write(parts)",
          "                if False:\n                    transport.write(parts)",
          ("tests/test_streaming.py::test_parts_reach_the_client_while_the_handler_still_"
           "runs[sped]",)),
    Break("cutoff-limit-as-deadline", "seda/runtime/aio.py",
          "self.calls[task] = (cutoff, wait == limit)",
          "self.calls[task] = (cutoff, False)",
          ("tests/test_async_core.py::test_cutoffs_cut_only_the_calls_past_their_limit_or_"
           "deadline",)),
]


def copy_tree(into: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, into / name)


def apply(tree: Path, brk: Break) -> None:
    path = tree / brk.file
    text = path.read_text()
    if text.count(brk.old) != 1:
        raise SystemExit(f"breaks: '{brk.name}': the line to break occurs "
                         f"{text.count(brk.old)} times in {brk.file} (the code moved?)")
    path.write_text(text.replace(brk.old, brk.new))


def check(brk: Break) -> tuple[bool, str, float]:
    """(caught, last lines of the run, seconds)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="seda-break-") as work:
        tree = Path(work)
        copy_tree(tree)
        apply(tree, brk)
        env = {**os.environ, "PYTHONPATH": str(tree), **dict(brk.env)}
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p",
                               "no:cacheprovider", *brk.tests], cwd=tree, env=env,
                              capture_output=True, text=True, timeout=1800)
    tail = "\n".join(done.stdout.strip().splitlines()[-3:])
    return done.returncode != 0, tail, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="breaks to try (default: all)")
    args = parser.parse_args()
    chosen = [b for b in BREAKS if not args.names or b.name in args.names]
    missed = []
    for brk in chosen:
        caught, tail, seconds = check(brk)
        print(f"{'CAUGHT' if caught else 'MISSED'}  {brk.name:<24} {seconds:5.0f} s  "
              f"{brk.file}: {brk.new.strip().splitlines()[0][:60]}", flush=True)
        if not caught:
            missed.append(brk.name)
            print("        " + tail.replace("\n", "\n        "), flush=True)
    print(f"{len(chosen) - len(missed)} of {len(chosen)} breaks caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
