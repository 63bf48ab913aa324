"""Thinking models: the think tags, the reply split, the scored text and the thinking budget.

The engine's :class:`ThinkingBudget` is checked with scripted matchers and on the tiny random Llama
(real SmolLM2 tokenizer, where ``</think>`` is three tokens): whatever a random model samples,
every reply thinks at most ``budget`` tokens, then closes the tag, and its answer follows the grammar.
"""

from __future__ import annotations

import json

import pytest
import torch
from chat_templates import PREFILLED_THINK as PREFILLED_TEMPLATE
from chat_templates import THINK as THINK_TEMPLATE
from chat_templates import with_template

from langchain_aisp.chat import _grammar as grammarlib
from langchain_aisp.chat import _reasoning as reasoning
from langchain_aisp.engine.aisp import run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.constraints import (
    MAX_GAP,
    RowMasks,
    ThinkingBudget,
    bitmask_words,
    thinking_mask,
    unpack_bitmask,
)
from langchain_aisp.errors import ConstraintError

pytestmark = pytest.mark.usefixtures("single_torch_thread")


class Scripted:
    """A matcher that allows one token per step and records what it was advanced with."""

    def __init__(self, tokens):
        self.tokens, self.seen = list(tokens), []

    def fill_bitmask(self, bitmask, row, remaining):
        token = self.tokens[len(self.seen)]
        bitmask[row, token // 32] |= 1 << (token % 32)

    def advance(self, token):
        self.seen.append(token)

    def is_finished(self):
        return len(self.seen) == len(self.tokens)


class ScriptedConstraint:
    def __init__(self, tokens):
        self.tokens = tokens
        self.made: list[Scripted] = []

    def matcher(self, sample):
        self.made.append(Scripted(self.tokens))
        return self.made[-1]


def allowed(matcher, vocab=64, remaining=10):
    bitmask = torch.zeros(1, bitmask_words(vocab), dtype=torch.int32)
    matcher.fill_bitmask(bitmask, 0, remaining)
    return unpack_bitmask(bitmask, vocab)[0].nonzero().squeeze(-1).tolist()


# --- the engine constraint ---------------------------------------------------------------------------


def test_budget_forces_the_closing_tag_then_the_answer_constraint_applies():
    vocab, eos, close = 64, 0, (40, 41, 42)
    rule = ThinkingBudget(close, 2, thinking_mask(vocab, [eos, 43]), ScriptedConstraint([7, 8]))
    m = rule.matcher(0)
    assert allowed(m) == [t for t in range(1, vocab) if t != 43]  # thinking: no EOS, no forbidden token
    m.advance(5)
    m.advance(6)
    assert m.thought == 2 and allowed(m) == [40]  # budget spent: the tag is forced, token by token
    m.advance(40)
    assert allowed(m) == [41]
    m.advance(41)
    m.advance(42)
    assert m.answering and not m.is_finished()
    assert allowed(m) == [7]  # the answer's constraint
    m.advance(7)
    m.advance(8)
    assert m.is_finished()


def test_gap_tokens_after_the_tag_come_before_the_answer_and_are_not_passed_to_it():
    """Whitespace after the closing tag (Qwen3's "\n\n" after </think>) may precede the answer's first token, at
    most MAX_GAP tokens; the answer's constraint reads the answer from its first other token."""
    answer = ScriptedConstraint([7, 8])
    rule = ThinkingBudget([40], 0, thinking_mask(64, [0]), answer, gap=[3, 4])
    m = rule.matcher(0)
    m.advance(40)  # the tag (forced: budget 0)
    assert allowed(m) == [3, 4, 7]  # whitespace, or the answer's first token
    m.advance(3)
    m.advance(4)
    assert allowed(m) == [3, 4, 7] and answer.made[-1].seen == []
    m.advance(7)  # the answer has begun: no more gap
    assert allowed(m) == [8]
    m.advance(8)
    assert m.is_finished() and answer.made[-1].seen == [7, 8]
    m = rule.matcher(0)
    m.advance(40)
    for _ in range(MAX_GAP):
        m.advance(3)
    assert allowed(m) == [7]  # at most MAX_GAP whitespace tokens
    m.advance(3)
    assert answer.made[-1].seen == [3]  # past the gap a token goes to the answer (whose grammar refuses it)
    with pytest.raises(ValueError, match=r"gap tokens must be in \[0, 64\), got \[64\]"):
        ThinkingBudget([40], 0, thinking_mask(64, [0]), gap=[64])


def test_a_begun_tag_is_completed_and_an_early_close_leaves_the_answer_free():
    rule = ThinkingBudget([40, 41], None, thinking_mask(64, [0]))
    m = rule.matcher(0)
    m.advance(9)
    m.advance(40)  # the model starts the tag itself: the rest is forced
    assert allowed(m) == [41]
    with pytest.raises(ConstraintError, match="breaks the closing tag"):
        _break(rule)
    m.advance(41)
    assert m.answering and m.thought == 1
    assert allowed(m) == list(range(64))  # no answer constraint: every token, EOS included
    m.advance(0)
    assert not m.is_finished()  # free text never "finishes" as a grammar does: EOS ends the row


def _break(rule):
    m = rule.matcher(0)
    m.advance(40)
    m.advance(5)


def test_no_budget_never_forces_and_bad_arguments_are_refused():
    rule = ThinkingBudget([40], None, thinking_mask(64, [0]))
    m = rule.matcher(0)
    for _ in range(50):
        m.advance(3)
    assert 40 in allowed(m) and 3 in allowed(m)
    with pytest.raises(ValueError, match="budget must be an integer >= 0 or None, got -1"):
        ThinkingBudget([40], -1, thinking_mask(64, []))
    with pytest.raises(ValueError, match="close_ids"):
        ThinkingBudget([], 3, thinking_mask(64, []))
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 64\)"):
        thinking_mask(64, [64])


def test_row_masks_drive_the_thinking_matcher():
    rule = ThinkingBudget([40], 0, thinking_mask(64, [0]))
    masks = RowMasks([rule.matcher(0), None], 64, [0], torch.device("cpu"))
    logits = masks.apply(torch.zeros(2, 64), remaining=5)
    assert torch.isfinite(logits[0]).nonzero().squeeze(-1).tolist() == [40]  # budget 0: close at once
    assert torch.isfinite(logits[1]).all()


# --- tags, modes, the split --------------------------------------------------------------------------


def test_tags_are_detected_from_the_template_and_can_be_set(default_lm):
    plain = default_lm.tokenizer
    assert reasoning.detect_tags(plain) is None
    thinking = with_template(plain, THINK_TEMPLATE)
    assert reasoning.detect_tags(thinking) == reasoning.ReasoningTags("<think>", "</think>")
    assert reasoning.supports_enable_thinking(thinking)
    assert not reasoning.supports_enable_thinking(with_template(plain, PREFILLED_TEMPLATE))
    mode = reasoning.resolve_mode(plain, None, ("<reason>", "</reason>"))
    assert mode.tags == reasoning.ReasoningTags("<reason>", "</reason>")
    assert reasoning.resolve_mode(plain, None).tags is None
    with pytest.raises(ValueError, match="reasoning=True, but the model's chat template writes no think section"):
        reasoning.resolve_mode(plain, True)
    with pytest.raises(ValueError, match="reasoning_tags must be None or an"):
        reasoning.resolve_mode(plain, None, "<think>")
    with pytest.raises(ValueError, match="must differ"):
        reasoning.ReasoningTags("<t>", "<t>")
    with pytest.raises(ValueError, match="reasoning must be True, False or None, got 'yes'"):
        reasoning.resolve_mode(thinking, "yes")


@pytest.mark.parametrize(
    ("template", "setting", "prefill", "inside"),
    [
        (THINK_TEMPLATE, None, "<think>\n", True),  # the model would open it: prefilled
        (THINK_TEMPLATE, True, "<think>\n", True),
        (THINK_TEMPLATE, False, "", False),  # enable_thinking=False: the template closes an empty section
        (PREFILLED_TEMPLATE, None, "", True),  # the template opens it
        (PREFILLED_TEMPLATE, False, "\n</think>\n\n", False),  # no enable_thinking, the template opened it: closed
    ],
)
def test_prefill_and_enable_thinking(default_lm, template, setting, prefill, inside):
    tok = with_template(default_lm.tokenizer, template)
    mode = reasoning.resolve_mode(tok, setting)
    assert mode.template_kwargs == (
        {"enable_thinking": setting} if setting is not None and "enable" in template else {}
    )
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False, **mode.template_kwargs
    )
    assert mode.prefill(text) == (prefill, inside)


def test_reasoning_off_prefills_an_empty_section_where_the_template_cannot(default_lm):
    tok = with_template(default_lm.tokenizer, THINK_TEMPLATE.replace("enable_thinking", "other_flag"))
    mode = reasoning.resolve_mode(tok, False)
    assert mode.template_kwargs == {}
    assert mode.prefill("<|im_start|>assistant\n") == ("<think>\n\n</think>\n\n", False)


@pytest.mark.parametrize(
    ("text", "inside", "expected"),
    [
        ("<think>\nLet me see.\n</think>\n\nParis.", False, ("Let me see.", "Paris.", True)),
        ("Let me see.</think>Paris.", True, ("Let me see.", "Paris.", True)),
        ("  <think>a</think> b </think> c", False, ("a", "b </think> c", True)),
        ("<think>\nstill thinking when cut", False, ("still thinking when cut", "", False)),
        ("Paris, no thinking.", False, (None, "Paris, no thinking.", False)),
        ("<think>\n\n</think>\n\nHi ünïcode", False, ("", "Hi ünïcode", True)),
        ("\n</think>\n\nClosed by the prefill.", False, ("", "Closed by the prefill.", True)),
    ],
)
def test_split_reply(text, inside, expected):
    tags = reasoning.ReasoningTags()
    split = reasoning.split_reply(text, tags, inside)
    assert (split.reasoning, split.answer, split.closed) == expected
    assert reasoning.scored_text(text, tags, inside, score_reasoning=False) == expected[1]
    assert reasoning.scored_text(text, tags, inside, score_reasoning=True) == text
    assert reasoning.split_reply(text, None, inside).answer == text


def test_engine_max_tokens():
    assert reasoning.engine_max_tokens(32, None, 3) == 32  # thinking and answer share max_tokens
    assert reasoning.engine_max_tokens(32, 10, 3) == 45  # the answer keeps its 32 tokens


# --- the budget on a real decode -----------------------------------------------------------------------


def _prompt_ids(tok, prefill="<think>\n"):
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Is it sunny?"}], add_generation_prompt=True, tokenize=False
    )
    return list(tok(text + prefill, add_special_tokens=False).input_ids)


def _close_at(ids, close):
    for i in range(len(ids) - len(close) + 1):
        if ids[i : i + len(close)] == close:
            return i
    return -1


@pytest.mark.parametrize("method", ["bon", "aisp"])
def test_every_sample_thinks_within_the_budget_then_answers_under_the_grammar(tiny_lm, method):
    tok, vocab, eos = tiny_lm.tokenizer, int(tiny_lm.head_weight.shape[0]), tiny_lm.eos_token_ids
    tags = reasoning.ReasoningTags()
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    answer = grammarlib.compile_constraint(tok, vocab, eos, grammarlib.json_grammar(schema))
    budget, max_tokens = 5, 12
    rule = reasoning.thinking_constraint(tok, vocab, eos, tags, budget, answer)
    close = list(rule.close_ids)
    assert tok.decode(close) == "</think>"
    total = reasoning.engine_max_tokens(max_tokens, budget, len(close))
    params = AISPParams(method=method, num_samples=4, num_iterations=2)
    results = run(
        tiny_lm,
        [_prompt_ids(tok)],
        lambda idx, texts: [float(len(t)) for t in texts],
        params,
        SamplingParams(max_tokens=total, temperature=1.0),
        seed=3,
        constraints=[rule],
    )
    samples = [ids for iteration in results[0].sample_token_ids for ids in iteration]
    assert len(samples) == 8
    for ids in samples:
        at = _close_at(ids, close)
        assert 0 <= at <= budget, tok.decode(ids)  # the tag closes within the budget...
        assert not set(ids[:at]) & set(eos)  # ...never ended while thinking
        text = tok.decode(ids, skip_special_tokens=True)
        split = reasoning.split_reply("<think>\n" + text, tags, inside=True)
        assert split.closed and json.loads(split.answer)["ok"] in (True, False)  # the grammar held after the tag
        assert len(ids) - at - len(close) <= max_tokens + 1  # the answer had its own room (EOS included)


def test_budget_zero_closes_at_once_and_free_answers_may_end(tiny_lm):
    tok, vocab, eos = tiny_lm.tokenizer, int(tiny_lm.head_weight.shape[0]), tiny_lm.eos_token_ids
    rule = reasoning.thinking_constraint(tok, vocab, eos, reasoning.ReasoningTags(), 0)
    results = run(
        tiny_lm,
        [_prompt_ids(tok)],
        lambda idx, texts: [0.0] * len(texts),
        AISPParams(method="bon", num_samples=3, num_iterations=1),
        SamplingParams(max_tokens=reasoning.engine_max_tokens(4, 0, len(rule.close_ids)), temperature=1.0),
        seed=0,
        constraints=[rule],
    )
    for ids in results[0].sample_token_ids[0]:
        assert ids[: len(rule.close_ids)] == list(rule.close_ids)


def test_thinking_mask_forbids_eos_and_other_spellings_of_the_tag_start(tiny_lm):
    tok, vocab = tiny_lm.tokenizer, int(tiny_lm.head_weight.shape[0])
    rule = reasoning.thinking_constraint(tok, vocab, tiny_lm.eos_token_ids, reasoning.ReasoningTags(), 3)
    mask = unpack_bitmask(rule.thinking_mask[None], vocab)[0]
    first = rule.close_ids[0]
    assert mask[first] and not any(mask[t] for t in tiny_lm.eos_token_ids)
    others = [i for i, p in enumerate(tok.convert_ids_to_tokens(list(range(vocab)))) if "</" in p and i != first]
    assert others and not mask[others].any()
    assert int(mask.sum()) == vocab - len(others) - len(set(tiny_lm.eos_token_ids))
    assert reasoning.thinking_constraint(
        tok, vocab, tiny_lm.eos_token_ids, reasoning.ReasoningTags(), 3
    ).thinking_mask is (rule.thinking_mask)  # cached per tokenizer


def test_a_special_closing_tag_is_refused(default_lm):
    tok = with_template(default_lm.tokenizer, None)
    tok.add_special_tokens({"additional_special_tokens": ["</reason>"]})
    with pytest.raises(ValueError, match="special token that decoding drops"):
        reasoning.close_token_ids(tok, reasoning.ReasoningTags("<reason>", "</reason>"))


def test_the_static_path_gives_the_eager_tokens_under_a_thinking_budget(tiny_lm):
    import dataclasses

    lm = dataclasses.replace(tiny_lm)  # its own static cache
    tok, vocab, eos = lm.tokenizer, int(lm.head_weight.shape[0]), lm.eos_token_ids
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    answer = grammarlib.compile_constraint(tok, vocab, eos, grammarlib.json_grammar(schema))
    tags = reasoning.ReasoningTags()
    constraints = [reasoning.thinking_constraint(tok, vocab, eos, tags, 3, answer), None]
    runs = {
        decoding: run(
            lm,
            [_prompt_ids(tok), _prompt_ids(tok, prefill="")],
            lambda idx, texts: [float(len(t)) for t in texts],
            AISPParams(method="aisp", num_samples=3, num_iterations=2),
            SamplingParams(max_tokens=24, temperature=1.0),
            seed=5,
            constraints=constraints,
            decoding=decoding,
        )
        for decoding in ("eager", "static")
    }
    assert [r.sample_token_ids for r in runs["eager"]] == [r.sample_token_ids for r in runs["static"]]
    close = list(constraints[0].close_ids)
    assert all(0 <= _close_at(ids, close) <= 3 for it in runs["static"][0].sample_token_ids for ids in it)
