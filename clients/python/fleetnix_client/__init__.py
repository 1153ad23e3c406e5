"""fleetnix's supervisor tool: ask the control plane's router to run a task on a worker.

``dispatch_to_worker`` sends the task to ``fleet.dispatch.<role>`` on the fleet's NATS and waits
for the router's answer. It holds no routing logic: the router (``fleetnix router``) picks the
node by the fleet's ``failover_strategy``, health and ``preferred_model``, and fails over.

Connection settings come from the arguments or the environment:

- ``FLEETNIX_NATS_URL`` (e.g. ``nats://100.64.0.1:4222``),
- ``FLEETNIX_NATS_USER`` (the NATS user; default ``_supervisor``, the supervisors' own user, which may
  only ask the router: ``fleet.dispatch.>`` and its own inbox),
- ``FLEETNIX_NATS_PASSWORD`` or ``FLEETNIX_NATS_PASSWORD_FILE`` (never put it in a URL).

Every failure is a :class:`DispatchError` with a ``code`` and the call's ``task_id``; every wait
(connect, request, close) is bounded by the call's ``timeout``. Arguments are checked before
anything is sent: ``required_role`` by the manifest's rule for role names, ``preferred_model`` as
a header value, the task as JSON within the server's ``max_payload``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Optional

import nats
import nats.errors
from nats.aio.client import Client as _NatsClient

__all__ = [
    "DispatchError",
    "Result",
    "check_model",
    "check_role",
    "dispatch_to_worker",
    "dispatch_to_worker_async",
    "langgraph_tool",
    "tool_error_text",
]

#: The supervisors' NATS user (``fleet.dispatch.>`` and ``_INBOX._supervisor.>`` only); its password
#: is ``secrets/<control-plane>/nats-supervisor-password.age``.
DEFAULT_USER = "_supervisor"

STATUS_HEADER = "Fleet-Status"
NODE_HEADER = "Fleet-Node"
TASK_ID_HEADER = "Fleet-Task-Id"
MODEL_HEADER = "Fleet-Preferred-Model"
ATTEMPTS_HEADER = "Fleet-Attempts"
CLAIMED_HEADER = "Fleet-Claimed-Node"
DEADLINE_HEADER = "Fleet-Deadline-Ms"
#: On a repeated ask (same task id): how many asks came before.
REASK_HEADER = "Fleet-Reask"
#: How long a caller keeps asking while no router is subscribed at all (one restarting), as the
#: Rust client does: a router restarted by its unit is back within that.
NO_ROUTER_WAIT = 6.0

# The manifest's rule for role names (src/model.rs, `check_label`): an RFC 1123 hostname label,
# 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'.
_ROLE_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TASK_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The manifest bounds model names at 128 characters (src/model.rs, `check_model`).
MODEL_MAX_LEN = 128
# Closing the connection gets at least this long, even when the call's timeout is spent.
_CLOSE_GRACE = 0.25


class DispatchError(Exception):
    """The task did not run, or its outcome is unknown: see ``code``.

    Codes: the router's ``bad-request``, ``no-such-role``, ``no-healthy-node``, ``all-failed``;
    the client's ``bad-request`` (an argument refused before anything was sent), ``too-large``
    (the request exceeds the server's ``max_payload``; not sent), ``config`` (no URL, user or
    password), ``connect`` (no connection: refused, unreachable, wrong password; not sent),
    ``denied`` (the server refused this user the dispatch subject), ``no-router`` (nobody
    listens on the dispatch subject), ``timeout`` (no answer within the timeout: the task may
    still run), ``disconnected`` (the connection was lost while waiting), ``invalid-reply``.
    """

    def __init__(
        self,
        message: str,
        code: str = "client",
        attempts: Optional[list] = None,
        task_id: Optional[str] = None,
    ):
        super().__init__(message)
        self.code = code
        self.attempts = attempts or []
        self.task_id = task_id


@dataclass
class Result:
    """A worker's answer, as the router relayed it."""

    result: Any
    node: str
    task_id: str
    attempts: int = 1
    claimed_node: Optional[str] = None
    raw: bytes = field(default=b"", repr=False)


def check_role(role: Any) -> str:
    """Returns ``role`` if it is a valid role name (the manifest's rule), else raises
    ``DispatchError(code="bad-request")``. The role becomes a NATS subject token."""
    if not isinstance(role, str) or not _ROLE_RE.fullmatch(role):
        shown = repr(role)[:80]
        raise DispatchError(
            f"required_role {shown} is not a role name (1-63 lowercase letters, digits and '-', "
            "not starting or ending with '-')",
            code="bad-request",
        )
    return role


def check_model(model: Any) -> Optional[str]:
    """Returns ``model`` (``None`` for none or empty) if it is a safe header value: printable
    ASCII, no control characters, no surrounding spaces, at most 128 characters. Otherwise raises
    ``DispatchError(code="bad-request")``."""
    if model is None or model == "":
        return None
    if not isinstance(model, str):
        raise DispatchError(f"preferred_model must be a string, not {type(model).__name__}", code="bad-request")
    if len(model) > MODEL_MAX_LEN:
        raise DispatchError(
            f"preferred_model is {len(model)} characters long (at most {MODEL_MAX_LEN})", code="bad-request"
        )
    bad = next((c for c in model if not " " <= c <= "~"), None)
    if bad is not None:
        raise DispatchError(
            f"preferred_model {model[:40]!r} contains {bad!r} (only printable ASCII is allowed)",
            code="bad-request",
        )
    if model != model.strip():
        raise DispatchError(f"preferred_model {model!r} starts or ends with a space", code="bad-request")
    return model


def _check_user(user: str) -> None:
    # The user becomes the inbox prefix `_INBOX.<user>`: it must make valid subject tokens.
    if (
        not user
        or any(not "!" <= c <= "~" or c in "*>" for c in user)
        or user.startswith(".")
        or user.endswith(".")
        or ".." in user
    ):
        raise DispatchError(f"NATS user {user[:40]!r} is not a valid user name", code="config")


def _password(password: Optional[str]) -> str:
    if password is not None:
        return password
    if "FLEETNIX_NATS_PASSWORD" in os.environ:
        return os.environ["FLEETNIX_NATS_PASSWORD"]
    path = os.environ.get("FLEETNIX_NATS_PASSWORD_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().rstrip("\r\n")
        except (OSError, UnicodeError) as e:
            raise DispatchError(f"cannot read FLEETNIX_NATS_PASSWORD_FILE {path}: {e}", code="config") from None
    raise DispatchError(
        "no NATS password: pass password=, or set FLEETNIX_NATS_PASSWORD(_FILE)", code="config"
    )


def _headers_size(headers: dict) -> int:
    """Bytes of the header block nats-py sends (``NATS/1.0`` line, ``key: value`` lines, blank line):
    the server counts it towards ``max_payload``."""
    return len(b"NATS/1.0\r\n") + sum(len(f"{k}: {v}\r\n".encode()) for k, v in headers.items()) + 2


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


async def dispatch_to_worker_async(
    task: Any,
    required_role: str,
    preferred_model: Optional[str] = None,
    timeout: float = 120.0,
    *,
    nats_url: Optional[str] = None,
    user: Optional[str] = None,
    password: Optional[str] = None,
    task_id: Optional[str] = None,
    reask: Optional[float] = None,
) -> Result:
    """Runs ``task`` (JSON-serialisable) on a node with ``required_role``; see the module doc.

    ``task_id`` (1-64 letters, digits, ``-``, ``_``) is the idempotency key: asking again with the id
    of an earlier call (after a ``timeout`` or ``deadline``) gets that task's answer, not a second run.
    The call itself asks again with its id every ``reask`` seconds (default: a quarter of
    ``timeout``, at least 0.5 s) until an answer comes, so a router that is killed or restarted
    while the task runs costs the caller a delay, not the result. Keep ``reask`` above the fleet's
    ``node_timeout_seconds``.

    Raises only :class:`DispatchError`, within ``timeout`` seconds (plus at most a quarter second
    to close the connection)."""
    if task_id is None:
        task_id = secrets.token_hex(8)
    elif not isinstance(task_id, str) or not _TASK_ID_RE.fullmatch(task_id):
        raise DispatchError(
            f"task_id must be 1 to 64 letters, digits, '-' or '_', not {task_id!r:.80}", code="bad-request"
        )
    try:
        return await _dispatch(
            task_id, task, required_role, preferred_model, timeout, reask, nats_url, user, password
        )
    except DispatchError as e:
        if e.task_id is None:
            e.task_id = task_id
        raise
    except Exception as e:  # a defect here or in nats-py: still the caller's one error type
        raise DispatchError(f"unexpected client error: {_describe(e)}", code="client", task_id=task_id) from e


async def _dispatch(
    task_id: str,
    task: Any,
    required_role: str,
    preferred_model: Optional[str],
    timeout: float,
    reask: Optional[float],
    nats_url: Optional[str],
    user: Optional[str],
    password: Optional[str],
) -> Result:
    # Everything the caller (or an LLM) chose is checked before a connection is opened.
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (0 < timeout < math.inf):
        raise DispatchError(f"timeout must be a positive number of seconds, not {timeout!r}", code="bad-request")
    if reask is None:
        reask = max(timeout / 4, 0.5)
    elif isinstance(reask, bool) or not isinstance(reask, (int, float)) or not (0.1 <= reask < math.inf):
        raise DispatchError(f"reask must be at least 0.1 seconds, not {reask!r}", code="bad-request")
    role = check_role(required_role)
    model = check_model(preferred_model)
    try:
        payload = json.dumps(task, allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as e:
        raise DispatchError(f"the task is not JSON-serialisable: {e}", code="bad-request") from None
    # The task's deadline: the router answers (result, failure or `deadline`) before it.
    headers = {TASK_ID_HEADER: task_id, DEADLINE_HEADER: str(max(int(timeout * 1000) - 100, 1))}
    if model is not None:
        headers[MODEL_HEADER] = model

    url = nats_url or os.environ.get("FLEETNIX_NATS_URL")
    user = user or os.environ.get("FLEETNIX_NATS_USER") or DEFAULT_USER
    if not url:
        raise DispatchError("no NATS URL: pass nats_url= or set FLEETNIX_NATS_URL", code="config")
    if "@" in url.split("://", 1)[-1].split("/", 1)[0]:
        raise DispatchError("the NATS URL carries credentials; pass the password separately", code="config")
    _check_user(user)
    secret = _password(password)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def remaining() -> float:
        return max(deadline - loop.time(), 0.0)

    # nats-py reports asynchronous errors to error_cb and, by default, logs them with a traceback
    # on stderr: keep them here instead, for the error message.
    seen: list = []
    denied: asyncio.Future = loop.create_future()

    async def on_error(e: Exception) -> None:
        seen.append(e)
        if "permissions violation" in str(e).lower() and not denied.done():
            denied.set_result(str(e))

    async def quiet() -> None:
        return None

    nc = _NatsClient()
    try:
        try:
            await asyncio.wait_for(
                nc.connect(
                    url,
                    user=user,
                    password=secret,
                    inbox_prefix=f"_INBOX.{user}",
                    allow_reconnect=False,
                    # nats-py reads 0 as "no limit" and retries a refused connection for ever:
                    # 1 allows one retry, then gives up (and wait_for bounds it anyway).
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.1,
                    connect_timeout=max(remaining(), 0.001),
                    error_cb=on_error,
                    disconnected_cb=quiet,
                    closed_cb=quiet,
                ),
                remaining(),
            )
        except asyncio.TimeoutError:
            why = f" (last error: {_describe(seen[-1])})" if seen else ""
            raise DispatchError(
                f"cannot connect to {url} as {user} within {timeout}s{why}", code="connect"
            ) from None
        except nats.errors.NoServersError:
            why = _describe(seen[-1]) if seen else "no server available"
            raise DispatchError(f"cannot connect to {url} as {user}: {why}", code="connect") from None
        except (nats.errors.Error, OSError, ValueError) as e:
            # The message names the server's reason (e.g. Authorization Violation), never the password.
            raise DispatchError(f"cannot connect to {url} as {user}: {_describe(e)}", code="connect") from None

        # Counted with the largest header a repeated ask adds.
        size = len(payload) + _headers_size({**headers, REASK_HEADER: "999999"})
        if size > nc.max_payload:
            raise DispatchError(
                f"the request is {size} bytes (task {len(payload)} bytes and headers); "
                f"the server accepts at most {nc.max_payload}",
                code="too-large",
            )

        subject = f"fleet.dispatch.{role}"
        msg = await _ask(nc, subject, payload, headers, remaining, timeout, reask, denied, user, url)
    finally:
        try:
            await asyncio.wait_for(nc.close(), max(remaining(), _CLOSE_GRACE))
        except Exception:  # closing is best effort; the outcome is already decided
            pass
    return _read_reply(msg, task_id)


async def _ask(nc, subject, payload, headers, remaining, timeout, reask, denied, user, url):
    """Asks the router, and asks again with the same task id every ``reask`` seconds until an
    answer comes or the deadline passes: a router that died (SIGKILL, a restart) loses its callers'
    requests; another router, or the restarted one, takes the repeat and joins the task where it
    runs (the worker answers a repeated id from its record), so the caller still gets the result.
    While no router is subscribed at all it asks every 0.1 s, for at most ``NO_ROUTER_WAIT``."""
    inbox = nc.new_inbox()
    answers: asyncio.Queue = asyncio.Queue()

    async def on_answer(msg) -> None:
        await answers.put(msg)

    try:
        await nc.subscribe(f"{inbox}.*", cb=on_answer)
    except (nats.errors.Error, OSError) as e:
        raise DispatchError(f"lost the connection to {url}: {_describe(e)}", code="disconnected") from None
    no_router_since = None
    n = 0
    while remaining() > 0:
        h = dict(headers)
        # The time left, minus a little for the answer's way back (as in the first ask).
        h[DEADLINE_HEADER] = str(max(int(remaining() * 1000) - 100, 1))
        if n > 0:
            h[REASK_HEADER] = str(n)
        try:
            await nc.publish(subject, payload, reply=f"{inbox}.{n}", headers=h)
        except (nats.errors.BadSubjectError, nats.errors.BadHeaderError) as e:
            raise DispatchError(f"refused by nats-py: {_describe(e)}", code="bad-request") from None
        except nats.errors.MaxPayloadError:
            raise DispatchError(
                f"the task exceeds the server's max_payload ({nc.max_payload} bytes)", code="too-large"
            ) from None
        except (nats.errors.Error, OSError) as e:
            raise DispatchError(f"lost the connection to {url}: {_describe(e)}", code="disconnected") from None
        n += 1
        wait = min(remaining(), 0.1 if no_router_since is not None else reask)
        got = asyncio.ensure_future(answers.get())
        try:
            done, _ = await asyncio.wait({got, denied}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not got.done():
                got.cancel()
                await asyncio.gather(got, return_exceptions=True)
        if denied.done():
            raise DispatchError(f"the server refused user {user} on {subject}: {denied.result()}", code="denied")
        if got not in done or got.cancelled():
            if nc.is_closed:
                raise DispatchError(f"lost the connection to {url}", code="disconnected")
            continue  # no answer yet: ask again, same id
        msg = got.result()
        if (msg.headers or {}).get("Status") == "503":
            # Nobody subscribed to the subject: no router, or one restarting.
            loop_time = asyncio.get_running_loop().time()
            if no_router_since is None:
                no_router_since = loop_time
            if loop_time - no_router_since >= NO_ROUTER_WAIT:
                break
            continue
        return msg
    if no_router_since is not None:
        raise DispatchError(f"no router answers on {subject}: is `fleetnix router` running?", code="no-router")
    raise DispatchError(f"the router did not answer within {timeout}s", code="timeout")


def _read_reply(msg: Any, task_id: str) -> Result:
    h = msg.headers or {}
    answered_id = h.get(TASK_ID_HEADER) or task_id
    if h.get(STATUS_HEADER) == "ok":
        try:
            result = json.loads(msg.data) if msg.data else None
        except ValueError:
            result = msg.data.decode(errors="replace")
        try:
            attempts = int(h.get(ATTEMPTS_HEADER, "1") or 1)
        except ValueError:
            attempts = 1
        return Result(
            result=result,
            node=h.get(NODE_HEADER, ""),
            task_id=answered_id,
            attempts=attempts,
            claimed_node=h.get(CLAIMED_HEADER),
            raw=msg.data,
        )
    try:
        body = json.loads(msg.data)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    attempts = body.get("attempts")
    raise DispatchError(
        str(body.get("error", "the router's reply could not be read")),
        code=h.get(STATUS_HEADER) or str(body.get("code", "invalid-reply")),
        attempts=attempts if isinstance(attempts, list) else [],
        task_id=answered_id,
    )


def dispatch_to_worker(
    task: Any,
    required_role: str,
    preferred_model: Optional[str] = None,
    timeout: float = 120.0,
    **conn: Any,
) -> Result:
    """Blocking form of :func:`dispatch_to_worker_async` (for tools called outside an event loop;
    inside one it runs on a helper thread with its own loop)."""

    def run() -> Result:
        return asyncio.run(dispatch_to_worker_async(task, required_role, preferred_model, timeout, **conn))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


_HINTS = {
    "no-such-role": "no node has this role: use one of the fleet's roles",
    "no-healthy-node": "the nodes with this role are down or unreachable now: try later or another role",
    "all-failed": "every node tried failed: the task may have partly run; try later or report it",
    "timeout": "no answer in time: the task may still be running; do not assume it failed",
    "deadline": "the task's deadline came first: it may still be running; ask again with the same task id for its result",
    "task-failed": "the worker ran the task and it failed: read the reason",
    "bad-request": "the arguments were refused: fix them and try again",
    "too-large": "the task is too large for the bus: send less (e.g. a reference instead of the data)",
    "no-router": "the fleet's router is not running: report it",
    "connect": "the fleet's message bus is unreachable: report it",
}


def tool_error_text(e: DispatchError) -> str:
    """What a tool tells the model about a failed dispatch: code, task id, reason, a hint."""
    text = f"dispatch failed: code={e.code} task_id={e.task_id}: {e}"
    hint = _HINTS.get(e.code)
    return f"{text}. Hint: {hint}." if hint else text


def langgraph_tool(*, timeout: float = 120.0, name: str = "dispatch_to_worker_tool", **conn: Any):
    """``dispatch_to_worker`` as a LangChain/LangGraph tool (needs ``langchain-core``).

    A failed dispatch comes back to the model as a tool error (a ``ToolMessage`` with
    ``status="error"``) naming the code and task id; it never ends the agent's run. ``conn``:
    ``nats_url``/``user``/``password`` (default: the environment)."""
    from langchain_core.tools import StructuredTool, ToolException

    def run(task: dict, required_role: str, preferred_model: Optional[str] = None) -> dict:
        try:
            r = dispatch_to_worker(task, required_role, preferred_model, timeout, **conn)
        except DispatchError as e:
            raise ToolException(tool_error_text(e)) from None
        return {"node": r.node, "task_id": r.task_id, "result": r.result}

    async def arun(task: dict, required_role: str, preferred_model: Optional[str] = None) -> dict:
        try:
            r = await dispatch_to_worker_async(task, required_role, preferred_model, timeout, **conn)
        except DispatchError as e:
            raise ToolException(tool_error_text(e)) from None
        return {"node": r.node, "task_id": r.task_id, "result": r.result}

    return StructuredTool.from_function(
        func=run,
        coroutine=arun,
        name=name,
        description=(
            "Run a task (a JSON object) on a fleet worker node that has `required_role`, optionally "
            "preferring a node serving `preferred_model`. Returns the worker's node, the task id and "
            "its result. A failure comes back as an error naming its code and task id."
        ),
        handle_tool_error=True,
    )
