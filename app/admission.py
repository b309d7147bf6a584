"""A fixed number of slots, taken by the request that reached the server first rather than the first to ask.

A request asks for its slot only after the middleware, authentication, its dependencies and its body, and that
part takes anything from a few to thirty milliseconds under load, depending on what else the event loop runs
meanwhile. With a first-come semaphore the requests delayed there also queued last, so their delays added up.
Served by arrival time, a request delayed before asking is served before those that arrived after it: the wait
evens out. ``RequestMetrics`` (the outermost middleware) stamps the arrival (``arrived_at``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator
from typing import Any

ARRIVED_AT = "arrived_at"  # the key in the ASGI scope's state: time.perf_counter() when the request reached the app


def arrived_at(scope: Any) -> float:
    """When the request reached the app; a request with no stamp (a test calling the handler) counts as oldest."""
    return float((scope.get("state") or {}).get(ARRIVED_AT, 0.0))


class OldestFirst:
    """``slots`` holders at a time; waiters are admitted in order of arrival. Per event loop (per worker)."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()  # ties (and equal stamps) keep the order of asking

    @contextlib.asynccontextmanager
    async def slot(self, arrival: float) -> AsyncIterator[None]:
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (arrival, next(self._order), turn))
            try:
                await turn
            except asyncio.CancelledError:
                if not turn.cancelled():  # handed the slot, then cancelled before taking it: pass it on
                    self._release()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            turn = heapq.heappop(self._waiting)[2]
            if not turn.done():  # a waiter cancelled while queued is skipped
                turn.set_result(None)
                return
        self._free += 1
