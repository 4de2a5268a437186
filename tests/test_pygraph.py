"""Graphs written in Python, from the command line: `seda validate|graph|plan|run app.py`
and `module:attribute`, from any directory; errors name the file and the line."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
from pathlib import Path

from tests.runkit import run_env, wait_for

APP = '''\
from seda import Graph


def hello(request, ctx):
    return "hello " + request["path"]


graph = (Graph("pyapp").acceptor(entry="hello", listen="127.0.0.1:0")
         .stage("hello", hello, workers=2).build())
'''


def seda(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "seda.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, env=run_env(cwd))


def served(tmp: Path, args: list[str], cwd: Path, path: str) -> tuple[int, bytes]:
    """`seda run ARGS` started in `cwd`: GET `path` once it listens, then SIGTERM (it must
    drain and exit 0); the answer's status and body."""
    err = tmp / "stderr.txt"
    with open(err, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "seda.cli", "run", *args,
                                 "--no-progress"], cwd=cwd, env=run_env(tmp),
                                stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)
    try:
        line = wait_for(lambda: next((ln for ln in err.read_text().splitlines()
                                      if "listening on" in ln), None), 30, "listening")
        conn = http.client.HTTPConnection("127.0.0.1", int(line.rsplit(":", 1)[1].split()[0]),
                                          timeout=10)
        conn.request("GET", path)
        answer = conn.getresponse()
        got = answer.status, answer.read()
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, err.read_text()
    return got


def test_a_python_graph_is_checked_drawn_and_planned_from_anywhere(tmp_path: Path) -> None:
    app = tmp_path / "proj" / "pyapp_one.py"
    app.parent.mkdir()
    app.write_text(APP)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = seda("validate", str(app), cwd=elsewhere)
    assert done.returncode == 0 and "ok: graph 'pyapp', 1 stage(s), 2 worker(s)" in done.stdout
    assert "hello  [2 workers · replies]" in seda("graph", str(app), cwd=elsewhere).stdout
    assert seda("plan", str(app), "--model", "amped", cwd=elsewhere).returncode == 0
    by_name = seda("validate", "pyapp_one:graph", cwd=app.parent)
    assert by_name.returncode == 0, by_name.stderr


def test_a_python_graph_runs_from_another_directory(tmp_path: Path) -> None:
    app = tmp_path / "proj" / "pyapp_two.py"
    app.parent.mkdir()
    app.write_text(APP)
    assert served(tmp_path, [str(app)], cwd=tmp_path, path="/x") == (200, b"hello /x")


def test_errors_in_a_python_graph_name_its_file_and_line(tmp_path: Path) -> None:
    cases = {
        "pyerr_name.py": ("from seda import Graph\n\nx = 1\ngraph = undefined_thing\n",
                          ":4: NameError: name 'undefined_thing' is not defined"),
        "pyerr_route.py": ("from seda import Graph\n\n"
                           "graph = (Graph('g').acceptor(entry='a', listen='127.0.0.1:0')\n"
                           "         .stage('a', 'm:a', to=['nope'])\n"
                           "         .build())\n",
                           ":4: stages.a.to[0]: unknown stage 'nope'"),
        "pyerr_none.py": ("x = 1\n", ": no graph in it: define `graph = Graph(...)...build()`"),
        "pyerr_two.py": ("from seda import amped\n\na = amped('m:f')\nb = amped('m:g')\n",
                         ": several graphs (a, b): name one as "),
        "pyerr_exit.py": ("import sys\nsys.exit(3)\n", ": importing it called sys.exit(3)"),
        "json.py": ("graph = 1\n", ": a module named 'json' is already imported from "),
    }
    files = tmp_path / "files"  # (not the working directory: `python -m` puts that first
    files.mkdir()               # on sys.path, where its json.py would shadow the stdlib's)
    for name, (text, expect) in cases.items():
        (files / name).write_text(text)
        done = seda("validate", str(files / name), cwd=tmp_path)
        assert done.returncode == 2, (name, done.stderr)
        [line] = done.stderr.splitlines()  # one line, before any process starts
        assert line.startswith(str(files / name)) and expect in line, (name, line)
    (tmp_path / "pyerr_attr.py").write_text("graph = 42\n")
    missing = tmp_path / "missing.py"
    for target, expect in (
            ("pyerr_attr:graph", "pyerr_attr:graph: 'graph' is not a graph (it is int): "
                                 "expected Graph(...).build()"),
            ("pyerr_attr:nothing", "pyerr_attr:nothing: 'pyerr_attr' has no attribute "
                                   "'nothing'"),
            ("no_such_module_x:graph", "no_such_module_x:graph: no module named "
                                       "'no_such_module_x'"),
            (str(missing), f"{missing}: cannot read graph file: No such file or directory")):
        done = seda("validate", target, cwd=tmp_path)
        assert (done.returncode, done.stderr) == (2, expect + "\n"), (target, done.stderr)


def test_app_dir_is_where_handlers_are_imported_from(tmp_path: Path) -> None:
    """The graph in one folder, its handlers' package in another, seda started in a third:
    --app-dir names the second (as uvicorn's does), for validate and for the run's workers."""
    code, graphs, here = tmp_path / "code", tmp_path / "graphs", tmp_path / "here"
    for folder in (code / "appdir_pkg", graphs, here):
        folder.mkdir(parents=True)
    (code / "appdir_pkg" / "__init__.py").write_text("")
    (code / "appdir_pkg" / "web.py").write_text(
        "def handle(request, ctx):\n    return 'from app-dir ' + request['path']\n")
    (graphs / "g.yaml").write_text(
        "name: appdir\nacceptor: {listen: '127.0.0.1:0', protocol: http, entry: web}\n"
        "stages:\n  web: {handler: 'appdir_pkg.web:handle'}\n")
    without = seda("validate", str(graphs / "g.yaml"), cwd=here)
    assert without.returncode == 2 and "no module named 'appdir_pkg'" in without.stderr
    assert seda("validate", str(graphs / "g.yaml"), "--app-dir", str(code),
                cwd=here).returncode == 0
    bad = seda("validate", str(graphs / "g.yaml"), "--app-dir", str(tmp_path / "none"),
               cwd=here)
    assert bad.returncode == 2 and "is not a directory" in bad.stderr
    assert served(tmp_path, [str(graphs / "g.yaml"), "--app-dir", str(code)], cwd=here,
                  path="/y") == (200, b"from app-dir /y")


def test_a_graph_names_the_folders_its_handlers_import_from(tmp_path: Path) -> None:
    """`path:` in the graph file (relative to it) does what --app-dir does, without a flag;
    a folder that is not there is an error with the line, before anything starts."""
    code, graphs, here = tmp_path / "code", tmp_path / "graphs", tmp_path / "here"
    for folder in (code / "pathfield_pkg", graphs, here):
        folder.mkdir(parents=True)
    (code / "pathfield_pkg" / "__init__.py").write_text("")
    (code / "pathfield_pkg" / "web.py").write_text(
        "def handle(request, ctx):\n    return 'from path ' + request['path']\n")
    body = ("acceptor: {listen: '127.0.0.1:0', protocol: http, entry: web}\n"
            "stages:\n  web: {handler: 'pathfield_pkg.web:handle'}\n")
    (graphs / "g.yaml").write_text("name: pathfield\npath: [../code]\n" + body)
    assert seda("validate", str(graphs / "g.yaml"), cwd=here).returncode == 0
    (graphs / "bad.yaml").write_text("name: pathfield\npath: [../nowhere]\n" + body)
    bad = seda("validate", str(graphs / "bad.yaml"), cwd=here)
    assert bad.returncode == 2
    assert f"{graphs / 'bad.yaml'}:2: path[0]: no folder ../nowhere" in bad.stderr
    assert served(tmp_path, [str(graphs / "g.yaml")], cwd=here,
                  path="/z") == (200, b"from path /z")


def test_the_example_stages_are_not_installed_and_the_example_graphs_find_them(
        tmp_path: Path) -> None:
    """The repository's `stages` package is not part of the installed seda: the example
    graphs import it through their `path: [".."]`, from any working directory."""
    root = Path(__file__).resolve().parent.parent
    bare = {k: v for k, v in run_env(tmp_path).items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-c", "import stages"], cwd=tmp_path, env=bare,
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 1 and "No module named 'stages'" in probe.stderr
    for graph in sorted((root / "graphs").glob("*.yaml")):
        done = subprocess.run([sys.executable, "-m", "seda.cli", "validate", str(graph)],
                              cwd=tmp_path, env=bare, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, (graph.name, done.stderr)
    run = subprocess.run([sys.executable, "-m", "seda.cli", "run",
                          str(root / "graphs" / "pipeline.yaml"), "--no-progress"],
                         cwd=tmp_path, env=bare, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and '"lines": 2000' in run.stdout, run.stderr
