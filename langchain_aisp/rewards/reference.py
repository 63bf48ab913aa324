"""Similarity to a reference answer per prompt: a reward with hidden targets."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from langchain_aisp.rewards.base import Conversation, prompt_text
from langchain_aisp.rewards.embedding import EmbeddingSimilarityReward

__all__ = ["ReferenceSimilarityReward"]


class ReferenceSimilarityReward(EmbeddingSimilarityReward):
    """Cosine similarity (in [-1, 1]) between the response and the reference answer of its prompt.

    ``references`` maps a prompt's text (:func:`~langchain_aisp.rewards.prompt_text` of the
    conversation: the last human message) to its reference answer. The references are hidden
    targets: the model never sees them, only the reward does, so steering cannot copy them from
    the prompt. A conversation whose prompt has no reference raises ValueError. Embeddings as in
    :class:`~langchain_aisp.rewards.EmbeddingSimilarityReward` (all-MiniLM-L6-v2 by default); the
    other keyword arguments are its own.
    """

    def __init__(self, references: Mapping[str, str], *, name: str = "reference", **kwargs: Any) -> None:
        if not references:
            raise ValueError("references must map at least one prompt text to its reference answer, got none")
        bad = [p for p, r in references.items() if not isinstance(r, str) or not r.strip()]
        if bad:
            raise ValueError(f"every reference must be a non-empty string; empty or not a string for {bad[:3]!r}")
        super().__init__("prompt", name=name, **kwargs)
        self.references = dict(references)

    def target_text(self, conversation: Conversation, index: int = 0) -> str:
        """The reference answer of this conversation's prompt."""
        prompt = prompt_text(conversation)
        try:
            return self.references[prompt]
        except KeyError:
            raise ValueError(
                f"{self.name}: no reference answer for conversation {index} (prompt {prompt[:60]!r}); "
                f"the reward knows {len(self.references)} prompts"
            ) from None

    @classmethod
    def from_jsonl(cls, path: str | Path, prompts: Mapping[str, str], **kwargs: Any) -> ReferenceSimilarityReward:
        """Load ``{"id": ..., "reference": ...}`` lines; ``prompts`` maps each id to its prompt text.

        Lines whose id is not in ``prompts`` are skipped; a prompt without a line has no reference (scoring
        a response to it raises ValueError).
        """
        references: dict[str, str] = {}
        with open(path, encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if "id" not in row or "reference" not in row:
                    raise ValueError(f"{path}:{lineno}: expected an object with 'id' and 'reference', got {row!r}")
                key = str(row["id"])
                if key in prompts:
                    references[prompts[key]] = row["reference"]
        return cls(references, **kwargs)
