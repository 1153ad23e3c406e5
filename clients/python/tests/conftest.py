"""Shared set-up for the client's tests: the real thing. nats-server with the configuration fleetnix
renders (`fleetnix nats-conf`), the fleet registered (`fleetnix node sync`), `fleetnix router`, and
a worker following the bus contract (task subject, heartbeats) written here with nats-py.

Needs FLEETNIX_BIN (the built fleetnix binary; .ci/run sets it) and nats-server.
"""

import asyncio
import json
import os
import pathlib
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import nats
import pytest

from fleetnix_client import DispatchError, dispatch_to_worker_async

REPO = pathlib.Path(__file__).resolve().parents[3]
USERS = {
    "control-01": "NATS_PASSWORD_CONTROL_01",
    "worker-01": "NATS_PASSWORD_WORKER_01",
    "worker-02": "NATS_PASSWORD_WORKER_02",
    "_observer": "NATS_OBSERVER_PASSWORD",
    "_registry": "NATS_REGISTRY_PASSWORD",
    "_router": "NATS_ROUTER_PASSWORD",
    "_supervisor": "NATS_SUPERVISOR_PASSWORD",
}


def fleetnix_bin():
    b = os.environ.get("FLEETNIX_BIN") or str(REPO / "target/debug/fleetnix")
    if not os.path.exists(b):
        pytest.fail(f"fleetnix binary {b} not built (cargo build, or set FLEETNIX_BIN)")
    return b


def nats_server_bin():
    b = os.environ.get("FLEETNIX_NATS_SERVER") or shutil.which("nats-server", path=os.environ.get("PATH", "") + ":/usr/sbin")
    if not b:
        pytest.fail("nats-server is not installed (Debian package nats-server)")
    return b


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, limit=10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("nats-server did not listen")


@pytest.fixture
def fleet():
    tmp = tempfile.TemporaryDirectory()
    port = free_port()
    pw = {u: "P" + secrets.token_hex(20) for u in USERS}
    conf = subprocess.run(
        [fleetnix_bin(), "--root", str(REPO), "nats-conf", "--listen", f"127.0.0.1:{port}",
         "--store-dir", os.path.join(tmp.name, "js")],
        check=True, capture_output=True, text=True,
    ).stdout
    conf_path = os.path.join(tmp.name, "nats.conf")
    with open(conf_path, "w") as f:
        f.write(conf)
    env = {var: pw[u] for u, var in USERS.items()}
    server = subprocess.Popen([nats_server_bin(), "-c", conf_path], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [server]
    try:
        wait_port(port, server)
        url = f"nats://127.0.0.1:{port}"
        # Alerts go to a closed loopback port, never to the example fleet's own ntfy address.
        base = {"PATH": os.environ.get("PATH", ""), "FLEETNIX_NATS_URL": url,
                "FLEETNIX_NTFY_URL": f"http://127.0.0.1:{free_port()}"}
        subprocess.run([fleetnix_bin(), "--root", str(REPO), "node", "sync"], check=True,
                       env={**base, "FLEETNIX_NATS_PASSWORD": pw["_registry"]},
                       capture_output=True, timeout=30)

        def start_router():
            """Starts a `fleetnix router` process (node timeout 2 s); the fixture stops it."""
            router = subprocess.Popen(
                [fleetnix_bin(), "--root", str(REPO), "router", "--node-timeout", "2s"],
                env={**base, "FLEETNIX_NATS_PASSWORD": pw["_router"]},
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            procs.append(router)
            return router

        router = start_router()
        yield {"url": url, "pw": pw, "router": router, "start_router": start_router}
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        tmp.cleanup()


async def run_worker(url, password, node, roles, stop, received=None, ready=None):
    """The agent side of the contract: its roles' subjects, heartbeats every 200 ms. Every task it
    gets is appended to `received` as (subject, payload); `ready` is set once it is subscribed."""
    nc = await nats.connect(url, user=node, password=password, inbox_prefix=f"_INBOX.{node}")
    if isinstance(roles, str):
        roles = [roles]

    async def on_task(msg):
        if received is not None:
            received.append((msg.subject, msg.data))
        task = json.loads(msg.data)
        await msg.respond(json.dumps({"node": node, "echo": task}).encode())

    for role in roles:
        await nc.subscribe(f"fleet.tasks.{role}.{node}", cb=on_task)
        await nc.subscribe(f"fleet.tasks.{role}", queue=role, cb=on_task)
    await nc.flush()
    if ready is not None:
        ready.set()
    while not stop.is_set():
        beat = {"node": node, "in_flight": 0, "capacity": 2, "models": [], "version": "test",
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        await nc.publish(f"fleet.heartbeat.{node}", json.dumps(beat).encode())
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass
    await nc.close()


async def first_dispatch(task, role, conn, limit=15.0):
    """Dispatches until the router has heard the worker: before its first heartbeat the router
    answers "no healthy node" (or, before it subscribed, nobody answers). Polls, bounded."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return await dispatch_to_worker_async(task, role, timeout=5, **conn)
        except DispatchError as e:
            if e.code not in ("no-healthy-node", "no-router") or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def supervisor(fleet):
    """Connection arguments of a supervisor (its own user, `_supervisor`)."""
    return {"nats_url": fleet["url"], "user": "_supervisor", "password": fleet["pw"]["_supervisor"]}


class BackgroundWorker:
    """`run_worker` on a thread with its own event loop, for tests whose code blocks (a LangGraph
    agent's sync `invoke`). Use as a context manager; `received` lists the tasks it got."""

    def __init__(self, fleet, node, roles):
        self.args = (fleet["url"], fleet["pw"][node], node, roles)
        self.received = []
        self._ready = threading.Event()
        self._loop = None
        self._stop = None
        self._error = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            ready = asyncio.Event()
            task = asyncio.create_task(run_worker(*self.args, self._stop, self.received, ready))
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            self._ready.set()
            await task

        try:
            asyncio.run(main())
        except Exception as e:  # reported by __enter__/__exit__
            self._error = e
        finally:
            self._ready.set()

    def __enter__(self):
        self._thread.start()
        if not self._ready.wait(15) or self._error:
            raise RuntimeError(f"worker did not start: {self._error!r}")
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        if self._error:
            raise self._error
