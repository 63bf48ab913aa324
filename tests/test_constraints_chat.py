"""Grammar-constrained tools and structured output through AISPChatModel, timeout and max_retries.

On the tiny random Llama: a random model writes valid calls and JSON only because of the grammar.
"""

from __future__ import annotations

import time
from typing import Literal

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel
from typing_extensions import TypedDict

from langchain_aisp import AISPChatModel
from langchain_aisp.chat import _grounding as groundlib
from langchain_aisp.chat._auto import Turn, auto_choice_score, rank_tools
from langchain_aisp.chat._format import OutputFormat
from langchain_aisp.chat._render import render_tool_call
from langchain_aisp.chat._spans import conversation_spans
from langchain_aisp.engine.aisp import RewardError, run

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def length_reward(prompt, response) -> float:
    return float(len(response))


class Flags(BaseModel):
    """Two small fields a random model completes quickly."""

    ok: bool
    size: Literal["s", "m", "l"]


class FlagsDict(TypedDict):
    ok: bool
    size: Literal["s", "m", "l"]


@tool
def paint(color: Literal["red", "blue"], coats: Literal[1, 2]) -> str:
    """Paint the wall."""
    return f"{coats} coats of {color}"


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return "sunny"


def tiny(tiny_lm, **kw):
    params = {"reward": length_reward, "model": tiny_lm, "num_samples": 3, "num_iterations": 2, "max_tokens": 24}
    return AISPChatModel(**{**params, **kw})


@pytest.mark.parametrize("schema", [Flags, FlagsDict, Flags.model_json_schema()])
@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_structured_output_is_valid_by_construction(tiny_lm, schema, method):
    for seed in range(3):
        out = tiny(tiny_lm, seed=seed).with_structured_output(schema, method=method).invoke("Flags?")
        value = out.model_dump() if isinstance(out, Flags) else out
        assert isinstance(value["ok"], bool) and value["size"] in ("s", "m", "l") and set(value) == {"ok", "size"}


def test_json_mode_without_schema_gives_an_object(tiny_lm):
    out = tiny(tiny_lm, seed=0, max_tokens=48).with_structured_output(None, method="json_mode", include_raw=True)
    result = out.invoke("Any JSON.")
    raw = result["raw"]
    assert raw.text.lstrip().startswith("{")
    assert result["parsed"] is not None or raw.response_metadata["finish_reason"] == "length"


def test_forced_tool_calls_are_valid_by_construction(tiny_lm):
    for choice in ("paint", "any", "required", True):
        for seed in range(2):
            msg = tiny(tiny_lm, seed=seed).bind_tools([paint, get_weather], tool_choice=choice).invoke("Paint it.")
            assert len(msg.tool_calls) == 1 and not msg.invalid_tool_calls, msg
            call = msg.tool_calls[0]
            if choice == "paint":
                assert call["name"] == "paint"
            if call["name"] == "paint":
                assert call["args"]["color"] in ("red", "blue") and call["args"]["coats"] in (1, 2)
            assert msg.response_metadata["finish_reason"] == "tool_calls"


def test_auto_runs_a_free_and_a_forced_prompt_with_half_the_samples_each(tiny_lm, monkeypatch):
    seen = []

    def spy(lm, prompts, score, params, sampling, **kwargs):
        seen.append((len(prompts), params.num_samples, kwargs["constraints"]))
        return run(lm, prompts, score, params, sampling, **kwargs)

    model = tiny(tiny_lm, num_samples=4, seed=0, runner=spy)
    msg = model.bind_tools([paint]).invoke("Paint the wall red, two coats.")
    assert seen[0][0] == 2 and seen[0][1] == 2 and all(c is not None for c in seen[0][2])
    assert msg.response_metadata["aisp"]["samples"] == 8  # 4 samples x 2 iterations in total
    assert msg.tool_calls or not msg.invalid_tool_calls


def test_static_decoding_gives_the_eager_answers_for_mixed_calls_in_one_run(tiny_lm):
    """A free call, a JSON-schema call, a forced tool call and an auto tool call, prepared separately and run
    as one Batched AISP engine run (as the server does): decoding='static' gives the eager answers."""
    import dataclasses

    lm = dataclasses.replace(tiny_lm)  # its own static cache
    answers = {}
    for decoding in ("eager", "static"):
        model = tiny(lm, decoding=decoding, seed=1, stop=[" the"])
        forced = model.bind_tools([paint], tool_choice="paint").kwargs
        calls = [
            model.prepare("Say hi."),
            model.prepare("Flags?", response_format={"type": "json_schema", "schema": Flags.model_json_schema()}),
            model.prepare("Paint it.", **forced),
        ]
        assert len({c.batch_key for c in calls}) == 1
        outcomes = model.run_prepared(calls)
        auto = model.bind_tools([paint, get_weather]).invoke("Paint the wall red.")
        answers[decoding] = [
            (m.content, [(c["name"], c["args"]) for c in m.tool_calls], m.response_metadata["aisp"]["rewards"])
            for m in [*outcomes, auto]
        ]
        assert [m.response_metadata["aisp"]["batch_prompts"] for m in outcomes] == [3, 3, 3]
    assert answers["static"] == answers["eager"]
    assert answers["static"][2][1][0][0] == "paint"
    assert Flags.model_validate_json(answers["static"][1][0])


def test_unsupported_schema_fails_at_bind_time_naming_the_construct(tiny_lm):
    model = tiny(tiny_lm)
    bad = {"title": "Tags", "type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(ValueError, match="uniqueItems"):
        model.with_structured_output(bad, method="json_schema")
    with pytest.raises(ValueError, match="uniqueItems"):
        model.with_structured_output(bad)
    with pytest.raises(ValueError, match="uniqueItems"):
        model.bind_tools([{"name": "tag", "description": "Tag.", "parameters": bad}])
    lenient = model.with_structured_output(bad, method="json_schema", strict=False)
    assert lenient.first.kwargs["strict"] is False  # the grammar drops uniqueItems
    assert lenient.first.kwargs["response_format"] == {"type": "json_schema", "schema": bad}
    with pytest.raises(OutputParserException, match="does not match the schema"):  # the parser checks the rest
        lenient.last.invoke(AIMessage('{"tags": "a"}', response_metadata={"finish_reason": "stop"}))
    assert lenient.last.invoke(AIMessage('{"tags": ["a", "b"]}', response_metadata={"finish_reason": "stop"})) == {
        "tags": ["a", "b"]
    }


def test_a_reply_cut_by_max_tokens_says_so(tiny_lm):
    class City(BaseModel):
        name: str
        population: int

    model = tiny(tiny_lm, max_tokens=2, num_samples=2, num_iterations=1, seed=0)
    for method in ("json_schema", "function_calling"):
        with pytest.raises(OutputParserException, match=r"cut by max_tokens=2 .*raise max_tokens \(e\.g\. to 4\)"):
            model.with_structured_output(City, method=method).invoke("A city?")
    msg = model.bind_tools([paint], tool_choice="paint").invoke("Paint.")
    assert msg.invalid_tool_calls and "cut by max_tokens=2" in msg.invalid_tool_calls[0]["error"]


def test_timeout_returns_best_so_far_or_raises(tiny_lm, monkeypatch):
    with pytest.raises(TimeoutError, match="no answer was scored"):
        tiny(tiny_lm, timeout=1e-9).invoke("Hi")

    clock = {"now": 0.0}
    monkeypatch.setattr(time, "monotonic", lambda: clock["now"])

    def slow_reward(prompt, response):
        clock["now"] += 100.0  # every scored response "takes" 100 s
        return float(len(response))

    msg = tiny(tiny_lm, reward=slow_reward, timeout=5.0, num_iterations=4, seed=0).invoke("Hi")
    aisp = msg.response_metadata["aisp"]
    assert aisp["timed_out"] is True and len(aisp["rewards"]) == 1 and aisp["samples"] == 3
    assert aisp["reward"] == max(aisp["rewards"][0])


def test_calls_with_different_timeouts_share_one_run_and_keep_their_own_deadline(tiny_lm, monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(time, "monotonic", lambda: clock["now"])

    def slow_reward(prompt, response):
        clock["now"] += 1.0  # every scored response "takes" a second
        return float(len(response))

    model = tiny(tiny_lm, reward=slow_reward, num_iterations=3, seed=0)
    short = model.prepare("Hi", timeout=2.0)  # its clock starts now: out of time after the first iteration
    normal = model.prepare("Hello")
    gone = model.prepare("Hey", timeout=0.5)
    clock["now"] = 1.0  # gone's deadline passed while it waited
    assert short.batch_key == normal.batch_key == gone.batch_key
    first, second, third = model.run_prepared([short, normal, gone])
    assert first.response_metadata["aisp"]["timed_out"] is True and len(first.response_metadata["aisp"]["rewards"]) == 1
    assert (
        second.response_metadata["aisp"]["timed_out"] is False and len(second.response_metadata["aisp"]["rewards"]) == 3
    )
    assert first.response_metadata["aisp"]["batch_prompts"] == second.response_metadata["aisp"]["batch_prompts"] == 3
    assert isinstance(third, TimeoutError) and "timeout=0.5 s passed before the first 3 samples" in str(third)
    assert "deadline passed before any sample of prompt 2" in str(third.__cause__)
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds > 0 or None, got -1"):
        model.invoke("Hi", timeout=-1)
    monkeypatch.undo()  # the real clock: a per-call timeout that passes before the first iteration ends
    with pytest.raises(TimeoutError, match=r"timeout=1e-09 s passed"):
        tiny(tiny_lm, seed=0).invoke("Hi", timeout=1e-9)


def test_max_retries_retries_a_failing_reward(tiny_lm):
    failures = {"left": 2}

    def flaky(prompt, response):
        if failures["left"] > 0:
            failures["left"] -= 1
            raise ConnectionError("judge unreachable")
        return 1.0

    msg = tiny(tiny_lm, reward=flaky, max_retries=2, num_samples=1, num_iterations=1, seed=0).invoke("Hi")
    assert msg.response_metadata["aisp"]["reward"] == 1.0
    failures["left"] = 1
    with pytest.raises(RewardError, match="judge unreachable"):
        tiny(tiny_lm, reward=flaky, max_retries=0, num_samples=1, num_iterations=1, seed=0).invoke("Hi")


# --- the auto choice rule -------------------------------------------------------------------------------


def _fmt(*tools):
    return OutputFormat(tools=tuple(convert_to_openai_tool(t)["function"] for t in tools))


def _call(name, args):
    return render_tool_call(name, args)


def test_auto_choice_rule():
    fmt = _fmt(get_weather, paint)
    ask = [HumanMessage("What is the weather in San Francisco, CA?")]
    assert auto_choice_score(_call("get_weather", {"location": "San Francisco, CA"}), fmt, Turn.of(ask)) > 0
    assert auto_choice_score(_call("get_weather", {"location": "New York"}), fmt, Turn.of(ask)) == -1.0  # invented
    assert auto_choice_score("It is sunny there.", fmt, Turn.of(ask)) == 0.0
    hello = [HumanMessage("Hello San Francisco!")]
    assert auto_choice_score(_call("get_weather", {"location": "San Francisco"}), fmt, Turn.of(hello)) == -1.0
    done = [
        *ask,
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"location": "San Francisco, CA"}, "id": "1"}]),
        ToolMessage("sunny", tool_call_id="1"),
    ]
    assert auto_choice_score(_call("get_weather", {"location": "San Francisco, CA"}), fmt, Turn.of(done)) == -1.0
    assert auto_choice_score(_call("get_weather", {"location": "sunny"}), fmt, Turn.of(done)) == -1.0  # same turn
    again = [*done, AIMessage("Sunny."), HumanMessage("And the weather in Lima?")]
    assert auto_choice_score(_call("get_weather", {"location": "Lima"}), fmt, Turn.of(again)) > 0  # a new turn

    @tool
    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    numbers = [HumanMessage("What is 12 * 7?")]
    assert auto_choice_score(_call("multiply", {"a": 12, "b": 7}), _fmt(multiply), Turn.of(numbers)) > 0
    assert auto_choice_score(_call("multiply", {"a": 12, "b": 8}), _fmt(multiply), Turn.of(numbers)) == -1.0
    # the grounding term's measure: a number as written ("1,500" is 1500, as the forced rows offer it)
    thousands = Turn.of([HumanMessage("What is 1,500 times 3?")])
    assert auto_choice_score(_call("multiply", {"a": 1500, "b": 3}), _fmt(multiply), thousands) > 0
    assert auto_choice_score(_call("multiply", {"a": 150, "b": 3}), _fmt(multiply), thousands) == -1.0


def test_auto_prefers_the_more_related_tool_and_distinct_values():
    @tool
    def convert_currency(amount: float, from_currency: str, to_currency: str) -> float:
        """Convert an amount of money from one currency to another."""
        return amount

    fmt = _fmt(get_weather, convert_currency)
    ask = [HumanMessage("What is 75 EUR in CHF? Convert the currency.")]
    right = auto_choice_score(
        _call("convert_currency", {"amount": 75, "from_currency": "EUR", "to_currency": "CHF"}), fmt, Turn.of(ask)
    )
    repeated = auto_choice_score(
        _call("convert_currency", {"amount": 75, "from_currency": "EUR", "to_currency": "EUR"}), fmt, Turn.of(ask)
    )
    other = auto_choice_score(_call("get_weather", {"location": "EUR"}), fmt, Turn.of(ask))
    assert right > repeated > 0 and other < repeated


def test_auto_forced_rows_propose_values_from_the_conversation():
    fmt = _fmt(get_weather, paint)
    ask = [HumanMessage("What is the weather in San Francisco, CA? Paint 2 walls.")]
    spans, numbers = conversation_spans(ask)
    assert "San Francisco, CA" in spans and "weather" in spans and 2.0 in numbers
    tools = {t["name"]: t for t in groundlib.grounded_tools(fmt, ask)}
    # a place field: the name runs after "in" (the candidates of its kind, chat/_spans.py)
    assert tools["get_weather"]["parameters"]["properties"]["location"]["enum"] == [
        "San Francisco",
        "San Francisco, CA",
    ]
    assert tools["paint"]["parameters"]["properties"]["color"] == fmt.tools[1]["parameters"]["properties"]["color"]
    assert rank_tools(fmt, Turn.of(ask))[0] in ("get_weather", "paint")
    assert rank_tools(fmt, Turn.of([HumanMessage("How is the weather?")]))[0] == "get_weather"
