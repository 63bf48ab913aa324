"""Agents written by others drive AISPChatModel on the default model: LangGraph's prebuilt ReAct agent,
LangChain's ``create_agent`` and a plain tool-calling loop must call the tool and end in a prose answer."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from langchain_aisp import AISPChatModel
from langchain_aisp.rewards import Reward

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("single_torch_thread")]

QUESTION = "What is 12 times 7?"


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


class UsesToolResults(Reward):
    """Words shared with the user's and the tools' text, minus length beyond 20 words."""

    name = "uses_tool_results"

    def score(self, conversations: Sequence[Sequence[BaseMessage]], responses: Sequence[str]) -> list[float]:
        out = []
        for conversation, response in zip(conversations, responses, strict=True):
            context = {w.strip(".,?!").lower() for m in conversation for w in m.text.split()}
            words = [w.strip(".,?!").lower() for w in response.split()]
            out.append(len(context & set(words)) - 0.2 * max(0, len(words) - 20) if words else -5.0)
        return out


def model() -> AISPChatModel:
    return AISPChatModel(
        method="aisp", reward=UsesToolResults(), num_samples=4, num_iterations=1, max_tokens=32, seed=0
    )


def check_run(messages: list[BaseMessage]) -> None:
    calls = [c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    assert calls and calls[0]["name"] == "multiply" and calls[0]["args"] == {"a": 12, "b": 7}, messages
    assert any(isinstance(m, ToolMessage) and m.content == "84" for m in messages)
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls and final.text.strip(), messages
    assert "<tool_call>" not in final.text and "<tool_response>" not in final.text


def test_plain_tool_calling_loop():
    llm = model().bind_tools([multiply])
    messages: list[BaseMessage] = [HumanMessage(QUESTION)]
    for _ in range(4):
        reply = llm.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            break
        messages.extend(multiply.invoke(call) for call in reply.tool_calls)
    check_run(messages)


def test_langgraph_create_react_agent():
    prebuilt = pytest.importorskip("langgraph.prebuilt")
    with warnings.catch_warnings():  # deprecated in LangGraph 1.0 in favour of langchain.agents.create_agent
        warnings.simplefilter("ignore", DeprecationWarning)
        agent = prebuilt.create_react_agent(model(), [multiply])
    check_run(agent.invoke({"messages": [HumanMessage(QUESTION)]}, {"recursion_limit": 8})["messages"])


def test_langchain_create_agent():
    agents = pytest.importorskip("langchain.agents")
    agent = agents.create_agent(model(), [multiply])
    check_run(agent.invoke({"messages": [HumanMessage(QUESTION)]}, {"recursion_limit": 8})["messages"])
