"""Run directories: one private folder per `seda run`, and how to tell a live one from the
leftover of a supervisor that was SIGKILLed (which cannot remove its own).

A run directory is `<tmp>/seda-<graph>-<random>`, mode 0700, holding the plan, the ipc
endpoints and the status files. Its `owner` file says which supervisor made it: pid and the
process's start time, so a recycled pid is not taken for the old supervisor.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import psutil

from seda.errors import RunError

OWNER = "owner"


def _start_time(pid: int) -> float:
    return psutil.Process(pid).create_time()


def create(name: str) -> str:
    """A fresh private run directory for graph `name`, after removing the leftovers of dead
    runs of the same graph owned by this user."""
    sweep(name)
    path = tempfile.mkdtemp(prefix=f"seda-{name}-")
    os.chmod(path, 0o700)
    pid = os.getpid()
    Path(path, OWNER).write_text(f"{pid} {_start_time(pid)!r}\n")
    return path


def is_live(path: Path) -> bool:
    """Whether the supervisor that made `path` is still running (False when unknown)."""
    try:
        pid_text, started = Path(path, OWNER).read_text().split()
        return _start_time(int(pid_text)) == float(started)
    except (OSError, ValueError, psutil.Error):
        return False


def is_private(path: Path) -> bool:
    """Whether `path` is a run directory this user could have made: a real directory (not a
    symlink) owned by us, closed to everyone else (no group or other bits). The temp folder
    is shared: another local user can plant a `seda-NAME-x` there to catch what `seda top`
    and `seda scale` send (the status token)."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and \
        info.st_mode & 0o077 == 0


def private_file(path: Path) -> bool:
    """A regular file (not a symlink) owned by us, in a private run directory."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and \
        is_private(path.parent)


def sweep(name: str) -> list[Path]:
    """Remove this user's run directories of graph `name` whose supervisor is gone."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"seda-{name}-*"):
        try:
            mine = path.is_dir() and path.stat().st_uid == os.getuid()
        except OSError:
            continue
        if mine and (path / OWNER).is_file() and not is_live(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def owner_pid(path: Path) -> int:
    """The pid of the supervisor that made `path` (0 when unknown)."""
    try:
        return int(Path(path, OWNER).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def live_runs(name: str | None = None) -> list[Path]:
    """This user's private run directories whose supervisor runs (of graph `name`, or all),
    oldest first."""
    pattern = f"seda-{name}-*" if name else "seda-*"
    found = [p for p in Path(tempfile.gettempdir()).glob(pattern)
             if is_private(p) and private_file(p / OWNER) and is_live(p)]
    if name:  # (seda-web-* also matches a graph named web-api)
        found = [p for p in found if p.name.rpartition("-")[0] == f"seda-{name}"]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def find(target: str | None, needs: str = OWNER, hint: str = "") -> Path:
    """The one running graph of this user that `target` names -- a graph name, a run
    directory, or None for the only one -- among those whose run directory holds the file
    `needs` (status.url: those that serve a status endpoint). RunError otherwise; `hint` is
    added to the error when none is found."""
    if target and Path(target, needs).is_file():  # a run directory
        path = Path(target)
        if not private_file(path / needs):
            raise RunError(f"{target} is not a private run directory of this user (owned by "
                           f"you, mode 0700): not trusted")
        if not is_live(path):
            raise RunError(f"{target}: its graph is not running")
        return path
    found = [run for run in live_runs(target) if private_file(run / needs)]
    if not found:
        what = f"named '{target}'" if target else "at all"
        raise RunError(f"no running graph {what} of this user (seda ps lists them){hint}")
    if len(found) > 1:
        raise RunError(f"several running graphs match: {', '.join(str(r) for r in found)}; "
                       f"name one run directory")
    return found[0]
