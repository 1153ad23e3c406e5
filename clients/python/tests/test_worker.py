"""The reference worker's command form (`python -m fleetnix_client.worker … -- COMMAND`) against the
real nats-server, `fleetnix router` (node timeout 2 s) and the real client: long tasks complete once,
a failing command is a failed result with its stderr, a repeated task id is answered from the first
run, SIGTERM drains."""

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time

import nats
import pytest

from fleetnix_client import DispatchError, dispatch_to_worker_async
from conftest import supervisor

# The command each task runs: appends "<task id> <node>" to the ledger, sleeps, answers JSON.
TASK_SCRIPT = r"""
import json, os, sys, time
task = json.load(sys.stdin)
with open(os.environ["LEDGER"], "a") as f:
    f.write(os.environ["FLEETNIX_TASK_ID"] + " " + os.environ["NODE"] + "\n")
if "fail" in task:
    print("some output")
    print("the model refused: " + task["fail"], file=sys.stderr)
    sys.exit(3)
time.sleep(task.get("sleep", 0))
print(json.dumps({"node": os.environ["NODE"], "slept": task.get("sleep", 0)}))
"""


class CommandWorker:
    """`python -m fleetnix_client.worker` as a process of its own."""

    def __init__(self, fleet, node, ledger, tmp):
        pw_file = os.path.join(tmp, f"{node}.pw")
        with open(pw_file, "w") as f:
            f.write(fleet["pw"][node])
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": here, "LEDGER": ledger, "NODE": node}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleetnix_client.worker", "--node", node, "--roles", "glm-worker",
             "--nats-url", fleet["url"], "--password-file", pw_file, "--beat", "0.2",
             "--", sys.executable, "-c", TASK_SCRIPT],
            env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"{node}.log"), "w"),
        )

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def runs(ledger, task_id=None):
    if not os.path.exists(ledger):
        return []
    with open(ledger) as f:
        lines = [l.split() for l in f.read().splitlines()]
    return [l for l in lines if task_id is None or l[0] == task_id]


async def until_served(conn, limit=15.0):
    """Dispatches a quick task until the router has heard a worker (bounded)."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return await dispatch_to_worker_async({"sleep": 0}, "glm-worker", timeout=5, **conn)
        except DispatchError as e:
            if e.code not in ("no-healthy-node", "no-router") or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def ask_raw(fleet, task_id, payload, timeout=20.0):
    nc = await nats.connect(fleet["url"], user="_supervisor", password=fleet["pw"]["_supervisor"],
                            inbox_prefix="_INBOX._supervisor")
    try:
        return await nc.request("fleet.dispatch.glm-worker", payload, timeout=timeout,
                                headers={"Fleet-Task-Id": task_id, "Fleet-Deadline-Ms": str(int(timeout * 1000))})
    finally:
        await nc.close()


def test_command_worker_long_tasks_failures_duplicates_and_drain(fleet):
    with tempfile.TemporaryDirectory() as tmp:
        ledger = os.path.join(tmp, "ledger")
        workers = [CommandWorker(fleet, n, ledger, tmp) for n in ("worker-01", "worker-02")]
        try:
            asyncio.run(_scenario(fleet, ledger, workers))
        finally:
            for w in workers:
                w.stop()
            for n in ("worker-01", "worker-02"):
                with open(os.path.join(tmp, f"{n}.log")) as f:
                    print(f"--- {n}:", f.read())


async def _scenario(fleet, ledger, workers):
    conn = supervisor(fleet)
    await until_served(conn)
    await until_served(conn)
    before = len(runs(ledger))

    # A task of 5 s, longer than the router's node timeout (2 s): completes once, on one worker.
    r = await dispatch_to_worker_async({"sleep": 5}, "glm-worker", timeout=30, **conn)
    assert r.result["slept"] == 5 and r.attempts == 1
    mine = runs(ledger, r.task_id)
    assert mine == [[r.task_id, r.node]]
    assert len(runs(ledger)) == before + 1

    # A failing command: a failed result naming the task, with its stderr's tail.
    with pytest.raises(DispatchError) as e:
        await dispatch_to_worker_async({"fail": "too long"}, "glm-worker", timeout=10, **conn)
    assert e.value.code == "task-failed"
    assert "the model refused: too long" in str(e.value) and "exited with 3" in str(e.value)

    # The same task id twice, concurrently and after: one run, one answer.
    a, b = await asyncio.gather(ask_raw(fleet, "py-dup-1", b'{"sleep": 1}'),
                                ask_raw(fleet, "py-dup-1", b'{"sleep": 1}'))
    c = await ask_raw(fleet, "py-dup-1", b'{"sleep": 1}')
    assert a.data == b.data == c.data
    assert a.headers["Fleet-Status"] == "ok"
    assert len(runs(ledger, "py-dup-1")) == 1

    # The client's task_id: a retry with the same id gets the first answer, no second run.
    first = await dispatch_to_worker_async({"sleep": 0.5}, "glm-worker", timeout=10, task_id="py-retry-1", **conn)
    again = await dispatch_to_worker_async({"sleep": 0.5}, "glm-worker", timeout=10, task_id="py-retry-1", **conn)
    assert (first.node, first.result) == (again.node, again.result) and first.task_id == "py-retry-1"
    assert len(runs(ledger, "py-retry-1")) == 1
    with pytest.raises(DispatchError) as e:
        await dispatch_to_worker_async({}, "glm-worker", timeout=5, task_id="a.b", **conn)
    assert e.value.code == "bad-request"

    # SIGTERM while a task runs: the task finishes and is answered, the worker exits 0.
    n = len(runs(ledger))
    pending = asyncio.ensure_future(dispatch_to_worker_async({"sleep": 2}, "glm-worker", timeout=20, **conn))
    deadline = time.monotonic() + 10
    while len(runs(ledger)) <= n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(runs(ledger)) > n, "no worker took the task"
    node = runs(ledger)[n][1]
    proc = workers[0].proc if node == "worker-01" else workers[1].proc
    proc.send_signal(signal.SIGTERM)
    done = await pending
    assert done.node == node and done.result["slept"] == 2
    assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, 15) == 0


def test_a_router_killed_while_a_task_runs_costs_the_caller_a_delay_not_the_result(fleet):
    with tempfile.TemporaryDirectory() as tmp:
        ledger = os.path.join(tmp, "ledger")
        workers = [CommandWorker(fleet, n, ledger, tmp) for n in ("worker-01", "worker-02")]
        try:
            asyncio.run(_router_killed(fleet, ledger))
        finally:
            for w in workers:
                w.stop()


async def _router_killed(fleet, ledger):
    conn = supervisor(fleet)
    await until_served(conn)
    # A task of 4 s; the caller asks again every 2.5 s (above the router's node timeout, 2 s).
    pending = asyncio.ensure_future(
        dispatch_to_worker_async({"sleep": 4}, "glm-worker", timeout=30, reask=2.5, task_id="py-killed-1", **conn)
    )
    deadline = time.monotonic() + 10
    while not runs(ledger, "py-killed-1") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert runs(ledger, "py-killed-1"), "no worker took the task"
    # The router dies with the caller's request; a new one starts (as its unit would restart it).
    fleet["router"].kill()
    await asyncio.get_running_loop().run_in_executor(None, fleet["router"].wait, 10)
    fleet["start_router"]()
    started = time.monotonic()
    r = await pending
    # The caller got the result of the one run, from the node that ran it, well before its deadline.
    assert r.result["slept"] == 4 and r.task_id == "py-killed-1"
    assert runs(ledger, "py-killed-1") == [["py-killed-1", r.node]]
    assert time.monotonic() - started < 20
