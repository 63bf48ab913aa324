"""Reward models: any Hugging Face ``AutoModelForSequenceClassification``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from langchain_aisp.engine.lm import resolve_device, resolve_dtype
from langchain_aisp.errors import ModelLoadError
from langchain_aisp.rewards.base import Conversation, Reward, prompt_text
from langchain_aisp.rewards.errors import check_lengths


class HFRewardModel(Reward):
    """Scores (prompt, response) with a sequence-classification reward model.

    ``model`` is a hub id or local folder (loaded with ``AutoModelForSequenceClassification``
    and ``AutoTokenizer``; nothing else is fetched, and ``trust_remote_code`` stays off
    unless passed) or an already loaded model, in which case ``tokenizer`` is required.

    Each sample is rendered with the tokenizer's chat template when it has one (a user
    turn holding :func:`prompt_text` of the conversation, an assistant turn holding the
    response), else as ``"prompt\\n\\nresponse"`` with the tokenizer's special tokens.
    Sequences longer than ``max_length`` tokens keep their last ``max_length`` tokens
    (the end of the response matters most to a reward head). Scoring runs under
    ``torch.inference_mode()`` in batches of ``batch_size``; identical samples are
    scored once per call.

    A head with one output returns that logit. A head with several outputs needs
    ``label``: an index or a name from ``config.id2label``; ``activation`` can turn the
    logits into a softmax or sigmoid probability first.

    A loaded model is moved to ``device``/``dtype`` only when they are given explicitly.
    A tokenizer without a pad token gets its EOS token as pad (and the model config the
    matching ``pad_token_id``), which many reward heads need to find the last token.
    """

    def __init__(
        self,
        model: str | Path | Any,
        tokenizer: Any = None,
        *,
        label: int | str | None = None,
        activation: Literal["none", "softmax", "sigmoid"] = "none",
        batch_size: int = 8,
        max_length: int | None = None,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        trust_remote_code: bool = False,
        use_chat_template: bool | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2
        ):
            raise ValueError(f"max_length must be None or an integer >= 2, got {max_length!r}")
        if activation not in ("none", "softmax", "sigmoid"):
            raise ValueError(f"activation must be 'none', 'softmax' or 'sigmoid', got {activation!r}")
        if isinstance(model, (str, Path)):
            self.model, self.tokenizer = self._load(model, tokenizer, device, dtype, trust_remote_code)
            default_name = str(model)
        else:
            if tokenizer is None:
                raise ValueError("HFRewardModel got a loaded model without its tokenizer; pass tokenizer=")
            self.model, self.tokenizer = model, tokenizer
            if device != "auto":
                self.model.to(device=resolve_device(device))
            if dtype != "auto":
                self.model.to(dtype=resolve_dtype(dtype, next(self.model.parameters()).device))
            default_name = getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
        self.model.eval()
        self.name = name or f"HFRewardModel({default_name})"
        self.batch_size = batch_size
        self.activation = activation
        self.label_index = self._resolve_label(label)
        self.max_length = max_length if max_length is not None else self._default_max_length()
        self.use_chat_template = (
            bool(getattr(self.tokenizer, "chat_template", None)) if use_chat_template is None else use_chat_template
        )
        if self.use_chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{self.name}: use_chat_template=True but the tokenizer has no chat template")
        self._ensure_pad_token()

    @staticmethod
    def _load(source: str | Path, tokenizer: Any, device: Any, dtype: Any, trust_remote_code: bool) -> tuple[Any, Any]:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        target = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, target)
        try:
            tok = (
                tokenizer
                if tokenizer is not None
                else AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
            )
            model = AutoModelForSequenceClassification.from_pretrained(
                str(source), dtype=torch_dtype, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load reward model {str(source)!r}: {exc}") from exc
        return model.to(target), tok

    def _resolve_label(self, label: int | str | None) -> int | None:
        config = self.model.config
        num_labels = int(getattr(config, "num_labels", 1))
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        if num_labels == 1:
            if label not in (None, 0) and label != id2label.get(0):
                raise ValueError(f"{self.name} has a single-output head; label must be None or 0, got {label!r}")
            return None
        described = f"{num_labels} labels {id2label}" if id2label else f"{num_labels} labels"
        if label is None:
            raise ValueError(
                f"{self.name} has a head with {described}; pass label= as an index in [0, {num_labels - 1}] "
                "or one of the label names"
            )
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            raise TypeError(f"label must be an int index or a label name, got {label!r}")
        if isinstance(label, int):
            if not 0 <= label < num_labels:
                raise ValueError(f"label index {label} is out of range for {self.name}: [0, {num_labels - 1}]")
            return label
        matches = [i for i, n in id2label.items() if n == label]
        if not matches:
            raise ValueError(f"unknown label {label!r} for {self.name}; it has {described}")
        return matches[0]

    def _default_max_length(self) -> int | None:
        limits = [
            getattr(self.tokenizer, "model_max_length", None),
            getattr(self.model.config, "max_position_embeddings", None),
        ]
        usable = [int(v) for v in limits if isinstance(v, int) and 1 < v < 1_000_000]
        return min(usable) if usable else None

    def _ensure_pad_token(self) -> None:
        tok = self.tokenizer
        if getattr(tok, "pad_token_id", None) is None:
            if getattr(tok, "eos_token", None) is None:
                raise ValueError(f"{self.name}: the tokenizer has neither a pad nor an EOS token to pad batches with")
            tok.pad_token = tok.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = tok.pad_token_id

    def render(self, prompt: str, response: str) -> list[int]:
        """The token ids the model scores for one (prompt, response) pair (before truncation)."""
        if self.use_chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                tokenize=False,
            )
            return list(self.tokenizer(text, add_special_tokens=False).input_ids)
        return list(self.tokenizer(f"{prompt}\n\n{response}", add_special_tokens=True).input_ids)

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        check_lengths(conversations, responses, self.name)
        pairs = [(prompt_text(c), r) for c, r in zip(conversations, responses, strict=True)]
        unique = list(dict.fromkeys(pairs))
        values: dict[tuple[str, str], float] = {}
        for start in range(0, len(unique), self.batch_size):
            chunk = unique[start : start + self.batch_size]
            values.update(zip(chunk, self._score_batch(chunk), strict=True))
        return [values[p] for p in pairs]

    def _score_batch(self, pairs: list[tuple[str, str]]) -> list[float]:
        ids = [self.render(p, r) for p, r in pairs]
        if self.max_length is not None:
            ids = [seq[-self.max_length :] for seq in ids]
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(
                input_ids=batch["input_ids"].to(device),  # (b, t)
                attention_mask=batch["attention_mask"].to(device),  # (b, t)
            ).logits.float()  # (b, num_labels)
        if self.activation == "softmax":
            logits = logits.softmax(dim=-1)  # (b, num_labels)
        elif self.activation == "sigmoid":
            logits = logits.sigmoid()  # (b, num_labels)
        column = logits[:, 0 if self.label_index is None else self.label_index]  # (b,)
        out = [float(v) for v in column.cpu().tolist()]
        if not all(math.isfinite(v) for v in out):
            raise ValueError(f"{self.name} produced non-finite scores {out} (check dtype={self.model.dtype})")
        return out
