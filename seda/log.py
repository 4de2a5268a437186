"""seda's lines on stderr, and handlers' (`ctx.log`), through the standard logging module.

Every process of a run logs to its stderr (which is the run's: the lines of all processes
come out where `seda run` was started), at the level and in the format `seda run` was given
(`--log-level debug|info|warning|error`, `--log-format text|json`):

- text, one line an event, as seda always wrote them: `seda: PROCESS: [LEVEL: ][STAGE: ]text`
  (the level is shown from warning up; the supervisor's own lines have no process name),
  with `--log-time` after the time (UTC, ISO 8601): journald and container runtimes stamp
  lines themselves, so it is off by default;
- json, one object a line: time (UTC, ISO 8601), level, graph, process, message, and where
  known stage and request (a handler's `ctx.log`), exc (a traceback).

A stage's handlers log through `ctx.log`, a logger named `seda.stage.STAGE` whose records
carry the stage and the current request id.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
LOG = logging.getLogger("seda")
STAGE_LOGGERS = "seda.stage."


def _utc(record: logging.LogRecord) -> str:
    """The record's time, UTC, ISO 8601 to the millisecond."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) \
        + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def __init__(self, process: str, timed: bool = False) -> None:
        super().__init__()
        self.prefix = "seda: " if process == "supervisor" else f"seda: {process}: "
        self.timed = timed

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        stage = getattr(record, "stage", None)
        text = f"{self.prefix}{level}{stage + ': ' if stage else ''}{record.getMessage()}"
        if self.timed:
            text = f"{_utc(record)} {text}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str, graph: str) -> None:
        super().__init__()
        self.process, self.graph = process, graph

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"time": _utc(record), "level": record.levelname.lower(),
                               "graph": self.graph, "process": self.process}
        for key in ("stage", "request"):
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = value
        doc["message"] = record.getMessage()
        fields = getattr(record, "fields", None)  # (an access line's: see seda.runtime.access)
        if fields:
            doc.update(fields)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(process: str, graph: str, level: str = "info", fmt: str = "text",
              timed: bool = False) -> None:
    """Send this process's `seda` loggers to stderr, at `level`, in `fmt` (text lines
    starting with the time if `timed`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process, graph) if fmt == "json"
                         else TextFormatter(process, timed))
    LOG.handlers[:] = [handler]
    LOG.setLevel(level.upper())
    LOG.propagate = False


class StageLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """`ctx.log`: a stage's logger; each record carries the stage and the request id of the
    message being handled when it is made."""

    def __init__(self, stage: str, request: Any) -> None:
        super().__init__(logging.getLogger(STAGE_LOGGERS + stage), {"stage": stage})
        self.request = request  # () -> the current request id

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = {**(kwargs.get("extra") or {}), "stage": self.extra["stage"],  # type: ignore[index]
                 "request": self.request()}
        return msg, {**kwargs, "extra": extra}
