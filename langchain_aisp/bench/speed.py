"""Decoder speed against ``model.generate``: decoding throughput and the cost of a long prompt's prefill.

* :func:`throughput`: tokens/s of our KV-cache decoder (``decoding.decode``, prompt prefilled
  once, no control input) against ``model.generate(do_sample=True)`` on the same batch
  (the prompt repeated B times), both forced to generate exactly T tokens per row
  (``min_new_tokens = max_new_tokens = T`` for generate; EOS masked out through the head
  bias of a copy of the ``CausalLM`` for ours, which is what min_new_tokens does).
* :func:`prefill_cost`: BoN with N samples on a long RAG-style prompt through our engine
  (the prompt is prefilled once for all N) against ``generate`` with
  ``num_return_sequences=N`` (which prefills N copies of the prompt).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from langchain_aisp.aisp import run
from langchain_aisp.bench.measure import PeakMemory
from langchain_aisp.bench.prompts import rag_prompt, render
from langchain_aisp.config import AISPParams, SamplingParams
from langchain_aisp.decoding import Decoder, decode, prefill
from langchain_aisp.lm import CausalLM

THROUGHPUT_PROMPT = "Tell me about your favourite season and why you like it."


def _no_eos(lm: CausalLM) -> CausalLM:
    """A copy of ``lm`` that can never sample EOS (its head bias is -inf there): every row runs T tokens."""
    vocab = lm.head_weight.shape[0]
    bias = torch.zeros(vocab, dtype=lm.dtype, device=lm.device) if lm.head_bias is None else lm.head_bias.clone()
    bias[list(lm.eos_token_ids)] = float("-inf")  # (V,)
    return dataclasses.replace(lm, head_bias=bias)


def _sync(lm: CausalLM) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)


def _ours(lm: CausalLM, ids: Sequence[int], batch: int, tokens: int, seed: int) -> tuple[float, int]:
    """One timed call of our decoder (prefill once + decode ``batch`` rows): seconds and tokens generated."""
    generator = torch.Generator(device=lm.device).manual_seed(seed)
    decoder = Decoder.build(lm, SamplingParams(max_tokens=tokens))
    start = time.perf_counter()
    prefix = prefill(lm, ids)
    rows = torch.zeros(batch, dtype=torch.long, device=lm.device)  # (B,)
    V = torch.zeros(batch, 1, lm.hidden_size, device=lm.device)  # (B, tau + 1, d) with tau = 0: no control
    uniforms = torch.rand(batch, tokens, generator=generator, device=lm.device)  # (B, T)
    out = decode(decoder, [prefix], rows, V, uniforms)
    _sync(lm)
    return time.perf_counter() - start, int(out.lengths.sum())


@torch.inference_mode()
def _generate(lm: CausalLM, ids: Sequence[int], batch: int, tokens: int, repeat_input: bool) -> tuple[float, int]:
    """One timed ``model.generate`` call: seconds and tokens generated."""
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=lm.device)  # (1, L)
    kwargs: dict[str, Any] = {
        "do_sample": True,
        "max_new_tokens": tokens,
        "min_new_tokens": tokens,
        "pad_token_id": lm.pad_token_id,
        "top_k": 0,
        "top_p": 1.0,
        "temperature": 1.0,
    }
    if repeat_input:
        input_ids = input_ids.repeat(batch, 1)  # (B, L)
    else:
        kwargs["num_return_sequences"] = batch
    devices = [lm.device] if lm.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # generate samples from the global RNG: restore it afterwards
        start = time.perf_counter()
        out = lm.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        _sync(lm)
        seconds = time.perf_counter() - start
    return seconds, int((out.shape[1] - input_ids.shape[1]) * out.shape[0])


def throughput(
    lm: CausalLM,
    batch_sizes: Sequence[int] = (8, 32),
    tokens: int = 32,
    repeats: int = 3,
    prompt: str = THROUGHPUT_PROMPT,
) -> list[dict[str, Any]]:
    """Median tokens/s of our decoder and of ``generate`` per batch size.

    Each batch size gets one untimed warm-up call of both, then ``repeats`` timed calls
    that alternate between the two (so drifting machine load hits both alike).
    """
    ids = render(lm, prompt)
    forced = _no_eos(lm)
    rows: list[dict[str, Any]] = []
    for batch in batch_sizes:

        def call(name: str, seed: int, batch: int = batch) -> tuple[float, int]:
            if name == "ours":
                return _ours(forced, ids, batch, tokens, seed)
            return _generate(lm, ids, batch, tokens, repeat_input=True)

        entry: dict[str, Any] = {"batch": batch, "tokens": tokens, "prompt_tokens": len(ids), "repeats": repeats}
        times: dict[str, list[float]] = {"ours": [], "generate": []}
        counts: dict[str, int] = {}
        peaks: dict[str, float] = {"ours": 0.0, "generate": 0.0}
        for name in times:
            call(name, 12345)  # warm-up
        for r in range(repeats):
            for name in times:
                with PeakMemory(lm.device) as memory:
                    seconds, counts[name] = call(name, r)
                times[name].append(seconds)
                peaks[name] = max(peaks[name], memory.peak_mib)
        for name, values in times.items():
            median = statistics.median(values)
            entry[name] = {
                "seconds": values,
                "median_s": median,
                "generated_tokens": counts[name],
                "tokens_per_s": counts[name] / median if median > 0 else float("nan"),
                "ms_per_step": 1000 * median / tokens,
                "peak_mem_mib": peaks[name],
            }
        entry["speedup"] = entry["ours"]["tokens_per_s"] / entry["generate"]["tokens_per_s"]
        rows.append(entry)
    return rows


def prefill_cost(
    lm: CausalLM, prompt_tokens: int = 1024, samples: int = 8, tokens: int = 32, repeats: int = 1
) -> dict[str, Any]:
    """BoN-N on a long prompt: our engine (one prefill) vs ``generate`` with ``num_return_sequences=N``."""
    ids = rag_prompt(lm, prompt_tokens)
    forced = _no_eos(lm)
    params = AISPParams(method="bon", num_samples=samples, num_iterations=1)
    sampling = SamplingParams(max_tokens=tokens)

    def ours(seed: int) -> float:
        start = time.perf_counter()
        run(forced, [ids], lambda _i, texts: [float(len(t)) for t in texts], params, sampling, seed=seed)
        _sync(lm)
        return time.perf_counter() - start

    def prefill_only() -> float:
        start = time.perf_counter()
        prefill(lm, ids)
        _sync(lm)
        return time.perf_counter() - start

    prefill_only()  # warm-ups: the long prompt's shapes, both paths, 2 new tokens, untimed
    run(forced, [ids], lambda _i, texts: [0.0] * len(texts), params, SamplingParams(max_tokens=2), seed=0)
    _generate(lm, ids, 1, 2, repeat_input=False)
    result: dict[str, Any] = {"prompt_tokens": len(ids), "samples": samples, "tokens": tokens, "repeats": repeats}
    result["prefill_once_s"] = statistics.median(prefill_only() for _ in range(repeats))
    result["ours_s"] = statistics.median(ours(r) for r in range(repeats))
    result["generate_s"] = statistics.median(
        _generate(lm, ids, samples, tokens, repeat_input=False)[0] for _ in range(repeats)
    )
    result["speedup"] = result["generate_s"] / result["ours_s"] if result["ours_s"] > 0 else float("nan")
    return result


def throughput_markdown(rows: Sequence[dict[str, Any]], model: str) -> str:
    lines = [
        f"Decoding throughput on `{model}` (exactly T new tokens per row, median of repeats):",
        "",
        "| batch | T | ours tok/s | ours ms/step | generate tok/s | generate ms/step | ours / generate |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['tokens']} | {r['ours']['tokens_per_s']:.1f} | {r['ours']['ms_per_step']:.0f} "
            f"| {r['generate']['tokens_per_s']:.1f} | {r['generate']['ms_per_step']:.0f} | {r['speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def prefill_markdown(result: dict[str, Any], model: str) -> str:
    return (
        f"Long-prompt BoN on `{model}`: {result['prompt_tokens']}-token RAG prompt, N = {result['samples']} samples "
        f"of {result['tokens']} tokens.\n\n"
        "| prefill once | our engine (BoN, prefill once) | generate (num_return_sequences=N) | generate / ours |\n"
        "|---|---|---|---|\n"
        f"| {result['prefill_once_s']:.2f} s | {result['ours_s']:.2f} s | {result['generate_s']:.2f} s "
        f"| {result['speedup']:.2f}x |\n"
    )
