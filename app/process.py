"""Processes that never outlive ``corpora serve``, and one ``serve`` per data directory.

- Each child is started with a parent-death signal (``prctl(PR_SET_PDEATHSIG)``): the kernel signals it the
  moment ``serve`` dies, even of SIGKILL, which runs no code of ours.
- Whatever such a child starts in turn (PostgreSQL's backends, a job worker's helpers) is found by the
  watchdog: a small process of its own that waits for ``serve`` to die, then stops every process carrying
  the marker ``CORPORA_SERVE_ID=<this serve>`` in its environment (set before anything is started, inherited
  by every descendant), and kills what has not stopped a few seconds later.
- ``serve`` holds an exclusive ``flock`` on ``<data dir>/serve.lock`` for as long as it or a worker it forked
  lives; a second ``serve`` on the same directory is refused with the first one's pid.

Run as ``python -m app.process watch PID STARTTIME MARKER`` it is the watchdog.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

MARKER = "CORPORA_SERVE_ID"
PR_SET_PDEATHSIG = 1
WATCHDOG_POLL_SECONDS = 0.2
WATCHDOG_GRACE_SECONDS = 5.0


class AlreadyServing(RuntimeError):
    """Another ``corpora serve`` holds the data directory."""


def _prctl_deathsig(sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies; exit now if it already has."""
    if not sys.platform.startswith("linux"):
        return
    _prctl_deathsig(sig)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def child_setup(*, user: pwd.struct_passwd | None, die_with_parent: int | None) -> Callable[[], None]:
    """A ``preexec_fn``: drop to ``user`` (if any), then arrange to get ``die_with_parent`` when we die.

    The death signal is delivered when the *thread* that started the child ends, so it is only asked for from
    the main thread; the credentials change first because changing them clears it."""
    parent = os.getpid()
    deathsig = die_with_parent if threading.current_thread() is threading.main_thread() else None

    def setup() -> None:
        if user is not None:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        if deathsig is not None:
            globals()["die_with_parent"](deathsig, parent)

    return setup


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat): with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def is_postgres_of(pid: int, pgdata: Path) -> bool:
    """Whether ``pid`` is a PostgreSQL server whose data directory is ``pgdata`` (its working directory)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return Path(exe).name == "postgres" and Path(cwd) == pgdata


def _marked(marker: str) -> list[int]:
    """Pids of the processes whose environment carries ``MARKER=marker``."""
    needle = f"{MARKER}={marker}".encode()
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                found.append(int(entry))
    return found


def _stop_marked(marker: str) -> None:
    for pid in _marked(marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + WATCHDOG_GRACE_SECONDS
    while (left := _marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def watch(pid: int, start_time: str, marker: str) -> None:
    """Wait for process ``pid`` (started at ``start_time``) to end, then stop every marked process."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # a Ctrl-C or the terminal closing stops serve; we clean after it
    while _start_time(pid) == start_time:
        time.sleep(WATCHDOG_POLL_SECONDS)
    _stop_marked(marker)


class ServeGuard:
    """The data-directory lock and the watchdog of one ``corpora serve``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._lock: IO[str] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    def acquire(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "serve.lock"
        lock = path.open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise AlreadyServing(
                f"another corpora serve (pid {holder}) is running on the data directory {self.data_dir.resolve()}; "
                "stop it first, or give this one another CORPORA_DATA_DIR"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def start_watchdog(self) -> None:
        """Mark this process's environment (children inherit it) and start the watchdog that cleans up."""
        marker = uuid.uuid4().hex
        os.environ[MARKER] = marker
        start_time = _start_time(os.getpid())
        if start_time is None:  # no /proc: nothing to watch with
            return
        env = {k: v for k, v in os.environ.items() if k != MARKER}
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "app.process", "watch", str(os.getpid()), start_time, marker],
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # not in serve's process group: signals meant for serve do not reach it
        )

    def release(self) -> None:
        """After a clean stop: stop whatever is still marked now, rather than in the watchdog's time."""
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            if marker := os.environ.get(MARKER):
                _stop_marked(marker)
        if self._lock is not None:
            self._lock.close()


def freeze_startup_heap() -> None:
    """Called by a server worker once its app is built. What exists then (modules, mappers, routes, schemas)
    lives as long as the worker: frozen out of the garbage collector, so a full collection under load scans only
    what requests made. Unfrozen, one took ~80 ms, a pause every request in flight waited out."""
    gc.collect()
    gc.freeze()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "watch":
        watch(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        sys.exit("usage: python -m app.process watch PID STARTTIME MARKER")
