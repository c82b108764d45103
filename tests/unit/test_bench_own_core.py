"""bench.stack.own_core: a process alone on one core, the others on the rest, then as they were."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.stack import own_core
from tests.conftest import wait_until

# A process with a second thread: every thread must be moved, not only the main one.
TWO_THREADS = "import threading, time; threading.Thread(target=time.sleep, args=(60,), daemon=True).start(); time.sleep(60)"


def thread_cores(pid: int) -> list[set[int]]:
    return [os.sched_getaffinity(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_one_process_gets_a_core_of_its_own_and_every_set_is_restored_after():
    cores = sorted(os.sched_getaffinity(0))
    procs = [subprocess.Popen([sys.executable, "-c", TWO_THREADS]) for _ in range(2)]
    try:
        wait_until(lambda: all(len(os.listdir(f"/proc/{proc.pid}/task")) >= 2 for proc in procs), timeout=30,
                   interval=0.01, what="both processes running their second thread")
        os.sched_setaffinity(procs[1].pid, {cores[-1]})  # a thread with a set of its own before
        before = {proc.pid: thread_cores(proc.pid) for proc in procs}
        mine = os.sched_getaffinity(0)
        with own_core([procs[0].pid, os.getpid()], [procs[1].pid]) as placed:
            assert placed
            assert thread_cores(procs[0].pid) == [{cores[0]}, {cores[0]}]
            assert thread_cores(procs[1].pid) == [set(cores[1:])] * 2
            assert os.sched_getaffinity(0) == {cores[0]}  # the client, placed with the first
        assert {proc.pid: thread_cores(proc.pid) for proc in procs} == before
        assert os.sched_getaffinity(0) == mine
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_process_gone_before_the_block_ends_is_no_error():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with own_core([proc.pid], []):
        pass
