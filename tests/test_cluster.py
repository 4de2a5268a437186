"""A run's processes over TCP with CurveZMQ (docs/cluster.md): the run's keys, the errors
before anything starts, the same output as over ipc, nothing readable on the wire, a peer
with a foreign key refused and counted, a killed worker's new port learned by its peers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import zmq

from seda.bench import other_host
from seda.errors import SpecError
from seda.runtime import secure
from tests.runkit import SedaRun, run_env, wait_for
from tests.test_run_faults import chain

MARK = "seda-capture-marker"

MARKED = """
name: marked
source: {handler: "marked:items", to: [tag], options: {n: 3000}}
stages:
  tag: {handler: "marked:tag", workers: 2, to: [sink]}
  sink: {handler: "marked:Sink", sink: true}
"""
MARKED_PY = f'''
def items(options):
    return range(int(options["n"]))

def tag(x, ctx):
    return "{MARK}-%d" % x

class Sink:
    def setup(self, ctx):
        self.count, self.marked = 0, 0
    def handle(self, x, ctx):
        self.count += 1
        self.marked += x.startswith("{MARK}")
    def finish(self, ctx):
        return {{"count": self.count, "marked": self.marked}}
    @staticmethod
    def merge(parts):
        return {{k: sum(p[k] for p in parts) for k in parts[0]}}
'''


def seda(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "seda.cli", *args], cwd=cwd,
                          env=run_env(cwd), capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------ keys
def test_keys_are_made_private_and_never_overwritten(tmp_path: Path) -> None:
    public, secret = secure.make_keys(tmp_path / "k")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    keys = secure.load_keys(tmp_path / "k")  # the folder, or the file itself
    assert keys == secure.load_keys(secret) and len(keys.public) == len(keys.secret) == 40
    assert zmq.curve_public(keys.secret) == keys.public
    with pytest.raises(SpecError, match="exists already"):
        secure.make_keys(tmp_path / "k")
    assert secure.load_keys(tmp_path / "k") == keys  # (untouched)
    other = secure.make_keys(tmp_path / "other")[1]
    assert secure.load_keys(other) != keys  # every pair is new


def test_a_key_file_others_may_read_or_without_a_secret_is_refused(tmp_path: Path) -> None:
    public, secret = secure.make_keys(tmp_path)
    os.chmod(secret, 0o640)
    with pytest.raises(SpecError, match=r"may be read by others.*chmod 600"):
        secure.load_keys(secret)
    os.chmod(public, 0o600)
    with pytest.raises(SpecError, match="public key only"):
        secure.load_keys(public)
    with pytest.raises(SpecError, match="cannot read"):
        secure.load_keys(tmp_path / "missing")


def test_run_refuses_clear_text_tcp_and_bad_keys_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "graph.yaml").write_text(chain(n=10))
    cases = [(["--tcp", "127.0.0.1"], "--tcp: the run's data would cross the network in "
                                      "clear text"),
             (["--insecure"], "--insecure: only with --tcp"),
             (["--keys", str(tmp_path / "nothing")], "cannot read the key file")]
    made = seda("keys", str(tmp_path / "k"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    os.chmod(tmp_path / "k" / "run.key_secret", 0o644)
    cases.append((["--tcp", "127.0.0.1", "--keys", str(tmp_path / "k")],
                  "may be read by others"))
    for args, error in cases:
        done = seda("run", "graph.yaml", *args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and error in lines[0], (args, done.stderr)
    again = seda("keys", str(tmp_path / "k"), cwd=tmp_path)
    assert again.returncode == 2 and "exists already" in again.stderr


# ------------------------------------------------------------------ runs over tcp
PCAP_HEADER = 24  # bytes of a pcap file before its first packet


@contextmanager
def captured(pcap: Path, link: str = "lo", probe: str = "127.0.0.1") -> Iterator[None]:
    """tcpdump writing `link`'s TCP packets to `pcap` while the block runs. The block starts
    once a probe (a connection to a closed port at `probe`, over `link`) is in the file: the
    capture is live, so an empty capture means the run sent nothing there (once, in a full
    suite run, the file held its header and no packet at all)."""
    dump = subprocess.Popen(["tcpdump", "-i", link, "-U", "-w", str(pcap), "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def probed() -> bool:
        with contextlib.suppress(OSError):
            socket.create_connection((probe, 9), timeout=0.2).close()
        return pcap.exists() and pcap.stat().st_size > PCAP_HEADER

    try:
        wait_for(probed, 10, f"tcpdump to capture a probe on {link}")
        yield
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)


def _capture(tmp: Path, *run_args: str) -> tuple[bytes, list[dict[str, int]], str]:
    """The marked pipeline run with `run_args`, with tcpdump capturing loopback TCP: (the
    captured bytes, the results, the run's stderr)."""
    (tmp / "marked.py").write_text(MARKED_PY)
    pcap = tmp / "lo.pcap"
    with captured(pcap), SedaRun(tmp, MARKED, *run_args) as run:
        assert run.wait() == 0, run.stderr
        results = run.results()
    return pcap.read_bytes(), results, run.stderr


def test_a_pipeline_over_tcp_with_keys_gives_the_same_output_and_nothing_readable(
        tmp_path: Path) -> None:
    secure.make_keys(tmp_path / "k")
    wire, results, stderr = _capture(tmp_path, "--tcp", "127.0.0.1", "--keys",
                                     str(tmp_path / "k"))
    assert results == [{"count": 3000, "marked": 3000}], stderr
    assert len(wire) > 3000 * 20  # the run's traffic was captured (3,000 messages, 2 hops)...
    assert MARK.encode() not in wire  # ... and none of it is readable


def test_the_capture_sees_a_clear_text_run(tmp_path: Path) -> None:
    """The check above can fail: over --insecure the same capture holds the marker."""
    wire, results, stderr = _capture(tmp_path, "--tcp", "127.0.0.1", "--insecure")
    assert results == [{"count": 3000, "marked": 3000}], stderr
    assert MARK.encode() in wire


def test_a_worker_killed_over_tcp_comes_back_at_a_new_port_and_nothing_is_lost(
        tmp_path: Path) -> None:
    n = 3000
    mark = tmp_path / "holder"
    secure.make_keys(tmp_path / "k")
    graph = chain(n=n, gap=0.001, handler="hold").replace(
        "options: {bad: -1}", f"options: {{hold: 1500, mark: '{mark}', seconds: 30}}")
    # one worker: its new incarnation, at its new port, must do the rest of the work
    with SedaRun(tmp_path, graph, "--tcp", "127.0.0.1", "--keys", str(tmp_path / "k"),
                 "--workers", "double=1") as run:
        pid = int(wait_for(lambda: mark.exists() and mark.read_text(), 60, "item 1500"))
        victim = psutil.Process(pid)
        name = "double." + victim.cmdline()[0].rsplit("#", 1)[1]
        before = run.status()["processes"][name]["address"]
        assert before.startswith("tcp://127.0.0.1:")
        victim.send_signal(signal.SIGKILL)
        after = wait_for(lambda: (a := run.status()["processes"][name]["address"]) != before
                         and run.status()["processes"][name]["pid"] not in (0, pid) and a,
                         30, "the new incarnation's address")
        assert after.startswith("tcp://127.0.0.1:") and after != before
        assert run.wait() == 0, run.stderr
    [total] = run.results()
    assert total == {"count": n, "sum": 2 * sum(range(n))}  # the clean run's output


def test_a_peer_with_a_foreign_key_is_refused_and_counted(tmp_path: Path) -> None:
    secure.make_keys(tmp_path / "k")
    foreign = secure.load_keys(secure.make_keys(tmp_path / "foreign")[1])
    run_keys = secure.load_keys(tmp_path / "k")
    root = Path(__file__).resolve().parent.parent
    graph = (root / "graphs" / "hello.yaml").read_text()
    with SedaRun(tmp_path, graph.replace('path: [".."]', f'path: ["{root}"]'),
                 "--tcp", "127.0.0.1", "--keys", str(tmp_path / "k"), "--listen",
                 "127.0.0.1:0") as run:
        port = run.port()
        status = wait_for(lambda: (s := run.status())["processes"]["hello.0"]["address"]
                          and s, 30, "the worker's address")
        address = status["processes"]["hello.0"]["address"]
        assert status["refused_peers"] == 0
        context = zmq.Context()
        try:
            intruder = context.socket(zmq.DEALER)
            intruder.curve_serverkey = run_keys.public  # it knows the run's public key...
            intruder.curve_publickey, intruder.curve_secretkey = foreign.public, foreign.secret
            intruder.setsockopt(zmq.LINGER, 0)
            intruder.connect(address)
            intruder.send_multipart([b"D", b"\x93\xa5hello\x90\x00"], zmq.NOBLOCK)
            wait_for(lambda: run.status()["processes"]["hello.0"]["refused_peers"] >= 1, 30,
                     "the refusal counted")
        finally:
            context.destroy(linger=0)
        assert run.status()["malformed"] == 0  # nothing it sent got in
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?name=ada", timeout=10) as r:
            assert r.status == 200 and b"ada" in r.read()  # the service serves on
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.stderr


def test_status_shows_each_process_address_over_ipc_too(tmp_path: Path) -> None:
    with SedaRun(tmp_path, chain(n=400, gap=0.005)) as run:
        processes = run.status()["processes"]
        wait_for(lambda: all(p["address"].startswith("ipc://")
                             for p in run.status()["processes"].values()), 30, "addresses")
        assert set(processes) >= {"source", "double.0", "double.1", "collect.0"}
        assert run.wait() == 0, run.stderr
    assert json.dumps(processes)  # (plain JSON)


# ------------------------------------------------------------------ workers that join
class Joiner:
    """`seda worker --join URL` as a process of its own (ended by the test if still up)."""

    def __init__(self, tmp: Path, url: str, *args: str, where: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.err = tmp / f"joiner-{time.monotonic_ns()}.txt"
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [*(where or []), sys.executable, "-m", "seda.cli", "worker", "--join", url,
                 *args],
                cwd=tmp, env=run_env(tmp, **(env or {})), stdout=subprocess.DEVNULL,
                stderr=err, start_new_session=True)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def sent(run: SedaRun, src: str, dst: str) -> int:
    """Messages sent so far on the edge src -> dst (the live status)."""
    return sum(e["sent"] for e in run.status()["edges"] if (e["from"], e["to"]) == (src, dst))


def join_url(run: SedaRun) -> str:
    match = wait_for(lambda: re.search(r"workers join at (tcp://\S+)",
                                       run.err_file.read_text()), 30, "the join address")
    return match.group(1)


def test_workers_that_join_run_a_stage_and_leave_with_the_run(tmp_path: Path) -> None:
    n = 3000
    secure.make_keys(tmp_path / "k")
    keys = str(tmp_path / "k")
    with SedaRun(tmp_path, chain(n=n, gap=0.0005), "--tcp", "127.0.0.1", "--keys", keys,
                 "--join-at", "127.0.0.1:0", "--remote", "double") as run:
        url = join_url(run)
        joiners = [Joiner(tmp_path, url, "--keys", keys) for _ in range(3)]
        try:
            # two slots (double has 2 workers): the third is turned away
            extra = wait_for(lambda: [j for j in joiners if j.proc.poll() is not None], 30,
                             "the joiner without a slot")
            assert len(extra) == 1 and extra[0].wait() == 1
            assert "no free worker slot" in extra[0].stderr
            assert run.wait() == 0, run.stderr
            for joiner in joiners:
                assert joiner.wait(timeout=10) == 0 or joiner is extra[0], joiner.stderr
        finally:
            for joiner in joiners:
                joiner.end()
        joined = {int(p) for p in re.findall(r"joined from .* \(pid (\d+)\)", run.stderr)}
        assert joined == {j.proc.pid for j in joiners} - {extra[0].proc.pid}  # not local ones
    [total] = run.results()
    assert total == {"count": n, "sum": 2 * sum(range(n))}


def test_a_run_waiting_for_workers_says_so_and_goes_on_when_one_joins(
        tmp_path: Path) -> None:
    """No worker has joined for 5 s: the run says which slots are empty and how to fill
    them (it waits: nothing is lost); one joins, and the run does its work."""
    secure.make_keys(tmp_path / "k")
    keys = str(tmp_path / "k")
    with SedaRun(tmp_path, chain(n=200), "--tcp", "127.0.0.1", "--keys", keys, "--join-at",
                 "127.0.0.1:0", "--remote", "double", "--workers", "double=1") as run:
        url = join_url(run)
        said = wait_for(lambda: re.search(r"1 worker slot still empty \(double\.0\): start "
                                          r"them with seda worker --join (tcp://\S+)",
                                          run.err_file.read_text()), 20, "the empty slot")
        assert said[1] == url
        joiner = Joiner(tmp_path, url, "--keys", keys)
        try:
            assert run.wait() == 0, run.stderr
            assert joiner.wait(timeout=10) == 0, joiner.stderr
        finally:
            joiner.end()
    [total] = run.results()
    assert total == {"count": 200, "sum": 2 * sum(range(200))}


def test_a_joined_worker_killed_mid_run_is_replaced_by_the_next_to_join(
        tmp_path: Path) -> None:
    n = 3000
    mark = tmp_path / "holder"
    secure.make_keys(tmp_path / "k")
    keys = str(tmp_path / "k")
    graph = chain(n=n, gap=0.001, handler="hold").replace(
        "options: {bad: -1}", f"options: {{hold: 1500, mark: '{mark}', seconds: 30}}")
    # one worker slot: the worker that takes it after the kill must do the rest of the work
    with SedaRun(tmp_path, graph, "--tcp", "127.0.0.1", "--keys", keys, "--join-at",
                 "127.0.0.1:0", "--remote", "double", "--workers", "double=1") as run:
        url = join_url(run)
        joiners = [Joiner(tmp_path, url, "--keys", keys)]
        try:
            pid = int(wait_for(lambda: mark.exists() and mark.read_text(), 60, "item 1500"))
            victim = [j for j in joiners if j.proc.pid == pid]
            assert victim, "the holder is one of the joined workers"
            victim[0].proc.kill()
            wait_for(lambda: "stopped answering" in run.err_file.read_text(), 30,
                     "the run to see it gone")
            joiners.append(Joiner(tmp_path, url, "--keys", keys))  # its replacement
            assert run.wait() == 0, run.stderr
        finally:
            for joiner in joiners:
                joiner.end()
    [total] = run.results()
    assert total == {"count": n, "sum": 2 * sum(range(n))}  # nothing lost, nothing twice
    assert run.stderr.count("joined from") == 2
    host = re.search(r"joined from (\S+) ", run.stderr).group(1)
    assert f"1 restarts ({host}: 1)" in run.stderr  # the summary: where the restarts were


def test_sigterm_drains_the_work_joined_workers_hold(tmp_path: Path) -> None:
    """SIGTERM while the slow middle stage, run by two joined workers, is behind: the drain
    finishes what they hold before the sink finishes (the count is what the source read),
    and the joined workers leave with the run, exit 0."""
    from tests.test_run_faults import FOREVER

    secure.make_keys(tmp_path / "k")
    keys = str(tmp_path / "k")
    graph = FOREVER.replace("handler: stagekit:double", "handler: stagekit:slow_double")
    with SedaRun(tmp_path, graph, "--tcp", "127.0.0.1", "--keys", keys, "--join-at",
                 "127.0.0.1:0", "--remote", "double") as run:
        url = join_url(run)
        joiners = [Joiner(tmp_path, url, "--keys", keys) for _ in range(2)]
        try:
            wait_for(lambda: sent(run, "double", "collect") >= 40, 30, "work through both")
            run.signal(signal.SIGTERM)
            assert run.wait(timeout=30) == 128 + signal.SIGTERM, run.stderr
            for joiner in joiners:
                assert joiner.wait(timeout=10) == 0, joiner.stderr
        finally:
            for joiner in joiners:
                joiner.end()
    assert "pipeline 'endless' interrupted" in run.stderr
    read = int(re.search(r"interrupted: (\d+) items", run.stderr)[1])  # type: ignore[index]
    [total] = run.results()
    assert total["count"] == read and read > 40, (total, read)
    assert total["sum"] == 2 * sum(range(read))


def test_a_joined_worker_exits_when_its_supervisor_is_gone(tmp_path: Path) -> None:
    secure.make_keys(tmp_path / "k")
    keys = str(tmp_path / "k")
    with SedaRun(tmp_path, chain(n=100000, gap=0.001), "--tcp", "127.0.0.1", "--keys",
                 keys, "--join-at", "127.0.0.1:0", "--remote", "double",
                 "--workers", "double=1") as run:
        joiner = Joiner(tmp_path, join_url(run), "--keys", keys)
        try:
            wait_for(lambda: "joined from" in run.err_file.read_text(), 30, "the join")
            wait_for(lambda: sent(run, "double", "collect") > 0, 30, "work through the joiner")
            run.signal_group(signal.SIGKILL)  # the supervisor and its local processes
            gone = time.monotonic()
            assert joiner.wait(timeout=10) == 1
            assert time.monotonic() - gone < 5.0
            assert "no word from the supervisor" in joiner.stderr
        finally:
            joiner.end()
        run.wait()


DEAD_ON_REMOTE = """
name: deadremote
source: {handler: "stagekit:numbers", to: [double], options: {n: 300}}
stages:
  double: {handler: "stagekit:double", workers: 1, to: [check]}
  check: {handler: "stagekit:poison", to: [collect], options: {bad: 26}}
  collect: {handler: "stagekit:Collect", sink: true}
settings: {max_attempts: 2, dead_letter: dead.jsonl}
"""


def test_a_joined_worker_s_dead_letters_reach_the_run_s_file(tmp_path: Path) -> None:
    """The joined worker of `double` sends to `check`, whose handler fails on one message:
    the joined worker gives up on it, and its dead letter is written where the run keeps
    them -- although that folder, on the joined worker's "host", is another (an empty
    tmpfs mounted over it in a mount namespace of its own)."""
    secure.make_keys(tmp_path / "k")
    keys = str(tmp_path / "k")
    with SedaRun(tmp_path, DEAD_ON_REMOTE, "--tcp", "127.0.0.1", "--keys", keys,
                 "--join-at", "127.0.0.1:0", "--remote", "double") as run:
        # (the keys are read before the tmpfs hides them: --keys - from stdin)
        other_disk = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                      f"mount -t tmpfs none {tmp_path} && exec \"$@\" < /dev/stdin", "sh"]
        with open(tmp_path / "k" / "run.key_secret", "rb") as secret:
            joiner = subprocess.Popen(
                [*other_disk, sys.executable, "-m", "seda.cli", "worker", "--join",
                 join_url(run), "--keys", "-"], stdin=secret, cwd="/",
                env=run_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True, start_new_session=True)
        try:
            assert run.wait() == 0, run.stderr
            assert joiner.wait(timeout=10) == 0, joiner.stderr.read()
        finally:
            if joiner.poll() is None:
                joiner.kill()
                joiner.wait()
    [total] = run.results()
    assert total == {"count": 299, "sum": 2 * sum(range(300)) - 26}
    [letter] = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert (letter["stage"], letter["payload"], letter["attempts"]) == ("check", 26, 2)
    assert "cannot digest 26" in letter["error"]
    assert "1 dead-lettered" in run.stderr


def test_the_dashboard_shows_where_a_stage_s_workers_run(tmp_path: Path) -> None:
    """Headless Chromium draws the dashboard of a run with a joined worker: a Hosts column,
    the joined worker's host on its stage's row, "here" on the rows of local stages."""
    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed (tools/test installs it)")
    from tests.test_status import dump_dom

    secure.make_keys(tmp_path / "k")
    keys = str(tmp_path / "k")
    with SedaRun(tmp_path, chain(n=100000, gap=0.001), "--tcp", "127.0.0.1", "--keys",
                 keys, "--join-at", "127.0.0.1:0", "--remote", "double",
                 "--workers", "double=1") as run:
        joiner = Joiner(tmp_path, join_url(run), "--keys", keys)
        try:
            wait_for(lambda: sent(run, "double", "collect") > 0, 30, "work through the joiner")
            url = re.search(r"status on (http://\S+)", run.err_file.read_text())[1]
            dom = dump_dom(url)
        finally:
            run.signal(signal.SIGINT)
            run.wait()
            joiner.end()
    assert re.search(r'<th id="hosts"(?![^>]*hidden)[^>]*>Hosts</th>', dom), dom[:3000]
    rows = dict(re.findall(r'<tr data-stage="(\w+)"[^>]*>(.*?)</tr>', dom))
    cells = {stage: re.findall(r"<td>([^<]*)</td>", row) for stage, row in rows.items()}
    assert cells["double"][-1] == socket.gethostname(), cells
    assert cells["collect"][-1] == "here", cells


def test_a_joiner_with_a_foreign_key_is_refused(tmp_path: Path) -> None:
    secure.make_keys(tmp_path / "k")
    secure.make_keys(tmp_path / "foreign")
    with SedaRun(tmp_path, chain(n=100000, gap=0.001), "--tcp", "127.0.0.1", "--keys",
                 str(tmp_path / "k"), "--join-at", "127.0.0.1:0", "--remote",
                 "double") as run:
        joiner = Joiner(tmp_path, join_url(run), "--keys", str(tmp_path / "foreign"))
        try:
            assert joiner.wait(timeout=30) == 1
            assert "no answer from" in joiner.stderr and "refused_peers" in joiner.stderr
            assert run.status()["refused_peers"] >= 1
            assert "joined from" not in run.err_file.read_text()
        finally:
            joiner.end()
            run.signal(signal.SIGINT)
            run.wait()


def test_a_worker_that_speaks_another_frame_format_is_refused_with_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker of another seda version would send frames the run's processes drop as
    malformed (and read none of theirs): the join is refused, both sides say why -- what
    this process sends to the run's real supervisor is a JOIN of another format."""
    from seda.engine import wire
    from seda.runtime import join

    secure.make_keys(tmp_path / "k")
    keys = secure.load_keys(str(tmp_path / "k" / "run.key_secret"))
    with SedaRun(tmp_path, chain(n=100000, gap=0.001), "--tcp", "127.0.0.1", "--keys",
                 str(tmp_path / "k"), "--join-at", "127.0.0.1:0", "--remote",
                 "double") as run:
        url = join_url(run)
        ours = wire.WIRE
        assert ours > 1
        monkeypatch.setattr(wire, "WIRE", 1)
        answer = join.ask(url, keys)
        assert answer["error"] == (
            f"this run speaks frame format {ours} (seda {join.__version__}), the worker format 1 "
            f"(seda {join.__version__}): install the same seda version on every host")
        assert "plan" not in answer
        wait_for(lambda: "refused a worker from" in run.err_file.read_text(), 10,
                 "the run's warning")
        # the other way round: a run that answers in another format (or none: an older one)
        assert join.mismatch("this worker", f"the run at {url}", {}) == (
            f"this worker speaks frame format 1 (seda {join.__version__}), the run at {url} "
            f"an older format (an older seda): install the same seda version on every host")
        monkeypatch.undo()
        joiner = Joiner(tmp_path, url, "--keys", str(tmp_path / "k"))  # the same: it joins
        try:
            wait_for(lambda: "joined from" in run.err_file.read_text(), 30, "the join")
        finally:
            joiner.end()
            run.signal(signal.SIGINT)
            run.wait()


FRAGILE_PY = """
import os
if os.environ.get("THIS_HOST_LACKS_CUDA"):
    raise ImportError("No module named 'cuda_kernels'")

def items(options):
    return range(100)

def double(x, ctx):
    return 2 * x

def keep(x, ctx):
    return None
"""
FRAGILE = """
name: fragile
settings: {restarts: {max: 2, within: 60}}
source: {handler: "fragile:items", to: [double]}
stages:
  double: {handler: "fragile:double", workers: 1, to: [keep]}
  keep: {handler: "fragile:keep", sink: true}
"""


def test_a_host_that_cannot_run_the_stage_ends_the_run_at_the_restart_limit(
        tmp_path: Path) -> None:
    """Workers join, one after another (as a Deployment or Ray starts them again), from a
    "host" where the stage's handlers fail to import: each tells the supervisor why before
    it exits, each counts as a crash of the slot, and the run stops at its restart limit
    saying why -- rather than waiting for good with nothing said but a free slot."""
    (tmp_path / "fragile.py").write_text(FRAGILE_PY)
    secure.make_keys(tmp_path / "k")
    keys = str(tmp_path / "k")
    with SedaRun(tmp_path, FRAGILE, "--tcp", "127.0.0.1", "--keys", keys, "--join-at",
                 "127.0.0.1:0", "--remote", "double") as run:
        url = join_url(run)
        codes = []
        for _ in range(10):  # (bounded: the run ends at the third failure)
            if run.proc.poll() is not None:
                break
            joiner = Joiner(tmp_path, url, "--keys", keys,
                            env={"THIS_HOST_LACKS_CUDA": "1"})
            try:
                codes.append(joiner.wait(timeout=30))
                if codes[-1] == 3:
                    assert "cuda_kernels" in joiner.stderr, joiner.stderr
            finally:
                joiner.end()
        assert run.wait(timeout=30) == 1, run.stderr
    assert codes.count(3) == 3, (codes, run.stderr)  # restarts: max 2, the third ends it
    said = [line for line in run.stderr.splitlines() if "failed to start: cannot use" in line]
    assert len(said) == 4, run.stderr  # each failure, then the run's last word:
    assert "restart limit reached" in said[-1] and "No module named 'cuda_kernels'" in \
        said[-1] and said[-1] == run.stderr.splitlines()[-1], run.stderr


def test_a_joined_worker_clears_the_folders_dead_ones_left(tmp_path: Path) -> None:
    """A joined worker killed by SIGKILL (or with its node) leaves its private folder: the
    next one to start on that host removes those whose process is gone, and only those."""
    from seda.runtime.join import remove_stale

    gone = subprocess.Popen(["true"])
    gone.wait()  # (a pid that was ours and is now free)
    stale = tmp_path / f"seda-joined-{gone.pid}-abc123"
    alive = tmp_path / f"seda-joined-{os.getpid()}-def456"
    other = tmp_path / "seda-joined-notapid-x"
    for folder in (stale, alive, other):
        folder.mkdir()
        (folder / "note").write_text("x")
    remove_stale(str(tmp_path))
    assert not stale.exists() and alive.exists() and other.exists()


def test_join_options_are_checked_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "graph.yaml").write_text(chain(n=10))
    secure.make_keys(tmp_path / "k")
    keys = ["--keys", str(tmp_path / "k")]
    cases = [(["--remote", "double"], "--remote: give --join-at"),
             (["--join-at", "127.0.0.1:0"], "--join-at: workers from other hosts reach the "
                                             "run's processes over TCP"),
             (["--tcp", "127.0.0.1", *keys, "--join-at", "127.0.0.1:0", "--remote",
               "dubble"], "--remote: unknown stage 'dubble' (did you mean 'double'?)"),
             (["--tcp", "127.0.0.1", *keys, "--join-at", "nowhere"], "--join-at: "),
             (["--tcp", "0.0.0.0", *keys, "--join-at", "0.0.0.0:0", "--remote", "double"],
              "--tcp 0.0.0.0: workers that join from other hosts are told where")]
    for args, error in cases:
        done = seda("run", "graph.yaml", *args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and error in lines[0], (args, done.stderr)
    (tmp_path / "graph.yaml").write_text(chain(n=10).replace(
        "    workers: 2\n", "    workers: 2\n    scale: {min: 1, max: 4}\n", 1))
    done = seda("run", "graph.yaml", "--tcp", "127.0.0.1", *keys, "--join-at", "127.0.0.1:0",
                "--remote", "double", cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and \
        "--remote: stage 'double' has scale:, and the pool controller" in lines[0], done.stderr
    bad = seda("worker", "--join", "127.0.0.1:9", cwd=tmp_path)
    assert bad.returncode == 2 and "expected tcp://HOST:PORT" in bad.stderr
    wild = seda("worker", "--join", "tcp://127.0.0.1:9", "--host", "0.0.0.0", cwd=tmp_path)
    assert wild.returncode == 2 and "--host 0.0.0.0: give the address" in wild.stderr
    piped = subprocess.run([sys.executable, "-m", "seda.cli", "worker", "--join",
                            "tcp://127.0.0.1:9", "--keys", "-"], input="not a key\n",
                           cwd=tmp_path, env=run_env(tmp_path), capture_output=True,
                           text=True, timeout=60)
    lines = piped.stderr.strip().splitlines()
    assert piped.returncode == 2 and len(lines) == 1 and "not a seda key file" in lines[0], \
        piped.stderr


def test_a_worker_on_another_host_joins_over_an_encrypted_link(tmp_path: Path) -> None:
    """Two hosts on this machine: a network namespace behind a veth pair. The run and its
    source and sink here, the middle stage's worker there; what crosses the link is
    captured: the run's traffic, none of it readable."""
    (tmp_path / "marked.py").write_text(MARKED_PY)
    secure.make_keys(tmp_path / "k")
    keys = str(tmp_path / "k")
    with other_host() as host:
        pcap = tmp_path / "veth.pcap"
        with captured(pcap, host.link, host.there), SedaRun(
                tmp_path, MARKED, "--tcp", host.here, "--keys", keys, "--join-at",
                f"{host.here}:0", "--remote", "tag", "--workers", "tag=1") as run:
            url = join_url(run)
            # (no --host: the worker binds its address on the route to the run)
            joiner = Joiner(tmp_path, url, "--keys", keys, where=host.command())
            try:
                assert run.wait() == 0, run.stderr
                assert joiner.wait(timeout=10) == 0, joiner.stderr
            finally:
                joiner.end()
        wire = pcap.read_bytes()
    assert run.results() == [{"count": 3000, "marked": 3000}], run.stderr
    assert f" at {host.there} (pid" in run.stderr, run.stderr
    assert len(wire) > 3000 * 40  # both hops of every message crossed the link...
    assert MARK.encode() not in wire  # ... encrypted


def test_a_joined_worker_at_an_address_its_peers_cannot_reach_is_said(tmp_path: Path) -> None:
    """A worker on another host that binds an address only its own host knows (its
    loopback): alive, beating, but nothing can be sent to it. The run does not wait in
    silence: the processes that send to it say whom they cannot reach, and where."""
    secure.make_keys(tmp_path / "k")
    keys = str(tmp_path / "k")
    with other_host() as host, SedaRun(
            tmp_path, chain(n=100000, gap=0.001), "--tcp", host.here, "--keys", keys,
            "--join-at", f"{host.here}:0", "--remote", "double", "--workers",
            "double=1") as run:
        joiner = Joiner(tmp_path, join_url(run), "--keys", keys, "--host", "127.0.0.1",
                        where=host.command())
        try:
            said = wait_for(lambda: re.search(r"cannot reach double\.0 at (tcp://\S+): "
                                              r"nothing sent there got through for \d+ s",
                                              run.err_file.read_text()), 30, "the warning")
            assert said[1].startswith("tcp://127.0.0.1:"), said[0]
            assert "stopped answering" not in run.err_file.read_text()  # (it lives)
        finally:
            run.signal(signal.SIGINT)
            run.wait()
            joiner.end()


# ------------------------------------------------------------------ Ray places the workers
RAY_CHAIN = """
name: raychain
source: {handler: "marked:items", to: [tag], options: {n: 3000}}
stages:
  tag:
    handler: "marked:tag"
    workers: 2
    to: [sink]
    placement: {resources: {far: 1}, strategy: spread}
  sink: {handler: "marked:Sink", sink: true}
"""


JOINED_AT = r"joined from \S+ \(ray node (\w+)\)"  # the supervisor's line, with the node


def test_ray_places_a_stage_s_workers_on_the_node_with_its_resource(tmp_path: Path) -> None:
    """A Ray cluster of two nodes (ray.cluster_utils: two raylets on this machine), the second
    with a custom resource `far`; the middle stage asks for it, so Ray starts its two workers
    there, each joins the run, and the output is the single-machine run's."""
    from ray.cluster_utils import Cluster

    (tmp_path / "marked.py").write_text(MARKED_PY)
    secure.make_keys(tmp_path / "k")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        far = cluster.add_node(num_cpus=2, resources={"far": 2})
        cluster.wait_for_nodes()
        with SedaRun(tmp_path, RAY_CHAIN, "--tcp", "127.0.0.1", "--keys", str(tmp_path / "k"),
                     "--ray", cluster.address) as run:
            assert run.wait(timeout=180) == 0, run.stderr
        assert run.results() == [{"count": 3000, "marked": 3000}], run.stderr
        nodes = re.findall(JOINED_AT, run.stderr)
        assert len(nodes) == 2, run.stderr
        assert {n for n in nodes} == {far.node_id[:12]}, (nodes, far.node_id)
    finally:
        cluster.shutdown()


def test_a_ray_node_that_dies_takes_its_worker_and_ray_starts_it_on_another(
        tmp_path: Path) -> None:
    """Three raylets; two of them (B, C) have the resource the middle stage asks for, and it
    has one worker. The node that got it is removed mid-run (its raylet and its workers
    killed): Ray starts the actor again on the other, it joins the free slot, and the
    output is complete, with nothing twice."""
    from ray.cluster_utils import Cluster

    (tmp_path / "marked.py").write_text(MARKED_PY.replace("return range(int(", "import time\n"
                                                          "    return gen(int(") + '''
def gen(n):
    import time
    for i in range(n):
        time.sleep(0.002)
        yield i
''')
    secure.make_keys(tmp_path / "k")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        nodes = {}
        for _ in range(2):
            node = cluster.add_node(num_cpus=1, resources={"far": 1})
            nodes[node.node_id[:12]] = node
        cluster.wait_for_nodes()
        graph = RAY_CHAIN.replace("workers: 2", "workers: 1")
        with SedaRun(tmp_path, graph, "--tcp", "127.0.0.1", "--keys", str(tmp_path / "k"),
                     "--ray", cluster.address) as run:
            first = wait_for(lambda: re.findall(JOINED_AT, run.err_file.read_text()), 60,
                             "the join")[0]
            # mid-run: some of the 3,000 items (6 s of them) through the first worker
            wait_for(lambda: sent(run, "tag", "sink") >= 200, 60, "work through the worker")
            cluster.remove_node(nodes[first], allow_graceful=False)
            assert run.wait(timeout=180) == 0, run.stderr
        assert run.results() == [{"count": 3000, "marked": 3000}], run.stderr
        joined = re.findall(JOINED_AT, run.stderr)
        assert len(joined) == 2 and joined[1] != first and joined[1] in nodes, run.stderr
        assert "stopped answering" in run.stderr
    finally:
        cluster.shutdown()


SLOW_MARKED_PY = MARKED_PY.replace("return range(int(", "return gen(int(") + '''
def gen(n):
    import time
    for i in range(n):
        time.sleep(0.002)
        yield i
'''  # (3,000 items over ~6 s: a fault can come mid-run)
RAY_CLI = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]


@contextmanager
def ray_node(log: Path, *args: str, namespace: str = "") -> Iterator[subprocess.Popen[bytes]]:
    """`ray start --block ARGS` (in `namespace`, if given) as the test's own process; at the
    end its whole tree -- and every process left in the namespace -- killed by pid."""
    where = ["ip", "netns", "exec", namespace] if namespace else []
    # nodes of one machine would share /tmp/ray: each its own folder, or the second
    # raylet dies binding the first one's socket file
    folder = tempfile.mkdtemp(prefix="seda-ray-")
    env = {**os.environ, "RAY_health_check_period_ms": "1000",  # (a dead node seen in ~3 s)
           "RAY_health_check_failure_threshold": "3"}
    with open(log, "w") as out:
        proc = subprocess.Popen([*where, *RAY_CLI, "start", "--block", "--disable-usage-stats",
                                 "--object-store-memory", str(100 << 20), "--temp-dir", folder,
                                 *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        end_ray_node(proc, namespace)
        shutil.rmtree(folder, ignore_errors=True)


def end_ray_node(proc: subprocess.Popen[bytes], namespace: str = "") -> None:
    """Kill (SIGKILL, by pid) a Ray node the test started: the `ray start` process, what it
    started, and in a namespace whatever else runs there (workers the raylet started)."""
    pids = {proc.pid}
    with contextlib.suppress(psutil.NoSuchProcess):
        pids |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
    if namespace:
        listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True,
                                text=True, timeout=30).stdout
        pids |= {int(pid) for pid in listed.split()}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_ray_nodes_on_other_hosts_run_the_stage_and_replace_it_when_one_dies(
        tmp_path: Path) -> None:
    """Three hosts on this machine: the Ray head and the run here, a Ray worker node in each
    of two network namespaces (`ray start --address`), both with the resource `far` that the
    middle stage (one worker) asks for. Ray starts the worker on one of them; it joins over
    that host's veth, encrypted (both links captured: no payload readable). Mid-run that
    host's Ray node is killed -- its raylet, its workers, every process in the namespace --
    and Ray starts the actor on the other host, which joins the free slot: the output is
    the single-machine run's, with nothing twice."""
    (tmp_path / "marked.py").write_text(SLOW_MARKED_PY)
    secure.make_keys(tmp_path / "k")
    graph = RAY_CHAIN.replace("workers: 2", "workers: 1")
    keys_before = set(Path(tempfile.gettempdir()).glob("seda-*/run.key_secret"))
    with other_host() as one, other_host() as two, contextlib.ExitStack() as stack:
        head_log = tmp_path / "ray-head.txt"
        stack.enter_context(ray_node(head_log, "--head", "--node-ip-address", one.here,
                                     "--port", "0", "--num-cpus", "1",
                                     "--include-dashboard", "false"))
        address = wait_for(lambda: re.search(r"ray start --address='(\S+)'",
                                              head_log.read_text()), 60, "the Ray head")[1]
        nodes = {}
        for host in (one, two):
            nodes[host.there] = stack.enter_context(ray_node(
                tmp_path / f"ray-{host.namespace}.txt", "--address", address,
                "--node-ip-address", host.there, "--num-cpus", "1",
                "--resources", '{"far": 1}', namespace=host.namespace))
        pcaps = {host.there: tmp_path / f"{host.namespace}.pcap" for host in (one, two)}
        for host in (one, two):
            stack.enter_context(captured(pcaps[host.there], host.link, host.there))
        with SedaRun(tmp_path, graph, "--tcp", one.here, "--keys", str(tmp_path / "k"),
                     "--ray", address) as run:
            joined = r"joined from .* at (\S+) \(pid"
            first = wait_for(lambda: re.findall(joined, run.err_file.read_text()), 40,
                             "the join")[0]
            assert first in nodes, run.err_file.read_text()
            wait_for(lambda: sent(run, "tag", "sink") >= 200, 60, "work through the worker")
            gone = next(h for h in (one, two) if h.there == first)
            end_ray_node(nodes[first], gone.namespace)
            assert run.wait(timeout=180) == 0, run.stderr
        stack.close()  # (the captures written out, every Ray node ended)
        wires = {there: pcap.read_bytes() for there, pcap in pcaps.items()}
    assert run.results() == [{"count": 3000, "marked": 3000}], run.stderr
    hosts = re.findall(joined, run.stderr)
    assert len(hosts) == 2 and set(hosts) == set(nodes), run.stderr
    assert "stopped answering" in run.stderr
    for there, wire in wires.items():
        assert len(wire) > 200 * 40, there  # each host's worker did part of the work...
        assert MARK.encode() not in wire, there  # ... and none of it crossed in clear text
    # the key reached each worker through a pipe: no copy of it left on the "hosts", not
    # even by the worker killed with its node
    assert set(Path(tempfile.gettempdir()).glob("seda-*/run.key_secret")) <= keys_before


def test_when_the_supervisor_dies_no_worker_ray_started_outlives_it(tmp_path: Path) -> None:
    """SIGKILL of the run (supervisor and local processes) mid-run under --ray: within 5 s
    no joined worker is left on any Ray node (the actor dies with its driver, the worker
    with its actor; and a worker that hears nothing from its supervisor for 3 s exits)."""
    from ray.cluster_utils import Cluster

    (tmp_path / "marked.py").write_text(SLOW_MARKED_PY.replace("n=3000", "n=30000"))
    secure.make_keys(tmp_path / "k")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=2, resources={"far": 2})
        cluster.wait_for_nodes()
        with SedaRun(tmp_path, RAY_CHAIN.replace("n: 3000", "n: 30000"), "--tcp",
                     "127.0.0.1", "--keys", str(tmp_path / "k"), "--ray",
                     cluster.address) as run:
            pids = wait_for(lambda: [int(p) for p in re.findall(
                r"joined from .* \(pid (\d+)\)", run.err_file.read_text())][1:], 90,
                "both workers to join")
            wait_for(lambda: sent(run, "tag", "sink") >= 100, 60, "work through them")
            workers = [psutil.Process(pid) for pid in pids]
            assert all("seda: worker tag#" in " ".join(w.cmdline()) for w in workers)
            run.signal_group(signal.SIGKILL)
            gone = time.monotonic()
            psutil.wait_procs(workers, timeout=5)
            left = [w for w in workers if w.is_running() and
                    w.status() != psutil.STATUS_ZOMBIE]
            assert not left, (left, time.monotonic() - gone)
            run.wait()
    finally:
        cluster.shutdown()


def test_a_stage_no_ray_node_can_place_is_said_and_the_run_stops_cleanly(
        tmp_path: Path) -> None:
    """The middle stage asks for a resource no node of the Ray cluster has: Ray keeps its
    actor pending, and the run says why its slot is empty instead of waiting in silence;
    Ctrl-C ends it, and the pending actor with it."""
    from ray.cluster_utils import Cluster

    (tmp_path / "marked.py").write_text(MARKED_PY)
    secure.make_keys(tmp_path / "k")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        with SedaRun(tmp_path, RAY_CHAIN.replace("workers: 2", "workers: 1"), "--tcp",
                     "127.0.0.1", "--keys", str(tmp_path / "k"), "--ray",
                     cluster.address) as run:
            wait_for(lambda: "1 worker slot still empty (tag.0): Ray has not started their "
                             "workers yet" in run.err_file.read_text(), 60, "the empty slot")
            run.signal(signal.SIGINT)
            assert run.wait(timeout=60) != 0
        assert "joined from" not in run.stderr
    finally:
        cluster.shutdown()


def test_plan_shows_which_workers_join_and_what_ray_gives_them(tmp_path: Path) -> None:
    (tmp_path / "graph.yaml").write_text(RAY_CHAIN)
    (tmp_path / "marked.py").write_text(MARKED_PY)
    shown = seda("plan", "graph.yaml", "--ray", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line for line in shown.stdout.splitlines()[2:5]}
    assert "joins: a Ray actor needing far=1, spread" in rows["tag.0"]
    assert "joins: a Ray actor needing far=1, spread" in rows["tag.1"]
    assert "joins" not in rows["sink.0"] and "tcp://HOST:PORT" in shown.stdout
    plain = seda("plan", "graph.yaml", cwd=tmp_path)
    assert "joins" not in plain.stdout and "ipc://RUN_DIR" in plain.stdout
    joined = seda("plan", "graph.yaml", "--remote", "sink", cwd=tmp_path)
    assert "worker (joins: seda worker --join)" in joined.stdout
