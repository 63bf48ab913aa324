"""The aligned model as the backend of an agent's tool, and as the agent's own model.

1. ``ask_expert`` is a LangChain tool whose answers come from an ``AISPChatModel``
   aligned to a "short, on-topic" reward.
2. A small agent loop uses an ``AISPChatModel`` with ``bind_tools`` as its model: the
   first step forces a call of ``ask_expert`` (``tool_choice``; the call is prefilled
   and its validity rewarded), the tool runs, and the second step answers from the
   tool result (a conversation ending in a ``ToolMessage``). If the small default model
   writes an invalid call, it shows up in ``invalid_tool_calls`` and the loop says so.

Runs offline, on one CPU thread unless ``--num-threads N|all`` or ``LANGCHAIN_AISP_NUM_THREADS``;
``AISP_EXAMPLE_FAST=1`` (or ``--fast``) for the smallest budget.
"""

from __future__ import annotations

import os
import sys

from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from langchain_aisp import AISPChatModel
from langchain_aisp.threads import set_cpu_threads

FAST = "--fast" in sys.argv or os.environ.get("AISP_EXAMPLE_FAST") == "1"


def short_on_topic(prompt: str, response: str) -> float:
    """Shared words with the question, minus length beyond 20 words; empty answers are worst."""
    question = {w.strip(".,?!").lower() for w in prompt.split() if len(w) > 3}
    words = [w.strip(".,?!").lower() for w in response.split()]
    if not words:
        return -5.0
    return len(question & set(words)) - 0.2 * max(0, len(words) - 20)


def _budget(**extra: object) -> dict[str, object]:
    return {
        "num_samples": 2 if FAST else 4,
        "num_iterations": 1 if FAST else 2,
        "max_tokens": 24 if FAST else 40,
        "seed": 0,
        **extra,
    }


expert_llm = AISPChatModel(reward=short_on_topic, **_budget())


@tool
def ask_expert(question: str) -> str:
    """Ask a domain expert a short factual question and get a short answer."""
    return expert_llm.invoke(question).text.strip()


def run_agent(user_request: str) -> list[BaseMessage]:
    agent = AISPChatModel(reward=short_on_topic, **_budget(max_tokens=48 if not FAST else 32))
    messages: list[BaseMessage] = [HumanMessage(user_request)]
    step = agent.bind_tools([ask_expert], tool_choice="ask_expert").invoke(messages)
    messages.append(step)
    print("agent tool calls:", step.tool_calls)
    if step.invalid_tool_calls:
        print("agent invalid tool calls:", [c["error"] for c in step.invalid_tool_calls])
        return messages
    for call in step.tool_calls:
        result = ask_expert.invoke(call)
        assert isinstance(result, ToolMessage)
        print("tool result:", result.content)
        messages.append(result)
    final = agent.bind_tools([ask_expert]).invoke(messages)
    messages.append(final)
    print("final answer:", final.text.strip())
    print("final reward:", final.response_metadata["aisp"]["reward"])
    return messages


def main() -> None:
    direct = expert_llm.invoke("What is the capital of France?")
    print("tool backend answer:", direct.text.strip())
    print("tool backend reward:", direct.response_metadata["aisp"]["reward"])
    run_agent("Use the expert to find out: what is the capital of France?")


if __name__ == "__main__":
    # One CPU thread unless --num-threads N|all or LANGCHAIN_AISP_NUM_THREADS says otherwise (README "Performance").
    set_cpu_threads(sys.argv[sys.argv.index("--num-threads") + 1] if "--num-threads" in sys.argv[:-1] else None)
    main()
