"""dispatch_to_worker against the real thing: nats-server with the configuration fleetnix renders
(`fleetnix nats-conf`), the fleet registered (`fleetnix node sync`), `fleetnix router`, and a
worker following the bus contract (task subject, heartbeats) written here with nats-py.

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
import time

import nats
import pytest

from fleetnix_client import DispatchError, dispatch_to_worker_async

REPO = pathlib.Path(__file__).resolve().parents[3]
USERS = {
    "control-01": "NATS_PASSWORD_CONTROL_01",
    "worker-01": "NATS_PASSWORD_WORKER_01",
    "worker-02": "NATS_PASSWORD_WORKER_02",
    "_router": "NATS_ROUTER_PASSWORD",
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
                       env={**base, "FLEETNIX_NATS_PASSWORD": pw["control-01"]},
                       capture_output=True, timeout=30)
        router = subprocess.Popen(
            [fleetnix_bin(), "--root", str(REPO), "router", "--node-timeout", "2s"],
            env={**base, "FLEETNIX_NATS_PASSWORD": pw["_router"]},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        procs.append(router)
        yield {"url": url, "pw": pw}
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        tmp.cleanup()


async def run_worker(url, password, node, role, stop):
    """The agent side of the contract: its own task subject, heartbeats every 200 ms."""
    nc = await nats.connect(url, user=node, password=password, inbox_prefix=f"_INBOX.{node}")

    async def on_task(msg):
        task = json.loads(msg.data)
        await msg.respond(json.dumps({"node": node, "echo": task}).encode())

    await nc.subscribe(f"fleet.tasks.{role}.{node}", cb=on_task)
    await nc.subscribe(f"fleet.tasks.{role}", queue=role, cb=on_task)
    while not stop.is_set():
        beat = {"node": node, "in_flight": 0, "capacity": 2, "models": [], "version": "test",
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        await nc.publish(f"fleet.heartbeat.{node}", json.dumps(beat).encode())
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass
    await nc.close()


def test_dispatch_through_the_router_and_a_wrong_password_is_refused(fleet):
    async def main():
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(fleet["url"], fleet["pw"]["worker-01"], "worker-01", "kg-writer", stop))
        conn = {"nats_url": fleet["url"], "user": "control-01", "password": fleet["pw"]["control-01"]}
        try:
            # Until the router has heard a heartbeat, it answers "no healthy node" (or, before it
            # subscribed, nobody answers): poll, bounded.
            deadline = time.monotonic() + 15
            while True:
                try:
                    r = await dispatch_to_worker_async({"doc": "a.md"}, "kg-writer", timeout=5, **conn)
                    break
                except DispatchError as e:
                    if e.code not in ("no-healthy-node", "no-router") or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            assert r.node == "worker-01"
            assert r.result == {"node": "worker-01", "echo": {"doc": "a.md"}}
            assert r.attempts == 1 and r.claimed_node is None

            # preferred_model nobody has is ignored; a role nobody has is a clear error.
            r = await dispatch_to_worker_async({"n": 2}, "kg-writer", "no-such-model", timeout=5, **conn)
            assert r.node == "worker-01"
            with pytest.raises(DispatchError) as e:
                await dispatch_to_worker_async({}, "no-such-role", timeout=5, **conn)
            assert e.value.code == "no-such-role"
            assert "no node has role" in str(e.value)

            # A wrong password: refused by the server, and the message does not repeat it.
            wrong = "Wrong" + secrets.token_hex(16)
            with pytest.raises(DispatchError) as e:
                await dispatch_to_worker_async({}, "kg-writer", timeout=5, nats_url=fleet["url"],
                                               user="control-01", password=wrong)
            assert e.value.code == "connect"
            assert wrong not in str(e.value)
            # A worker may not ask the router.
            with pytest.raises(DispatchError):
                await dispatch_to_worker_async({}, "kg-writer", timeout=2, nats_url=fleet["url"],
                                               user="worker-02", password=fleet["pw"]["worker-02"])
        finally:
            stop.set()
            await worker

    asyncio.run(main())


def test_credentials_in_the_url_are_refused():
    with pytest.raises(DispatchError) as e:
        asyncio.run(dispatch_to_worker_async({}, "r", nats_url="nats://u:secretpw@127.0.0.1:1", user="u", password="x"))
    assert "secretpw" not in str(e.value)
