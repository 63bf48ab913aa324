"""Thinking models and the template's own tool format through ``AISPChatModel`` and the server's wire format.

The tiny random Llama gets chat templates of our own (tests/chat_templates.py): a Qwen3-like one
with a think section and Hermes tools, a DeepSeek-R1-like one that opens the think section itself,
and Llama 3.1-like / Mistral-like tool formats. A random model thinks random words; the checks are
the split (reasoning vs answer), what the reward scored, the budget, and calls in the template's format.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Literal

import pytest
from chat_templates import HERMES_THINK, LLAMA3, MISTRAL, PREFILLED_THINK, with_template
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from langchain_aisp import AISPChatModel

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CLOSE_TOKENS = 3
"""``</think>`` is three tokens in SmolLM2's tokenizer."""


class Recorder:
    """A reward that records what it was asked to score (the reward scores length)."""

    def __init__(self):
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, prompt, response) -> float:
        with self.lock:
            self.seen.append(response)
        return float(len(response))


@tool
def paint(color: Literal["rot", "grün", "青"], coats: Literal[1, 2]) -> str:
    """Paint the wall."""
    return f"{coats} coats of {color}"


@tool
def get_weather(city: str) -> str:
    """Get the weather in a city."""
    return "sunny"


class Flags(BaseModel):
    ok: bool
    size: Literal["s", "m", "l"]


@pytest.fixture(scope="module")
def lms(tiny_lm, default_lm):
    def lm(template):
        return dataclasses.replace(tiny_lm, tokenizer=with_template(default_lm.tokenizer, template))

    return {"think": lm(HERMES_THINK), "prefilled": lm(PREFILLED_THINK), "llama3": lm(LLAMA3), "mistral": lm(MISTRAL)}


def model(lm, reward=None, **kw):
    params = {"method": "bon", "num_samples": 3, "num_iterations": 2, "max_tokens": 12, "seed": 0}
    return AISPChatModel(model=lm, reward=reward or Recorder(), **{**params, **kw})


# --- thinking ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["think", "prefilled"])
def test_reasoning_is_split_from_the_answer_and_the_reward_scores_the_answer(lms, which):
    reward = Recorder()
    msg = model(lms[which], reward, thinking_budget=4).invoke("Is the sky blue?")
    reasoning = msg.additional_kwargs["reasoning_content"]
    assert isinstance(reasoning, str) and reasoning
    assert "<think>" not in msg.content and "</think>" not in msg.content and reasoning not in msg.content
    assert len(reward.seen) == 6
    assert not any("<think>" in s or "</think>" in s for s in reward.seen)  # answers only
    assert msg.content in reward.seen
    aisp = msg.response_metadata["aisp"]
    assert aisp["thinking_budget"] == 4 and aisp["max_tokens"] == 12
    assert msg.usage_metadata["output_tokens"] <= 4 + CLOSE_TOKENS + 12


def test_score_reasoning_scores_the_whole_reply(lms):
    reward = Recorder()
    msg = model(lms["think"], reward, thinking_budget=3, score_reasoning=True).invoke("Is the sky blue?")
    assert all(s.startswith("<think>\n") and "</think>" in s for s in reward.seen)
    assert any(msg.additional_kwargs["reasoning_content"] in s and s.endswith(msg.content) for s in reward.seen)


def test_the_budget_bounds_the_thinking_and_the_answer_keeps_max_tokens(lms):
    tok = lms["think"].tokenizer
    for budget in (0, 2, 5):
        msg = model(lms["think"], thinking_budget=budget, max_tokens=6, num_iterations=1).invoke("Hi")
        thought = len(tok(msg.additional_kwargs.get("reasoning_content", ""), add_special_tokens=False).input_ids)
        assert thought <= budget + 1  # + the prefilled newline's merge at the edge
        assert msg.usage_metadata["output_tokens"] <= budget + CLOSE_TOKENS + 6


def test_stream_and_batch_carry_the_reasoning_too(lms):
    llm = model(lms["think"], thinking_budget=4)
    single = llm.invoke("Is the sky blue?")
    chunks = list(llm.stream("Is the sky blue?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert merged.content == single.content
    assert merged.additional_kwargs["reasoning_content"] == single.additional_kwargs["reasoning_content"]
    kinds = [
        "reasoning" if c.additional_kwargs.get("reasoning_content") else "content"
        for c in chunks
        if c.content or c.additional_kwargs
    ]
    assert kinds[0] == "reasoning" and kinds == sorted(kinds, reverse=True)  # the reasoning streams first
    batch = llm.batch(["Is the sky blue?", "Name a fruit."])
    assert batch[0].content == single.content
    assert batch[0].additional_kwargs["reasoning_content"] == single.additional_kwargs["reasoning_content"]
    assert "reasoning_content" in batch[1].additional_kwargs


def test_reasoning_false_turns_thinking_off_through_the_template(lms):
    reward = Recorder()
    llm = model(lms["think"], reward, reasoning=False)
    call = llm.prepare("Is the sky blue?")
    assert call._job.prompt.text.endswith("<think>\n\n</think>\n\n")  # the template closed an empty section
    msg = llm.invoke("Is the sky blue?")
    assert "reasoning_content" not in msg.additional_kwargs
    assert msg.content in reward.seen


def test_a_model_without_think_tags_is_unchanged_and_reasoning_true_is_refused(tiny_lm):
    msg = model(tiny_lm).invoke("Hi")
    assert "reasoning_content" not in msg.additional_kwargs
    with pytest.raises(ValueError, match="reasoning=True, but the model's chat template writes no think section"):
        model(tiny_lm, reasoning=True).invoke("Hi")
    with pytest.raises(ValueError, match="thinking_budget must be an integer >= 0 or None, got -1"):
        model(tiny_lm, thinking_budget=-1)
    tagged = model(tiny_lm, reasoning_tags=("<reason>", "</reason>"), thinking_budget=2).invoke("Hi")
    assert "reasoning_content" in tagged.additional_kwargs  # tags set by hand: prefilled and split


def test_tools_and_structured_output_apply_to_the_answer(lms):
    llm = model(lms["think"], thinking_budget=3, max_tokens=48)
    msg = llm.bind_tools([paint], tool_choice="paint").invoke("Paint it grün, two coats.")
    assert msg.tool_calls and msg.tool_calls[0]["args"]["color"] in ("rot", "grün", "青")
    assert msg.additional_kwargs["reasoning_content"]
    out = llm.with_structured_output(Flags, method="json_schema", include_raw=True).invoke("Flags?")
    assert out["parsing_error"] is None and isinstance(out["parsed"], Flags)
    auto = llm.bind_tools([paint, get_weather]).invoke("Paint the wall grün, one coat.")
    assert auto.response_metadata["aisp"]["auto_choice"] in ("call", "prose")
    assert "</think>" not in auto.content


# --- the template's own tool format --------------------------------------------------------------------


@pytest.mark.parametrize("which", ["llama3", "mistral"])
@pytest.mark.parametrize("choice", ["paint", "any", "auto"])
def test_calls_in_the_template_format(lms, which, choice):
    llm = model(lms[which], max_tokens=40)
    msg = llm.bind_tools([paint, get_weather], tool_choice=choice).invoke("Paint the wall 青, two coats.")
    assert msg.response_metadata["aisp"]["tool_format"] == which
    prefill = msg.response_metadata["aisp"]["prefill"]
    if choice != "auto":
        assert msg.tool_calls and not msg.invalid_tool_calls
        assert prefill.startswith('{"name": ' if which == "llama3" else '[TOOL_CALLS] [{"name": ')
    if choice == "paint":
        assert msg.tool_calls[0]["name"] == "paint" and msg.tool_calls[0]["args"]["color"] in ("rot", "grün", "青")
    if msg.tool_calls:
        assert msg.response_metadata["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("which", ["llama3", "mistral"])
def test_multi_turn_tool_results_render_through_the_template(lms, which):
    llm = model(lms[which], max_tokens=40)
    history = [
        HumanMessage("Weather in Zürich?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Zürich"}, "id": "call_1"}]),
        ToolMessage("Sonnig ☀", tool_call_id="call_1", name="get_weather"),
    ]
    text = llm.prepare(history, **llm.bind_tools([get_weather]).kwargs)._job.prompt.text
    if which == "llama3":
        assert '{"name": "get_weather", "parameters": {"city": "Zürich"}}' in text and "ipython\nSonnig ☀" in text
    else:
        assert '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Zürich"}, "id": "' in text
        assert '[TOOL_RESULTS] {"content": "Sonnig ☀", "call_id": "' in text
    msg = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(history)
    assert msg.tool_calls and isinstance(msg.tool_calls[0]["args"]["city"], str)


def test_tool_format_can_be_set_and_is_checked(lms, tiny_lm):
    llm = model(lms["llama3"], max_tokens=40, tool_format="documented")
    msg = llm.bind_tools([paint], tool_choice="paint").invoke("Paint it rot.")
    assert msg.response_metadata["aisp"]["tool_format"] == "documented"
    assert msg.response_metadata["aisp"]["prefill"].startswith("<tool_call>")
    with pytest.raises(
        ValueError, match=r"tool_format[\s\S]*'auto', 'documented', 'hermes', 'llama3', 'mistral' or 'deepseek'"
    ):
        model(tiny_lm, tool_format="xml")
    with pytest.raises(ValueError, match="tool_format='llama3' needs a chat template that renders tools"):
        model(tiny_lm, tool_format="llama3").bind_tools([paint], tool_choice="paint").invoke("Paint it rot.")


# --- the server's wire format ----------------------------------------------------------------------------


def test_the_server_sends_reasoning_content_as_vllm_does():
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    from langchain_aisp.serve.protocol import chunk_events, completion_body

    msg = AIMessage("Paris.", additional_kwargs={"reasoning_content": "The capital of France is Paris."})
    body = completion_body(msg, completion_id="c1", model="m", aisp={"reward": 1.0})
    assert body["choices"][0]["message"]["reasoning_content"] == "The capital of France is Paris."
    parsed = ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.content == "Paris."
    assert parsed.choices[0].message.reasoning_content == "The capital of France is Paris."  # type: ignore[attr-defined]
    events = [e for e in chunk_events(msg, completion_id="c1", model="m", aisp={}, include_usage=False)]
    chunks = [ChatCompletionChunk.model_validate(json.loads(e[6:])) for e in events if e != "data: [DONE]\n\n"]
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (reasoning, content) == ("The capital of France is Paris.", "Paris.")
    plain = completion_body(AIMessage("Hi"), completion_id="c2", model="m", aisp={})
    assert "reasoning_content" not in plain["choices"][0]["message"]


def test_reasoning_false_closes_a_section_the_template_opened(lms):
    reward = Recorder()
    llm = model(lms["prefilled"], reward, reasoning=False, thinking_budget=4)
    assert llm.prepare("Hi")._job.prompt.text.endswith("<think>\n\n</think>\n\n")
    msg = llm.invoke("Hi")
    assert "reasoning_content" not in msg.additional_kwargs and "</think>" not in msg.content
    assert msg.content in reward.seen and "thinking_budget" not in msg.response_metadata["aisp"]
    assert msg.usage_metadata["output_tokens"] <= 12  # no budget on top: it does not think
