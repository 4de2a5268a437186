"""The `seda` command: parses arguments, calls the library, maps errors to exit codes.

Exit codes: 0 success, 1 the run failed, 2 the user's input is wrong (bad graph file or
arguments), 130 interrupted. Only this module prints tracebacks-free error lines and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seda import __version__
from seda.errors import Problem, RunError, SpecError
from seda.log import FORMATS, LEVELS
from seda.names import GRAPH_FORMATS, MODELS, MP_DEFAULT_PROCESSES

if TYPE_CHECKING:
    from seda.plan.deployment import Plan
    from seda.spec.builder import Checked
    from seda.spec.models import GraphSpec

# The heavy modules (pydantic, networkx, zmq, rich) are imported by the commands that use
# them: `seda --help`, `seda top` and `seda scale` start in a fraction of the time.

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _summary(file: str, checked: Checked) -> str:
    spec = checked.spec
    workers = sum(s.workers for s in spec.stages.values())
    if spec.acceptor is not None:
        front = f"{spec.acceptor.protocol} service on {spec.acceptor.listen}"
    else:
        front = "pipeline"
    return (f"{file}: ok: graph '{spec.name}', {len(spec.stages)} stage(s), {workers} "
            f"worker(s), {front}, model {spec.model}")


def cmd_validate(args: argparse.Namespace) -> int:
    from seda.spec.builder import check_file

    status = EXIT_OK
    for file in args.files:
        try:
            checked = check_file(file, imports=not args.no_imports, app_dirs=args.app_dir)
        except SpecError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            status = EXIT_USAGE
            continue
        for warning in checked.warnings:
            print(warning, file=sys.stderr)
        print(_summary(file, checked))
    return status


def cmd_graph(args: argparse.Namespace) -> int:
    from seda.spec.builder import check_file
    from seda.spec.render import FORMATS

    checked = check_file(args.file, imports=False, app_dirs=args.app_dir)
    text = FORMATS[args.format](checked.spec)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from seda.spec.models import GraphSpec, reference

    if args.markdown:
        sys.stdout.write(reference())
        return EXIT_OK
    schema = GraphSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "seda graph"
    print(json.dumps(schema, indent=2))
    return EXIT_OK


def _workers(text: str) -> tuple[str, int]:
    name, sep, count = text.partition("=")
    if not sep or not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected STAGE=N, got '{text}'")
    return name, int(count)


def describe_plan(plan: Plan, kinds: dict[str, str] | None = None) -> str:
    """A deployment plan as text: one row per process (what `seda plan` prints); `kinds`
    (stage -> async, sync, or why not imported) says what runs inline blocks."""
    from seda.plan.deployment import SUPERVISOR, not_applied

    spec = plan.graph_spec()
    rows = [("PROCESS", "ROLE", "STAGES", "SENDS TO")]
    parked = plan.parked()  # slots the pool controller (or seda scale) starts when needed
    for name, proc in plan.procs.items():
        stages = ", ".join(proc.stages) or "-"
        peers = ", ".join(p for p in proc.peers if p != SUPERVISOR) or "-"
        role = f"{proc.role} (on demand)" if name in parked else proc.role
        if name in plan.remote:
            placement = spec.stages[proc.stages[0]].placement
            role = f"{proc.role} (joins: {_placed(placement)})"
        rows.append((name, role, stages, peers))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"graph '{plan.graph}', model {plan.model}: {len(plan.procs)} process(es) "
             f"besides the supervisor"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[3]
              for r in rows]
    if spec.acceptor is not None:
        doors = plan.front_doors()
        how = {"symped": f"{len(doors)} sockets with SO_REUSEPORT, one per acceptor",
               "mp": f"the master forks one process per connection, at most {plan.processes} "
                     f"alive"}.get(plan.model, "one socket, bound by the supervisor")
        lines.append(f"listens on {spec.acceptor.protocol} {spec.acceptor.listen}: {how}")
        lines += [f"warning: {what}" for what in not_applied(spec, plan.model)]
        lines += _inline_notes(plan.model, kinds or {})
    if plan.remote:
        lines.append("endpoints: tcp://HOST:PORT, a port per process chosen at start (seda run "
                     "--tcp HOST --keys DIR); the workers marked 'joins' join at --join-at "
                     "(docs/cluster.md)")
    else:
        lines.append("endpoints: ipc://RUN_DIR/PROCESS (RUN_DIR is made at start, mode 0700)")
    lines.append(f"dead letters: {plan.dead_letter} (seda run --output puts them beside "
                 f"its file; --dead-letter FILE anywhere)")
    return "\n".join(lines) + "\n"


def _placed(placement: Any) -> str:
    """Who starts a remote slot's worker: Ray (with what it needs of a node), or whoever
    runs seda worker --join."""
    if placement is None:
        return "seda worker --join"
    needs = ", ".join(f"{k}={v:g}" for k, v in placement.resources.items()) or "nothing"
    return f"a Ray actor needing {needs}" + (", spread" if placement.strategy == "spread"
                                              else "")


def _inline_notes(model: str, kinds: dict[str, str]) -> list[str]:
    """Under sped and symped the handlers run on the acceptor's event loop, under mp in each
    connection's process: which of them wait concurrently and which block."""
    if model not in ("sped", "symped", "mp") or not kinds:
        return []
    where = {"mp": "each connection's process", "symped": "each acceptor's event loop"}.get(
        model, "the acceptor's event loop")
    lines = [f"handlers run inline, in {where}:"]
    runs = [s for s, k in kinds.items() if k == "async"]
    blocks = [s for s, k in kinds.items() if k == "sync"]
    if runs:
        lines.append(f"  async ({', '.join(runs)}): many requests wait at once, up to the "
                     f"stage's concurrency")
    if blocks:
        blocked = "that connection" if model == "mp" else "every connection of that loop"
        lines.append(f"  sync ({', '.join(blocks)}): a call blocks {blocked} until it returns")
    lines += [f"  {s}: {k}" for s, k in kinds.items() if k not in ("async", "sync")]
    return lines


def _make_plan(args: argparse.Namespace) -> Plan:
    from seda.plan.deployment import make_plan
    from seda.spec.builder import check_file, home

    checked = check_file(args.file, imports=False, app_dirs=args.app_dir)
    return make_plan(checked.spec, "RUN_DIR", model=args.model,
                     workers=dict(args.workers or []), processes=args.processes,
                     file=args.file, base_dir=str(home(args.file, args.app_dir)))


def cmd_plan(args: argparse.Namespace) -> int:
    plan = _make_plan(args)
    spec = plan.graph_spec()
    remote = list(args.remote)
    if args.ray:  # (as seda run --ray would: the stages with placement:)
        remote += [s for s, st in spec.stages.items() if st.placement is not None]
    for stage in remote:
        if stage not in plan.stage_pool:
            raise SpecError([Problem(f"--remote: no worker pool runs stage '{stage}' under "
                                     f"model {plan.model}", "<command line>")])
        plan.remote += [n for n in plan.pool_procs[plan.stage_pool[stage]]
                        if n not in plan.remote]
    if args.json:
        print(plan.to_json())
        return EXIT_OK
    kinds = None
    if plan.model in ("sped", "symped", "mp"):
        from seda.spec.builder import handler_kinds, import_dirs

        spec = plan.graph_spec()
        kinds = handler_kinds(spec, import_dirs(args.file, spec, args.app_dir))
    sys.stdout.write(describe_plan(plan, kinds))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    from seda.log import LOG, configure
    from seda.names import parse_listen
    from seda.observe.statusserver import status_access
    from seda.spec.builder import check_file, check_place, home, import_dirs
    from seda.supervise.supervisor import RunOptions, Supervisor

    if args.dead_letter:
        why = check_place(str(Path(args.dead_letter).resolve()))
        if why is not None:
            raise SpecError([Problem(f"--dead-letter {args.dead_letter}: {why}",
                                     "<command line>")])
    # relative paths of the run (the dead-letter file) are beside its output, if it has one,
    # else in the graph's home: never wherever the command happens to be started
    base = Path(args.output).resolve().parent if args.output else home(args.file, args.app_dir)
    checked = check_file(args.file, imports=True, app_dirs=args.app_dir,
                         dead_letter=_dead_letter_place(args, base))
    for warning in checked.warnings:
        print(warning, file=sys.stderr)
    spec = checked.spec
    if args.listen is not None:
        try:
            parse_listen(args.listen)
        except ValueError as exc:
            raise SpecError([Problem(f"--listen: {exc}", "<command line>")]) from None
        if spec.acceptor is None:
            raise SpecError([Problem("--listen: this graph has no acceptor", args.file)])
    token = args.status_token or os.environ.get("SEDA_STATUS_TOKEN", "")
    if not args.no_status:
        why = status_access(args.status, token)
        if why is not None:
            raise SpecError([Problem(f"--status {args.status}: {why}", "<command line>")])
    if args.access_log and spec.acceptor is None:
        raise SpecError([Problem("--access-log: this graph has no acceptor (a pipeline's "
                                 "results are its log)", args.file)])
    tcp, keys = _transport(args)
    _remote(args, spec)
    configure("supervisor", spec.name, args.log_level, args.log_format, args.log_time)
    options = RunOptions(tcp=tcp, keys=keys, join_at=args.join_at or "", remote=args.remote,
                         ray=args.ray or "",
                         listen=args.listen, model=args.model,
                         workers=dict(args.workers or []),
                         processes=args.processes, file=args.file,
                         status=None if args.no_status else args.status, status_token=token,
                         output=str(Path(args.output).resolve()) if args.output else "",
                         progress=not args.no_progress and sys.stderr.isatty(),
                         base_dir=str(base),
                         dead_letter=_dead_letter_place(args, base),
                         search_path=import_dirs(args.file, spec, args.app_dir),
                         log_level=args.log_level, log_format=args.log_format,
                         log_time=args.log_time, access_log=args.access_log)
    outcome = Supervisor(spec, options).run()
    LOG.log(logging.ERROR if outcome.code == EXIT_FAILED else logging.INFO, outcome.summary)
    return outcome.code


def cmd_keys(args: argparse.Namespace) -> int:
    from seda.runtime.secure import make_keys

    public, secret = make_keys(args.folder)
    print(f"{secret}  (secret: give it to every host of the run, nobody else)")
    print(f"{public}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from seda.names import ANY_HOST
    from seda.runtime.join import address_towards
    from seda.runtime.join import main as join
    from seda.runtime.secure import load_keys

    if not args.join.startswith("tcp://"):
        raise SpecError([Problem(f"--join: expected tcp://HOST:PORT, got '{args.join}'",
                                 "<command line>")])
    if args.host in ANY_HOST:
        raise SpecError([Problem(f"--host {args.host}: give the address the run's other "
                                 f"processes reach this host by, not a wildcard (default: "
                                 f"this host's address on the route to the run)",
                                 "<command line>")])
    if args.keys and args.keys != "-":  # ("-": read from stdin, checked once read)
        load_keys(args.keys)  # (a one-line error naming the file, exit 2)
    return join(args.join, args.keys, args.host or address_towards(args.join), args.stage)


def _remote(args: argparse.Namespace, spec: GraphSpec) -> None:
    """--join-at and --remote, checked before anything starts."""
    from seda.errors import did_you_mean
    from seda.names import ANY_HOST, parse_listen

    if args.ray is not None:
        placed = [s for s, st in spec.stages.items() if st.placement is not None]
        if not placed:
            raise SpecError([Problem("--ray: no stage has placement: (nothing for Ray to "
                                     "place)", args.file)])
        if args.tcp is None:
            raise SpecError([Problem("--ray: workers on Ray's nodes reach the run's processes "
                                     "over TCP: give --tcp HOST too", "<command line>")])
        try:
            import ray  # noqa: F401
        except ImportError:
            raise SpecError([Problem("--ray: Ray is not installed (pip install 'seda[ray]')",
                                     "<command line>")]) from None
        args.join_at = args.join_at or f"{args.tcp}:0"
        args.remote = list(dict.fromkeys([*args.remote, *placed]))
    if args.join_at is not None:
        if args.tcp is None:
            raise SpecError([Problem("--join-at: workers from other hosts reach the run's "
                                     "processes over TCP: give --tcp HOST too",
                                     "<command line>")])
        if args.tcp in ANY_HOST:
            raise SpecError([Problem(f"--tcp {args.tcp}: workers that join from other "
                                     f"hosts are told where the run's processes are: give "
                                     f"the address they reach this host by, not a wildcard",
                                     "<command line>")])
        try:
            parse_listen(args.join_at)
        except ValueError as exc:
            raise SpecError([Problem(f"--join-at: {exc}", "<command line>")]) from None
    if not args.remote:
        return
    if args.join_at is None:
        raise SpecError([Problem("--remote: give --join-at HOST:PORT, where its workers join",
                                 "<command line>")])
    model = args.model or spec.model
    if model not in ("seda", "amped"):
        raise SpecError([Problem(f"--remote: model '{model}' runs no worker pools",
                                 "<command line>")])
    for stage in args.remote:
        if stage not in spec.stages:
            raise SpecError([Problem(f"--remote: unknown stage '{stage}'"
                                     f"{did_you_mean(stage, set(spec.stages))}",
                                     "<command line>")])
        scale = spec.stages[stage].scale
        if scale is not None and scale.enabled:  # (its slots are filled from elsewhere)
            raise SpecError([Problem(f"--remote: stage '{stage}' has scale:, and the pool "
                                     f"controller cannot start or stop workers on other "
                                     f"hosts: remove scale: or keep the stage here (its "
                                     f"size is its workers:, or --workers {stage}=N)",
                                     "<command line>")])


def _transport(args: argparse.Namespace) -> tuple[str, str]:
    """(--tcp host or "", the secret key file or ""), checked before anything starts."""
    from seda.runtime.secure import load_keys, secret_file

    if args.keys:
        load_keys(args.keys)  # (a one-line error naming the file, exit 2)
    if args.tcp is None:
        if args.insecure:
            raise SpecError([Problem("--insecure: only with --tcp", "<command line>")])
        return "", str(secret_file(args.keys).resolve()) if args.keys else ""
    if not args.keys and not args.insecure:
        raise SpecError([Problem("--tcp: the run's data would cross the network in clear text"
                                 "; give --keys FILE (make one with seda keys DIR), or "
                                 "--insecure on a trusted network", "<command line>")])
    if args.keys and args.insecure:
        raise SpecError([Problem("--insecure and --keys: choose one", "<command line>")])
    return args.tcp, str(secret_file(args.keys).resolve()) if args.keys else ""


def _dead_letter_place(args: argparse.Namespace, base: Path) -> str | None:
    """--dead-letter (from here, like --output), or None: settings.dead_letter in `base`."""
    return str(Path(args.dead_letter).resolve()) if args.dead_letter else None


def _app_dir(text: str) -> str:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is not a directory")
    return str(path.resolve())


def _file_options(p: argparse.ArgumentParser, files: str = "file") -> None:
    """FILE (YAML, a .py file or module:attr) and --app-dir."""
    if files == "files":
        p.add_argument("files", nargs="+", metavar="FILE")
    else:
        p.add_argument("file", metavar="FILE")
    p.add_argument("--app-dir", type=_app_dir, action="append", default=[], metavar="DIR",
                   help="import handlers (and a module:attr graph) from DIR first; "
                        "repeatable (then the folders of the graph's path:, the graph "
                        "file's folder, the current one)")


def _deploy_options(p: argparse.ArgumentParser) -> None:
    _file_options(p)
    p.add_argument("--model", choices=list(MODELS),
                   help="deploy under this server model (default: the graph's)")
    p.add_argument("--workers", type=_workers, action="append", metavar="STAGE=N",
                   help="override a stage's (or pool's) worker count; repeatable")
    p.add_argument("--processes", type=int, metavar="N",
                   help="symped: number of event-loop processes (default: CPU count); "
                        f"mp: most connection processes alive at once (default "
                        f"{MP_DEFAULT_PROCESSES})")


def _counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1,16,64, got '{text}'") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected counts >= 1, got '{text}'")
    return counts


def cmd_bench(args: argparse.Namespace) -> int:
    from seda.bench.harness import BenchOptions, run_bench, stop_on_sigterm
    from seda.plan.deployment import make_plan
    from seda.spec.builder import check_file

    stop_on_sigterm()

    checked = check_file(args.file, imports=True, app_dirs=args.app_dir)
    if checked.spec.acceptor is None or checked.spec.acceptor.protocol != "http":
        raise SpecError([Problem("seda bench drives HTTP services: this graph has no http "
                                 "acceptor", args.file)])
    models = list(MODELS) if args.models == "all" else args.models.split(",")
    for model in models:  # every plan is checked before anything starts
        make_plan(checked.spec, "RUN_DIR", model=model, file=args.file,
                  processes=args.processes if model in ("symped", "mp") else None)
    options = BenchOptions(file=args.file, models=models, connections=args.connections,
                           paths=args.path or ["/"], duration=args.duration,
                           warmup=args.warmup, rate=args.rate, loadgen=args.loadgen,
                           out=args.out, processes=args.processes, timeout=args.timeout,
                           command="seda " + " ".join(sys.argv[1:]), app_dirs=args.app_dir)
    run_bench(options)
    print(f"seda bench: report in {Path(args.out) / 'report.md'}", file=sys.stderr)
    return EXIT_OK


def _status_options(p: argparse.ArgumentParser) -> None:
    """How `seda top` and `seda scale` reach a running graph besides its name."""
    p.add_argument("--url", help="the status URL printed by seda run")
    p.add_argument("--token", default="", help="the status token, if the run has one "
                   "(default $SEDA_STATUS_TOKEN, or the run directory's status.token)")


def _status_target(args: argparse.Namespace, target: str | None) -> tuple[str, str]:
    """(status URL, token) of the running graph the command names."""
    from seda.observe.top import find_url

    url, saved = (args.url, "") if args.url else find_url(target)
    return url, args.token or os.environ.get("SEDA_STATUS_TOKEN", "") or saved


def cmd_scale(args: argparse.Namespace) -> int:
    from seda.observe.top import post_scale

    items = list(args.items)
    target = items.pop(0) if items and "=" not in items[0] and len(items) > 1 else None
    asked: list[tuple[str, int]] = []
    for item in items:
        stage, sep, count = item.partition("=")
        if not sep or not stage or not count.isdigit():
            print(f"seda scale: expected STAGE=N (a stage and a worker count), got '{item}'",
                  file=sys.stderr)
            return EXIT_USAGE
        asked.append((stage, int(count)))
    url, token = _status_target(args, target)
    for stage, count in asked:
        try:
            done = post_scale(url.rstrip("/"), token, stage, count)
        except ValueError as exc:
            print(f"seda scale: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{done['stage']}: {done['from']} -> {done['to']} workers")
    return EXIT_OK


def cmd_deadletters(args: argparse.Namespace) -> int:
    from seda.runtime import deadletter
    from seda.spec.builder import check_file, home

    path = Path(args.file)
    if path.suffix in (".yaml", ".yml", ".py"):  # a graph: the file its runs write to
        checked = check_file(args.file, imports=False)
        path = home(args.file) / checked.spec.settings.dead_letter
        args.file = str(path)
        if not path.exists():  # (nothing failed for good yet: not an error)
            print(f"0 dead letters: {path} does not exist yet", file=sys.stderr)
            return EXIT_OK
    if not path.is_file():
        why = "no such file" if not path.exists() else "not a regular file"
        print(f"seda deadletters: {args.file}: {why}", file=sys.stderr)
        return EXIT_USAGE
    if args.last is not None and args.last < 1:
        print(f"seda deadletters: --last must be 1 or more, got {args.last}", file=sys.stderr)
        return EXIT_USAGE
    records = deadletter.read(str(path))
    shown = records[-args.last:] if args.last else records
    for record in shown:
        print(json.dumps(record) if args.json else
              deadletter.show(record, traceback=args.traceback) + "\n")
    if not args.json:
        print(f"{len(shown)} of {len(records)} dead letters in {args.file}", file=sys.stderr)
    return EXIT_OK


def cmd_ps(args: argparse.Namespace) -> int:
    from seda.plan import rundir
    from seda.supervise import ps

    rows = [ps.describe(run) for run in rundir.live_runs()]
    if args.json:
        print(json.dumps(rows))
    elif rows:
        print(ps.table(rows))
    else:
        print("no graph of this user is running", file=sys.stderr)
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    from seda.plan import rundir
    from seda.supervise import ps

    if args.timeout <= 0:
        print(f"seda stop: --timeout must be more than 0 s, got {args.timeout}", file=sys.stderr)
        return EXIT_USAGE
    try:
        run = rundir.find(args.target)
    except RunError as exc:
        print(f"seda stop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    name = ps.describe(run)["graph"]
    if not ps.stop(run, args.timeout):
        print(f"seda stop: '{name}' is still draining after {args.timeout:g} s "
              f"(run directory {run})", file=sys.stderr)
        return EXIT_FAILED
    print(f"seda: stopped '{name}'", file=sys.stderr)
    return EXIT_OK


def cmd_top(args: argparse.Namespace) -> int:
    from seda.observe.top import top

    url, token = _status_target(args, args.target)
    try:
        return top(url.rstrip("/"), args.once, args.interval, workers=args.workers,
                   token=token, as_json=args.json)
    except KeyboardInterrupt:
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seda", description="Run staged (SEDA) network services and pipelines.")
    parser.add_argument("--version", action="version", version=f"seda {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("validate", help="check graph files (fields, topology, handlers)",
                            description="Check graph files: fields, topology and handler "
                                        "imports. Exit 0 if all are valid, 2 otherwise.")
    _file_options(p, "files")
    p.add_argument("--no-imports", action="store_true",
                   help="do not import handlers (skip running user code)")
    p.set_defaults(func=cmd_validate)

    p = commands.add_parser("graph", help="draw a graph's topology (text, dot, svg, json)",
                            description="Draw the static topology of a graph file.")
    _file_options(p)
    p.add_argument("--format", "-f", choices=sorted(GRAPH_FORMATS), default="text")
    p.add_argument("--output", "-o", metavar="OUT", help="write to OUT instead of stdout")
    p.set_defaults(func=cmd_graph)

    p = commands.add_parser("schema", help="print the JSON Schema of graph files",
                            description="Print the JSON Schema of graph files (for editors), "
                                        "or their field reference as Markdown.")
    p.add_argument("--markdown", action="store_true",
                   help="the field reference as Markdown (docs/spec-reference.md)")
    p.set_defaults(func=cmd_schema)

    p = commands.add_parser("plan", help="print the deployment plan of a graph under a model",
                            description="Print which processes a model would start, which "
                                        "stages each runs and whom each sends to; starts "
                                        "nothing.")
    _deploy_options(p)
    p.add_argument("--json", action="store_true", help="the plan as JSON (what children read)")
    p.add_argument("--remote", action="append", default=[], metavar="STAGE",
                   help="show STAGE's workers as joining from elsewhere (seda run --remote)")
    p.add_argument("--ray", action="store_true",
                   help="show where seda run --ray places workers: the stages with placement:")
    p.set_defaults(func=cmd_plan)

    p = commands.add_parser("run", help="run a graph (supervisor, workers, queues)",
                            description="Run a graph: a pipeline runs to the end of its "
                                        "source and prints its results.")
    _deploy_options(p)
    p.add_argument("--output", "-o", metavar="FILE",
                   help="append pipeline results (JSON lines) to FILE instead of stdout")
    p.add_argument("--dead-letter", metavar="FILE",
                   help="append dead letters to FILE (default: settings.dead_letter, "
                        "dead-letter.jsonl, beside --output if given, else in the graph "
                        "file's folder)")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
    p.add_argument("--log-level", choices=LEVELS, default="info",
                   help="the least important lines shown, of every process (default info)")
    p.add_argument("--log-format", choices=FORMATS, default="text",
                   help="text (one line an event) or json (one object a line: time, level, "
                        "graph, process, stage, request, message)")
    p.add_argument("--log-time", action="store_true",
                   help="start text lines with the time (UTC; json lines always have it)")
    p.add_argument("--access-log", action="store_true",
                   help="a service logs each answer: client, request, status, bytes, time")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="listen here instead of the graph's acceptor.listen (port 0: any)")
    p.add_argument("--status", metavar="HOST:PORT", default="127.0.0.1:0",
                   help="serve the dashboard, /api/status and /metrics here (default "
                        "127.0.0.1:0, a free port, printed at start; beyond loopback it "
                        "needs --status-token)")
    p.add_argument("--status-token", metavar="TOKEN", default="",
                   help="require this token (at least 16 characters) on every status "
                        "request: 'Authorization: Bearer TOKEN' or ?token=TOKEN; default "
                        "$SEDA_STATUS_TOKEN")
    p.add_argument("--no-status", action="store_true", help="no status endpoint")
    p.add_argument("--tcp", metavar="HOST",
                   help="the run's processes talk over TCP at HOST (a port each, chosen at "
                        "start) instead of ipc: needs --keys, or --insecure (docs/cluster.md)")
    p.add_argument("--keys", metavar="PATH",
                   help="the run's secret key file (or its folder), from seda keys: every "
                        "socket of the run speaks CurveZMQ and admits only this key")
    p.add_argument("--insecure", action="store_true",
                   help="with --tcp and no --keys: data in clear text (a trusted network only)")
    p.add_argument("--join-at", metavar="HOST:PORT",
                   help="accept workers from other hosts here (seda worker --join; port 0: "
                        "any, said at start); needs --tcp")
    p.add_argument("--remote", action="append", default=[], metavar="STAGE",
                   help="the workers of STAGE's pool join (seda worker --join) instead of "
                        "starting here; repeatable; needs --join-at")
    p.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                   help="Ray places the workers of the stages with placement: (each a Ray "
                        "actor that joins the run); ADDRESS: a cluster (default: auto, the "
                        "one this host belongs to; local: a new one here); needs --tcp and "
                        "pip install 'seda[ray]'")
    p.set_defaults(func=cmd_run)

    p = commands.add_parser("worker", help="join a running graph as one of its workers",
                            description="A worker process for a run started elsewhere with "
                                        "--join-at: it takes a free slot of a --remote "
                                        "stage and runs until the run stops it (or it "
                                        "hears nothing from the run for 3 s).")
    p.add_argument("--join", required=True, metavar="tcp://HOST:PORT",
                   help="the run's join address (its supervisor says it at start)")
    p.add_argument("--keys", "--key", metavar="PATH", default="",
                   help="the run's secret key file (or its folder), or - to read the "
                        "secret key from stdin (then on disk only while the worker "
                        "starts); without it, the run must be --insecure")
    p.add_argument("--host", default="", metavar="ADDR",
                   help="bind this worker's inbox here, the address the run's other "
                        "processes reach this host by (default: this host's address on "
                        "the route to the run's --join address)")
    p.add_argument("--stage", default="", metavar="STAGE",
                   help="take a slot of this stage only (default: the first free one)")
    p.set_defaults(func=cmd_worker)

    p = commands.add_parser("keys", help="make a run's key pair (CurveZMQ) in a folder",
                            description="Make a key pair for seda run --keys: FOLDER/run.key "
                                        "(public) and FOLDER/run.key_secret (mode 0600: the "
                                        "credential of every process of a run). Never "
                                        "overwrites.")
    p.add_argument("folder", metavar="FOLDER")
    p.set_defaults(func=cmd_keys)

    p = commands.add_parser("top", help="live view of a running graph (stages, queues)",
                            description="A live tpstats-style view of a running graph: "
                                        "per stage Active, Pending, Completed, Blocked, "
                                        "Dropped, Errors and throughput; queue depth per edge.")
    p.add_argument("target", nargs="?", metavar="NAME|RUN_DIR",
                   help="the graph's name or run directory (default: the only one running)")
    _status_options(p)
    p.add_argument("--once", action="store_true",
                   help="print one view and exit (a graph that has just started: once its "
                        "first figures are in, waiting up to 5 s)")
    p.add_argument("--json", action="store_true",
                   help="print the snapshot as one JSON object (what /api/status serves) and "
                        "exit, waiting for first figures as --once does")
    p.add_argument("--workers", action="store_true", help="also a row per worker process")
    p.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="seconds between updates (default 1)")
    p.set_defaults(func=cmd_top)

    p = commands.add_parser("deadletters", help="show a dead-letter file readably",
                            description="The messages that failed for good (settings."
                                        "dead_letter): when, stage, id, attempts, error, "
                                        "payload.")
    p.add_argument("file", metavar="FILE",
                   help="a dead-letter file (JSON lines), or a graph file: the one its runs "
                        "write to when not told otherwise")
    p.add_argument("--traceback", action="store_true", help="with each one's traceback")
    p.add_argument("--last", type=int, metavar="N", help="only the last N")
    p.add_argument("--json", action="store_true", help="the records as JSON lines")
    p.set_defaults(func=cmd_deadletters)

    p = commands.add_parser("ps", help="list the graphs you run on this machine",
                            description="The graphs this user runs on this machine: name, "
                                        "supervisor pid, model, uptime, listen and status "
                                        "URLs, run directory.")
    p.add_argument("--json", action="store_true", help="one JSON list")
    p.set_defaults(func=cmd_ps)

    p = commands.add_parser("stop", help="drain and stop a running graph",
                            description="SIGTERM a running graph's supervisor (it drains: "
                                        "requests in flight are answered, a pipeline finishes "
                                        "what it read) and wait for it to end.")
    p.add_argument("target", metavar="NAME|RUN_DIR", help="the graph's name or run directory")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="seconds to wait for the end (default 60); past it exit 1")
    p.set_defaults(func=cmd_stop)

    p = commands.add_parser("scale", help="resize a running stage's pool (STAGE=N)",
                            description="Change how many worker processes a running stage "
                                        "has, between 1 and its scale.max (model seda). A pool "
                                        "controller, if the stage has one, goes on from there.")
    p.add_argument("items", nargs="+", metavar="[NAME|RUN_DIR] STAGE=N",
                   help="the running graph (by name or run directory; default: the only "
                        "one), then one or more STAGE=N")
    _status_options(p)
    p.set_defaults(func=cmd_scale)

    p = commands.add_parser("bench", help="compare server models on one graph (a report)",
                            description="Run an HTTP graph under each model in turn, drive it "
                                        "with a load generator at each connection count, and "
                                        "write a report (markdown, JSON, PNG/SVG plots).")
    _file_options(p)
    p.add_argument("--models", default="all", metavar="M,M",
                   help=f"models to compare (default all: {','.join(MODELS)})")
    p.add_argument("--connections", "-c", type=_counts, default=[1, 16, 64, 256, 1024],
                   metavar="N,N", help="connection counts (default 1,16,64,256,1024)")
    p.add_argument("--path", action="append", metavar="PATH",
                   help="request path; repeat for several workloads (default /)")
    p.add_argument("--duration", "-d", type=float, default=10.0, metavar="S",
                   help="measured seconds per point (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, metavar="S",
                   help="unmeasured seconds before each point (default 1)")
    p.add_argument("--rate", type=float, metavar="R",
                   help="open loop: offer R requests/s in all (seda's load generator)")
    p.add_argument("--loadgen", choices=["auto", "wrk", "seda"], default="auto",
                   help="auto: wrk when installed and the load is closed-loop, else seda's")
    p.add_argument("--processes", type=int, metavar="N", help="passed to symped and mp")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="a request unanswered this long is an error (default 5)")
    p.add_argument("--out", "-o", default="bench-report", metavar="DIR",
                   help="where the report goes (default bench-report/)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except RunError as exc:
        print(f"seda: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def entry() -> None:
    """The `seda` command (and `python -m seda.cli`): main(), then exit without tearing the
    interpreter down -- freeing every module (networkx, pydantic, zmq, prometheus_client,
    ...) one by one took ~0.2 s after the run had ended, on every command. seda registers
    no exit handlers; the streams are flushed here, and each run has already closed its
    sockets, stopped its children and removed its run directory."""
    code = main()
    try:
        sys.stdout.flush()
    finally:
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    entry()
