"""StoreGate (dicomaccel.stow.gate): at most N stores, a bounded FIFO queue, a wait limit.

Order is decided by events and by the gate's own state, never by sleeping: a waiter task sets
an event just before it calls ``acquire()``, which queues it before its first suspension, so
when the test wakes up on that event the waiter is in the queue.
"""

from __future__ import annotations

import asyncio

import pytest

from dicomaccel.stow.gate import GateBusy, StoreGate


def run(coro, timeout: float = 10):
    """Run ``coro`` on a fresh event loop; a hang fails the test instead of blocking it."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Waiter:
    """A task that acquires the gate and records, in ``log``, that it got a slot."""

    def __init__(self, gate: StoreGate, name: str, log: list[str]) -> None:
        self.name = name
        self.started = asyncio.Event()
        self.holds = asyncio.Event()
        self.task = asyncio.create_task(self._run(gate, log))

    async def _run(self, gate: StoreGate, log: list[str]) -> None:
        self.started.set()
        await gate.acquire()
        log.append(self.name)
        self.holds.set()


async def queue_up(gate: StoreGate, names: str, log: list[str]) -> list[Waiter]:
    """Start one waiter per letter of ``names``, each queued before the next starts."""
    waiters = []
    for name in names:
        waiter = Waiter(gate, name, log)
        await waiter.started.wait()
        waiters.append(waiter)
        assert gate.waiting == len(waiters)
    return waiters


async def busy_gate(limit: int = 1, **options) -> tuple[StoreGate, list[str]]:
    """A gate with all its ``limit`` slots taken, and an empty log for its waiters."""
    gate = StoreGate(limit, **options)
    for _ in range(limit):
        await gate.acquire()
    assert (gate.active, gate.waiting) == (limit, 0)
    return gate, []


def test_limit_must_be_positive():
    with pytest.raises(ValueError):
        StoreGate(0)


def test_free_slots_are_taken_at_once_then_waiters_are_served_in_arrival_order():
    async def main():
        gate, log = await busy_gate(2)
        waiters = await queue_up(gate, "abcd", log)
        for expected in "abcd":
            gate.release()
            waiter = next(w for w in waiters if w.name == expected)
            await waiter.holds.wait()
        assert log == list("abcd")
        assert (gate.active, gate.waiting) == (2, 0)
        gate.release()
        gate.release()
        assert gate.active == 0

    run(main())


def test_release_hands_the_slot_to_the_oldest_waiter_before_a_newcomer():
    async def main():
        gate, log = await busy_gate(1)
        (a,) = await queue_up(gate, "a", log)
        gate.release()  # handed to a: the slot is not freed
        assert (gate.active, gate.waiting) == (1, 0)
        # A newcomer arriving before a has even run must queue behind it, not take the slot.
        (late,) = await queue_up(gate, "n", log)
        await a.holds.wait()
        assert log == ["a"] and gate.waiting == 1
        gate.release()  # a is done: handed to the newcomer
        await late.holds.wait()
        assert log == ["a", "n"] and gate.active == 1
        gate.release()
        assert (gate.active, gate.waiting) == (0, 0)

    run(main())


def test_try_acquire_takes_only_a_free_slot_nobody_waits_for():
    async def main():
        gate = StoreGate(2)
        assert gate.try_acquire() and gate.try_acquire()
        assert not gate.try_acquire() and gate.active == 2  # full: nothing taken
        gate.release()
        log: list[str] = []
        gate2, _ = await busy_gate(1)
        (a,) = await queue_up(gate2, "a", log)
        gate2.release()  # handed to a, which has not run yet
        assert not gate2.try_acquire()  # the freed slot went to the waiter, not to us
        await a.holds.wait()
        gate2.release()
        assert gate2.try_acquire() and (gate2.active, gate2.waiting) == (1, 0)
        assert gate.try_acquire() and gate.active == 2

    run(main())


def test_full_queue_is_refused_at_once_with_retry_after():
    async def main():
        gate, log = await busy_gate(1, queue_limit=2)
        waiters = await queue_up(gate, "ab", log)
        with pytest.raises(GateBusy) as refused:
            await gate.acquire()
        assert refused.value.retry_after == 5
        assert "2 requests are already waiting" in str(refused.value)
        assert (gate.active, gate.waiting) == (1, 2)  # the refusal changed nothing
        for waiter in waiters:
            gate.release()
            await waiter.holds.wait()
        assert log == ["a", "b"]

    run(main())


def test_wait_past_the_limit_is_gate_busy_and_leaves_the_queue():
    async def main():
        gate, _ = await busy_gate(wait_timeout=0.05)
        with pytest.raises(GateBusy) as late:
            await gate.acquire()
        assert late.value.retry_after == 5
        assert "waited 0.05 s" in str(late.value)
        assert (gate.active, gate.waiting) == (1, 0)
        gate.release()  # nobody is waiting: the slot is free again
        assert gate.active == 0
        await gate.acquire()
        assert gate.active == 1

    run(main())


def test_cancelled_waiter_leaves_the_queue_and_the_next_one_is_served():
    async def main():
        gate, log = await busy_gate(1)
        a, b = await queue_up(gate, "ab", log)
        a.task.cancel()  # e.g. the client went away while queued
        with pytest.raises(asyncio.CancelledError):
            await a.task
        assert gate.waiting == 1
        gate.release()
        await b.holds.wait()
        assert log == ["b"] and (gate.active, gate.waiting) == (1, 0)

    run(main())


def test_cancelled_just_after_the_hand_off_passes_the_slot_on():
    async def main():
        gate, log = await busy_gate(1)
        a, b = await queue_up(gate, "ab", log)
        gate.release()  # a's future is resolved...
        a.task.cancel()  # ...but a is cancelled before it runs: the slot must not be lost
        try:
            await a.task
        except asyncio.CancelledError:
            assert log == []  # a gave up and passed the slot on to b
        else:
            # Python 3.11's wait_for() returns a result that is already there instead of
            # raising: a holds the slot, and its release goes to b.
            assert log == ["a"]
            gate.release()
        await b.holds.wait()
        assert log[-1] == "b" and (gate.active, gate.waiting) == (1, 0)
        gate.release()
        assert gate.active == 0

    run(main())
