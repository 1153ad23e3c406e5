"""fleetnix's supervisor tool: ask the control plane's router to run a task on a worker.

``dispatch_to_worker`` sends the task to ``fleet.dispatch.<role>`` on the fleet's NATS and waits
for the router's answer. It holds no routing logic: the router (``fleetnix router``) picks the
node by the fleet's ``failover_strategy``, health and ``preferred_model``, and fails over.

Connection settings come from the arguments or the environment:

- ``FLEETNIX_NATS_URL`` (e.g. ``nats://100.64.0.1:4222``),
- ``FLEETNIX_NATS_USER`` (the control plane's node name, e.g. ``control-01``),
- ``FLEETNIX_NATS_PASSWORD`` or ``FLEETNIX_NATS_PASSWORD_FILE`` (never put it in a URL).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from dataclasses import dataclass, field
from typing import Any, Optional

import nats
import nats.errors

__all__ = ["DispatchError", "Result", "dispatch_to_worker", "dispatch_to_worker_async"]

STATUS_HEADER = "Fleet-Status"
NODE_HEADER = "Fleet-Node"
TASK_ID_HEADER = "Fleet-Task-Id"
MODEL_HEADER = "Fleet-Preferred-Model"
ATTEMPTS_HEADER = "Fleet-Attempts"
CLAIMED_HEADER = "Fleet-Claimed-Node"


class DispatchError(Exception):
    """The task did not run: the router's error (``code``), or no router/connection."""

    def __init__(self, message: str, code: str = "client", attempts: Optional[list] = None):
        super().__init__(message)
        self.code = code
        self.attempts = attempts or []


@dataclass
class Result:
    """A worker's answer, as the router relayed it."""

    result: Any
    node: str
    task_id: str
    attempts: int = 1
    claimed_node: Optional[str] = None
    raw: bytes = field(default=b"", repr=False)


def _password(password: Optional[str]) -> str:
    if password is not None:
        return password
    if "FLEETNIX_NATS_PASSWORD" in os.environ:
        return os.environ["FLEETNIX_NATS_PASSWORD"]
    path = os.environ.get("FLEETNIX_NATS_PASSWORD_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    raise DispatchError("no NATS password: pass password=, or set FLEETNIX_NATS_PASSWORD(_FILE)")


async def dispatch_to_worker_async(
    task: Any,
    required_role: str,
    preferred_model: Optional[str] = None,
    timeout: float = 120.0,
    *,
    nats_url: Optional[str] = None,
    user: Optional[str] = None,
    password: Optional[str] = None,
) -> Result:
    """Runs ``task`` (JSON-serialisable) on a node with ``required_role``; see the module doc."""
    url = nats_url or os.environ.get("FLEETNIX_NATS_URL")
    user = user or os.environ.get("FLEETNIX_NATS_USER")
    if not url or not user:
        raise DispatchError("no NATS URL or user: pass nats_url=/user= or set FLEETNIX_NATS_URL/_USER")
    if "@" in url.split("://", 1)[-1].split("/", 1)[0]:
        raise DispatchError("the NATS URL carries credentials; pass the password separately")
    payload = json.dumps(task).encode()
    headers = {TASK_ID_HEADER: secrets.token_hex(8)}
    if preferred_model:
        headers[MODEL_HEADER] = preferred_model
    try:
        nc = await nats.connect(
            url,
            user=user,
            password=_password(password),
            inbox_prefix=f"_INBOX.{user}",
            allow_reconnect=False,
            connect_timeout=min(timeout, 10.0),
            max_reconnect_attempts=0,
        )
    except nats.errors.Error as e:
        # The message names the server's reason (e.g. Authorization Violation), never the password.
        raise DispatchError(f"cannot connect to {url} as {user}: {e!r}", code="connect") from None
    except OSError as e:
        raise DispatchError(f"cannot connect to {url} as {user}: {e}", code="connect") from None
    try:
        msg = await nc.request(f"fleet.dispatch.{required_role}", payload, timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError:
        raise DispatchError(
            f"no router answers on fleet.dispatch.{required_role}: is `fleetnix router` running?",
            code="no-router",
        ) from None
    except nats.errors.TimeoutError:
        raise DispatchError(f"the router did not answer within {timeout}s", code="timeout") from None
    finally:
        await nc.close()
    h = msg.headers or {}
    if h.get(STATUS_HEADER) == "ok":
        try:
            result = json.loads(msg.data) if msg.data else None
        except ValueError:
            result = msg.data.decode(errors="replace")
        return Result(
            result=result,
            node=h.get(NODE_HEADER, ""),
            task_id=h.get(TASK_ID_HEADER, ""),
            attempts=int(h.get(ATTEMPTS_HEADER, "1") or 1),
            claimed_node=h.get(CLAIMED_HEADER),
            raw=msg.data,
        )
    try:
        body = json.loads(msg.data)
    except ValueError:
        body = {}
    raise DispatchError(
        body.get("error", "the router's reply could not be read"),
        code=h.get(STATUS_HEADER, body.get("code", "invalid-reply")),
        attempts=body.get("attempts", []),
    )


def dispatch_to_worker(
    task: Any,
    required_role: str,
    preferred_model: Optional[str] = None,
    timeout: float = 120.0,
    **conn: Any,
) -> Result:
    """Blocking form of :func:`dispatch_to_worker_async` (for tools called outside an event loop)."""
    return asyncio.run(dispatch_to_worker_async(task, required_role, preferred_model, timeout, **conn))


def langgraph_tool():  # pragma: no cover - optional
    """``dispatch_to_worker`` as a LangChain/LangGraph tool (needs ``langchain-core``)."""
    from langchain_core.tools import tool

    @tool
    def dispatch_to_worker_tool(task: dict, required_role: str, preferred_model: Optional[str] = None) -> dict:
        """Run a task on a fleet worker that has `required_role` (optionally preferring a model)."""
        r = dispatch_to_worker(task, required_role, preferred_model)
        return {"node": r.node, "result": r.result}

    return dispatch_to_worker_tool
