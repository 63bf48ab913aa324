"""Resource bounds (issue 6): repeated calls do not grow memory, keep no graph, cache or hook.

Measured on the tiny random Llama: 100 consecutive ``invoke`` calls after a warm-up. RSS is
read with psutil after ``gc.collect()`` and glibc's ``malloc_trim`` (so freed memory that the
allocator merely kept does not count as a leak).
"""

from __future__ import annotations

import ctypes
import gc
import sys
from typing import Any

import psutil
import pytest
import torch
from transformers import DynamicCache

from langchain_aisp import AISPChatModel
from langchain_aisp.engine.aisp import run
from langchain_aisp.engine.config import AISPParams, SamplingParams

CALLS = 100
MAX_GROWTH_MB = 50.0
MAX_HALF_GROWTH_MB = 8.0


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def length_reward(prompt: str, response: str) -> float:
    return float(len(response))


def _trim() -> None:
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # pragma: no cover - not glibc
            pass


def _rss_mb() -> float:
    _trim()
    return psutil.Process().memory_info().rss / 2**20


def _live(kind: type) -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))


def _tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors_in(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors_in(v)]
    return []


def _hook_count(model: torch.nn.Module) -> int:
    return sum(
        len(getattr(sub, kind))
        for sub in model.modules()
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    )


def test_hundred_invocations_do_not_grow_memory(tiny_lm):
    model = AISPChatModel(
        method="aisp", model=tiny_lm, reward=length_reward, num_samples=4, num_iterations=2, max_tokens=8, seed=0
    )
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(CALLS)]
    for prompt in prompts[:10]:  # warm-up: allocator pools, tokenizer and template caches
        model.invoke(prompt)
    tensors_before, caches_before = _live(torch.Tensor), _live(DynamicCache)
    start = _rss_mb()
    samples = []
    for i, prompt in enumerate(prompts):
        message = model.invoke(prompt)
        assert message.response_metadata["aisp"]["samples"] == 8
        if i % 10 == 9:
            samples.append(_rss_mb())
    growth = samples[-1] - start
    print(f"RSS {start:.1f} MB after warm-up, every 10 calls: {[round(x - start, 1) for x in samples]} MB")
    half = samples[-1] - samples[len(samples) // 2 - 1]
    assert growth < MAX_GROWTH_MB, f"RSS grew by {growth:.1f} MB over {CALLS} calls: {samples}"
    assert half < MAX_HALF_GROWTH_MB, f"RSS keeps growing ({half:.1f} MB over the last {CALLS // 2} calls): {samples}"
    assert _live(DynamicCache) == caches_before == 0  # no KV cache outlives its call
    assert _live(torch.Tensor) <= tensors_before  # no tensor accumulates per call
    assert _hook_count(tiny_lm.model) == 0


def test_decoding_runs_under_inference_mode_and_keeps_no_graph(tiny_lm, encode):
    modes: list[tuple[bool, bool]] = []

    def record(_module, _args, _kwargs):
        modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))

    handle = tiny_lm.body.register_forward_pre_hook(record, with_kwargs=True)
    try:
        results = run(
            tiny_lm,
            [encode("Name a fruit.")],
            lambda _i, texts: [float(len(t)) for t in texts],
            AISPParams(method="aisp", num_samples=2, num_iterations=2),
            SamplingParams(max_tokens=4),
            seed=0,
        )
    finally:
        handle.remove()
    assert modes and all(inference and not grad for inference, grad in modes)  # prefill and every decode step
    assert _hook_count(tiny_lm.model) == 0
    assert all(p.grad is None for p in tiny_lm.model.parameters())
    assert torch.is_grad_enabled()  # the caller's autograd mode is restored
    result = results[0]
    for name, value in vars(result).items():  # plain Python values: nothing can hold a graph or a device buffer
        if name in ("U", "U_mass"):  # the final control, for a control memory: a small detached CPU tensor
            assert value.device.type == "cpu" and not value.requires_grad and value.grad_fn is None
            assert value.numel() <= 4 * tiny_lm.hidden_size
        else:
            assert not _tensors_in(value)


def test_chat_metadata_holds_no_tensors(tiny_lm):
    model = AISPChatModel(
        method="aisp", model=tiny_lm, reward=length_reward, num_samples=2, num_iterations=2, max_tokens=4, seed=0
    )
    message = model.invoke("Hello")
    assert not _tensors_in(message.response_metadata)
    assert not _tensors_in(dict(message.usage_metadata or {}))
