"""The end of a run as an explicit state machine: pure, the clock and the facts passed in.

The supervisor feeds it, every tick, what it knows (a stop signal came, the source is
exhausted, the run is quiet, every worker has finished, the origin has flushed) and carries
out the actions it returns. The table (a service never has its source exhausted: it ends
by a signal, or `seda stop`, which sends one):

| phase     | when                                       | actions                 | next      |
|-----------|--------------------------------------------|-------------------------|-----------|
| running   | a stop signal                              | DRAIN (stop intake)     | draining  |
| running   | source exhausted, quiet                    | FINISH (broadcast)      | finishing |
| draining  | quiet, a service                           | STOPPED                 | done      |
| draining  | quiet, a pipeline                          | FINISH (broadcast)      | finishing |
| draining  | not quiet, past the drain timeout          | DRAIN_TIMEOUT           | done      |
| finishing | every worker finished (once)               | FLUSH (to the origin)   | finishing |
| finishing | the origin flushed                         | FINISHED                | done      |
| finishing | past max(drain_timeout, 1 s)               | SINKS_LATE              | done      |

"Quiet" is asked only in running (once exhausted) and draining: it runs the probe waves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

RUNNING, DRAINING, FINISHING, DONE = "running", "draining", "finishing", "done"
DRAIN, FINISH, FLUSH = "drain", "finish", "flush"  # actions the supervisor carries out
STOPPED, DRAIN_TIMEOUT, FINISHED, SINKS_LATE = (  # actions that end the run
    "stopped", "drain timeout", "finished", "sinks late")
ENDS = (STOPPED, DRAIN_TIMEOUT, FINISHED, SINKS_LATE)


@dataclass
class Ending:
    service: bool
    drain_timeout: float
    phase: str = RUNNING
    deadline: float = 0.0  # of the drain (draining) or of the sinks' finish (finishing)
    flush_sent: bool = False

    def step(self, now: float, *, stopping: bool, exhausted: bool, quiet: Callable[[], bool],
             workers_finished: bool, flushed: bool) -> list[str]:
        """One tick: the actions to carry out, in order (see the module's table)."""
        actions: list[str] = []
        if stopping and self.phase == RUNNING:
            self.phase, self.deadline = DRAINING, now + self.drain_timeout
            actions.append(DRAIN)
        if (self.phase == RUNNING and exhausted) or self.phase == DRAINING:
            if quiet():
                if self.service:
                    self.phase = DONE
                    return [*actions, STOPPED]
                self.phase, self.deadline = FINISHING, now + max(self.drain_timeout, 1.0)
                actions.append(FINISH)
            elif self.phase == DRAINING and now > self.deadline:
                self.phase = DONE
                return [*actions, DRAIN_TIMEOUT]
        if self.phase == FINISHING:
            if workers_finished and not self.flush_sent:
                self.flush_sent = True
                actions.append(FLUSH)
            if flushed:
                self.phase = DONE
                return [*actions, FINISHED]
            if now > self.deadline:
                self.phase = DONE
                return [*actions, SINKS_LATE]
        return actions
