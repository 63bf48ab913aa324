"""LCEL: prompt | AISPChatModel | parsers, aligned to a simple rule reward; the last line is the answer.

Runs offline on the embedded default model, on one CPU thread unless ``--num-threads N|all``
or ``LANGCHAIN_AISP_NUM_THREADS`` says otherwise. ``AISP_EXAMPLE_FAST=1`` (or ``--fast``)
uses the smallest budget (used by the tests).
"""

from __future__ import annotations

import argparse
import os

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableParallel

from langchain_aisp import AISPChatModel
from langchain_aisp.engine.threads import num_threads_arg, set_cpu_threads


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
    # One run gives the answer text and the AISP metadata of the message it came from.
    chain = prompt | llm | RunnableParallel(answer=StrOutputParser(), aisp=lambda m: m.response_metadata["aisp"])
    out = chain.invoke({"topic": "why is the sky blue?"})
    print("reward:", out["aisp"]["reward"])
    print("samples:", out["aisp"]["samples"])
    print("answer:", " ".join(out["answer"].split()))  # on one line: the last line is the answer


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="smallest budget")
    parser.add_argument("--num-threads", type=num_threads_arg, default=None, help="CPU threads: a count or 'all'")
    args = parser.parse_args()
    set_cpu_threads(args.num_threads)
    main(fast=args.fast or os.environ.get("AISP_EXAMPLE_FAST") == "1")
