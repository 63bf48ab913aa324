"""Decoder speed: our decode paths against ``model.generate``, the bandwidth limit, AISP end to end, prefill.

* :func:`throughput`: ms/step and tokens/s per batch size of our eager decoder (``ours``,
  ``decoding.decode``), our static path (``ours_static``: preallocated KV cache, CUDA graphs on
  GPU), ``generate`` eager and ``generate(cache_implementation="static")`` (compiled by transformers
  on CUDA), all forced to exactly T new tokens (EOS masked through the head bias for ours, which is
  what ``min_new_tokens`` does for generate); peak memory; and the weights-only memory-bandwidth
  limit (parameter bytes / bandwidth).
* :func:`aisp_latency`: one prompt, AISP / BoN ``n x k`` end to end (prefill, k decoding rounds,
  scoring, updates) per decode path.
* :func:`batched_wall_clock`: Batched AISP over many prompts against BoN at the same budget.
* :func:`prefill_cost`: BoN-N on a long RAG prompt, prefilled once, against ``generate`` with
  ``num_return_sequences=N``.
* :func:`random_weights_lm`: a random-init Llama of a named shape with the default tokenizer, built
  directly on the device in its dtype (nothing is downloaded).

Nothing here imports langchain-core: the GPU check (``scripts/gpu_check.sh``) runs it with torch and
transformers alone.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from langchain_aisp.bench.cost_meters import PeakMemory
from langchain_aisp.bench.prompts import render
from langchain_aisp.engine.aisp import run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.decode.eager import Decoder, decode, prefill
from langchain_aisp.engine.decode.select import DecodeFn, select_decode
from langchain_aisp.engine.decode.static import clear_static_cache, decode_static, static_graph_stats
from langchain_aisp.engine.lm import CausalLM

THROUGHPUT_PROMPT = "Tell me about your favourite season and why you like it."
MIB = 1024 * 1024

VARIANTS = ("ours", "ours_static", "ours_static_compiled", "ours_auto", "generate", "generate_static")
"""``ours``: the eager decoder; ``ours_static``: the static path; ``ours_static_compiled``: the static
path with its step compiled by inductor before capture; ``ours_auto``: the default path
(``decoding="auto"``: compiled on CUDA where the compile cache holds the bucket, e.g. after
``warmup``, static otherwise; eager on CPU); ``generate``: transformers eager; ``generate_static``:
``generate(cache_implementation="static")`` (transformers compiles it on CUDA)."""
DEFAULT_VARIANTS_CUDA = ("ours", "ours_static", "generate", "generate_static")
DEFAULT_VARIANTS_CPU = ("ours", "ours_static", "generate")

RANDOM_SHAPES: dict[str, dict[str, Any]] = {
    "135M": {  # SmolLM2-135M
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "tie_word_embeddings": True,
    },
    "1.7B": {  # SmolLM2-1.7B
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "tie_word_embeddings": True,
    },
    "8B": {  # Llama-3-8B body (the default tokenizer's 49,152-token vocabulary)
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
    },
    "tiny": {  # for smoke runs of the instrument itself
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
}

KNOWN_BANDWIDTH_GBPS: tuple[tuple[str, float], ...] = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("L4", 300.0),
    ("A10G", 600.0),
    ("RTX 4090", 1008.0),
)
"""Datasheet memory bandwidth (GB/s) by a substring of ``torch.cuda.get_device_name()``, first match wins."""


# --- models, bandwidth ------------------------------------------------------------------


def random_weights_lm(
    shape: str,
    tokenizer: str | None = None,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    seed: int = 0,
) -> CausalLM:
    """A random-init Llama of ``shape`` (a key of RANDOM_SHAPES) with the default model's tokenizer.

    The weights are created directly on the device in the resolved dtype (bf16 on CUDA); the global
    RNG is left as it was. ``tokenizer`` is a folder with the tokenizer files (default: the embedded
    default model's).
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from langchain_aisp.engine.lm import resolve_device, resolve_dtype, wrap_model

    if shape not in RANDOM_SHAPES:
        raise ValueError(f"random-weights shape must be one of {sorted(RANDOM_SHAPES)}, got {shape!r}")
    if tokenizer is None:
        from langchain_aisp.engine.default_model import ensure_default_model

        tokenizer = str(ensure_default_model())
    tok = AutoTokenizer.from_pretrained(tokenizer)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    config = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=8192,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **RANDOM_SHAPES[shape],
    )
    devices = [resolved_device] if resolved_device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(resolved_device):
        torch.manual_seed(seed)
        model = LlamaForCausalLM._from_config(config, dtype=resolved_dtype)
    return wrap_model(model, tok, name=f"random-llama-{shape}")


def param_bytes(lm: CausalLM) -> int:
    """Bytes of the model's parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in lm.model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def device_bandwidth(device: torch.device, override_gbps: float | None = None) -> tuple[float | None, str]:
    """(GB/s, where it came from): the override, else the datasheet figure of a known card, else None."""
    if override_gbps is not None:
        if not override_gbps > 0:
            raise ValueError(f"bandwidth must be > 0 GB/s, got {override_gbps}")
        return float(override_gbps), "given"
    if device.type != "cuda":
        return None, "unknown for CPU (pass --bandwidth-gbps)"
    name = torch.cuda.get_device_name(device)
    for key, gbps in KNOWN_BANDWIDTH_GBPS:
        if key in name:
            return gbps, f"datasheet {name}"
    return None, f"unknown card {name!r} (pass --bandwidth-gbps)"


def measure_copy_bandwidth(device: torch.device, gib: float = 2.0, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written), median of ``repeats``."""
    n = int(gib * (1 << 30)) // 2
    src = torch.randn(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1000)
    del src, dst
    return 2 * n * 2 / statistics.median(times) / 1e9


# --- the timed calls ------------------------------------------------------------------------


def _no_eos(lm: CausalLM) -> CausalLM:
    """A copy of ``lm`` that can never sample EOS (its head bias is -inf there): every row runs T tokens."""
    vocab = lm.head_weight.shape[0]
    bias = torch.zeros(vocab, dtype=lm.dtype, device=lm.device) if lm.head_bias is None else lm.head_bias.clone()
    bias[list(lm.eos_token_ids)] = float("-inf")  # (V,)
    return dataclasses.replace(lm, head_bias=bias)


def _sync(lm: CausalLM) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)


def _ours(
    lm: CausalLM, ids: Sequence[int], batch: int, tokens: int, seed: int, decode_fn: DecodeFn = decode
) -> tuple[float, int]:
    """One timed call of our decoder (prefill once + decode ``batch`` rows): seconds and tokens generated."""
    generator = torch.Generator(device=lm.device).manual_seed(seed)
    decoder = Decoder.build(lm, SamplingParams(max_tokens=tokens))
    start = time.perf_counter()
    prefix = prefill(lm, ids)
    rows = torch.zeros(batch, dtype=torch.long, device=lm.device)  # (B,)
    V = torch.zeros(batch, 1, lm.hidden_size, device=lm.device)  # (B, tau + 1, d) with tau = 0: no control
    uniforms = torch.rand(batch, tokens, generator=generator, device=lm.device)  # (B, T)
    out = decode_fn(decoder, [prefix], rows, V, uniforms)
    _sync(lm)
    return time.perf_counter() - start, int(out.lengths.sum())


@torch.inference_mode()
def _generate(
    lm: CausalLM, ids: Sequence[int], batch: int, tokens: int, repeat_input: bool, static: bool = False
) -> tuple[float, int]:
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
    if static:
        kwargs["cache_implementation"] = "static"
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


def _generate_seeded(
    lm: CausalLM, ids: Sequence[int], batch: int, tokens: int, static: bool, _seed: int
) -> tuple[float, int]:
    return _generate(lm, ids, batch, tokens, repeat_input=True, static=static)


def _peak_total_mib(lm: CausalLM) -> float:
    return torch.cuda.max_memory_allocated(lm.device) / MIB if lm.device.type == "cuda" else float("nan")


def throughput(
    lm: CausalLM,
    batch_sizes: Sequence[int] = (8, 32),
    tokens: int = 32,
    repeats: int = 3,
    prompt: str = THROUGHPUT_PROMPT,
    variants: Sequence[str] | None = None,
    bandwidth_gbps: float | None = None,
) -> list[dict[str, Any]]:
    """Median ms/step and tokens/s per batch size and variant (see VARIANTS), peak memory, bandwidth limit.

    Each batch size gets one untimed first call per variant (its time is kept as ``first_call_s``:
    graph capture, compilation), then ``repeats`` timed calls that alternate between the variants
    (so drifting machine load hits all alike). The static path's cached buckets are freed before
    each batch size, so its memory figures include its own cache and graph pool: on CUDA
    ``peak_working_mib`` is the peak allocated memory above what was allocated when the batch size
    started (the weights), ``peak_mem_mib`` the peak above the level at the start of each timed call.
    """
    chosen = tuple(variants or (DEFAULT_VARIANTS_CUDA if lm.device.type == "cuda" else DEFAULT_VARIANTS_CPU))
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown throughput variants {unknown}; choose from {list(VARIANTS)}")
    ids = render(lm, prompt)
    forced = _no_eos(lm)
    weights = param_bytes(lm)
    gbps, source = device_bandwidth(lm.device, bandwidth_gbps)
    limit_ms = 1000 * weights / (gbps * 1e9) if gbps else None
    rows: list[dict[str, Any]] = []
    for batch in batch_sizes:
        calls: dict[str, Callable[[int], tuple[float, int]]] = {
            "ours": functools.partial(_ours, forced, ids, batch, tokens),
            "ours_static": functools.partial(_ours, forced, ids, batch, tokens, decode_fn=decode_static),
            "ours_static_compiled": functools.partial(
                _ours, forced, ids, batch, tokens, decode_fn=functools.partial(decode_static, compile_step=True)
            ),
            "ours_auto": functools.partial(
                _ours, forced, ids, batch, tokens, decode_fn=select_decode(forced, "auto")[0]
            ),
            "generate": functools.partial(_generate_seeded, lm, ids, batch, tokens, False),
            "generate_static": functools.partial(_generate_seeded, lm, ids, batch, tokens, True),
        }
        entry: dict[str, Any] = {
            "batch": batch,
            "tokens": tokens,
            "prompt_tokens": len(ids),
            "repeats": repeats,
            "param_bytes": weights,
            "bandwidth_gbps": gbps,
            "bandwidth_source": source,
            "limit_ms_per_step": limit_ms,
        }
        clear_static_cache(forced)
        base_mib = torch.cuda.memory_allocated(lm.device) / MIB if lm.device.type == "cuda" else float("nan")
        times: dict[str, list[float]] = {name: [] for name in chosen}
        counts: dict[str, int] = {}
        peaks: dict[str, float] = dict.fromkeys(chosen, 0.0)
        totals: dict[str, float] = dict.fromkeys(chosen, 0.0)
        first: dict[str, float] = {}
        for name in chosen:
            first[name] = calls[name](12345)[0]  # warm-up: capture, compilation, allocator
        for r in range(repeats):
            for name in chosen:
                with PeakMemory(lm.device) as memory:
                    seconds, counts[name] = calls[name](r)
                times[name].append(seconds)
                peaks[name] = max(peaks[name], memory.peak_mib)
                totals[name] = max(totals[name], _peak_total_mib(lm))
        for name, values in times.items():
            median = statistics.median(values)
            entry[name] = {
                "seconds": values,
                "median_s": median,
                "first_call_s": first[name],
                "generated_tokens": counts[name],
                "tokens_per_s": counts[name] / median if median > 0 else float("nan"),
                "ms_per_step": 1000 * median / tokens,
                "peak_mem_mib": peaks[name],
                "peak_total_mib": totals[name],
                "peak_working_mib": totals[name] - base_mib,  # everything above the weights (and other models)
            }
        if {"ours_static", "ours_static_compiled", "ours_auto"} & set(chosen):
            entry["static_buckets"] = static_graph_stats(forced)
        if "ours" in chosen and "generate" in chosen:
            entry["speedup"] = entry["ours"]["tokens_per_s"] / entry["generate"]["tokens_per_s"]
        if "ours_static" in chosen and "ours" in chosen:
            entry["static_speedup"] = entry["ours_static"]["tokens_per_s"] / entry["ours"]["tokens_per_s"]
        rows.append(entry)
    return rows


def _reward(_indices: Sequence[int], texts: Sequence[str]) -> list[float]:
    """A cheap stand-in reward for timing: distinct words per response."""
    return [float(len(set(t.split()))) for t in texts]


def aisp_latency(
    lm: CausalLM,
    tokens: int = 64,
    repeats: int = 3,
    num_samples: int = 8,
    num_iterations: int = 4,
    decodings: Sequence[str] = ("eager", "static"),
    methods: Sequence[str] = ("aisp", "bon"),
    prompt: str = THROUGHPUT_PROMPT,
) -> list[dict[str, Any]]:
    """Seconds for one answer end to end (``run`` on one prompt, exactly ``tokens`` per sample), per method and path."""
    ids = render(lm, prompt)
    forced = _no_eos(lm)
    sampling = SamplingParams(max_tokens=tokens)
    cells = [(m, d) for m in methods for d in decodings]
    timings: dict[tuple[str, str], list[float]] = {cell: [] for cell in cells}
    peaks: dict[tuple[str, str], float] = dict.fromkeys(cells, 0.0)
    first: dict[tuple[str, str], float] = {}

    def call(method: str, decoding: str, seed: int) -> float:
        params = AISPParams(method=method, num_samples=num_samples, num_iterations=num_iterations)  # type: ignore[arg-type]
        start = time.perf_counter()
        run(forced, [ids], _reward, params, sampling, seed=seed, decoding=decoding)
        _sync(lm)
        return time.perf_counter() - start

    for cell in cells:
        first[cell] = call(*cell, seed=12345)
    for r in range(repeats):
        for cell in cells:
            with PeakMemory(lm.device) as memory:
                timings[cell].append(call(*cell, seed=r))
            peaks[cell] = max(peaks[cell], memory.peak_mib)
    return [
        {
            "method": m,
            "decoding": d,
            "num_samples": num_samples,
            "num_iterations": num_iterations,
            "tokens": tokens,
            "seconds": timings[(m, d)],
            "median_s": statistics.median(timings[(m, d)]),
            "first_call_s": first[(m, d)],
            "peak_mem_mib": peaks[(m, d)],
        }
        for m, d in cells
    ]


def batched_wall_clock(
    lm: CausalLM,
    prompts: int = 16,
    tokens: int = 64,
    repeats: int = 2,
    splits: Sequence[tuple[str, int, int]] = (("aisp", 8, 4), ("bon", 8, 4), ("bon", 32, 1)),
    decoding: str = "auto",
    max_batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Wall-clock of one ``run`` over ``prompts`` shipped prompts per (method, n, k), interleaved repeats."""
    from langchain_aisp.bench.prompts import load_prompts

    shipped = load_prompts()
    texts = [shipped[i % len(shipped)].user_text for i in range(prompts)]
    encoded = [render(lm, t) for t in texts]
    forced = _no_eos(lm)
    sampling = SamplingParams(max_tokens=tokens)

    def call(split: tuple[str, int, int], seed: int) -> float:
        method, n, k = split
        params = AISPParams(method=method, num_samples=n, num_iterations=k)  # type: ignore[arg-type]
        start = time.perf_counter()
        run(forced, encoded, _reward, params, sampling, seed=seed, max_batch_size=max_batch_size, decoding=decoding)
        _sync(lm)
        return time.perf_counter() - start

    timings: dict[tuple[str, int, int], list[float]] = {s: [] for s in splits}
    first = {s: call(s, 12345) for s in splits}
    for r in range(repeats):
        for s in splits:
            timings[s].append(call(s, r))
    return [
        {
            "method": m,
            "num_samples": n,
            "num_iterations": k,
            "prompts": prompts,
            "tokens": tokens,
            "decoding": decoding,
            "max_batch_size": max_batch_size,
            "seconds": timings[(m, n, k)],
            "median_s": statistics.median(timings[(m, n, k)]),
            "first_call_s": first[(m, n, k)],
        }
        for m, n, k in splits
    ]


def serving_throughput(
    lm: CausalLM,
    clients: int = 16,
    tokens: int = 64,
    num_samples: int = 4,
    num_iterations: int = 2,
    methods: Sequence[str] = ("aisp", "bon"),
    decoding: str = "auto",
    max_batch_size: int = 64,
    repeats: int = 1,
) -> list[dict[str, Any]]:
    """What the server's cross-request batching buys, at the engine: ``clients`` requests answered by one
    Batched AISP ``run`` (the server's batching round) against ``clients`` runs one after another.

    Per method (AISP and BoN at the same ``num_samples`` x ``num_iterations``): answers/s and generated
    tokens/s of both, and their ratio; repeats interleave the two. The HTTP layer is not included.
    """
    from langchain_aisp.bench.prompts import load_prompts

    shipped = load_prompts()
    encoded = [render(lm, shipped[i % len(shipped)].user_text) for i in range(clients)]
    forced = _no_eos(lm)
    sampling = SamplingParams(max_tokens=tokens)

    def call(method: str, prompts: list[list[int]], seed: int) -> float:
        params = AISPParams(method=method, num_samples=num_samples, num_iterations=num_iterations)  # type: ignore[arg-type]
        start = time.perf_counter()
        run(forced, prompts, _reward, params, sampling, seed=seed, max_batch_size=max_batch_size, decoding=decoding)
        _sync(lm)
        return time.perf_counter() - start

    cells: list[dict[str, Any]] = []
    for method in methods:
        call(method, encoded[:1], 12345)  # warm-up: buckets, capture
        call(method, encoded, 12345)
        batched: list[float] = []
        sequential: list[float] = []
        for r in range(repeats):
            order = [("batched", batched), ("sequential", sequential)]
            for name, times in order if r % 2 == 0 else order[::-1]:
                if name == "batched":
                    times.append(call(method, encoded, r))
                else:
                    times.append(sum(call(method, [ids], r) for ids in encoded))
        per_answer = num_samples * num_iterations * tokens
        b, q = statistics.median(batched), statistics.median(sequential)
        cells.append(
            {
                "method": method,
                "clients": clients,
                "num_samples": num_samples,
                "num_iterations": num_iterations,
                "tokens": tokens,
                "decoding": decoding,
                "max_batch_size": max_batch_size,
                "batched_s": batched,
                "sequential_s": sequential,
                "batched_answers_per_s": clients / b,
                "sequential_answers_per_s": clients / q,
                "batched_tokens_per_s": clients * per_answer / b,
                "sequential_tokens_per_s": clients * per_answer / q,
                "ratio": q / b,
            }
        )
    return cells


def prefill_cost(
    lm: CausalLM, prompt_tokens: int = 1024, samples: int = 8, tokens: int = 32, repeats: int = 1
) -> dict[str, Any]:
    """BoN-N on a long prompt: our engine (one prefill) vs ``generate`` with ``num_return_sequences=N``."""
    from langchain_aisp.bench.prompts import rag_prompt

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


# --- markdown -------------------------------------------------------------------------------

_LABELS = {
    "ours": "ours eager",
    "ours_static": "ours static",
    "ours_static_compiled": "ours static compiled",
    "ours_auto": "ours default (auto)",
    "generate": "generate eager",
    "generate_static": "generate static",
}


def throughput_markdown(rows: Sequence[dict[str, Any]], model: str) -> str:
    variants = [v for v in VARIANTS if rows and v in rows[0]]
    first = rows[0] if rows else {}
    limit = first.get("limit_ms_per_step")
    lines = [
        f"Decoding throughput on `{model}` (exactly T new tokens per row, median of repeats; ms/step = "
        "call time / T, prefill included):",
        "",
        f"Weights {first.get('param_bytes', 0) / 1e9:.2f} GB; bandwidth "
        + (f"{first['bandwidth_gbps']:.0f} GB/s ({first['bandwidth_source']})" if limit else "unknown")
        + (f"; weights-only limit {limit:.2f} ms/step." if limit else "."),
        "",
        "| batch | T | "
        + " | ".join(f"{_LABELS[v]} ms/step (tok/s)" for v in variants)
        + " | peak MiB "
        + " / ".join(_LABELS[v] for v in variants)
        + " |",
        "|---|---|" + "---|" * len(variants) + "---|",
    ]
    for r in rows:
        cells = [f"{r[v]['ms_per_step']:.2f} ({r[v]['tokens_per_s']:.0f})" for v in variants]
        peaks = " / ".join(f"{r[v]['peak_mem_mib']:.0f}" for v in variants)
        lines.append(f"| {r['batch']} | {r['tokens']} | " + " | ".join(cells) + f" | {peaks} |")
    firsts = [f"{_LABELS[v]} {max(r[v]['first_call_s'] for r in rows):.1f} s" for v in variants if rows]
    if firsts:
        lines += ["", "Slowest first call (capture / compilation / warm-up): " + ", ".join(firsts) + "."]
    return "\n".join(lines) + "\n"


def aisp_markdown(cells: Sequence[dict[str, Any]], model: str) -> str:
    lines = [
        f"One answer end to end on `{model}` (one prompt, exactly T tokens per sample, median of repeats):",
        "",
        "| method | n x k | T | decoding | seconds | first call s |",
        "|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c['method']} | {c['num_samples']}x{c['num_iterations']} | {c['tokens']} | {c['decoding']} "
            f"| {c['median_s']:.3f} | {c['first_call_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def batched_markdown(cells: Sequence[dict[str, Any]], model: str) -> str:
    base = next((c["median_s"] for c in cells if c["method"] == "bon" and c["num_iterations"] > 1), None)
    lines = [
        f"Batched over {cells[0]['prompts'] if cells else 0} prompts on `{model}` (decoding "
        f"{cells[0]['decoding'] if cells else ''}, max_batch_size {cells[0]['max_batch_size'] if cells else ''}):",
        "",
        "| method | n x k | seconds (median) | / BoN n x k |",
        "|---|---|---|---|",
    ]
    for c in cells:
        ratio = f"{c['median_s'] / base:.3f}" if base else "-"
        lines.append(f"| {c['method']} | {c['num_samples']}x{c['num_iterations']} | {c['median_s']:.2f} | {ratio} |")
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
