"""LCEL: prompt | AISPChatModel | StrOutputParser, aligned to a simple rule reward.

Runs offline on the embedded default model. ``AISP_EXAMPLE_FAST=1`` (or ``--fast``)
uses the smallest budget (used by the tests).
"""

from __future__ import annotations

import os
import sys

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_aisp import AISPChatModel


def concise_and_on_topic(prompt: str, response: str) -> float:
    """+1 per word shared with the question, minus a penalty for answers longer than 25 words."""
    question = {w.strip(".,?!").lower() for w in prompt.split()}
    words = [w.strip(".,?!").lower() for w in response.split()]
    overlap = sum(1 for w in set(words) if w in question and len(w) > 3)
    return overlap - max(0, len(words) - 25) * 0.2 + (0.5 if words else -5.0)


def main(fast: bool) -> None:
    llm = AISPChatModel(
        reward=concise_and_on_topic,
        num_samples=2 if fast else 4,
        num_iterations=1 if fast else 2,
        max_tokens=24 if fast else 48,
        seed=0,
    )
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a concise assistant."), ("human", "Explain in one sentence: {topic}")]
    )
    chain = prompt | llm | StrOutputParser()
    answer = chain.invoke({"topic": "why is the sky blue?"})
    message = (prompt | llm).invoke({"topic": "why is the sky blue?"})
    print("answer:", answer.strip())
    print("reward:", message.response_metadata["aisp"]["reward"])
    print("samples:", message.response_metadata["aisp"]["samples"])


if __name__ == "__main__":
    main(fast="--fast" in sys.argv or os.environ.get("AISP_EXAMPLE_FAST") == "1")
