"""dispatch_to_worker against the real thing (conftest.py): nats-server with the configuration
fleetnix renders, `fleetnix router`, and a worker written with nats-py."""

import asyncio
import json
import secrets
import socket
import time

import nats
import pytest

from conftest import first_dispatch, free_port, run_worker, supervisor
from fleetnix_client import DispatchError, dispatch_to_worker, dispatch_to_worker_async

# What the review sent (issue 21): with nats-py 2.6 it published `injected` on worker-01's own
# task subject with the supervisor's rights.
INJECTED_ROLE = "x 0 0\r\n\r\nPUB fleet.tasks.kg-writer.worker-01 8\r\ninjected\r\n"
BAD_ROLES = [
    INJECTED_ROLE,
    "kg-writer.worker-01",  # another subject token: a node's own subject, past the router
    "kg-writer\r\n",
    "kg-writer ",
    "kg-*",
    ">",
    "",
    "KG-writer",
    "-kg",
    "kg-",
    "a" * 64,
    None,
    7,
]
BAD_MODELS = [
    "glm-4.5-air\r\nFleet-Task-Id: forged",
    "glm\n",
    "glm\x00",
    "glm\x7f",
    "glm-\u00e9",
    " glm",
    "x" * 129,
    ["glm"],
]
NOT_JSON = [object(), {"a": {1, 2}}, float("nan"), {"n": float("inf")}, b"bytes"]


def closed_port_url():
    """A loopback port nobody listens on: connecting is refused."""
    return f"nats://127.0.0.1:{free_port()}"


def test_dispatch_through_the_router_and_a_wrong_password_is_refused(fleet):
    async def main():
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(fleet["url"], fleet["pw"]["worker-01"], "worker-01", "kg-writer", stop))
        conn = supervisor(fleet)
        try:
            r = await first_dispatch({"doc": "a.md"}, "kg-writer", conn)
            assert r.node == "worker-01"
            assert r.result == {"node": "worker-01", "echo": {"doc": "a.md"}}
            assert r.attempts == 1 and r.claimed_node is None
            assert len(r.task_id) == 16

            # preferred_model nobody has is ignored; a role nobody has is a clear error.
            r = await dispatch_to_worker_async({"n": 2}, "kg-writer", "no-such-model", timeout=5, **conn)
            assert r.node == "worker-01"
            with pytest.raises(DispatchError) as e:
                await dispatch_to_worker_async({}, "no-such-role", timeout=5, **conn)
            assert e.value.code == "no-such-role"
            assert "no node has role" in str(e.value)
            assert e.value.task_id and len(e.value.task_id) == 16

            # A wrong password: refused by the server, and the message does not repeat it.
            wrong = "Wrong" + secrets.token_hex(16)
            with pytest.raises(DispatchError) as e:
                await dispatch_to_worker_async({}, "kg-writer", timeout=5, nats_url=fleet["url"],
                                               user="control-01", password=wrong)
            assert e.value.code == "connect"
            assert wrong not in str(e.value)
            # A worker may not ask the router: the server says so at once (no wait for the timeout).
            start = time.monotonic()
            with pytest.raises(DispatchError) as e:
                await dispatch_to_worker_async({}, "kg-writer", timeout=30, nats_url=fleet["url"],
                                               user="worker-02", password=fleet["pw"]["worker-02"])
            assert e.value.code == "denied", e.value
            assert time.monotonic() - start < 10
        finally:
            stop.set()
            await worker

    asyncio.run(main())


def test_credentials_in_the_url_are_refused():
    with pytest.raises(DispatchError) as e:
        asyncio.run(dispatch_to_worker_async({}, "r", nats_url="nats://u:secretpw@127.0.0.1:1", user="u", password="x"))
    assert "secretpw" not in str(e.value)
    assert e.value.code == "config"


def test_bad_arguments_are_refused_before_anything_is_sent(capfd):
    """Role, model and task are checked before a connection is opened: against a closed port the
    answer is `bad-request`, not `connect`, and nothing is printed."""
    async def main():
        url = closed_port_url()
        conn = {"nats_url": url, "user": "control-01", "password": "p"}
        for role in BAD_ROLES:
            with pytest.raises(DispatchError) as e:
                await asyncio.wait_for(dispatch_to_worker_async({}, role, timeout=2, **conn), 10)
            assert e.value.code == "bad-request", (role, e.value.code, str(e.value))
            assert "not a role name" in str(e.value)
            assert e.value.task_id
        for model in BAD_MODELS:
            with pytest.raises(DispatchError) as e:
                await asyncio.wait_for(dispatch_to_worker_async({}, "kg-writer", model, timeout=2, **conn), 10)
            assert e.value.code == "bad-request", (model, e.value.code, str(e.value))
            assert "preferred_model" in str(e.value)
        for task in NOT_JSON:
            with pytest.raises(DispatchError) as e:
                await asyncio.wait_for(dispatch_to_worker_async(task, "kg-writer", timeout=2, **conn), 10)
            assert e.value.code == "bad-request", (task, e.value.code, str(e.value))
            assert "JSON" in str(e.value)
        for timeout in (0, -1, float("nan"), float("inf"), "5"):
            with pytest.raises(DispatchError) as e:
                await asyncio.wait_for(dispatch_to_worker_async({}, "kg-writer", timeout=timeout, **conn), 10)
            assert e.value.code == "bad-request", (timeout, e.value.code)

    asyncio.run(main())
    assert capfd.readouterr().err == ""


def test_role_and_model_injection_reach_no_worker(fleet, capfd):
    """Issue 21: the review's injected role, and a model with a header line in it, against the real
    server and router: refused with `bad-request`, and worker-01 receives only the task that was
    dispatched properly afterwards."""
    async def main():
        stop = asyncio.Event()
        received = []
        worker = asyncio.create_task(run_worker(fleet["url"], fleet["pw"]["worker-01"], "worker-01",
                                                ["kg-writer", "glm-worker"], stop, received))
        conn = supervisor(fleet)
        try:
            await first_dispatch({"warm": 1}, "kg-writer", conn)
            received.clear()
            for role in BAD_ROLES:
                with pytest.raises(DispatchError) as e:
                    await dispatch_to_worker_async({"bad": "role"}, role, timeout=5, **conn)
                assert e.value.code == "bad-request", (role, e.value.code, str(e.value))
            for model in BAD_MODELS:
                with pytest.raises(DispatchError) as e:
                    await dispatch_to_worker_async({"bad": "model"}, "kg-writer", model, timeout=5, **conn)
                assert e.value.code == "bad-request", (model, e.value.code, str(e.value))
            r = await dispatch_to_worker_async({"good": 1}, "kg-writer", "glm-4.5-air", timeout=5, **conn)
            assert r.node == "worker-01"
            assert received == [("fleet.tasks.kg-writer.worker-01", b'{"good": 1}')]
        finally:
            stop.set()
            await worker

    asyncio.run(main())
    assert capfd.readouterr().err == ""


def test_a_refused_connection_is_a_connect_error_within_the_timeout(capfd):
    """Issue 22: nats-py 2.16 read the old `max_reconnect_attempts=0` as "no limit" and retried a
    refused connection for ever. Now: `connect` well within the timeout, nothing on stderr."""
    async def main():
        timeout = 3.0
        start = time.monotonic()
        with pytest.raises(DispatchError) as e:
            # The outer bound only keeps a regression from hanging the suite.
            await asyncio.wait_for(dispatch_to_worker_async({}, "kg-writer", timeout=timeout,
                                                            nats_url=closed_port_url(), user="control-01",
                                                            password="p"), timeout + 10)
        elapsed = time.monotonic() - start
        assert e.value.code == "connect", (e.value.code, str(e.value))
        assert "refused" in str(e.value).lower()
        assert elapsed < timeout + 0.5, elapsed

        # The blocking form, called from inside a running event loop (as a sync tool may be).
        start = time.monotonic()
        with pytest.raises(DispatchError) as e:
            dispatch_to_worker({}, "kg-writer", timeout=timeout, nats_url=closed_port_url(),
                               user="control-01", password="p")
        assert e.value.code == "connect"
        assert time.monotonic() - start < timeout + 0.5

    asyncio.run(main())
    assert capfd.readouterr().err == ""


def test_a_server_that_never_speaks_is_a_connect_error_within_the_timeout(capfd):
    """A port that accepts TCP but never sends NATS's INFO (a wrong service, a wedged server):
    the connection attempt is bounded by the call's timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # never accepted: the kernel completes the handshake, nothing is said
        url = f"nats://127.0.0.1:{silent.getsockname()[1]}"
        timeout = 1.0
        start = time.monotonic()
        with pytest.raises(DispatchError) as e:
            asyncio.run(asyncio.wait_for(dispatch_to_worker_async({}, "kg-writer", timeout=timeout, nats_url=url,
                                                                  user="control-01", password="p"), timeout + 10))
        elapsed = time.monotonic() - start
    assert e.value.code == "connect", (e.value.code, str(e.value))
    assert timeout - 0.1 < elapsed < timeout + 0.5, elapsed
    assert capfd.readouterr().err == ""


def test_too_large_and_unanswered_requests(fleet, capfd):
    """A task over the server's max_payload (counting the request's headers, as the server does) is
    `too-large` before anything is sent, and the connection stays usable; a task nobody answers is
    `timeout` within the caller's timeout."""
    async def main():
        stop = asyncio.Event()
        received = []
        worker = asyncio.create_task(run_worker(fleet["url"], fleet["pw"]["worker-01"], "worker-01",
                                                "kg-writer", stop, received))
        conn = supervisor(fleet)
        try:
            await first_dispatch({"warm": 1}, "kg-writer", conn)
            received.clear()
            nc = await nats.connect(fleet["url"], user="control-01", password=fleet["pw"]["control-01"],
                                    inbox_prefix="_INBOX.control-01")
            max_payload = nc.max_payload
            await nc.close()
            envelope = len(json.dumps({"d": ""}))
            for size in (max_payload, max_payload + 1, 4 * max_payload):
                # `max_payload` bytes of JSON fit nats-py's own check, not the server's (headers count).
                task = {"d": "x" * (size - envelope)}
                assert len(json.dumps(task)) == size
                with pytest.raises(DispatchError) as e:
                    await dispatch_to_worker_async(task, "kg-writer", timeout=5, **conn)
                assert e.value.code == "too-large", (size, e.value.code, str(e.value))
                assert str(max_payload) in str(e.value)
            assert received == []
            r = await dispatch_to_worker_async({"after": 1}, "kg-writer", timeout=5, **conn)
            assert r.node == "worker-01"

            # A node with the role that never answers: the router is still trying (its node
            # timeout is 2 s) when the task's deadline (the caller's 1 s) comes; the router says so
            # before it, naming the task (issue 22).
            silent = await nats.connect(fleet["url"], user="worker-02", password=fleet["pw"]["worker-02"])
            await silent.subscribe("fleet.tasks.mnemopi-replica.worker-02")
            beat = {"node": "worker-02", "in_flight": 0, "capacity": 1, "models": [], "version": "t", "time": ""}
            await silent.publish("fleet.heartbeat.worker-02", json.dumps(beat).encode())
            await silent.flush()
            deadline = time.monotonic() + 15
            while True:
                timeout = 1.0
                start = time.monotonic()
                with pytest.raises(DispatchError) as e:
                    await dispatch_to_worker_async({}, "mnemopi-replica", timeout=timeout, **conn)
                elapsed = time.monotonic() - start
                # Until the router has seen the heartbeat it answers at once: no healthy node.
                if e.value.code != "no-healthy-node" or time.monotonic() > deadline:
                    break
                await silent.publish("fleet.heartbeat.worker-02", json.dumps(beat).encode())
                await asyncio.sleep(0.05)
            await silent.close()
            assert e.value.code == "deadline", (e.value.code, str(e.value))
            assert e.value.task_id in str(e.value)
            assert timeout - 0.3 < elapsed < timeout, elapsed
        finally:
            stop.set()
            await worker

    asyncio.run(main())
    assert capfd.readouterr().err == ""


def test_the_default_user_is_the_supervisors_and_the_control_planes_agent_may_not_dispatch(fleet, monkeypatch):
    """Issue 21: supervisors have their own NATS user, `_supervisor`, the client's default; the
    control plane's node user is an ordinary agent's and the server refuses it the dispatch subject."""
    async def main():
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(fleet["url"], fleet["pw"]["worker-01"], "worker-01",
                                                "kg-writer", stop))
        try:
            monkeypatch.delenv("FLEETNIX_NATS_USER", raising=False)
            conn = {"nats_url": fleet["url"], "password": fleet["pw"]["_supervisor"]}
            r = await first_dispatch({"n": 1}, "kg-writer", conn)
            assert r.node == "worker-01"
            # FLEETNIX_NATS_USER still chooses another user: here the control plane's agent.
            monkeypatch.setenv("FLEETNIX_NATS_USER", "control-01")
            with pytest.raises(DispatchError) as e:
                await dispatch_to_worker_async({}, "kg-writer", timeout=10, nats_url=fleet["url"],
                                               password=fleet["pw"]["control-01"])
            assert e.value.code == "denied", e.value
            assert "control-01" in str(e.value)
        finally:
            stop.set()
            await worker

    asyncio.run(main())
