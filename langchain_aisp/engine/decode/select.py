"""Which decode path a run takes: ``decoding`` = ``"auto"``, ``"static"``, ``"compiled"`` or ``"eager"``.

Resolved once per run by :func:`select_decode` (the engine loop calls it; nothing is decided per token):

* ``"eager"``: :func:`langchain_aisp.engine.decode.eager.decode` (every device, every model);
* ``"static"``: :func:`langchain_aisp.engine.decode.static.decode_static` (preallocated KV cache; on CUDA a
  captured graph per bucket);
* ``"compiled"``: the static path whose model body ``torch.compile`` fuses before capture (a first call of
  tens of seconds per bucket, paid once per machine through the persistent compile cache:
  :mod:`langchain_aisp.engine.decode.compile_cache`, :func:`langchain_aisp.engine.decode.warmup.warmup`);
* ``"auto"``: on CUDA, for the verified architectures, the static path that compiles a bucket when its
  compile is already paid (a valid compile-cache entry, e.g. after ``warmup``) and captures it uncompiled
  otherwise; eager on every other device or model. The path each decode took is
  ``DecodeOutput.path`` (``"compiled"``, ``"static"`` or ``"eager"``).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Protocol

import torch

from langchain_aisp.engine.config import DECODINGS
from langchain_aisp.engine.constraints import Matcher
from langchain_aisp.engine.decode.eager import DecodeOutput, Decoder, PromptPrefix, decode
from langchain_aisp.engine.decode.static import COMPILE_WHEN_WARM, decode_static, model_type, static_unsupported
from langchain_aisp.engine.lm import CausalLM

_log = logging.getLogger(__name__)

VERIFIED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
"""Architectures whose forward the static path is tested on (same tokens as the eager path);
``decoding="auto"`` uses the static path on CUDA only for these."""


class DecodeFn(Protocol):
    """The contract of :func:`langchain_aisp.engine.decode.eager.decode` that every decode path implements."""

    def __call__(
        self,
        decoder: Decoder,
        prefixes: Sequence[PromptPrefix],
        row_prompt: torch.Tensor,
        V: torch.Tensor,
        uniforms: torch.Tensor,
        matchers: Sequence[Matcher | None] | None = None,
        deadline: float = math.inf,
    ) -> DecodeOutput: ...


def resolve_decoding(lm: CausalLM, decoding: str) -> str:
    """The path ``decoding`` means for ``lm``: ``"auto"`` -> ``"auto"`` (CUDA, verified model) or ``"eager"``.

    ``"static"`` and ``"compiled"`` are checked (ValueError when the model cannot take them); a
    resolved ``"auto"`` is the static path that compiles the buckets whose compile is paid.
    """
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {list(DECODINGS)}, got {decoding!r}")
    if decoding == "eager":
        return "eager"
    reason = static_unsupported(lm)
    kind = model_type(lm)
    if decoding == "auto":
        if lm.device.type != "cuda":
            return "eager"
        if reason is not None or kind not in VERIFIED_MODEL_TYPES:
            _log.info(
                "decoding='auto' uses the eager path for %s: %s",
                lm.name,
                reason or f"model type {kind!r} is not among the verified {sorted(VERIFIED_MODEL_TYPES)}",
            )
            return "eager"
        return "auto"
    if reason is not None:
        raise ValueError(f"decoding={decoding!r} is not available for {lm.name}: {reason}; use decoding='eager'")
    if kind not in VERIFIED_MODEL_TYPES:
        _log.warning(
            "decoding=%r on model type %r, which is not among the verified %s: compare with decoding='eager'",
            decoding,
            kind,
            sorted(VERIFIED_MODEL_TYPES),
        )
    return decoding


def select_decode(lm: CausalLM, decoding: str) -> tuple[DecodeFn, str]:
    """The decode function for a run (resolved once) and the resolved path name.

    The name is ``"eager"``, ``"static"``, ``"compiled"`` or ``"auto"`` (static or compiled per bucket;
    each decode's ``DecodeOutput.path`` says which).
    """
    path = resolve_decoding(lm, decoding)
    functions: dict[str, DecodeFn] = {
        "static": decode_static,
        "compiled": functools.partial(decode_static, compile_step=True),
        "auto": functools.partial(decode_static, compile_step=COMPILE_WHEN_WARM),
        "eager": decode,
    }
    return functions[path], path
