"""The reference worker for agent authors: the agent side of fleetnix's task contract (docs/bus.md).

- It takes its roles' tasks (``fleet.tasks.<role>`` in the role's queue group, and
  ``fleet.tasks.<role>.<node>``) and **acknowledges** each at once on ``fleet.results.<node>.ack``
  (header ``Fleet-Task-Id``), before running it.
- It heart-beats every ``beat`` seconds on ``fleet.heartbeat.<node>``, listing the ids of the tasks it
  runs: that is its **progress** report; the router keeps waiting as long as it heart-beats, however
  long a task runs.
- **Duplicates**: the task id is the key. A task still running is acknowledged again and the new
  request gets the same answer at the end; a finished task is answered with its first result (kept
  ``keep_results`` seconds). A task id never runs twice here.
- The answer is the reply to every request of the id, with headers ``Fleet-Node``, ``Fleet-Task-Id``
  and ``Fleet-Status`` (``ok``, or ``failed`` with the reason as the body).
- **Drain** on SIGTERM/SIGINT (or ``stop``): no new tasks, ``draining`` in its heartbeats, the running
  tasks finish (bounded by ``drain_limit``), then it exits.

Command form: ``python -m fleetnix_client.worker --node NODE --roles R1,R2 [--nats-url URL]
[--password-file F] -- COMMAND ARGS…`` runs COMMAND once per task, the task's JSON on stdin
(``FLEETNIX_TASK_ID`` and ``FLEETNIX_TASK_ROLE`` in its environment); its stdout is the answer (JSON
as is, other text as a JSON string); a non-zero exit is a failed result with the tail of its stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Union

import nats

TASK_ID_HEADER = "Fleet-Task-Id"
ATTEMPT_HEADER = "Fleet-Attempt"
DEADLINE_HEADER = "Fleet-Deadline-Ms"
NODE_HEADER = "Fleet-Node"
STATUS_HEADER = "Fleet-Status"
VERSION = "fleetnix_client.worker 0.1"
STDERR_TAIL = 2000


class TaskFailed(Exception):
    """Raised by a handler: the task failed, with this reason (sent to the caller)."""


@dataclass
class Task:
    """One task as a handler gets it."""

    id: str
    role: str
    payload: bytes
    attempt: int
    deadline: Optional[float]  # loop.time() when the caller stops waiting, if known

    def json(self) -> Any:
        return json.loads(self.payload)


Handler = Callable[[Task], Awaitable[Union[bytes, str, Any]]]


def _log(msg: str) -> None:
    print(f"worker: {msg}", file=sys.stderr, flush=True)


class Worker:
    """A worker on ``node`` taking ``roles``' tasks and running ``handler`` once per task id."""

    def __init__(
        self,
        node: str,
        roles: Sequence[str],
        handler: Handler,
        *,
        nats_url: str,
        password: str,
        capacity: int = 4,
        models: Sequence[str] = (),
        beat: float = 1.0,
        keep_results: float = 900.0,
        drain_limit: float = 300.0,
    ) -> None:
        self.node, self.roles, self.handler = node, list(roles), handler
        self.url, self._password = nats_url, password
        self.capacity, self.models, self.beat = max(int(capacity), 1), list(models), beat
        self.keep_results, self.drain_limit = keep_results, drain_limit
        self.draining = False
        self.ran = 0
        # id -> ("running", [reply subjects]) | ("done", headers, body, finished_at)
        self._entries: Dict[str, tuple] = {}
        self._running: Dict[str, asyncio.Task] = {}
        self._nc: Any = None

    def heartbeat(self) -> dict:
        running = sorted(self._running)
        beat = {
            "node": self.node,
            "in_flight": len(running),
            "capacity": self.capacity,
            "models": self.models,
            "version": VERSION,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tasks": running,
        }
        if self.draining:
            beat["draining"] = True
        return beat

    async def _publish_beat(self) -> None:
        try:
            await self._nc.publish(f"fleet.heartbeat.{self.node}", json.dumps(self.heartbeat()).encode())
        except Exception as e:  # retried on the next beat
            _log(f"heartbeat failed: {e}")

    async def _ack(self, task_id: str) -> None:
        try:
            await self._nc.publish(f"fleet.results.{self.node}.ack", b"", headers={TASK_ID_HEADER: task_id})
        except Exception as e:
            _log(f"task {task_id}: acknowledgement failed: {e}")

    async def _answer(self, reply: str, headers: dict, body: bytes) -> None:
        try:
            await self._nc.publish(reply, body, headers=headers)
        except Exception as e:
            _log(f"answer to {reply} failed: {e}")

    async def _on_task(self, msg: Any, role: str) -> None:
        if not msg.reply or self.draining:
            return
        h = msg.headers or {}
        task_id = h.get(TASK_ID_HEADER) or secrets.token_hex(8)
        entry = self._entries.get(task_id)
        if entry is not None and entry[0] == "running":
            entry[1].append(msg.reply)
            await self._ack(task_id)
            return
        if entry is not None:
            await self._answer(msg.reply, entry[1], entry[2])
            return
        self._entries[task_id] = ("running", [msg.reply])
        loop = asyncio.get_running_loop()
        try:
            deadline = loop.time() + int(h[DEADLINE_HEADER]) / 1000.0 if DEADLINE_HEADER in h else None
        except ValueError:
            deadline = None
        try:
            attempt = int(h.get(ATTEMPT_HEADER, "1"))
        except ValueError:
            attempt = 1
        task = Task(task_id, role, msg.data, attempt, deadline)
        self._running[task_id] = asyncio.ensure_future(self._run(task))
        await self._ack(task_id)

    async def _run(self, task: Task) -> None:
        loop = asyncio.get_running_loop()
        async with self._slots:
            try:
                work = self.handler(task)
                if task.deadline is not None:
                    out = await asyncio.wait_for(work, max(task.deadline - loop.time(), 0.001))
                else:
                    out = await work
                if isinstance(out, str):
                    body = out.encode()
                elif isinstance(out, (bytes, bytearray)):
                    body = bytes(out)
                else:
                    body = json.dumps(out).encode()
                status = "ok"
            except asyncio.TimeoutError:
                status, body = "failed", b"the task's deadline passed"
            except asyncio.CancelledError:
                raise
            except TaskFailed as e:
                status, body = "failed", str(e).encode()
            except Exception as e:  # the handler's defect is the task's failure, not the worker's end
                status, body = "failed", f"{type(e).__name__}: {e}".encode()
        headers = {NODE_HEADER: self.node, TASK_ID_HEADER: task.id, STATUS_HEADER: status}
        entry = self._entries.get(task.id)
        waiters = entry[1] if entry and entry[0] == "running" else []
        self._entries[task.id] = ("done", headers, body, loop.time())
        self._running.pop(task.id, None)
        self.ran += 1
        for reply in waiters:
            await self._answer(reply, headers, body)
        try:
            await self._nc.flush(timeout=5)
        except Exception:
            pass

    async def run(self, stop: asyncio.Event) -> None:
        """Connects, serves until ``stop`` is set, then drains and closes."""
        self._slots = asyncio.Semaphore(self.capacity)

        async def on_error(e: Exception) -> None:
            _log(f"NATS error: {e}")

        async def on_disconnect() -> None:
            _log("disconnected from NATS; reconnecting")

        async def on_reconnect() -> None:
            _log("reconnected to NATS")

        self._nc = await nats.connect(
            self.url,
            user=self.node,
            password=self._password,
            inbox_prefix=f"_INBOX.{self.node}",
            max_reconnect_attempts=-1,  # a worker reconnects on its own, for ever
            reconnect_time_wait=0.5,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
        subs = []
        for role in self.roles:

            def cb(role: str) -> Callable[[Any], Awaitable[None]]:
                async def on_task(msg: Any) -> None:
                    await self._on_task(msg, role)

                return on_task

            subs.append(await self._nc.subscribe(f"fleet.tasks.{role}", queue=role, cb=cb(role)))
            subs.append(await self._nc.subscribe(f"fleet.tasks.{role}.{self.node}", cb=cb(role)))
        await self._nc.flush()
        _log(f"{self.node} serving {', '.join(self.roles)} on {self.url}")
        loop = asyncio.get_running_loop()
        last_prune = loop.time()
        while not stop.is_set():
            await self._publish_beat()
            try:
                await asyncio.wait_for(stop.wait(), self.beat)
            except asyncio.TimeoutError:
                pass
            if loop.time() - last_prune > 1.0:
                last_prune = loop.time()
                for k in [k for k, e in self._entries.items() if e[0] == "done" and loop.time() - e[3] > self.keep_results]:
                    del self._entries[k]
        # Drain: no new tasks, say so, finish the running ones (bounded), heart-beating meanwhile.
        self.draining = True
        for s in subs:
            try:
                await s.unsubscribe()
            except Exception:
                pass
        _log(f"draining: {len(self._running)} task(s) running")
        until = loop.time() + self.drain_limit
        while self._running and loop.time() < until:
            await self._publish_beat()
            await asyncio.wait(list(self._running.values()), timeout=min(self.beat, max(until - loop.time(), 0.01)))
        for t in self._running.values():
            t.cancel()
        await self._publish_beat()
        await self._nc.drain()


def command_handler(command: List[str]) -> Handler:
    """Runs ``command`` once per task: the task's JSON on stdin; stdout is the answer."""

    async def run(task: Task) -> Any:
        env = {**os.environ, "FLEETNIX_TASK_ID": task.id, "FLEETNIX_TASK_ROLE": task.role}
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            out, err = await proc.communicate(task.payload)
        except asyncio.CancelledError:  # the deadline, or the worker stopping: the command goes too
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            tail = err.decode(errors="replace")[-STDERR_TAIL:]
            raise TaskFailed(f"{command[0]} exited with {proc.returncode}: {tail}")
        text = out.decode(errors="replace")
        try:
            json.loads(text)
            return text
        except ValueError:
            return json.dumps(text)

    return run


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    if "FLEETNIX_NATS_PASSWORD" in os.environ:
        return os.environ["FLEETNIX_NATS_PASSWORD"]
    path = os.environ.get("FLEETNIX_NATS_PASSWORD_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    raise SystemExit("worker: no password: --password-file, FLEETNIX_NATS_PASSWORD or FLEETNIX_NATS_PASSWORD_FILE")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fleetnix_client.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--node", required=True)
    p.add_argument("--roles", required=True, help="comma-separated")
    p.add_argument("--nats-url", default=os.environ.get("FLEETNIX_NATS_URL"))
    p.add_argument("--password-file")
    p.add_argument("--capacity", type=int, default=4)
    p.add_argument("--models", default="", help="comma-separated, reported in heartbeats")
    p.add_argument("--beat", type=float, default=1.0, help="heartbeat period, seconds")
    p.add_argument("--drain-limit", type=float, default=300.0)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("a COMMAND after -- is required")
    if not args.nats_url:
        p.error("--nats-url or FLEETNIX_NATS_URL is required")
    if "@" in args.nats_url.split("://", 1)[-1].split("/", 1)[0]:
        p.error("the NATS URL carries credentials; give the password with --password-file")
    worker = Worker(
        args.node,
        [r for r in args.roles.split(",") if r],
        command_handler(command),
        nats_url=args.nats_url,
        password=_password(args),
        capacity=args.capacity,
        models=[m for m in args.models.split(",") if m],
        beat=args.beat,
        drain_limit=args.drain_limit,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await worker.run(stop)

    asyncio.run(run())
    _log(f"stopped after {worker.ran} task(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
