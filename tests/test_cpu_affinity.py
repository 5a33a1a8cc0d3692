"""``--worker-cpu-affinity``: each worker process of ``dicomaccel serve``, with every thread it
runs, on one CPU of those it may use (round robin), or left to the scheduler."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicomaccel.config import DEFAULTS, ServeConfig
from dicomaccel.server import worker_cpus
from dicomaccel.testing import wait_until, worker_pids

ALLOWED = sorted(os.sched_getaffinity(0))  # what the servers started here inherit


def _cpus_of_every_thread(pid: int) -> set[frozenset[int]]:
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out.add(frozenset(os.sched_getaffinity(int(task.name))))
        except ProcessLookupError:
            pass
    return out


def _workers(server, n: int) -> list[int]:
    assert wait_until(lambda: len(worker_pids(server.process.pid)) == n, timeout=30)
    return worker_pids(server.process.pid)


def test_each_worker_and_its_threads_on_one_cpu_round_robin(server_factory):
    server = server_factory("--workers", "3")
    expected = [ALLOWED[k % len(ALLOWED)] for k in range(3)]
    assert f"dicomaccel: worker CPUs {', '.join(map(str, expected))} (--worker-cpu-affinity auto)" \
        in server.announced
    pinned = []
    for pid in _workers(server, 3):
        # The committer and checkpoint threads start after the pin and inherit it.
        assert wait_until(lambda: len(list(Path(f"/proc/{pid}/task").iterdir())) >= 3, timeout=30)
        sets = _cpus_of_every_thread(pid)
        assert len(sets) == 1, sets
        [cpus] = sets
        assert len(cpus) == 1
        pinned.append(next(iter(cpus)))
    assert sorted(pinned) == sorted(expected)
    # The supervisor itself stays where it was: it only waits for its workers.
    assert os.sched_getaffinity(server.process.pid) == set(ALLOWED)


def test_a_single_process_server_is_pinned_too(server_factory):
    server = server_factory()
    assert _cpus_of_every_thread(server.process.pid) == {frozenset({ALLOWED[0]})}


def test_off_leaves_the_workers_to_the_scheduler(server_factory):
    server = server_factory("--workers", "2", "--worker-cpu-affinity", "off")
    assert "worker CPUs" not in server.announced
    for pid in _workers(server, 2):
        assert _cpus_of_every_thread(pid) == {frozenset(ALLOWED)}


def test_worker_cpus_follow_the_allowed_set(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5, 2})
    assert worker_cpus(ServeConfig(workers=3)) == [2, 5, 2]
    assert worker_cpus(ServeConfig(workers=1)) == [2]
    assert worker_cpus(ServeConfig(workers=3, worker_cpu_affinity="off")) is None
    assert DEFAULTS.worker_cpu_affinity == "auto"
