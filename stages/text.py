"""A word-count pipeline: read lines, split, normalise and measure them, count at the sink.

Used by graphs/pipeline.yaml: source -> tokenize -> (normalize, measure) -> count. Run it with
`seda run graphs/pipeline.yaml`; `count.finish` gives the result the run prints.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).parent / "data" / "corpus.txt"
PUNCTUATION = ".,!?;:\"'()[]"


def read_lines(options: dict[str, Any]) -> Iterator[str]:
    """Source: the lines of `options.path` (default: the bundled corpus), `repeat` times."""
    path = Path(options.get("path", CORPUS))
    for _ in range(int(options.get("repeat", 1))):
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield line.rstrip("\n")


def tokenize(line: str, ctx: Any) -> None:
    """Fan out: the words go to 'normalize', the line's size goes to 'measure'."""
    ctx.emit("normalize", line.split())
    ctx.emit("measure", len(line))


def normalize(words: list[str], ctx: Any) -> dict[str, Any]:
    """Lower-case and strip punctuation."""
    cleaned = [w.strip(PUNCTUATION).lower() for w in words]
    return {"words": [w for w in cleaned if w]}


def measure(size: int, ctx: Any) -> dict[str, Any]:
    return {"chars": size, "lines": 1}


class Count:
    """Sink (fan-in): totals per worker; `finish` returns them and the runtime merges."""

    def setup(self, ctx: Any) -> None:
        self.words: Counter[str] = Counter()
        self.chars = 0
        self.lines = 0

    def handle(self, item: dict[str, Any], ctx: Any) -> None:
        self.words.update(item.get("words", ()))
        self.chars += item.get("chars", 0)
        self.lines += item.get("lines", 0)

    def finish(self, ctx: Any) -> dict[str, Any]:
        return {"words": dict(self.words), "chars": self.chars, "lines": self.lines}

    @staticmethod
    def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
        """Combine the totals of several workers into one answer."""
        words: Counter[str] = Counter()
        for part in parts:
            words.update(part["words"])
        return {"words": dict(words), "chars": sum(p["chars"] for p in parts),
                "lines": sum(p["lines"] for p in parts)}


def word_counts(path: Path = CORPUS) -> dict[str, Any]:
    """The exact answer, computed in one process (what tests compare the pipeline against)."""
    words: Counter[str] = Counter()
    chars = lines = 0
    for line in read_lines({"path": path}):
        words.update(normalize(line.split(), None)["words"])
        chars += len(line)
        lines += 1
    return {"words": dict(words), "chars": chars, "lines": lines}
