"""Agents with AISPChatModel: LangGraph's prebuilt ReAct agent, LangChain's create_agent, and a plain loop.

1. ``ask_expert`` is a LangChain tool whose answers come from an ``AISPChatModel`` aligned to
   a "short, on-topic" reward (the aligned model as a tool backend).
2. The same kind of model drives three agents on a question that needs a tool
   (``get_weather``): LangGraph's ``create_react_agent``, ``langchain.agents.create_agent`` and a
   plain tool-calling loop. Tool calls are grammar-constrained, so every call the agent makes is
   valid; under ``tool_choice="auto"`` half of the samples are forced calls and a call is taken
   when its arguments come from the conversation (see docs/chat_model.md, "Tools"). After the
   tool result the model answers in prose, and the loop ends.

Runs offline (``pip install langgraph langchain`` for the first two agents; the plain loop needs
neither), on one CPU thread unless ``--num-threads N|all`` or ``LANGCHAIN_AISP_NUM_THREADS``;
``AISP_EXAMPLE_FAST=1`` (or ``--fast``) for the smallest budget. The last line is the answer of
the last agent.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from langchain_aisp import AISPChatModel
from langchain_aisp.engine.threads import set_cpu_threads
from langchain_aisp.rewards import Reward

FAST = "--fast" in sys.argv or os.environ.get("AISP_EXAMPLE_FAST") == "1"
QUESTION = "What is the weather in Paris?"


def short_on_topic(prompt: str, response: str) -> float:
    """Shared words with the question, minus length beyond 20 words; empty answers are worst."""
    question = {w.strip(".,?!").lower() for w in prompt.split() if len(w) > 3}
    words = [w.strip(".,?!").lower() for w in response.split()]
    if not words:
        return -5.0
    return len(question & set(words)) - 0.2 * max(0, len(words) - 20)


class GroundedAnswer(Reward):
    """Words shared with the user's question and the tool results, minus length beyond 20 words.

    A ``Reward`` subclass sees the whole conversation, so after a tool call it prefers the answer
    that uses what the tool returned.
    """

    name = "grounded_answer"

    def score(self, conversations: Sequence[Sequence[BaseMessage]], responses: Sequence[str]) -> list[float]:
        scores = []
        for conversation, response in zip(conversations, responses, strict=True):
            context = " ".join(m.text for m in conversation if isinstance(m, (HumanMessage, ToolMessage)))
            scores.append(short_on_topic(context, response))
        return scores


def _budget(**extra: object) -> dict[str, object]:
    return {
        "num_samples": 4,
        "num_iterations": 1 if FAST else 2,
        "max_tokens": 32 if FAST else 48,
        "seed": 0,
        **extra,
    }


expert_llm = AISPChatModel(reward=short_on_topic, **_budget())


@tool
def ask_expert(question: str) -> str:
    """Ask a domain expert a short factual question and get a short answer."""
    return expert_llm.invoke(question).text.strip()


@tool
def get_weather(location: str) -> str:
    """Get the current weather at a location."""
    return f"It is sunny and 21 degrees Celsius in {location}."


def agent_model() -> AISPChatModel:
    return AISPChatModel(reward=GroundedAnswer(), **_budget())


def plain_loop(question: str, max_steps: int = 4) -> list[BaseMessage]:
    """A LangChain tool-calling loop: call the model, run the tools it calls, stop at a prose answer."""
    llm = agent_model().bind_tools([get_weather])
    messages: list[BaseMessage] = [HumanMessage(question)]
    for _ in range(max_steps):
        reply = llm.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            result = get_weather.invoke(call)
            assert isinstance(result, ToolMessage)
            messages.append(result)
    return messages


def react_agent(question: str) -> list[BaseMessage]:
    """LangGraph's prebuilt ReAct agent."""
    import warnings

    from langgraph.prebuilt import create_react_agent

    with warnings.catch_warnings():  # moved to langchain.agents.create_agent in LangGraph 1.0; still the prebuilt
        warnings.simplefilter("ignore")
        agent = create_react_agent(agent_model(), [get_weather])
    return list(agent.invoke({"messages": [HumanMessage(question)]}, {"recursion_limit": 8})["messages"])


def langchain_agent(question: str) -> list[BaseMessage]:
    """LangChain's ``create_agent`` (LangGraph underneath)."""
    from langchain.agents import create_agent

    agent = create_agent(agent_model(), [get_weather])
    return list(agent.invoke({"messages": [HumanMessage(question)]}, {"recursion_limit": 8})["messages"])


def one_line(text: str) -> str:
    """A reply on one line (a small model may add a second paragraph after its answer)."""
    return " ".join(text.split())


def report(name: str, messages: list[BaseMessage]) -> None:
    calls = [c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    final = messages[-1]
    print(f"[{name}] tool calls: {[(c['name'], c['args']) for c in calls]}")
    print(f"[{name}] final answer: {one_line(final.text)}")


def main() -> None:
    direct = expert_llm.invoke("What is the capital of France?")
    print("tool backend answer:", direct.text.strip())
    print("tool backend reward:", direct.response_metadata["aisp"]["reward"])
    messages = plain_loop(QUESTION)
    report("plain loop", messages)
    for name, agent in (("langgraph create_react_agent", react_agent), ("langchain create_agent", langchain_agent)):
        try:
            messages = agent(QUESTION)
        except ImportError as exc:
            print(f"[{name}] skipped: {exc} (pip install langgraph langchain)")
            continue
        report(name, messages)
    print("answer:", one_line(messages[-1].text))


if __name__ == "__main__":
    # One CPU thread unless --num-threads N|all or LANGCHAIN_AISP_NUM_THREADS says otherwise (docs/performance.md).
    set_cpu_threads(sys.argv[sys.argv.index("--num-threads") + 1] if "--num-threads" in sys.argv[:-1] else None)
    main()
