"""Paying the static path's first-call cost ahead: build, compile and capture the buckets a server will use.

:func:`warmup` decodes one dummy batch per (rows, max_tokens, prompt length) combination, so each bucket's
buffers are allocated, its body compiled (``decoding="compiled"``, or ``"auto"`` on CUDA) and its step
captured before the first request; compiled buckets are saved to the persistent compile cache
(:mod:`~langchain_aisp.engine.decode.compile_cache`), so the next process on this machine loads them
instead of compiling, and ``decoding="auto"`` takes the compiled path for them. Used by
``langchain-aisp warmup`` and ``AISPChatModel.warmup()``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from langchain_aisp.engine.config import SamplingParams
from langchain_aisp.engine.decode import compile_cache
from langchain_aisp.engine.decode.eager import Decoder, prefill
from langchain_aisp.engine.decode.select import resolve_decoding
from langchain_aisp.engine.decode.static import (
    cache_length,
    decode_static,
    rows_bucket,
    static_graph_stats,
    token_bucket,
)
from langchain_aisp.engine.lm import CausalLM

_log = logging.getLogger(__name__)

DEFAULT_ROWS = (8,)
"""Rows decoded together by default (``num_samples`` of one prompt at the default settings)."""
DEFAULT_MAX_TOKENS = (256,)
DEFAULT_PROMPT_TOKENS = (64,)


def _positive(name: str, values: Sequence[int]) -> list[int]:
    out = list(values)
    if not out or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in out):
        raise ValueError(f"{name} must be a non-empty sequence of integers >= 1, got {values!r}")
    return out


def warmup(
    lm: CausalLM,
    *,
    rows: Sequence[int] = DEFAULT_ROWS,
    max_tokens: Sequence[int] = DEFAULT_MAX_TOKENS,
    prompt_tokens: Sequence[int] = DEFAULT_PROMPT_TOKENS,
    decoding: str = "auto",
    sampling: SamplingParams | None = None,
) -> list[dict[str, Any]]:
    """Build every bucket the combinations of ``rows`` x ``max_tokens`` x ``prompt_tokens`` fall in.

    ``decoding``: ``"auto"`` (what a run with ``decoding="auto"`` would take: compiled on CUDA for
    verified models, nothing elsewhere), ``"compiled"`` (compile, capture, save to the compile cache),
    ``"static"`` (capture only) or ``"eager"`` (nothing to build). ``sampling`` gives the logit
    transforms of the calls to come (temperature, top-k/p; its ``max_tokens`` is replaced), since a
    captured step includes them. Returns one entry per distinct bucket: ``rows``, ``max_tokens``,
    ``prompt_tokens``, ``cache_len``, ``path`` ("compiled" or "static"), ``seconds`` and
    ``compile_cache`` ("hit": loaded from a previous warm-up, "miss": compiled here and saved, "" when
    not compiled).
    """
    rows_list = _positive("rows", rows)
    tokens_list = _positive("max_tokens", max_tokens)
    prompt_list = _positive("prompt_tokens", prompt_tokens)
    path = resolve_decoding(lm, decoding)
    if path == "eager":
        _log.info("warmup: decoding=%r takes the eager path on %s; nothing to build", decoding, lm.name)
        return []
    compile_step = path in ("compiled", "auto")
    if compile_step:
        compile_cache.prune_foreign()
    template = sampling or SamplingParams()
    generator = torch.Generator().manual_seed(0)
    done: set[tuple[int, int, int]] = set()
    results: list[dict[str, Any]] = []
    for n, T, P in itertools.product(rows_list, tokens_list, prompt_list):
        bucket = (rows_bucket(n), token_bucket(T), cache_length(P, token_bucket(T)))
        if bucket in done:
            continue
        done.add(bucket)
        start = time.perf_counter()
        decoder = Decoder.build(lm, dataclasses.replace(template, max_tokens=T))
        prefix = prefill(lm, [lm.pad_token_id] * P)
        V = torch.zeros(n, 1, lm.hidden_size)  # (B, 1, d): no control
        uniforms = torch.rand(n, T, generator=generator)  # (B, T)
        out = decode_static(decoder, [prefix], torch.zeros(n, dtype=torch.long), V, uniforms, compile_step=compile_step)
        if lm.device.type == "cuda":
            torch.cuda.synchronize(lm.device)
        stats = static_graph_stats(lm)[-1]  # the bucket just used is the most recent
        entry = {
            "rows": n,
            "max_tokens": T,
            "prompt_tokens": P,
            "cache_len": stats["cache_len"],
            "path": out.path,
            "seconds": time.perf_counter() - start,
            "compile_cache": stats["compile_cache"],
        }
        _log.info("warmup: %s", entry)
        results.append(entry)
    return results
