"""Reading py-spy's raw (collapsed) output of a server's worker processes, for the benchmarks' ``--profile``."""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# The innermost frame of a thread that waits rather than works (event loop select, idle pool threads, the access
# log's writer: its own frame is innermost only in a C call, waiting for the next batch or in the write).
IDLE_LEAF = re.compile(
    r"^(?:\S+\.)?(?:select|poll|wait|_worker|_wait_for_tstate_lock|get) \((?:[^()]*/)?(?:selectors|threading|queue|"
    r"concurrent/futures/thread|multiprocessing/\S+|asyncio/\S+|anyio/\S+)\.py"
    r"|^AccessLog\._write_batches \((?:[^()]*/)?app/access_log\.py"
)


def busy_samples(path: Path) -> tuple[list[tuple[list[str], int]], collections.Counter[str]]:
    """The worker processes' busy stacks (frames outermost first, with their sample counts), and how many samples
    were left out, by why."""
    samples: list[tuple[list[str], int]] = []
    skipped = collections.Counter[str]()
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not (stack and number.isdigit()):
            continue
        parts = stack.split(";")
        processes = sum(1 for part in parts if part.startswith("process "))
        frames = [part for part in parts if part and not part.startswith(("process ", "thread "))]
        if processes < 2:
            skipped["in the supervisor process"] += int(number)
        elif not frames:
            skipped["without a Python frame (granian's native threads)"] += int(number)
        elif IDLE_LEAF.search(frames[-1]):
            skipped["waiting (event loop select, idle threads)"] += int(number)
        else:
            samples.append((frames, int(number)))
    return samples, skipped


def record(pid: int, out: Path, duration: int, load: Callable[[], T]) -> T:
    """Sample ``pid`` and its worker processes with py-spy into ``out`` (raw) while ``load()`` runs for about
    ``duration`` seconds; what ``load`` returns."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    recorder = subprocess.Popen(
        [
            *(py_spy, "record", "--pid", str(pid), "--subprocesses", "--rate", "100"),
            *("--duration", str(duration + 1), "--format", "raw", "--output", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1)  # py-spy attaches
        answer = load()
        _, stderr = recorder.communicate(timeout=60)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    if recorder.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({recorder.returncode}): {stderr.decode(errors='replace')}")
    return answer
