"""RAG, offline: MiniLM embeddings in an InMemoryVectorStore retrieve the context, AISP aligns the answer to it.

The retriever embeds the documents with ``MiniLMEmbeddings`` (the shipped all-MiniLM-L6-v2, no
download); the retrieved documents go into the system message; the reward prefers answers close
to that context (``EmbeddingSimilarityReward(target="context")``, the same MiniLM, loaded once).
The last line printed is the answer. Needs the ``rewards`` extra. One CPU thread unless
``--num-threads N|all`` or ``LANGCHAIN_AISP_NUM_THREADS``; ``AISP_EXAMPLE_FAST=1`` (or ``--fast``)
for the smallest budget.
"""

from __future__ import annotations

import argparse
import os

from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_aisp import AISPChatModel, MiniLMEmbeddings
from langchain_aisp.engine.threads import num_threads_arg, set_cpu_threads
from langchain_aisp.rewards import EmbeddingSimilarityReward

DOCUMENTS = [
    Document("The Eiffel Tower is in Paris and was completed in 1889 for the World's Fair.", id="eiffel"),
    Document("Mount Everest, at 8,849 metres, is the highest mountain above sea level.", id="everest"),
    Document("The Great Barrier Reef lies off the coast of Queensland, Australia.", id="reef"),
    Document("Python was created by Guido van Rossum and first released in 1991.", id="python"),
    Document("Honey bees communicate the location of flowers with a waggle dance.", id="bees"),
]

PROMPT = ChatPromptTemplate.from_messages(
    [("system", "Answer the question using only this context:\n{context}"), ("human", "{question}")]
)


def format_docs(docs: list[Document]) -> str:
    return "\n".join(f"- {d.page_content}" for d in docs)


def main(fast: bool) -> None:
    question = "When was the Eiffel Tower completed?"
    retriever = InMemoryVectorStore.from_documents(DOCUMENTS, MiniLMEmbeddings()).as_retriever(search_kwargs={"k": 2})
    reward = EmbeddingSimilarityReward(target="context")  # cosine(answer, retrieved context)
    llm = AISPChatModel(
        reward=reward,
        num_samples=2 if fast else 4,
        num_iterations=1 if fast else 2,
        max_tokens=24 if fast else 48,
        seed=0,
    )
    rag_chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | PROMPT | llm
    message = rag_chain.invoke(question)
    print("retrieved:", [d.id for d in retriever.invoke(question)])
    print("reward model:", reward.name)
    print("reward:", message.response_metadata["aisp"]["reward"])
    print("answer:", " ".join(message.text.split()))  # on one line: the last line is the answer


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="smallest budget")
    parser.add_argument("--num-threads", type=num_threads_arg, default=None, help="CPU threads: a count or 'all'")
    args = parser.parse_args()
    set_cpu_threads(args.num_threads)
    main(fast=args.fast or os.environ.get("AISP_EXAMPLE_FAST") == "1")
