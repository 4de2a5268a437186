"""`seda bench` and its load generator. What tools/ (the project's benchmarks) may use of
seda, besides the `seda` command itself, is re-exported here: a server under test
(`Server`, `BenchOptions`), a load run (`drive`, `settle`), a graph file as data to write
a variant of (`graph_data`), process hygiene for the scripts (`stop_on_sigterm`,
`stop_process`, `die_with_parent`), and a second host on this machine (`other_host`: a
network namespace behind a veth pair)."""

from seda.bench.harness import (
    BenchOptions,
    Server,
    drive,
    graph_data,
    settle,
    stop_on_sigterm,
    stop_process,
)
from seda.bench.netns import OtherHost, other_host
from seda.runtime.node import die_with_parent

__all__ = ["BenchOptions", "OtherHost", "Server", "die_with_parent", "drive", "graph_data",
           "other_host", "settle", "stop_on_sigterm", "stop_process"]
