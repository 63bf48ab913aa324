"""What a chat template does with tools, read from the template itself, and the history it drops rendered anyway.

Templates of our own (tests/chat_templates.py) in each way of treating tools, and real ones: SmolLM3-3B's
(tests/families/data/smollm3-3b-hf.jinja, with its source), which renders tool definitions but drops a
previous call and writes the tool result as a plain user turn.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import families
import pytest
from chat_templates import (
    ACTIONS,
    DEEPSEEK,
    DROPS_TOOL_HISTORY,
    FOLDS_SYSTEM,
    HERMES,
    LLAMA3,
    MISTRAL,
    NEEDS_TOOLS,
    NO_SYSTEM,
    SYSTEM_TOOLS,
    THINK,
    with_template,
)
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel

from langchain_aisp import AISPChatModel
from langchain_aisp.chat import _grammar as grammarlib
from langchain_aisp.chat import _template as templatelib
from langchain_aisp.chat import _tool_formats as tf
from langchain_aisp.chat._format import OutputFormat
from langchain_aisp.chat._parse import parse_tool_reply
from langchain_aisp.chat._render import call_example, fold_system, render, write_calls
from langchain_aisp.chat._template import TemplateTools, read_template, template_tools

DATA = Path(__file__).parent / "families" / "data"
SMOLLM3 = (DATA / "smollm3-3b-hf.jinja").read_text()

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}
CALL = {"name": "get_weather", "args": {"city": "Zürich", "days": 2}, "id": "call_1"}
CONVERSATION = [
    SystemMessage("Be brief."),
    HumanMessage("Weather in Zürich for 2 days?"),
    AIMessage("", tool_calls=[CALL]),
    ToolMessage("Sonnig, 21 °C", tool_call_id="call_1", name="get_weather"),
]
HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}\n</tool_call>'
RESULT_TURN = '<tool_response>\n{"name": "get_weather", "content": "Sonnig, 21 °C"}\n</tool_response>'


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (HERMES, TemplateTools("tools", calls=True, results=True)),
        (LLAMA3, TemplateTools("tools", calls=True, results=True)),
        (MISTRAL, TemplateTools("tools", calls=True, results=True)),
        (DROPS_TOOL_HISTORY, TemplateTools("tools", calls=False, results=False)),
        (SMOLLM3, TemplateTools("tools", calls=False, results=False)),
        (SYSTEM_TOOLS, TemplateTools("system", calls=False, results=False)),
        (DEEPSEEK, TemplateTools(None, calls=True, results=True)),
        (THINK, TemplateTools()),  # no tools at all
        (None, TemplateTools()),  # no template
    ],
    ids=["hermes", "llama3", "mistral", "drops-history", "smollm3", "system-tools", "deepseek", "no-tools", "none"],
)
def test_what_a_template_renders_of_tools_is_read_from_it(default_lm, template, expected):
    assert template_tools(with_template(default_lm.tokenizer, template)) == expected


def test_smollm2s_template_renders_no_tools_and_its_prompts_are_unchanged(default_lm):
    tok = default_lm.tokenizer  # the default model: a ChatML template that writes any role by its name
    assert template_tools(tok) == TemplateTools()
    fmt = OutputFormat(tools=(WEATHER,), tool_choice="auto")
    text = render(tok, CONVERSATION, fmt, tools=tf.resolve(tok).rendering).text
    assert f"<|im_start|>assistant\n{HERMES_CALL}<|im_end|>" in text
    assert f"<|im_start|>user\n{RESULT_TURN}<|im_end|>" in text
    assert "You are provided with function signatures within <tools></tools> XML tags:" in text


@pytest.mark.parametrize("template", [SMOLLM3, DROPS_TOOL_HISTORY], ids=["smollm3", "drops-history"])
def test_history_the_template_drops_is_rendered_in_the_reply_format(default_lm, template):
    tok = with_template(default_lm.tokenizer, template)
    found = tf.resolve(tok)
    assert found.name == "hermes" and found.template == TemplateTools("tools")
    fmt = OutputFormat(tools=(WEATHER,), tool_choice="auto")
    text = render(tok, CONVERSATION, fmt, tools=found.rendering).text
    assert f"<|im_start|>assistant\n{HERMES_CALL}<|im_end|>" in text  # not an empty assistant turn
    assert f"<|im_start|>user\n{RESULT_TURN}<|im_end|>" in text  # marked as the call's result
    assert "<|im_start|>user\nSonnig, 21 °C<|im_end|>" not in text
    assert text.count("Weather in a city.") == 1  # the definition, by the template
    assert "Take argument values" not in text  # the template lists the tools and says how to call


def test_history_a_template_renders_goes_through_it(default_lm):
    tok = with_template(default_lm.tokenizer, HERMES)
    fmt = OutputFormat(tools=(WEATHER,), tool_choice="auto")
    text = render(tok, CONVERSATION, fmt, tools=tf.resolve(tok).rendering).text
    assert "<tool_response>\nSonnig, 21 °C\n</tool_response>" in text  # the template's own result turn
    assert RESULT_TURN not in text


def test_tools_go_where_the_template_reads_them(default_lm):
    """Phi-4-mini-like: the system message's ``tools`` field; the call format is ours, so the system message says
    how to call (without listing the tools a second time)."""
    tok = with_template(default_lm.tokenizer, SYSTEM_TOOLS)
    found = tf.resolve(tok)
    assert found.name == "documented" and found.template.definitions == "system"
    fmt = OutputFormat(tools=(WEATHER,), tool_choice="get_weather")
    text = render(tok, CONVERSATION[1:], fmt, tools=found.rendering).text
    assert '<tools>[{"name": "get_weather", "description": "Weather in a city.", "parameters": ' in text
    assert text.count("Weather in a city.") == 1
    assert call_example(grammarlib.HERMES) in text and "You must call the function get_weather." in text
    assert f"<|im_start|>assistant\n{HERMES_CALL}<|im_end|>" in text
    assert f"<|im_start|>user\n{RESULT_TURN}<|im_end|>" in text


def test_a_template_that_writes_calls_in_an_unknown_format_gets_all_of_it_as_text(default_lm):
    unknown = HERMES.replace("<tool_call>", "<call>").replace("</tool_call>", "</call>")
    tok = with_template(default_lm.tokenizer, unknown)
    assert template_tools(tok).calls
    found = tf.resolve(tok)
    assert found.name == "documented" and found.template == TemplateTools()  # no two call formats in one prompt
    text = render(tok, CONVERSATION, OutputFormat(tools=(WEATHER,)), tools=found.rendering).text
    assert HERMES_CALL in text and "<call>" not in text


def test_the_template_is_read_once_per_tokenizer_and_template(default_lm, monkeypatch):
    tok = with_template(default_lm.tokenizer, DROPS_TOOL_HISTORY)
    renders = []
    real = type(tok).apply_chat_template

    def counting(self, *args, **kwargs):
        renders.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(tok), "apply_chat_template", counting)
    first = template_tools(tok)
    probes = len(renders)
    assert probes > 0 and template_tools(tok) is first and len(renders) == probes
    assert tf.resolve(tok).name == "hermes" and len(renders) == probes  # the format and its opening: same probe
    tok.chat_template = HERMES  # another template: read again
    assert template_tools(tok) == TemplateTools("tools", calls=True, results=True) and len(renders) > probes


def test_an_unparsable_template_is_probed_without_its_variables(default_lm, monkeypatch):
    monkeypatch.setattr(templatelib, "_variables", lambda template: None)
    assert template_tools(with_template(default_lm.tokenizer, SYSTEM_TOOLS)).definitions == "system"
    assert template_tools(with_template(default_lm.tokenizer, DROPS_TOOL_HISTORY)) == TemplateTools("tools")


@pytest.mark.parametrize("name", ["documented", "hermes", "llama3", "mistral", "deepseek"])
def test_calls_written_as_history_read_back_as_the_same_calls(name):
    """What a dropped call is written as (the reply format) is what the reply parser reads."""
    calls = [("get_weather", {"city": "Zürich", "days": 2}), ("get_weather", {"city": "東京", "days": 1})]
    fmt = OutputFormat(tools=(WEATHER,), tool_choice="any", parallel_tool_calls=True)
    tool_format = tf.FORMATS[name]
    parsed = parse_tool_reply(tf.normalize(write_calls(tool_format.syntax, calls), tool_format), fmt)
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == calls and not parsed.invalid_tool_calls


# --- system turns, templates that need tools, the call format read from the rendering -------------------

SYSTEM_FIRST = [SystemMessage("Be brief."), HumanMessage("Weather in Zürich for 2 days?")]
JSON_ONLY = OutputFormat(json_schema={"type": "object", "properties": {"ok": {"type": "boolean"}}})
FORMATS = {
    "plain": OutputFormat(),
    "forced": OutputFormat(tools=(WEATHER,), tool_choice="get_weather"),
    "json_schema": JSON_ONLY,
}


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("messages", [SYSTEM_FIRST, CONVERSATION], ids=["one-turn", "multi-turn"])
def test_a_system_turn_a_template_refuses_is_folded_as_gemma_3_folds_it(default_lm, fmt, messages):
    """A Gemma 2-like template raises on a system turn; the package folds the system text (a user's own, its tool
    and JSON instructions) into the first user turn exactly as a Gemma 3-like template does by itself."""
    refusing = with_template(default_lm.tokenizer, NO_SYSTEM)
    folding = with_template(default_lm.tokenizer, FOLDS_SYSTEM)
    assert read_template(refusing).refuses_system and not read_template(folding).refuses_system
    ours = render(refusing, messages, fmt, tools=tf.resolve(refusing).rendering).text
    assert ours == render(folding, messages, fmt, tools=tf.resolve(folding).rendering).text
    assert ours.startswith("<start_of_turn>user\nBe brief.") and "<start_of_turn>system" not in ours


def test_system_texts_fold_into_the_user_turn_after_them():
    def turn(role, content):
        return {"role": role, "content": content}

    messages = [turn("system", "A"), turn("user", "B"), turn("assistant", "C"), turn("system", "D"), turn("user", "E")]
    assert fold_system(messages) == [turn("user", "A\n\nB"), turn("assistant", "C"), turn("user", "D\n\nE")]
    assert fold_system([turn("system", "A"), turn("system", ""), turn("assistant", "C")]) == [
        turn("user", "A"),
        turn("assistant", "C"),
    ]
    assert fold_system([turn("user", "B"), turn("system", "A")]) == [turn("user", "B"), turn("user", "A")]


def test_templates_that_take_a_system_turn_keep_it(default_lm):
    """SmolLM2's template (the default model's) and the other templates of our own take a system turn: nothing is
    folded, their prompts are unchanged."""
    for template in (None, HERMES, LLAMA3, MISTRAL, DEEPSEEK, SYSTEM_TOOLS, FOLDS_SYSTEM):
        reading = read_template(with_template(default_lm.tokenizer, template))
        assert not (reading.refuses_system or reading.refuses_system_with_tools or reading.needs_tools), template
    # one that writes no system turn at all (its text would be lost) counts as refusing it: the text is folded
    assert read_template(with_template(default_lm.tokenizer, DROPS_TOOL_HISTORY)).refuses_system
    text = render(default_lm.tokenizer, SYSTEM_FIRST, OutputFormat()).text
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWeather in Zürich")


def test_a_template_that_needs_tools_renders_a_conversation_without_them_the_documented_way(default_lm):
    """A tool_use-like template alone iterates ``tools``: a conversation without tools (json_schema, the documented
    tool format) gets the plain prompt, one with tools where the template reads them goes through it."""
    tok = with_template(default_lm.tokenizer, NEEDS_TOOLS)
    assert read_template(tok).needs_tools
    schema = render(tok, SYSTEM_FIRST, JSON_ONLY)
    assert schema.plain and schema.text.startswith("System: Be brief.\n\nReply with only one JSON object")
    forced = OutputFormat(tools=(WEATHER,), tool_choice="get_weather")
    documented = render(tok, SYSTEM_FIRST, forced, tools=tf.resolve(tok, "documented").rendering)
    assert documented.plain and "<tools>" in documented.text and "You may call these functions" not in documented.text
    auto = render(tok, SYSTEM_FIRST, forced, tools=tf.resolve(tok).rendering)
    assert not auto.plain and "You may call these functions: get_weather (Weather in a city.)" in auto.text


def test_named_templates_are_chosen_by_transformers_rule(default_lm):
    """A tokenizer with named templates (Hermes-3's "default" and "tool_use"): the tool_use one where tools are
    given, the default one elsewhere; the tools-only template is never handed a conversation without tools."""
    named = {"default": default_lm.tokenizer.chat_template, "tool_use": NEEDS_TOOLS}
    tok = with_template(default_lm.tokenizer, named)
    assert not read_template(tok).needs_tools
    schema = render(tok, SYSTEM_FIRST, JSON_ONLY)
    assert not schema.plain and schema.text.startswith("<|im_start|>system\nBe brief.\n\nReply with only one JSON")
    with_tools = render(tok, SYSTEM_FIRST, OutputFormat(tools=(WEATHER,)), tools=tf.resolve(tok).rendering)
    assert with_tools.text.startswith("<|im_start|>system\nYou may call these functions: get_weather")


def test_a_template_needing_tools_runs_json_schema_through_the_chat_model(tiny_lm):
    class Flags(BaseModel):
        ok: bool

    model = _model(tiny_lm, NEEDS_TOOLS, max_tokens=16)
    assert isinstance(model.with_structured_output(Flags, method="json_schema").invoke("Ok?"), Flags)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (ACTIONS, "documented"),  # its tool list says "parameters"; its calls are <|START_ACTION|>[...]
        ("{# calls are not [TOOL_CALLS] here #}" + HERMES, "hermes"),  # what it writes, not what it mentions
        (HERMES.replace("<tool_call>", "{{ '<tool' + '_call>' }}"), "hermes"),  # the tag, written by concatenation
        (LLAMA3, "llama3"),
        (DROPS_TOOL_HISTORY, "hermes"),  # no calls rendered: what it says with the tool definitions
        (SYSTEM_TOOLS, "documented"),
    ],
    ids=["actions", "mentions-mistral", "concatenated-tag", "llama3", "drops-history", "system-tools"],
)
def test_the_call_format_is_read_from_the_templates_own_rendering(default_lm, template, expected):
    assert tf.detect(with_template(default_lm.tokenizer, template)) == expected


# --- through the chat model ---------------------------------------------------------------------------


def _model(lm, template, **kw):
    params = {"method": "bon", "num_samples": 4, "num_iterations": 1, "max_tokens": 40, "seed": 0}
    tokenizer = with_template(lm.tokenizer, template)
    return AISPChatModel(
        model=dataclasses.replace(lm, tokenizer=tokenizer), reward=lambda p, r: 0.0, **{**params, **kw}
    )


def _prompt(model, messages, **kwargs):
    return model.prepare(messages, tools=[WEATHER], **kwargs)._job.prompt


def test_smollm3_gets_the_previous_call_and_its_result(tiny_lm):
    """SmolLM3's real template: the call and the result it would drop reach the model in its tool format."""
    prompt = _prompt(_model(tiny_lm, SMOLLM3, reasoning=False), CONVERSATION, tool_choice="auto")
    assert f"<|im_start|>assistant\n<think>\n\n</think>\n{HERMES_CALL}<|im_end|>" in prompt.text
    assert f"<|im_start|>user\n{RESULT_TURN}<|im_end|>" in prompt.text


def test_phi4_mini_gets_its_tools_in_the_system_messages_tools_field(tiny_lm):
    """Phi-4-mini's template (as committed by the matrix, its source in tests/families/data) reads the system
    message's ``tools`` field; it gets the definitions there, between its own <|tool|> tags."""
    template = (DATA / "phi-4-mini-instruct.jinja").read_text()
    prompt = _prompt(_model(tiny_lm, template), [SystemMessage("Be brief."), HumanMessage("Weather?")])
    assert "<|system|>Be brief.\n\n# Tools" in prompt.text
    assert '<|tool|>[{"name": "get_weather", "description": "Weather in a city.", ' in prompt.text
    assert prompt.text.count("Weather in a city.") == 1


DEEPSEEK_PREFILL = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "'


def test_deepseek_is_asked_for_its_own_call_format(tiny_lm):
    prompt = _prompt(_model(tiny_lm, DEEPSEEK), CONVERSATION, tool_choice="get_weather")
    assert prompt.prefill == DEEPSEEK_PREFILL  # what every reply starts with
    assert call_example(tf.DEEPSEEK) in prompt.text  # the system message says how to call
    assert '"description": "Weather in a city."' in prompt.text  # and lists the tools the template does not
    assert (  # the history's call, by the template
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
        '{"city": "Zürich", "days": 2}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
    ) in prompt.text
    assert "<｜tool▁output▁begin｜>Sonnig, 21 °C<｜tool▁output▁end｜>" in prompt.text


@pytest.mark.parametrize(("choice", "parallel"), [("get_weather", False), ("any", False), ("any", True)])
def test_deepseek_calls_decode_and_read_back(tiny_lm, choice, parallel):
    model = _model(tiny_lm, DEEPSEEK)
    bound = model.bind_tools([WEATHER], tool_choice=choice, parallel_tool_calls=parallel)
    messages = [HumanMessage("Weather in Zürich for 2 days?")]
    msg = bound.invoke(messages)
    assert msg.response_metadata["aisp"]["tool_format"] == "deepseek"
    assert msg.tool_calls and not msg.invalid_tool_calls, msg
    for call in msg.tool_calls:
        assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
        assert isinstance(call["args"]["days"], int)
    again = bound.invoke(
        [*messages, AIMessage("", tool_calls=msg.tool_calls), ToolMessage("ok", tool_call_id=msg.tool_calls[0]["id"])]
    )
    assert again.tool_calls or again.invalid_tool_calls  # a multi-turn call renders and decodes


def test_deepseek_prose_under_auto_never_reads_as_a_call(tiny_lm):
    msg = _model(tiny_lm, DEEPSEEK).bind_tools([WEATHER], tool_choice="auto").invoke(CONVERSATION)
    assert msg.response_metadata["aisp"]["tool_format"] == "deepseek"
    assert msg.tool_calls or msg.content  # either a call or prose, nothing invalid
    assert not msg.invalid_tool_calls


def test_a_thinking_reply_gets_room_for_the_forced_start_it_writes_itself(tiny_lm):
    """Without thinking the grammar's forced start (DeepSeek's: its tags, the name, the json fence) is prefilled;
    after a think section the reply writes it, so it comes on top of ``max_tokens`` like the budget does."""
    thinking = DEEPSEEK.replace("<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think>\n{% endif %}")
    model = _model(tiny_lm, thinking, reasoning_tags=("<think>", "</think>"), thinking_budget=4, max_tokens=40)
    job = model.prepare(CONVERSATION[:2], tools=[WEATHER], tool_choice="get_weather")._job
    assert job.prompt.prefill == "" and job.reply.thinks()
    tok = job.lm.tokenizer
    forced = len(tok(DEEPSEEK_PREFILL, add_special_tokens=False).input_ids)
    close = len(tok("</think>", add_special_tokens=False).input_ids)
    assert job.settings.sampling.max_tokens == 4 + close + forced + 40
    msg = model.bind_tools([WEATHER], tool_choice="get_weather").invoke(CONVERSATION[:2])
    assert msg.tool_calls and not msg.invalid_tool_calls, msg


@pytest.mark.parametrize(
    ("reply", "calls", "error"),
    [
        (DEEPSEEK_PREFILL + '東京", "days": 3}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>', [("東京", 3)], None),
        (
            "Checking. " + DEEPSEEK_PREFILL + 'Kraków", "days": 1}\n```<｜tool▁call▁end｜>\n'
            '<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Zürich", "days": 5}\n```'
            "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            [("Kraków", 1), ("Zürich", 5)],
            None,
        ),
        (DEEPSEEK_PREFILL + "Zür", [], "the tool call is not complete"),
        ("<｜tool▁calls▁begin｜><｜tool▁call▁beg", [], "the tool call is not complete"),
    ],
)
def test_deepseek_replies_read_back(reply, calls, error):
    fmt = OutputFormat(tools=(WEATHER,), tool_choice="auto", parallel_tool_calls=True)
    parsed = parse_tool_reply(tf.normalize(reply, tf.FORMATS["deepseek"]), fmt)
    assert [(c["args"]["city"], c["args"]["days"]) for c in parsed.tool_calls] == calls
    assert [c["error"][: len(error)] for c in parsed.invalid_tool_calls] == ([error] if error else [])
    assert parsed.content == ("Checking." if reply.startswith("Checking.") else "")


# --- the real tokenizers (tests/families) ----------------------------------------------------------------


def _real(name):
    """A family's real tokenizer (tests/families; skipped where its files cannot be had), the format resolved for
    it and :data:`CONVERSATION` rendered in it."""
    try:
        tok = families.family(name).tokenizer
    except families.FamilyUnavailableError as exc:
        pytest.skip(f"{name}: {exc}")
    found = tf.resolve(tok)
    return tok, found, render(tok, CONVERSATION, OutputFormat(tools=(WEATHER,)), tools=found.rendering).text


@pytest.mark.families
def test_smollm3s_real_tokenizer_and_template_get_the_history(single_torch_thread):
    tok, found, text = _real("smollm3")
    assert (found.name, found.template) == ("hermes", TemplateTools("tools"))
    assert HERMES_CALL in text and RESULT_TURN in text
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.convert_tokens_to_ids("<tool_call>") in ids  # the call's tag is the model's own token


@pytest.mark.families
def test_deepseek_r1_distill_resolves_its_own_format(single_torch_thread):
    """DeepSeek-R1-Distill-Qwen (llama.cpp's copy of its template, its added tokens): DeepSeek's format; the
    template lists no tools, renders calls and results."""
    _, found, text = _real("deepseek-r1-distill-qwen")
    assert (found.name, found.template) == ("deepseek", TemplateTools(None, calls=True, results=True))
    assert call_example(tf.DEEPSEEK) in text and '"description": "Weather in a city."' in text
    assert write_calls(tf.DEEPSEEK, [("get_weather", {"city": "Zürich", "days": 2})]) in text
    assert "<｜tool▁output▁begin｜>Sonnig, 21 °C<｜tool▁output▁end｜>" in text


@pytest.mark.families
def test_phi4_minis_template_gets_the_tools_in_its_tool_tags(single_torch_thread):
    _, found, text = _real("phi-4-mini")
    assert (found.name, found.template) == ("documented", TemplateTools("system"))
    assert '<|tool|>[{"name": "get_weather", ' in text and text.count("Weather in a city.") == 1
    assert HERMES_CALL in text and RESULT_TURN in text


@pytest.mark.families
def test_gemma_2s_real_template_gets_the_system_text_in_the_first_user_turn(single_torch_thread):
    """Gemma 2's template (llama.cpp's copy) raises 'System role not supported': the system message, the tool list
    and the call format go into the first user turn (system text, blank line, user text)."""
    tok, found, text = _real("gemma-2")
    assert read_template(tok).refuses_system and found.name == "documented"
    assert text.startswith("<|begin_of_text|><start_of_turn>user\nBe brief.\n\n# Tools\n")
    assert "</tools>" in text and "\n\nWeather in Zürich for 2 days?<end_of_turn>\n<start_of_turn>model\n" in text
    assert "<start_of_turn>system" not in text and RESULT_TURN in text


@pytest.mark.families
def test_hermes_3s_named_templates_and_its_tool_use_template_alone(single_torch_thread):
    """Hermes-3's tokenizer carries "default" and "tool_use" templates (tests/families/data, with the source):
    json_schema renders with the default one, tools with the tool_use one; llama.cpp's copy of the tool_use
    template alone cannot render a conversation without tools, which then gets the plain prompt."""
    tok, found, text = _real("hermes-3")
    assert set(tok.chat_template) == {"default", "tool_use"} and found.name == "hermes"
    assert "You are a function calling AI model." in text and HERMES_CALL in text
    schema = render(tok, SYSTEM_FIRST, JSON_ONLY)
    assert schema.text.startswith("<|begin_of_text|><|im_start|>system\nBe brief.\n\nReply with only one JSON")
    assert "function calling" not in schema.text
    alone = with_template(tok, tok.chat_template["tool_use"])
    assert read_template(alone).needs_tools and render(alone, SYSTEM_FIRST, JSON_ONLY).plain


@pytest.mark.families
def test_command_r7bs_calls_are_not_taken_for_llama_3s(single_torch_thread):
    """Command-R7B's template (llama.cpp's tool_use copy) lists tools with "parameters" but writes its calls as
    <|START_ACTION|>[{"tool_call_id": ..., "tool_name": ..., "parameters": ...}]: the documented format, all as text."""
    tok, found, text = _real("command-r7b")
    assert read_template(tok).call is not None and "<|START_ACTION|>" in str(read_template(tok).call)
    assert (found.name, found.template) == ("documented", TemplateTools())
    assert HERMES_CALL in text and RESULT_TURN in text and "<|START_ACTION|>" not in text
