"""Grammar constraints in the engine: the protocol, the batched mask, the llguidance adapter, the deadline.

Engine-level tests run on the tiny random Llama (real SmolLM2 tokenizer): whatever a random
model samples, every constrained response must follow its grammar.
"""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
import torch

import langchain_aisp.engine.decode.eager as decoding_mod
import langchain_aisp.engine.loop as loop_mod
from langchain_aisp.chat import _grammar as grammarlib
from langchain_aisp.engine.aisp import RunTimeoutError, run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.constraints import RowMasks, bitmask_words, unpack_bitmask
from langchain_aisp.engine.decode.eager import Decoder, decode, prefill
from langchain_aisp.engine.processors import Softcap, sample_tokens

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SMALL = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}}, "required": ["ok", "n"]}
OTHER = {"type": "object", "properties": {"tag": {"enum": ["a", "b"]}}, "required": ["tag"]}


def zero_reward(indices, responses):
    return [0.0] * len(responses)


def constraint(lm, schema, prefill=""):
    grammar = grammarlib.json_grammar(schema)
    return grammarlib.compile_constraint(lm.tokenizer, lm.head_weight.shape[0], lm.eos_token_ids, grammar, prefill)


def valid(text, schema):
    from langchain_aisp.chat._parse import schema_errors

    value = json.loads(text)
    return schema_errors(value, schema) is None


# --- the protocol's pieces -------------------------------------------------------------------------


def test_unpack_bitmask_matches_bits():
    vocab = 70
    bitmask = torch.zeros(2, bitmask_words(vocab), dtype=torch.int32)
    allowed = {0: [0, 5, 31, 32, 69], 1: [3, 63]}
    for row, tokens in allowed.items():
        for t in tokens:
            bitmask[row, t // 32] |= -(1 << 31) if t % 32 == 31 else 1 << (t % 32)
    mask = unpack_bitmask(bitmask, vocab)
    assert mask.shape == (2, vocab)
    for row, tokens in allowed.items():
        assert mask[row].nonzero().squeeze(-1).tolist() == tokens


class ScriptedMatcher:
    """Allows exactly one token per step (its script); records what it was advanced with."""

    def __init__(self, script):
        self.script, self.pos, self.seen = list(script), 0, []

    def fill_bitmask(self, bitmask, row, remaining):
        t = self.script[self.pos]
        bitmask[row, t // 32] |= -(1 << 31) if t % 32 == 31 else 1 << (t % 32)

    def advance(self, token):
        assert token == self.script[self.pos], f"row advanced with {token}, expected {self.script[self.pos]}"
        self.seen.append(token)
        self.pos += 1

    def is_finished(self):
        return self.pos == len(self.script)


def test_row_masks_finish_with_eos_only_and_follow_dropped_rows():
    masks = RowMasks(
        [ScriptedMatcher([4]), None, ScriptedMatcher([7, 8])],
        vocab_size=10,
        eos_token_ids=[2],
        device=torch.device("cpu"),
    )
    logits = torch.zeros(3, 10)
    out = masks.apply(logits, 5)
    assert torch.isfinite(out[0]).nonzero().squeeze(-1).tolist() == [4]
    assert torch.isfinite(out[1]).all()  # unconstrained row
    assert torch.isfinite(out[2]).nonzero().squeeze(-1).tolist() == [7]
    masks.advance(torch.tensor([4, 1, 7]), torch.tensor([False, False, False]))
    out = masks.apply(logits, 5)
    assert torch.isfinite(out[0]).nonzero().squeeze(-1).tolist() == [2]  # grammar done: only EOS
    masks.select(torch.tensor([1, 2]))  # the decoder dropped row 0
    out = masks.apply(torch.zeros(2, 10), 5)
    assert torch.isfinite(out[1]).nonzero().squeeze(-1).tolist() == [8]
    masks.advance(torch.tensor([5, 8]), torch.tensor([False, False]))
    assert masks.matchers[2].seen == [7, 8]


def test_softcap_keeps_masked_tokens_masked_and_sampler_never_picks_them():
    logits = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf")]])
    assert torch.isneginf(Softcap(30.0)(logits)[0, [1, 3]]).all()
    uniforms = torch.tensor([0.0, 0.5, 0.999999999, 1.0 - 1e-12])
    tokens = sample_tokens(logits.expand(4, -1), uniforms)
    assert set(tokens.tolist()) <= {0, 2}


# --- decoding under grammars ------------------------------------------------------------------------


def test_every_constrained_sample_is_valid_with_aisp_control(tiny_lm, encode):
    prompts = [encode("Give me JSON.")]
    params = AISPParams(method="aisp", num_samples=6, num_iterations=2, sigma=0.5)
    results = run(
        tiny_lm,
        prompts,
        zero_reward,
        params,
        SamplingParams(max_tokens=24),
        seed=3,
        constraints=[constraint(tiny_lm, SMALL)],
    )
    texts = [t for it in results[0].texts for t in it]
    assert len(texts) == 12
    assert all(valid(t, SMALL) for t in texts), texts


def test_same_seed_same_answer_and_batch_mixing_constraints(tiny_lm, encode):
    prompts = [encode("First."), encode("Second."), encode("Third.")]
    constraints = [constraint(tiny_lm, SMALL), None, constraint(tiny_lm, OTHER)]
    params = AISPParams(method="aisp", num_samples=4, num_iterations=2)
    sampling = SamplingParams(max_tokens=16)
    together = run(tiny_lm, prompts, zero_reward, params, sampling, seed=11, constraints=constraints)
    again = run(tiny_lm, prompts, zero_reward, params, sampling, seed=11, constraints=constraints)
    assert [r.texts for r in together] == [r.texts for r in again]
    alone = [
        run(tiny_lm, [p], zero_reward, params, sampling, seed=11, constraints=[c])[0]
        for p, c in zip(prompts, constraints, strict=True)
    ]
    assert [r.texts for r in together] == [r.texts for r in alone]  # a row follows its own prompt's grammar
    assert all(valid(t, SMALL) for it in together[0].texts for t in it)
    assert all(valid(t, OTHER) for it in together[2].texts for t in it)
    assert not all(t.startswith("{") for it in together[1].texts for t in it)  # free text stays free


def test_matchers_stay_aligned_when_rows_are_dropped(tiny_lm, encode):
    """Rows with different script lengths end at different steps; the decoder drops ended rows, and
    each matcher must still be advanced with exactly its own row's tokens."""
    tok = tiny_lm.tokenizer
    words = ["hello", " world", " again", " and", " more", " words", " here"]
    ids = [tok(w, add_special_tokens=False).input_ids[0] for w in words]
    scripts = [ids[: 1 + (r % 7)] for r in range(8)]
    matchers = [ScriptedMatcher(s) for s in scripts]
    decoder = Decoder.build(tiny_lm, SamplingParams(max_tokens=10))
    prefix = prefill(tiny_lm, encode("Say something."))
    out = decode(
        decoder,
        [prefix],
        torch.zeros(8, dtype=torch.long),
        torch.zeros(8, 2, tiny_lm.hidden_size),
        torch.rand(8, 10, generator=torch.Generator().manual_seed(0)),
        matchers,
    )
    for r, m in enumerate(matchers):
        assert m.seen == scripts[r]
        assert out.token_ids[r] == [*scripts[r], tiny_lm.eos_token_ids[0]]


def test_constraint_is_thread_safe(tiny_lm, encode):
    c = constraint(tiny_lm, SMALL)
    params = AISPParams(method="bon", num_samples=4, num_iterations=1)
    outputs, errors = {}, []

    def work(i):
        try:
            outputs[i] = run(
                tiny_lm, [encode(f"Q{i}")], zero_reward, params, SamplingParams(max_tokens=16), seed=i, constraints=[c]
            )[0].texts
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(valid(t, SMALL) for texts in outputs.values() for it in texts for t in it)


# --- the llguidance adapter -------------------------------------------------------------------------


def _accepts(lm, grammar, text):
    import llguidance

    matcher = llguidance.LLMatcher(
        grammarlib._tokenizer(lm.tokenizer, lm.head_weight.shape[0], lm.eos_token_ids), grammar, log_level=0
    )
    ok = matcher.consume_tokens(lm.tokenizer(text, add_special_tokens=False).input_ids)
    return ok and matcher.is_accepting()


TOOLS = [
    {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
    {"name": "ping", "description": "Ping.", "parameters": {"type": "object", "properties": {}}},
]
CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'


def test_tool_grammars_accept_calls_and_prose_as_chosen(tiny_lm):
    auto = grammarlib.tool_call_grammar(TOOLS, choice="auto")
    forced = grammarlib.tool_call_grammar(TOOLS, choice="any")
    only_add = grammarlib.tool_call_grammar(TOOLS, choice="add", parallel=True)
    assert _accepts(tiny_lm, auto, "Three, of course.")
    assert _accepts(tiny_lm, auto, CALL) and _accepts(tiny_lm, auto, "Let me add.\n" + CALL)
    assert not _accepts(tiny_lm, auto, '<tool_call>\n{"name": "add", "arguments": {"a": "x", "b": 2}}\n</tool_call>')
    assert _accepts(tiny_lm, forced, CALL) and not _accepts(tiny_lm, forced, "Three.")
    assert _accepts(tiny_lm, forced, '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>')
    assert not _accepts(tiny_lm, forced, '<tool_call>\n{"name": "ping", "arguments": {"x": 1}}\n</tool_call>')
    assert _accepts(tiny_lm, only_add, CALL + "\n" + CALL)
    assert not _accepts(tiny_lm, forced, CALL + "\n" + CALL)  # one call unless parallel
    assert not _accepts(tiny_lm, only_add, '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>')


def test_json_grammar_unicode_closed_objects_and_prefix(tiny_lm):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name"],
    }
    grammar = grammarlib.json_grammar(schema)
    assert _accepts(tiny_lm, grammar, '{"name": "你好啊集团", "age": 3}')
    assert _accepts(tiny_lm, grammar, '{"name": "x"}')  # optional field left out
    assert not _accepts(tiny_lm, grammar, '{"name": "x", "extra": 1}')  # objects are closed
    assert not _accepts(tiny_lm, grammar, '{"age": 3}')
    prefix = grammarlib.forced_prefix(tiny_lm.tokenizer, tiny_lm.head_weight.shape[0], tiny_lm.eos_token_ids, grammar)
    assert prefix == '{"name": "'


def test_unsupported_schema_fails_when_built_naming_the_construct():
    with pytest.raises(grammarlib.GrammarError, match="uniqueItems"):
        grammarlib.json_grammar({"type": "array", "uniqueItems": True})
    with pytest.raises(grammarlib.GrammarError, match="if"):
        grammarlib.tool_call_grammar(
            [{"name": "f", "parameters": {"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}}],
            choice="any",
        )
    assert grammarlib.json_grammar({"type": "array", "uniqueItems": True}, strict=False)  # lenient: dropped


def test_compiled_grammars_are_cached_and_bounded(tiny_lm, monkeypatch):
    grammarlib.clear_cache()
    monkeypatch.setattr(grammarlib, "COMPILED_CACHE_SIZE", 2)
    vocab, eos = tiny_lm.head_weight.shape[0], tiny_lm.eos_token_ids
    g1, g2, g3 = (grammarlib.json_grammar(s) for s in (SMALL, OTHER, {"type": "object"}))
    first = grammarlib.compile_constraint(tiny_lm.tokenizer, vocab, eos, g1)
    assert grammarlib.compile_constraint(tiny_lm.tokenizer, vocab, eos, g1).templates[0] is first.templates[0]
    grammarlib.compile_constraint(tiny_lm.tokenizer, vocab, eos, g2)
    grammarlib.compile_constraint(tiny_lm.tokenizer, vocab, eos, g3)
    assert len(grammarlib._COMPILED) == 2
    assert grammarlib.compile_constraint(tiny_lm.tokenizer, vocab, eos, g1).templates[0] is not first.templates[0]


# --- the deadline -------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_deadline_returns_best_of_finished_iterations(tiny_lm, encode, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(loop_mod.time, "monotonic", clock)
    calls = []

    def reward(indices, responses):
        calls.append(len(responses))
        clock.now = 11.0  # the deadline passes while the first iteration is scored
        return [float(len(r)) for r in responses]

    params = AISPParams(method="aisp", num_samples=3, num_iterations=4)
    result = run(tiny_lm, [encode("Hi")], reward, params, SamplingParams(max_tokens=6), seed=0, deadline=10.0)[0]
    assert result.timed_out and len(result.rewards) == 1 and calls == [3]
    assert result.reward == max(result.rewards[0])


def test_deadline_before_anything_is_scored_raises(tiny_lm, encode):
    params = AISPParams(method="bon", num_samples=2, num_iterations=1)
    with pytest.raises(RunTimeoutError, match="deadline passed before any sample") as info:
        run(tiny_lm, [encode("Hi")], zero_reward, params, SamplingParams(max_tokens=6), seed=0, deadline=0.0)
    assert info.value.partial == [None]


def test_decode_stops_after_the_step_at_the_deadline(tiny_lm, encode, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(decoding_mod.time, "monotonic", clock)
    decoder = Decoder.build(tiny_lm, SamplingParams(max_tokens=20))
    prefix = prefill(tiny_lm, encode("Hello"))
    out = decode(
        decoder,
        [prefix],
        torch.zeros(2, dtype=torch.long),
        torch.zeros(2, 2, tiny_lm.hidden_size),
        torch.full((2, 20), 0.5),
        None,
        deadline=-1.0,
    )
    assert out.timed_out and out.lengths.tolist() == [1, 1]


def test_replies_are_steered_to_complete_within_max_tokens(tiny_lm, encode):
    """A random model writes endless strings; the closing path still ends every reply in valid JSON."""
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["title", "tags"],
    }
    grammar = grammarlib.json_grammar(schema)
    vocab, eos = tiny_lm.head_weight.shape[0], tiny_lm.eos_token_ids
    params = AISPParams(method="bon", num_samples=8, num_iterations=1)
    texts = {}
    for close in (True, False):
        c = grammarlib.compile_constraint(tiny_lm.tokenizer, vocab, eos, grammar, close=close)
        result = run(
            tiny_lm, [encode("JSON")], zero_reward, params, SamplingParams(max_tokens=16), seed=5, constraints=[c]
        )[0]
        texts[close] = result.texts[0]
    assert all(valid(t, schema) for t in texts[True]), texts[True]
    assert not all(t.endswith("]}") for t in texts[False])  # without steering, replies are cut mid-JSON


# --- the static decode path ---------------------------------------------------------------------------
# On CPU the static path runs its per-step code without CUDA graphs: the grammar masks, the matchers'
# advance, stop strings and the deadline must give what the eager decoder gives, row for row.


def _same_runs(a, b):
    for x, y in zip(a, b, strict=True):
        assert (x.texts, x.rewards, x.token_ids) == (y.texts, y.rewards, y.token_ids)
        assert (x.text, x.finish_reason, x.best_iteration, x.generated_tokens, x.timed_out) == (
            y.text,
            y.finish_reason,
            y.best_iteration,
            y.generated_tokens,
            y.timed_out,
        )


def length_reward(indices, responses):
    return [float(len(r)) for r in responses]


@pytest.mark.parametrize("method", ["sample", "bon", "aisp"])
def test_static_path_gives_the_eager_tokens_under_constraints(tiny_lm, encode, method):
    """JSON schema, a forced tool call and free text in one Batched AISP run, with a stop string that
    ends free rows early and grammars that end constrained rows at different steps."""
    from langchain_aisp.engine.decode.static import static_graph_stats

    lm = dataclasses.replace(tiny_lm)  # its own static cache
    forced = grammarlib.compile_constraint(
        lm.tokenizer, lm.head_weight.shape[0], lm.eos_token_ids, grammarlib.tool_call_grammar(TOOLS, choice="any")
    )
    prompts = [encode("Give me JSON."), encode("Say something."), encode("Add 1 and 2."), encode("More JSON.")]
    constraints = [constraint(lm, SMALL), None, forced, constraint(lm, OTHER)]
    params = AISPParams(method=method, num_samples=3, num_iterations=2)
    sampling = SamplingParams(max_tokens=40, stop=("y",))  # no grammar here writes a "y"
    runs = {
        decoding: run(lm, prompts, length_reward, params, sampling, seed=4, constraints=constraints, decoding=decoding)
        for decoding in ("eager", "static")
    }
    _same_runs(runs["eager"], runs["static"])
    static = runs["static"]
    assert [s["host_sampling"] for s in static_graph_stats(lm)] == [True]  # the constrained rows took the static path
    texts = [[t for it in r.texts for t in it] for r in static]
    assert all(valid(t, SMALL) for t in texts[0]) and all(valid(t, OTHER) for t in texts[3]), texts
    assert all(
        t.startswith("<tool_call>") and _accepts(lm, grammarlib.tool_call_grammar(TOOLS, choice="any"), t)
        for t in texts[2]
    )
    # free rows ended at the stop string, constrained ones with their grammar, at different steps
    assert static[1].generated_tokens < static[1].samples * sampling.max_tokens or method == "sample"
    assert static[0].generated_tokens < static[0].samples * sampling.max_tokens
    assert any(r.finish_reason == "stop" for r in static)


def test_rows_ending_early_keep_their_matchers_aligned_on_the_static_path(tiny_lm, encode):
    """Scripted grammars of different lengths: each matcher sees exactly its row's tokens, ended rows none."""
    tiny_lm = dataclasses.replace(tiny_lm)  # its own static cache, freed with it
    from langchain_aisp.engine.decode.static import decode_static

    tok = tiny_lm.tokenizer
    words = ["hello", " world", " again", " and", " more", " words", " here"]
    ids = [tok(w, add_special_tokens=False).input_ids[0] for w in words]
    scripts = [ids[: 1 + (r % 7)] for r in range(8)]
    decoder = Decoder.build(tiny_lm, SamplingParams(max_tokens=10))
    args = (
        [prefill(tiny_lm, encode("Say something."))],
        torch.zeros(8, dtype=torch.long),
        torch.zeros(8, 2, tiny_lm.hidden_size),
        torch.rand(8, 10, generator=torch.Generator().manual_seed(0)),
    )
    eager_matchers, static_matchers = [ScriptedMatcher(s) for s in scripts], [ScriptedMatcher(s) for s in scripts]
    eager = decode(decoder, *args, eager_matchers)
    static = decode_static(decoder, *args, static_matchers)
    assert static.token_ids == eager.token_ids == [[*s, tiny_lm.eos_token_ids[0]] for s in scripts]
    assert [m.seen for m in static_matchers] == [m.seen for m in eager_matchers] == scripts


def test_constrained_runs_take_the_static_path_when_asked(tiny_lm, encode):
    """decoding='static' is honoured for a constrained run (it used to fall back to the eager decoder)."""
    from langchain_aisp.engine.decode.static import static_graph_stats

    lm = dataclasses.replace(tiny_lm)
    params = AISPParams(method="bon", num_samples=4, num_iterations=1)
    result = run(
        lm,
        [encode("JSON")],
        zero_reward,
        params,
        SamplingParams(max_tokens=16),
        seed=2,
        constraints=[constraint(lm, SMALL)],
        decoding="static",
    )[0]
    assert all(valid(t, SMALL) for t in result.texts[0]), result.texts
    stats = static_graph_stats(lm)
    assert [(s["rows"], s["host_sampling"], s["calls"]) for s in stats] == [(4, True, 1)]


class CountingClock:
    """``time.monotonic`` that moves one second per call: each decoding step looks at it once."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


@pytest.mark.parametrize("constrained", [False, True])
def test_static_decode_stops_at_the_deadline_like_the_eager_one(tiny_lm, encode, monkeypatch, constrained):
    tiny_lm = dataclasses.replace(tiny_lm)  # its own static cache, freed with it
    from langchain_aisp.engine.decode.static import decode_static

    decoder = Decoder.build(tiny_lm, SamplingParams(max_tokens=20))
    args = (
        [prefill(tiny_lm, encode("Hello"))],
        torch.zeros(3, dtype=torch.long),
        torch.zeros(3, 2, tiny_lm.hidden_size),
        torch.rand(3, 20, generator=torch.Generator().manual_seed(1)),
    )
    outs = []
    for fn in (decode, decode_static):
        clock = CountingClock()
        monkeypatch.setattr(decoding_mod.time, "monotonic", clock)
        matchers = [constraint(tiny_lm, SMALL).matcher(i) for i in range(3)] if constrained else None
        outs.append(fn(decoder, *args, matchers, deadline=5.0))
    eager, static = outs
    assert eager.timed_out and static.timed_out
    assert static.lengths.tolist() == eager.lengths.tolist() == [5, 5, 5]
    assert static.token_ids == eager.token_ids and static.finish_reasons == eager.finish_reasons == ["length"] * 3
    monkeypatch.undo()
    finished = decode_static(decoder, *args, None, deadline=1e18)  # a deadline that never comes
    assert not finished.timed_out and finished.lengths.tolist() == [20, 20, 20]


@pytest.mark.parametrize("decoding", ["eager", "static"])
def test_deadline_outcomes_are_the_same_on_both_paths(tiny_lm, encode, monkeypatch, decoding):
    tiny_lm = dataclasses.replace(tiny_lm)  # its own static cache, freed with it
    clock = FakeClock()
    monkeypatch.setattr(loop_mod.time, "monotonic", clock)

    def reward(indices, responses):
        clock.now = 11.0  # the deadline passes while the first iteration is scored
        return [float(len(r)) for r in responses]

    params = AISPParams(method="aisp", num_samples=3, num_iterations=4)
    c = [constraint(tiny_lm, SMALL)]
    result = run(
        tiny_lm,
        [encode("Hi")],
        reward,
        params,
        SamplingParams(max_tokens=16),
        seed=0,
        deadline=10.0,
        constraints=c,
        decoding=decoding,
    )[0]
    assert result.timed_out and len(result.rewards) == 1 and all(valid(t, SMALL) for t in result.texts[0])
    clock.now = 0.0
    with pytest.raises(RunTimeoutError, match="deadline passed before any sample") as info:
        run(
            tiny_lm,
            [encode("Hi")],
            reward,
            params,
            SamplingParams(max_tokens=16),
            seed=0,
            deadline=-1.0,
            constraints=c,
            decoding=decoding,
        )
    assert info.value.partial == [None]


# --- per-prompt deadlines -------------------------------------------------------------------------------


def _texts(results):
    return [(r.texts, r.rewards) for r in results]


@pytest.mark.parametrize("decoding", ["eager", "static"])
def test_per_prompt_deadlines_stop_only_the_prompt_out_of_time(tiny_lm, encode, monkeypatch, decoding):
    tiny_lm = dataclasses.replace(tiny_lm)  # its own static cache, freed with it
    prompts = [encode("First."), encode("Second."), encode("Third.")]
    params = AISPParams(method="aisp", num_samples=3, num_iterations=3)
    sampling = SamplingParams(max_tokens=8)
    reference = run(tiny_lm, prompts, length_reward, params, sampling, seed=5, decoding=decoding)
    clock = FakeClock()
    monkeypatch.setattr(loop_mod.time, "monotonic", clock)

    def reward(indices, responses):
        clock.now = 11.0  # prompt 0's deadline passes while the first iteration is scored
        return length_reward(indices, responses)

    results = run(tiny_lm, prompts, reward, params, sampling, seed=5, decoding=decoding, deadline=[10.0, None, 100.0])
    assert [r.timed_out for r in results] == [True, False, False]
    assert [len(r.rewards) for r in results] == [1, 3, 3]
    assert results[0].texts == reference[0].texts[:1] and results[0].reward == max(reference[0].rewards[0])
    assert _texts(results[1:]) == _texts(reference[1:])  # the others ran as if alone: same samples, same U
    assert all(r.error is None for r in results)


def test_decoding_is_cut_only_when_every_running_prompt_is_out_of_time(tiny_lm, encode, monkeypatch):
    prompts = [encode("First."), encode("Second.")]
    params = AISPParams(method="bon", num_samples=2, num_iterations=2)
    sampling = SamplingParams(max_tokens=12)
    reference = run(tiny_lm, prompts, length_reward, params, sampling, seed=7)
    monkeypatch.setattr(loop_mod.time, "monotonic", CountingClock())  # one second per look at the clock
    # prompt 0's deadline passes a few steps into the first decode; prompt 1 still has time: the decode goes on
    results = run(tiny_lm, prompts, length_reward, params, sampling, seed=7, deadline=[4.0, 1e9])
    assert [r.timed_out for r in results] == [True, False]
    assert results[0].texts == reference[0].texts[:1]  # its first iteration was complete (not cut) and scored
    assert _texts(results[1:]) == _texts(reference[1:])
    # every deadline passes mid-decode: the unfinished iteration is dropped, nothing was scored
    monkeypatch.setattr(loop_mod.time, "monotonic", CountingClock())
    with pytest.raises(RunTimeoutError, match=r"prompt\(s\) \[0, 1\]") as info:
        run(tiny_lm, prompts, length_reward, params, sampling, seed=7, deadline=[4.0, 5.0])
    assert info.value.partial == [None, None]


def test_a_prompt_out_of_time_with_nothing_scored_is_isolated(tiny_lm, encode):
    prompts = [encode("First."), encode("Second.")]
    params = AISPParams(method="bon", num_samples=2, num_iterations=2)
    sampling = SamplingParams(max_tokens=6)
    reference = run(tiny_lm, prompts, length_reward, params, sampling, seed=3)
    with pytest.raises(RunTimeoutError, match=r"prompt\(s\) \[0\]") as info:  # raise: at the end, others kept
        run(tiny_lm, prompts, length_reward, params, sampling, seed=3, deadline=[0.0, None])
    partial = info.value.partial
    assert partial[0] is None and _texts(partial[1:]) == _texts(reference[1:]) and not partial[1].timed_out
    results = run(
        tiny_lm, prompts, length_reward, params, sampling, seed=3, deadline=[0.0, None], on_reward_error="isolate"
    )
    assert isinstance(results[0].error, RunTimeoutError) and "prompt 0" in str(results[0].error)
    assert results[0].timed_out and results[0].rewards == [] and results[0].text == ""
    assert results[1].error is None and _texts(results[1:]) == _texts(reference[1:])


@pytest.mark.parametrize(
    ("deadline", "message"),
    [
        ([1.0], r"got 1 deadlines for 2 prompts"),
        ([1.0, float("nan")], r"deadline\[1\] must be a time.monotonic\(\) value in seconds or None, got nan"),
        (True, r"deadline must be a time.monotonic\(\) value"),
        ("soon", r"deadline must be a time.monotonic\(\) value .* got 'soon'"),
    ],
)
def test_bad_deadlines_are_refused_naming_the_value(tiny_lm, encode, deadline, message):
    params = AISPParams(method="bon", num_samples=1, num_iterations=1)
    with pytest.raises(ValueError, match=message):
        run(tiny_lm, [encode("a"), encode("b")], zero_reward, params, SamplingParams(max_tokens=2), deadline=deadline)
