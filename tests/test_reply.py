"""One call's reply plan: a thinking model with the template's own tool format, on the tiny random Llama."""

from __future__ import annotations

import dataclasses

import pytest
from chat_templates import HERMES, HERMES_THINK, LLAMA3, with_template
from langchain_core.messages import HumanMessage

from langchain_aisp.chat import _reply
from langchain_aisp.chat._format import OutputFormat
from langchain_aisp.chat._parse import parse_tool_reply
from langchain_aisp.engine.aisp import run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.constraints import ThinkingBudget

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PAINT = {
    "name": "paint",
    "description": "Paint a wall.",
    "parameters": {"type": "object", "properties": {"color": {"enum": ["rot", "grün"]}}, "required": ["color"]},
}
ASK = [HumanMessage("Paint the wall grün.")]


@pytest.fixture(scope="module")
def think_lm(tiny_lm, default_lm):
    assert HERMES_THINK != HERMES
    return dataclasses.replace(tiny_lm, tokenizer=with_template(default_lm.tokenizer, HERMES_THINK))


def _plan(lm, fmt, **kwargs):
    options = {"reasoning": None, "reasoning_tags": None, "thinking_budget": 4, "score_reasoning": False}
    return _reply.reply_plan(lm.tokenizer, fmt, **{**options, "tool_format": "auto", **kwargs})


def test_a_thinking_forced_call_thinks_within_budget_then_calls(think_lm):
    fmt = OutputFormat(tools=(PAINT,), tool_choice="paint")
    plan = _plan(think_lm, fmt)
    assert plan.tool_format.name == "hermes" and plan.mode.tags is not None
    grammar = plan.tool_format.grammar([PAINT], choice="paint", parallel=False, strict=True)
    variant = _reply.render_variant(think_lm, ASK, fmt, plan, grammar, prefix_grammar=grammar)
    assert variant.inside and variant.prompt.prefill == "<think>\n"  # no grammar prefill inside a think section
    assert isinstance(variant.constraint, ThinkingBudget) and variant.constraint.budget == 4
    assert "<tools>" in variant.prompt.text  # tools rendered by the template
    plan = dataclasses.replace(plan, inside=variant.inside)
    total = plan.engine_max_tokens(think_lm.tokenizer, 48)  # the call's fixed text counts too: not prefilled
    assert total == 48 + 4 + len(variant.constraint.close_ids)
    tok = think_lm.tokenizer
    results = run(
        think_lm,
        [list(tok(variant.prompt.text, add_special_tokens=False).input_ids)],
        lambda idx, texts: [0.0] * len(texts),
        AISPParams(method="bon", num_samples=4, num_iterations=1),
        SamplingParams(max_tokens=total, temperature=1.0),
        seed=2,
        constraints=[variant.constraint],
    )
    for text in results[0].texts[0]:
        reply = variant.prompt.prefill + text
        split = plan.split(reply)
        assert split.closed and split.reasoning is not None
        parsed = parse_tool_reply(plan.answer(reply), fmt)
        assert [c["args"]["color"] for c in parsed.tool_calls] in (["rot"], ["grün"]), reply
        assert plan.scored(reply) == split.answer and split.answer.startswith("<tool_call>")
        assert dataclasses.replace(plan, score_reasoning=True).scored(reply) == reply


def test_reasoning_off_prefills_the_grammar_after_the_closed_section(think_lm):
    fmt = OutputFormat(tools=(PAINT,), tool_choice="paint")
    plan = _plan(think_lm, fmt, reasoning=False)
    assert plan.mode.template_kwargs == {"enable_thinking": False}
    grammar = plan.tool_format.grammar([PAINT], choice="paint", parallel=False, strict=True)
    variant = _reply.render_variant(think_lm, ASK, fmt, plan, grammar, prefix_grammar=grammar)
    assert not variant.inside and not isinstance(variant.constraint, ThinkingBudget)
    assert variant.prompt.text.endswith("<think>\n\n</think>\n\n" + variant.prompt.prefill)
    assert variant.prompt.prefill.startswith('<tool_call>\n{"name": "paint"')
    assert dataclasses.replace(plan, inside=False).engine_max_tokens(think_lm.tokenizer, 30) == 30


def test_plans_refuse_bad_settings_and_keep_non_thinking_models_unchanged(tiny_lm, default_lm):
    fmt = OutputFormat()
    with pytest.raises(ValueError, match="thinking_budget must be an integer >= 0 or None, got -2"):
        _plan(tiny_lm, fmt, thinking_budget=-2)
    plan = _plan(tiny_lm, fmt)
    assert plan.mode.tags is None and plan.tool_format.name == "documented"
    variant = _reply.render_variant(tiny_lm, ASK, fmt, plan, None)
    assert variant.prompt.prefill == "" and variant.constraint is None and not variant.inside
    assert plan.answer("plain <b>text</b>") == "plain <b>text</b>"
    llama = dataclasses.replace(tiny_lm, tokenizer=with_template(default_lm.tokenizer, LLAMA3))
    tools = OutputFormat(tools=(PAINT,), tool_choice="any")
    assert _plan(llama, tools).tool_format.name == "llama3"
    assert _plan(llama, tools, tool_format="documented").tool_format.name == "documented"
