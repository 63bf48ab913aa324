"""The chat template's own tool-call format: detection, rendering through the template, constrained
decoding in that format and reading it back (minimal templates of our own in each format).

Decoding runs on the tiny random Llama: whatever it samples under the grammar of a format, the
reply must read back as valid calls (forced and ``"any"``), or as prose (the prose rows of ``"auto"``).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from chat_templates import HERMES, LLAMA3, MISTRAL, UNKNOWN_TOOLS, with_template
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from langchain_aisp.chat import _grammar as grammarlib
from langchain_aisp.chat import _tool_formats as tf
from langchain_aisp.chat._auto import Turn, auto_choice_score
from langchain_aisp.chat._format import OutputFormat
from langchain_aisp.chat._parse import format_validity, parse_tool_reply
from langchain_aisp.chat._render import render
from langchain_aisp.engine.aisp import run
from langchain_aisp.engine.config import AISPParams, SamplingParams

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TEMPLATES = {"hermes": HERMES, "llama3": LLAMA3, "mistral": MISTRAL}
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"enum": ["Zürich", "Kraków", "東京"]}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}
NOTE = {
    "name": "note",
    "description": "Write a note.",
    "parameters": {"type": "object", "properties": {"text": {"type": "string", "maxLength": 12}}, "required": ["text"]},
}


@pytest.fixture(scope="module")
def tokenizers(default_lm):
    return {name: with_template(default_lm.tokenizer, t) for name, t in TEMPLATES.items()}


def test_formats_are_detected_from_the_template(default_lm, tokenizers):
    assert {name: tf.detect(tok) for name, tok in tokenizers.items()} == {n: n for n in TEMPLATES}
    assert tf.detect(default_lm.tokenizer) == "documented"  # SmolLM2's template does not render tools
    assert tf.detect(with_template(default_lm.tokenizer, UNKNOWN_TOOLS)) == "documented"
    assert tf.detect(with_template(default_lm.tokenizer, None)) == "documented"
    assert tf.resolve(tokenizers["llama3"]).name == "llama3"
    assert tf.resolve(tokenizers["llama3"], "documented").native is False  # the setting overrides
    with pytest.raises(ValueError, match="tool_format='mistral' needs a chat template that renders tools"):
        tf.resolve(default_lm.tokenizer, "mistral")
    with pytest.raises(ValueError, match=r"tool_format must be one of \['auto', .*got 'json'"):
        tf.resolve(default_lm.tokenizer, "json")


CONVERSATION = [
    SystemMessage("Be brief."),
    HumanMessage("Weather in Zürich for 2 days?"),
    AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Zürich", "days": 2}, "id": "call_1"}]),
    ToolMessage("Sonnig, 21 °C", tool_call_id="call_1", name="get_weather"),
    HumanMessage("And in 東京?"),
]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hermes", ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}', "<tools>"]),
        ("llama3", ['{"name": "get_weather", "parameters": {"city": "Zürich", "days": 2}}', "<|im_start|>ipython"]),
        (
            "mistral",
            ['[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}, "id": "', "[TOOL_RES"],
        ),
    ],
)
def test_multi_turn_conversations_render_through_the_template(tokenizers, name, expected):
    fmt = OutputFormat(tools=(WEATHER,), tool_choice="auto")
    found = tf.resolve(tokenizers[name])
    text = render(tokenizers[name], CONVERSATION, fmt, tools=found.rendering).text
    for piece in [*expected, "Sonnig, 21 °C", "And in 東京?", "Weather in a city."]:
        assert piece in text, (piece, text)
    assert "# Tools\n\nYou may call" not in text  # the documented system text is not added


@pytest.mark.parametrize(
    ("name", "reply", "calls", "content"),
    [
        ("llama3", '{"name": "get_weather", "parameters": {"city": "東京", "days": 3}}', [("東京", 3)], ""),
        (
            "llama3",
            '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Kraków", "days": 1}}',
            [("Kraków", 1)],
            "",
        ),
        (
            "llama3",
            '{"name": "get_weather", "parameters": {"city": "Zürich", "days": 1}}; '
            '{"name": "get_weather", "parameters": {"city": "東京", "days": 2}}',
            [("Zürich", 1), ("東京", 2)],
            "",
        ),
        (
            "mistral",
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "東京", "days": 3}}]',
            [("東京", 3)],
            "",
        ),
        ("mistral", ' [{"name": "get_weather", "arguments": {"city": "Zürich", "days": 1}}]', [("Zürich", 1)], ""),
        (
            "mistral",
            'Checking. [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Zürich", "days": 1}}, '
            '{"name": "get_weather", "arguments": {"city": "Kraków", "days": 5}}]',
            [("Zürich", 1), ("Kraków", 5)],
            "Checking.",
        ),
        (
            "hermes",
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京", "days": 3}}\n</tool_call>',
            [("東京", 3)],
            "",
        ),
        ("llama3", "It is sunny in Zürich.", [], "It is sunny in Zürich."),
        ("mistral", "Sunny.", [], "Sunny."),
    ],
)
def test_replies_read_back_in_every_format(name, reply, calls, content):
    fmt = OutputFormat(tools=(WEATHER,), tool_choice="auto", parallel_tool_calls=True)
    parsed = parse_tool_reply(tf.normalize(reply, tf.FORMATS[name]), fmt)
    assert [(c["args"]["city"], c["args"]["days"]) for c in parsed.tool_calls] == calls
    assert not parsed.invalid_tool_calls
    assert parsed.content == content


@pytest.mark.parametrize(
    ("name", "reply", "ends"),
    [
        ("llama3", '{"name": "get_weather", "parameters": {"city": "Zür', "inside the call's JSON object"),
        (
            "mistral",
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Zürich", "days": 1}',
            "before its closing ]",
        ),
        ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Z', "before its closing </tool_call>"),
    ],
)
def test_cut_calls_are_reported_incomplete(name, reply, ends):
    """The error names how the format the model writes ends a call (never ``</tool_call>`` for Llama 3 or Mistral)."""
    fmt = OutputFormat(tools=(WEATHER,), tool_choice="any")
    tool_format = tf.FORMATS[name]
    parsed = parse_tool_reply(tf.normalize(reply, tool_format), fmt, tool_format.closing)
    assert not parsed.tool_calls
    assert [c["error"] for c in parsed.invalid_tool_calls] == [f"the tool call is not complete (the reply ends {ends})"]
    assert format_validity(tf.normalize(reply, tool_format), fmt) == -1.0


def test_a_wrong_argument_key_is_an_invalid_call():
    fmt = OutputFormat(tools=(WEATHER,), tool_choice="any")
    parsed = parse_tool_reply(tf.normalize('{"name": "get_weather", "args": {}}', tf.FORMATS["llama3"]), fmt)
    assert not parsed.tool_calls and parsed.invalid_tool_calls


def _decode(lm, tok, grammar, messages, fmt, tool_format, n=4):
    vocab, eos = int(lm.head_weight.shape[0]), lm.eos_token_ids
    prefill = grammarlib.forced_prefix(tok, vocab, eos, grammar)
    prompt = render(tok, messages, fmt, prefill, tools=tool_format.rendering)
    constraint = grammarlib.compile_constraint(tok, vocab, eos, grammar, prefill)
    results = run(
        lm,
        [list(tok(prompt.text, add_special_tokens=False).input_ids)],
        lambda idx, texts: [0.0] * len(texts),
        AISPParams(method="bon", num_samples=n, num_iterations=1),
        SamplingParams(max_tokens=40, temperature=1.0),
        seed=1,
        constraints=[constraint],
    )
    return prefill, results[0].texts[0]


@pytest.mark.parametrize("name", ["hermes", "llama3", "mistral", "documented"])
@pytest.mark.parametrize("choice", ["get_weather", "any"])
def test_constrained_calls_in_each_format_read_back_as_valid_calls(tiny_lm, tokenizers, name, choice):
    tok = tokenizers.get(name, tokenizers["hermes"])
    tool_format = tf.resolve(tok, name)
    fmt = OutputFormat(tools=(WEATHER, NOTE), tool_choice=choice)
    grammar = tool_format.grammar(list(fmt.tools), choice=choice, parallel=False, strict=True)
    prefill, texts = _decode(tiny_lm, tok, grammar, CONVERSATION, fmt, tool_format)
    if name == "llama3":
        assert prefill.startswith('{"name": ')
    elif name == "mistral":
        assert prefill.startswith('[TOOL_CALLS] [{"name": ')
    else:
        assert prefill.startswith('<tool_call>\n{"name": ')
    for text in texts:
        parsed = parse_tool_reply(tf.normalize(prefill + text, tool_format), fmt)
        assert len(parsed.tool_calls) == 1 and not parsed.invalid_tool_calls, prefill + text
        call = parsed.tool_calls[0]
        if choice == "get_weather" or call["name"] == "get_weather":
            assert call["args"]["city"] in ("Zürich", "Kraków", "東京") and isinstance(call["args"]["days"], int)
        else:
            assert len(call["args"]["text"]) <= 12


@pytest.mark.parametrize("name", ["llama3", "mistral"])
def test_parallel_calls_in_the_template_format(tiny_lm, tokenizers, name):
    tool_format = tf.resolve(tokenizers[name])
    fmt = OutputFormat(tools=(WEATHER,), tool_choice="any", parallel_tool_calls=True)
    grammar = tool_format.grammar(list(fmt.tools), choice="any", parallel=True, strict=True)
    prefill, texts = _decode(tiny_lm, tokenizers[name], grammar, CONVERSATION[:2], fmt, tool_format)
    for text in texts:
        reply = tf.normalize(prefill + text, tool_format)
        parsed = parse_tool_reply(reply, fmt)
        assert parsed.tool_calls or "not complete" in parsed.invalid_tool_calls[0]["error"], prefill + text


@pytest.mark.parametrize("name", ["hermes", "llama3", "mistral"])
def test_auto_prose_rows_never_read_as_calls(tiny_lm, tokenizers, name):
    tool_format = tf.resolve(tokenizers[name])
    fmt = OutputFormat(tools=(WEATHER,), tool_choice="auto")
    prefill, texts = _decode(tiny_lm, tokenizers[name], tool_format.prose_grammar(), CONVERSATION, fmt, tool_format)
    assert prefill == ""
    for text in texts:
        parsed = parse_tool_reply(tf.normalize(text, tool_format), fmt)
        assert not parsed.attempted and parsed.content == text
        assert auto_choice_score(tf.normalize(text, tool_format), fmt, Turn.of(CONVERSATION)) == 0.0


def test_a_special_tag_token_is_asked_for_as_that_token(default_lm):
    tok = with_template(default_lm.tokenizer, MISTRAL)
    tok.add_special_tokens({"additional_special_tokens": ["[TOOL_CALLS]"]})
    tool_format = tf.resolve(tok)
    token = tok.convert_tokens_to_ids("[TOOL_CALLS]")
    assert dict(tool_format.syntax.tokens) == {"[TOOL_CALLS]": token}
    grammar = tool_format.grammar([WEATHER], choice="any", parallel=False, strict=True)
    assert f"<[{token}]>" in grammar
    eos = default_lm.eos_token_ids
    forced = grammarlib.forced_prefix(
        tok, len(tok), eos, tool_format.grammar([WEATHER], choice="get_weather", parallel=False, strict=True)
    )
    assert forced == '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "'  # the token's text, not its bytes
    ids = tok(forced, add_special_tokens=False).input_ids
    assert ids[0] == token
    constraint = grammarlib.compile_constraint(tok, len(tok), eos, grammar, "")
    matcher = constraint.matcher(0)
    for t in tok(forced + '東京", "days": 2}}]', add_special_tokens=False).input_ids:
        matcher.advance(t)  # the special token, then the call: accepted
    matcher.advance(eos[0])  # EOS is accepted only where the grammar is complete


def test_mistral_call_ids_are_nine_characters_and_match_their_results(default_lm):
    tok = with_template(default_lm.tokenizer, MISTRAL)
    fmt = OutputFormat(tools=(WEATHER,), tool_choice="auto")
    with pytest.raises(ValueError, match="Tool call IDs should be alphanumeric strings with length 9"):
        render(tok, CONVERSATION, fmt, tools=replace(tf.resolve(tok).rendering, call_id=None))  # LangChain's ids
    new_id = tf.mistral_call_id("call_1")
    assert len(new_id) == 9 and new_id.isalnum() and new_id == tf.mistral_call_id("call_1") != tf.mistral_call_id("c2")
    assert tf.mistral_call_id("abcDEF123") == "abcDEF123"  # already valid: kept
    text = render(tok, CONVERSATION, fmt, tools=tf.resolve(tok).rendering).text
    assert f'"id": "{new_id}"' in text and f'"call_id": "{new_id}"' in text
