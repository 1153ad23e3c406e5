"""The LangGraph tool in the seed's supervisor (`create_react_agent(model, tools=[langgraph_tool()])`),
with the real langgraph and langchain-core, a scripted chat model, and the real router and worker
(conftest.py). A failed dispatch comes back to the model as a tool error naming the code and the
task id; the agent's run goes on."""

import asyncio
import json
import re
import warnings
from typing import Any, List, Optional

import pytest

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from conftest import BackgroundWorker, first_dispatch, supervisor
from fleetnix_client import langgraph_tool

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    # Deprecated in favour of langchain.agents.create_agent since langgraph 1.0; the seed uses it.
    from langgraph.prebuilt import create_react_agent

TASK_ID = re.compile(r"task_id=([0-9a-f]{16})\b")


class ScriptedChatModel(BaseChatModel):
    """Answers with the scripted messages in turn, and records what it was shown each time."""

    script: List[AIMessage]
    seen: List[List[BaseMessage]] = Field(default_factory=list)

    def _generate(self, messages: List[BaseMessage], stop: Optional[List[str]] = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        self.seen.append(list(messages))
        return ChatResult(generations=[ChatGeneration(message=self.script[len(self.seen) - 1])])

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedChatModel":
        return self

    @property
    def _llm_type(self) -> str:
        return "scripted"


def call(call_id: str, role: str, task: Any, model: Optional[str] = None) -> dict:
    args = {"task": task, "required_role": role}
    if model is not None:
        args["preferred_model"] = model
    return {"name": "dispatch_to_worker_tool", "args": args, "id": call_id, "type": "tool_call"}


def agent(model: ScriptedChatModel, fleet):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return create_react_agent(model=model, tools=[langgraph_tool(timeout=5, **supervisor(fleet))])


def tool_messages(out) -> dict:
    return {m.tool_call_id: m for m in out["messages"] if isinstance(m, ToolMessage)}


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_a_tool_call_runs_on_a_worker_and_comes_back(fleet, mode):
    with BackgroundWorker(fleet, "worker-01", ["kg-writer", "glm-worker"]) as worker:
        asyncio.run(first_dispatch({"warm": 1}, "glm-worker", supervisor(fleet)))
        worker.received.clear()
        model = ScriptedChatModel(script=[
            AIMessage(content="", tool_calls=[call("c1", "glm-worker", {"task": "summarize", "repo": "r"},
                                                   "glm-4.5-air")]),
            AIMessage(content="summarized"),
        ])
        graph = agent(model, fleet)
        question = {"messages": [("user", "summarize the repo")]}
        out = graph.invoke(question) if mode == "invoke" else asyncio.run(graph.ainvoke(question))
    assert out["messages"][-1].content == "summarized"
    reply = tool_messages(out)["c1"]
    assert reply.status == "success"
    body = json.loads(reply.content)
    assert body["node"] == "worker-01"
    assert body["result"] == {"node": "worker-01", "echo": {"task": "summarize", "repo": "r"}}
    assert re.fullmatch(r"[0-9a-f]{16}", body["task_id"])
    assert worker.received == [("fleet.tasks.glm-worker.worker-01", b'{"task": "summarize", "repo": "r"}')]
    # The model's second turn saw the result.
    assert model.seen[1][-1] is not None and model.seen[1][-1].tool_call_id == "c1"


def test_failed_dispatches_come_back_to_the_model_and_the_run_finishes(fleet, capfd):
    """A role nobody has, an injected role (refused before sending) and a role whose only node
    (worker-02) is not running: three tool errors the model sees; its run ends normally (ainvoke:
    the tool's async path)."""
    with BackgroundWorker(fleet, "worker-01", ["kg-writer", "glm-worker"]) as worker:
        asyncio.run(first_dispatch({"warm": 1}, "kg-writer", supervisor(fleet)))
        worker.received.clear()
        model = ScriptedChatModel(script=[
            AIMessage(content="", tool_calls=[
                call("c1", "nobodys-role", {"task": "x"}),
                call("c2", "x 0 0\r\n\r\nPUB fleet.tasks.kg-writer.worker-01 8\r\ninjected", {"task": "x"}),
            ]),
            AIMessage(content="", tool_calls=[call("c3", "mnemopi-replica", {"task": "replicate"})]),
            AIMessage(content="reported: no worker could take it"),
        ])
        out = asyncio.run(agent(model, fleet).ainvoke({"messages": [("user", "do it")]}))
    assert out["messages"][-1].content == "reported: no worker could take it"
    assert len(model.seen) == 3
    replies = tool_messages(out)
    for call_id, code in (("c1", "no-such-role"), ("c2", "bad-request"), ("c3", "no-healthy-node")):
        m = replies[call_id]
        assert m.status == "error", (call_id, m)
        assert f"code={code}" in m.content, (call_id, m.content)
        assert TASK_ID.search(m.content), m.content
    # The model was shown the errors before its next turn.
    assert {m.tool_call_id for m in model.seen[1] if isinstance(m, ToolMessage)} == {"c1", "c2"}
    assert model.seen[2][-1].tool_call_id == "c3"
    assert worker.received == []
    assert capfd.readouterr().err == ""
