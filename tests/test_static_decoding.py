"""The static-shape decode path (preallocated KV cache; CUDA graphs on GPU) against the eager one, on CPU.

On CPU the static path runs the same per-step code it captures on CUDA, without the graph. Both paths
compute the same function in fp32 but not bit for bit (the static one attends over the padded
cache length; pre-logits agree to ~1e-6 relative, as the eager path agrees with a full forward): a
token can only differ where the pre-drawn uniform lands within rounding of a boundary of the
sampling CDF, which over a 49k vocabulary happens in the low-probability tail. The run-level tests
use the tiny model (flat, well separated CDF) or top-k on the default model; the row-by-row test
uses the full vocabulary and accepts a divergence only at such a tie, checked from scratch.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from langchain_aisp.engine.aisp import run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.decode.eager import Decoder, decode, prefill
from langchain_aisp.engine.decode.select import resolve_decoding, select_decode
from langchain_aisp.engine.decode.static import (
    LENGTH_BUCKET,
    cache_length,
    clear_static_cache,
    decode_static,
    rows_bucket,
    static_graph_stats,
    token_bucket,
)
from langchain_aisp.engine.processors import gumbel_noise

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _length_score(indices, texts):
    return [float(len(t)) for t in texts]


def _same(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.texts == y.texts
        assert x.token_ids == y.token_ids
        assert x.rewards == y.rewards
        assert (x.text, x.finish_reason, x.best_iteration, x.generated_tokens) == (
            y.text,
            y.finish_reason,
            y.best_iteration,
            y.generated_tokens,
        )


@pytest.fixture(scope="module")
def prompts(encode):
    # different lengths: the shorter prompts are left-padded in the shared cache
    return [encode("Hello there"), encode("A second, longer question about the weather today?"), encode("x")]


@pytest.mark.parametrize("method", ["sample", "bon", "aisp"])
@pytest.mark.parametrize("stop", [(), ("e", ".")])
def test_static_path_gives_the_eager_tokens_on_the_tiny_model(tiny_lm, prompts, method, stop):
    params = AISPParams(method=method, num_samples=3, num_iterations=2)
    sampling = SamplingParams(max_tokens=12, stop=stop)
    eager = run(tiny_lm, prompts, _length_score, params, sampling, seed=3, decoding="eager")
    static = run(tiny_lm, prompts, _length_score, params, sampling, seed=3, decoding="static")
    _same(eager, static)
    if stop:  # some samples ended at a stop string (the random model almost never samples EOS)
        assert any(p.generated_tokens < p.samples * sampling.max_tokens for p in static)


def test_static_path_gives_the_eager_tokens_on_the_default_model(default_lm, prompts):
    # top_k keeps the candidates to 40 tokens; over the full vocabulary two tokens' logits + Gumbel noise
    # can tie within fp32 rounding, and either path may pick either one there (see the row-by-row test
    # below, which accepts exactly that and nothing else)
    params = AISPParams(method="aisp", num_samples=3, num_iterations=2)
    sampling = SamplingParams(max_tokens=12, stop=(".",), top_k=40)
    eager = run(default_lm, prompts, _length_score, params, sampling, seed=0, decoding="eager")
    static = run(default_lm, prompts, _length_score, params, sampling, seed=0, decoding="static")
    _same(eager, static)
    assert any(p.generated_tokens < p.samples * sampling.max_tokens for p in static)  # some samples stopped


def _tie_at(lm, prompt, ids, V_row, u_row, step) -> float:
    """Gap between the two largest ``logits + gumbel`` at ``step`` (the Gumbel-max sampler), recomputed from scratch."""
    with torch.inference_mode():
        full = torch.tensor([prompt + ids[:step]])
        z = lm.body(input_ids=full).last_hidden_state[0, -1]
        v = V_row[min(step, V_row.shape[0] - 1)].to(lm.dtype)
        logits = torch.nn.functional.linear(z + v, lm.head_weight, lm.head_bias).float()
        scores = logits + gumbel_noise(u_row[step : step + 1], logits.shape[-1])[0]
        top = torch.topk(scores, 2).values
        return float(top[0] - top[1])


def test_static_decode_matches_eager_row_by_row_up_to_sampling_ties(default_lm, prompts):
    lm = default_lm
    rows, T = 12, 16
    decoder = Decoder.build(lm, SamplingParams(max_tokens=T))
    prefixes = [prefill(lm, p) for p in prompts]
    row_prompt = torch.arange(rows) % len(prompts)
    generator = torch.Generator().manual_seed(0)
    V = 0.5 * torch.randn(rows, 5, lm.hidden_size, generator=generator)  # (B, tau + 1, d)
    V[:, -1] = 0.0
    uniforms = torch.rand(rows, T, generator=generator)
    eager = decode(decoder, prefixes, row_prompt, V, uniforms)
    static = decode_static(decoder, prefixes, row_prompt, V, uniforms)
    assert static.lengths.tolist() == [len(ids) for ids in static.token_ids]
    exact = 0
    for i, (a, b) in enumerate(zip(eager.token_ids, static.token_ids, strict=True)):
        if a == b:
            exact += 1
            assert eager.texts[i] == static.texts[i] and eager.finish_reasons[i] == static.finish_reasons[i]
            continue
        step = next(t for t in range(min(len(a), len(b))) if a[t] != b[t])
        prompt = prompts[int(row_prompt[i])]
        assert _tie_at(lm, prompt, a, V[i], uniforms[i], step) < 1e-5, f"row {i} differs at step {step} without a tie"
    assert exact >= rows - 1


def _peaked(tiny_lm):
    """Peaked logits; axis 1 of the pre-logit selects EOS (as in test_engine)."""
    W = tiny_lm.head_weight * 30  # (V, d)
    eos = tiny_lm.eos_token_ids[0]
    W[eos] = 0.0
    W[eos, 1] = 10.0
    return dataclasses.replace(tiny_lm, head_weight=W)


def test_ended_rows_are_masked_and_padding_rows_never_leak(tiny_lm, encode):
    lm = _peaked(tiny_lm)
    eos = lm.eos_token_ids[0]
    T = 6
    decoder = Decoder.build(lm, SamplingParams(max_tokens=T))
    V = torch.zeros(3, 3, lm.hidden_size)  # 3 rows: bucket of 4, one padding row
    V[0, :2, 1] = 200.0  # row 0 ends with EOS at once
    uniforms = torch.rand(3, T, generator=torch.Generator().manual_seed(1))
    args = ([prefill(lm, encode("x"))], torch.zeros(3, dtype=torch.long), V, uniforms)
    eager, static = decode(decoder, *args), decode_static(decoder, *args)
    assert static.token_ids == eager.token_ids and static.finish_reasons == eager.finish_reasons
    assert static.token_ids[0] == [eos] and static.finish_reasons[0] == "stop" and int(static.lengths[0]) == 1
    assert len(static.token_ids) == 3 and all(len(ids) == T for ids in static.token_ids[1:])


@pytest.mark.parametrize("kind", ["mistral", "qwen2", "qwen3"])
def test_static_path_on_other_verified_architectures(default_lm, encode, kind):
    from transformers import AutoConfig, AutoModelForCausalLM

    from langchain_aisp.engine.lm import wrap_model

    tokenizer = default_lm.tokenizer
    config = AutoConfig.for_model(
        kind,
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    torch.random.set_rng_state(state)
    lm = wrap_model(model, tokenizer, name=f"tiny-{kind}")
    assert resolve_decoding(lm, "static") == "static"
    prompts = [encode("Hello"), encode("Tell me about the sea, please.")]
    params = AISPParams(method="aisp", num_samples=3, num_iterations=2)
    sampling = SamplingParams(max_tokens=8)
    _same(
        run(lm, prompts, _length_score, params, sampling, seed=1, decoding="eager"),
        run(lm, prompts, _length_score, params, sampling, seed=1, decoding="static"),
    )


def test_a_sliding_window_shorter_than_the_cache_falls_back_to_eager(tiny_lm, encode):
    lm = dataclasses.replace(tiny_lm)
    config = lm.model.config
    before = getattr(config, "sliding_window", None)
    config.sliding_window = 8  # the static 4D mask has no window: this call must take the eager path
    try:
        decoder = Decoder.build(lm, SamplingParams(max_tokens=4))
        args = ([prefill(lm, encode("Hello there"))], torch.zeros(2, dtype=torch.long), torch.zeros(2, 1, 32))
        uniforms = torch.rand(2, 4, generator=torch.Generator().manual_seed(0))
        assert decode_static(decoder, *args, uniforms).token_ids == decode(decoder, *args, uniforms).token_ids
        assert static_graph_stats(lm) == []  # no static bucket was built
    finally:
        config.sliding_window = before


def test_buckets_are_cached_and_reused_across_calls(tiny_lm, encode):
    lm = dataclasses.replace(tiny_lm)  # a copy starts with an empty cache
    assert static_graph_stats(lm) == []
    decoder = Decoder.build(lm, SamplingParams(max_tokens=5))
    prefix = prefill(lm, encode("Hello"))
    for rows in (3, 4, 3):  # all in the bucket of 4
        V = torch.zeros(rows, 1, lm.hidden_size)
        decode_static(decoder, [prefix], torch.zeros(rows, dtype=torch.long), V, torch.rand(rows, 5))
    stats = static_graph_stats(lm)
    assert len(stats) == 1 and stats[0]["rows"] == 4 and stats[0]["calls"] == 3
    assert stats[0]["cache_len"] == cache_length(prefix.length, token_bucket(5))  # sized for the max_tokens bucket
    assert not stats[0]["graph"]  # no graphs on CPU
    decode_static(decoder, [prefix], torch.zeros(5, dtype=torch.long), torch.zeros(5, 1, 32), torch.rand(5, 5))
    assert sorted(s["rows"] for s in static_graph_stats(lm)) == [4, 8]
    assert tiny_lm.static_graphs is not lm.static_graphs
    clear_static_cache(lm)
    assert static_graph_stats(lm) == []


def test_concurrent_static_decodes_on_one_model_do_not_mix(tiny_lm, encode):
    lm = dataclasses.replace(tiny_lm)
    decoder = Decoder.build(lm, SamplingParams(max_tokens=6))
    prefixes = [prefill(lm, encode("Hello")), prefill(lm, encode("Good morning to you"))]
    jobs = [
        (torch.tensor([i % 2, (i + 1) % 2]), torch.rand(2, 6, generator=torch.Generator().manual_seed(i)))
        for i in range(6)
    ]
    expected = [decode(decoder, prefixes, rp, torch.zeros(2, 1, 32), u).token_ids for rp, u in jobs]
    got: dict[int, list[list[int]]] = {}

    def work(i: int) -> None:
        rp, u = jobs[i]
        got[i] = decode_static(decoder, prefixes, rp, torch.zeros(2, 1, 32), u).token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(jobs))] == expected


def test_buckets_and_path_selection(tiny_lm):
    assert [rows_bucket(r) for r in (1, 2, 3, 8, 9, 64, 65)] == [1, 2, 4, 8, 16, 64, 128]
    assert cache_length(42, 64) == 2 * LENGTH_BUCKET and cache_length(1, 1) == LENGTH_BUCKET
    with pytest.raises(ValueError, match="rows must be >= 1, got 0"):
        rows_bucket(0)
    assert resolve_decoding(tiny_lm, "auto") == "eager"  # CPU: auto keeps the eager path
    assert resolve_decoding(tiny_lm, "static") == "static"
    assert select_decode(tiny_lm, "eager") == (decode, "eager")
    allowed = r"\['auto', 'static', 'compiled', 'eager'\]"
    with pytest.raises(ValueError, match=rf"decoding must be one of {allowed}, got 'fast'"):
        resolve_decoding(tiny_lm, "fast")
    with pytest.raises(ValueError, match="decoding must be one of"):
        run(tiny_lm, [[1, 2]], _length_score, AISPParams(method="sample"), SamplingParams(max_tokens=2), decoding="x")


def test_unsupported_attention_is_refused_for_static_and_skipped_by_auto(tiny_lm):
    lm = dataclasses.replace(tiny_lm)
    config = lm.model.config
    before = config._attn_implementation
    config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match=r"decoding=.static. is not available .*flash_attention_2"):
            resolve_decoding(lm, "static")
        assert resolve_decoding(lm, "auto") == "eager"
    finally:
        config._attn_implementation = before


def test_eager_attention_models_get_an_additive_mask(tiny_lm, encode):
    config = tiny_lm.model.config
    before = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        lm = dataclasses.replace(tiny_lm)
        decoder = Decoder.build(lm, SamplingParams(max_tokens=6))
        prefixes = [prefill(lm, encode("Hi")), prefill(lm, encode("A much longer prompt than the first"))]
        args = (prefixes, torch.tensor([0, 1, 0]), torch.zeros(3, 1, 32), torch.rand(3, 6))
        assert decode_static(decoder, *args).token_ids == decode(decoder, *args).token_ids
    finally:
        config._attn_implementation = before


def test_chat_model_decoding_field(tiny_lm):
    from pydantic import ValidationError

    from langchain_aisp import AISPChatModel

    kwargs = {"reward": lambda p, r: float(len(r)), "model": tiny_lm, "num_samples": 2, "max_tokens": 6, "seed": 0}
    eager = AISPChatModel(method="aisp", decoding="eager", num_iterations=2, **kwargs).invoke("Name a fruit.")
    static = AISPChatModel(method="aisp", decoding="static", num_iterations=2, **kwargs).invoke("Name a fruit.")
    assert eager.content == static.content
    with pytest.raises(ValidationError, match="decoding"):
        AISPChatModel(decoding="fast", **kwargs)


def test_decode_sdpa_matches_transformers_sdpa_for_grouped_query_heads():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from langchain_aisp.engine.decode.static import decode_sdpa

    module = torch.nn.Module()
    module.num_key_value_groups = 4
    module.eval()
    g = torch.Generator().manual_seed(0)
    query = torch.randn(3, 8, 1, 16, generator=g)  # (B, H, 1, D)
    key, value = torch.randn(3, 2, 10, 16, generator=g), torch.randn(3, 2, 10, 16, generator=g)  # (B, Hkv, L, D)
    mask = torch.arange(10)[None, None, None, :] >= torch.tensor([0, 3, 6])[:, None, None, None]  # (B, 1, 1, L)
    ours, _ = decode_sdpa(module, query, key, value, mask, scaling=0.25)
    ref, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    assert ours.shape == ref.shape == (3, 1, 8, 16)
    torch.testing.assert_close(ours, ref)
    prefill_query = torch.randn(3, 8, 5, 16, generator=g)  # anything but one query token: transformers' own path
    assert torch.equal(
        decode_sdpa(module, prefill_query, key, value, None, scaling=0.25)[0],
        sdpa_attention_forward(module, prefill_query, key, value, None, scaling=0.25)[0],
    )


def test_decode_attention_swap_gives_the_eager_tokens_and_restores_the_config(tiny_lm, encode):
    from langchain_aisp.engine.decode.static import _decode_attention

    lm = dataclasses.replace(tiny_lm)  # 4 query heads over 2 K/V heads
    config = lm.model.config
    decoder = Decoder.build(lm, SamplingParams(max_tokens=6))
    prefixes = [prefill(lm, encode("Hi")), prefill(lm, encode("A longer prompt, left-padded less"))]
    args = (prefixes, torch.tensor([0, 1, 1]), torch.zeros(3, 1, 32), torch.rand(3, 6))
    with _decode_attention(lm):  # what the CUDA capture runs under
        assert config._attn_implementation == "langchain_aisp_decode_sdpa"
        static = decode_static(decoder, *args).token_ids
    assert config._attn_implementation == "sdpa"
    assert static == decode(decoder, *args).token_ids


class _Script:
    """A matcher that allows exactly one scripted token per step and records what it is advanced with."""

    def __init__(self, script: list[int]) -> None:
        self.script, self.seen = list(script), []

    def fill_bitmask(self, bitmask: torch.Tensor, row: int, remaining: int) -> None:
        t = self.script[len(self.seen)]
        bitmask[row, t // 32] |= -(1 << 31) if t % 32 == 31 else 1 << (t % 32)

    def advance(self, token: int) -> None:
        self.seen.append(token)

    def is_finished(self) -> bool:
        return False


class _AllowAll(_Script):
    def fill_bitmask(self, bitmask: torch.Tensor, row: int, remaining: int) -> None:
        bitmask[row] = -1


def test_matchers_decide_every_token_and_ended_rows_are_never_advanced(tiny_lm, encode):
    lm = dataclasses.replace(tiny_lm)
    eos = lm.eos_token_ids[0]
    decoder = Decoder.build(lm, SamplingParams(max_tokens=5, temperature=0.7, top_k=50))
    scripts = [[11, 12, 13, 14, 15], [21, eos, 0, 0, 0], [31, 32, 33, eos, 0]]
    matchers = [_Script(s) for s in scripts]
    args = ([prefill(lm, encode("Hello"))], torch.zeros(3, dtype=torch.long), torch.zeros(3, 1, 32), torch.rand(3, 5))
    out = decode_static(decoder, *args, matchers)
    assert out.token_ids == [[11, 12, 13, 14, 15], [21, eos], [31, 32, 33, eos]]
    assert out.finish_reasons == ["length", "stop", "stop"] and not out.timed_out
    # a row ended by EOS is not advanced again (the static path masks ended rows instead of dropping them)
    assert [m.seen for m in matchers] == [[11, 12, 13, 14, 15], [21, eos], [31, 32, 33, eos]]
    assert [s["host_sampling"] for s in static_graph_stats(lm)] == [True]
    eager = [_Script(s) for s in scripts]
    assert decode(decoder, *args, eager).token_ids == out.token_ids and [m.seen for m in eager] == [
        m.seen for m in matchers
    ]


def test_an_all_allowing_matcher_samples_what_the_graph_path_samples(tiny_lm, encode):
    lm = dataclasses.replace(tiny_lm)
    decoder = Decoder.build(lm, SamplingParams(max_tokens=6))
    prefixes = [prefill(lm, encode("Hi")), prefill(lm, encode("A longer prompt, left-padded less"))]
    args = (prefixes, torch.tensor([0, 1, 1]), 0.3 * torch.randn(3, 3, 32), torch.rand(3, 6))
    masked = decode_static(decoder, *args, [_AllowAll([]), None, _AllowAll([])])
    assert masked.token_ids == decode_static(decoder, *args).token_ids == decode(decoder, *args).token_ids
    assert sorted(s["host_sampling"] for s in static_graph_stats(lm)) == [False, True]
    # no matcher at all (every row None): the graph path, as in the eager decoder
    decode_static(decoder, *args, [None, None, None])
    assert static_graph_stats(lm)[-1]["calls"] == 2


def test_static_path_when_a_prompt_leaves_the_batch(tiny_lm, prompts):
    """Rows of a cancelled prompt leave the batch (fewer rows: another bucket); the others are unaffected."""
    params, sampling = AISPParams(method="aisp", num_samples=3, num_iterations=3), SamplingParams(max_tokens=6)

    def keep_factory():
        asked: dict[int, int] = {}

        def keep(index: int) -> bool:
            asked[index] = asked.get(index, 0) + 1
            return not (index == 1 and asked[index] > 1)  # prompt 1 stops after its first iteration

        return keep

    lm = dataclasses.replace(tiny_lm)
    eager = run(lm, prompts, _length_score, params, sampling, seed=2, decoding="eager", keep=keep_factory())
    static = run(lm, prompts, _length_score, params, sampling, seed=2, decoding="static", keep=keep_factory())
    _same(eager, static)
    assert [p.cancelled for p in static] == [False, True, False]
    assert sorted(s["rows"] for s in static_graph_stats(lm)) == [8, 16]  # 9 rows, then 6
