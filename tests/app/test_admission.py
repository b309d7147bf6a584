"""Grant slots are taken in order of arrival, never by more holders than there are slots, and a waiter that is
cancelled neither takes a slot nor loses one."""

from __future__ import annotations

import asyncio
import random

from app.admission import ARRIVED_AT, OldestFirst, arrived_at


async def _holder(gate: OldestFirst, arrival: float, admitted: list[float], release: asyncio.Event) -> None:
    async with gate.slot(arrival):
        admitted.append(arrival)
        await release.wait()


async def _one_slot_held() -> tuple[OldestFirst, list[float], asyncio.Event, asyncio.Task[None]]:
    """A gate of one slot, held by a request that arrived at 0.0 until ``release`` is set."""
    gate = OldestFirst(1)
    admitted: list[float] = []
    release = asyncio.Event()
    first = asyncio.create_task(_holder(gate, 0.0, admitted, release))
    await asyncio.sleep(0)
    return gate, admitted, release, first


async def test_waiters_are_admitted_by_arrival_not_by_the_order_they_asked() -> None:
    gate, admitted, release, first = await _one_slot_held()
    waiters = []
    for arrival in (5.0, 1.0, 3.0, 2.0, 4.0):  # they ask in this order
        waiters.append(asyncio.create_task(_holder(gate, arrival, admitted, release)))
        await asyncio.sleep(0)
    assert admitted == [0.0]
    release.set()
    await asyncio.gather(first, *waiters)
    assert admitted == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


async def test_never_more_holders_than_slots_and_every_request_gets_through() -> None:
    gate = OldestFirst(4)
    holding = most = done = 0
    rng = random.Random(7)

    async def request(arrival: float) -> None:
        nonlocal holding, most, done
        async with gate.slot(arrival):
            holding += 1
            most = max(most, holding)
            for _ in range(rng.randrange(1, 4)):
                await asyncio.sleep(0)
            holding -= 1
        done += 1

    await asyncio.gather(*(request(rng.random()) for _ in range(200)))
    assert (most, done, holding) == (4, 200, 0)


async def test_a_waiter_cancelled_in_the_queue_takes_no_slot_and_the_next_is_admitted() -> None:
    gate, admitted, release, first = await _one_slot_held()
    cancelled = asyncio.create_task(_holder(gate, 1.0, admitted, release))
    later = asyncio.create_task(_holder(gate, 2.0, admitted, release))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, later)
    assert cancelled.cancelled()
    assert admitted == [0.0, 2.0]
    # every slot is free again: one more request is admitted at once
    async with asyncio.timeout(1), gate.slot(3.0):
        pass


async def test_a_slot_handed_to_a_waiter_cancelled_before_it_ran_passes_to_the_next() -> None:
    gate = OldestFirst(1)
    admitted: list[float] = []
    never = asyncio.Event()
    handed = asyncio.create_task(_holder(gate, 1.0, admitted, never))
    nxt = asyncio.create_task(_holder(gate, 2.0, admitted, never))
    async with gate.slot(0.0):
        await asyncio.sleep(0)  # both queue behind this holder
    # the slot was handed to `handed` on release; cancel it before it runs
    handed.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert handed.cancelled()
    assert admitted == [2.0]
    nxt.cancel()


def test_a_request_without_a_stamp_counts_as_oldest() -> None:
    assert arrived_at({"state": {ARRIVED_AT: 12.5}}) == 12.5
    assert arrived_at({"state": {}}) == 0.0
    assert arrived_at({}) == 0.0
