"""Unit tests of AISPChatModel on the tiny random Llama (real SmolLM2 tokenizer) and a scripted engine."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import threading
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.load import dumpd, dumps, loads
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from pydantic import BaseModel, ValidationError
from typing_extensions import TypedDict

import langchain_aisp.chat_models as cm
from langchain_aisp import AISPChatModel
from langchain_aisp.chat import _reply as replylib
from langchain_aisp.chat._format import OutputFormat, normalize_tool_choice
from langchain_aisp.chat._parse import format_validity
from langchain_aisp.chat._render import PLAIN_STOP, render
from langchain_aisp.engine.aisp import PromptResult, RewardError, run
from langchain_aisp.rewards import Reward

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def length_reward(prompt: str, response: str) -> float:
    """Prefers longer responses (module level, so the model is serialisable)."""
    return float(len(response))


class ConstantReward(Reward):
    name = "constant"

    def score(self, conversations: Sequence[Any], responses: Sequence[str]) -> list[float]:
        return [1.0] * len(responses)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class City(BaseModel):
    """A city."""

    name: str
    population: int


class CityDict(TypedDict):
    """A city."""

    name: str
    population: int


@pytest.fixture
def llm(tiny_lm):
    return AISPChatModel(
        method="aisp", reward=length_reward, model=tiny_lm, num_samples=2, num_iterations=2, max_tokens=8, seed=0
    )


def scripted_run(replies: list[str], calls: list[dict[str, Any]] | None = None):
    """A stand-in for ``aisp.run`` that returns fixed replies (scored by the real score function)."""

    def fake_run(lm, prompts, score, params, sampling, *, seed=None, max_batch_size=64, on_iteration=None, **_options):
        if calls is not None:
            calls.append({"prompts": [list(p) for p in prompts], "sampling": sampling, "params": params, "seed": seed})
        texts = [replies[i % len(replies)] for i in range(len(prompts))]
        rewards = list(score(list(range(len(prompts))), texts))
        return [
            PromptResult(
                index=i,
                text=t,
                token_ids=list(range(3)),
                reward=r,
                finish_reason="stop",
                best_iteration=0,
                prompt_tokens=len(prompts[i]),
                samples=1,
                generated_tokens=3,
                rewards=[[r]],
                texts=[[t]],
                ess=[1.0],
                lambdas=[1.0],
                u_norms=[0.0],
            )
            for i, (t, r) in enumerate(zip(texts, rewards, strict=True))
        ]

    return fake_run


# --- rendering ---------------------------------------------------------------------------


def test_render_every_message_type_ending_in_tool_message(tiny_lm):
    fmt = OutputFormat(tools=(convert_to_openai_tool(add)["function"],))
    messages = [
        SystemMessage("Be brief."),
        HumanMessage("What is 1 + 2?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1", "type": "tool_call"}]),
        ToolMessage("3", tool_call_id="c1", name="add"),
    ]
    prompt = render(tiny_lm.tokenizer, messages, fmt)
    text = prompt.text
    assert not prompt.plain and prompt.prefill == ""
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools")  # tools appended to the system message
    assert '"name": "add"' in text and "<tools>" in text
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>' in text
    assert '<|im_start|>user\n<tool_response>\n{"name": "add", "content": "3"}\n</tool_response><|im_end|>' in text
    assert text.endswith("<|im_start|>assistant\n")


def test_conversation_ending_in_tool_message_generates(llm):
    msg = llm.invoke(
        [
            HumanMessage("What is 1 + 2?"),
            AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1", "type": "tool_call"}]),
            ToolMessage("3", tool_call_id="c1", status="error"),
        ]
    )
    assert isinstance(msg, AIMessage) and msg.response_metadata["aisp"]["samples"] == 4


def test_no_chat_template_uses_plain_fallback(tiny_lm):
    tokenizer = copy.copy(tiny_lm.tokenizer)
    tokenizer.chat_template = None
    lm = dataclasses.replace(tiny_lm, tokenizer=tokenizer)
    model = AISPChatModel(
        method="aisp", reward=length_reward, model=lm, num_samples=2, num_iterations=1, max_tokens=6, seed=0
    )
    job = model.prepare([SystemMessage("Be brief."), HumanMessage("Hi")])._job
    assert job.prompt.plain
    assert job.prompt.text == "System: Be brief.\nUser: Hi\nAssistant:"
    assert PLAIN_STOP in job.settings.sampling.stop
    assert isinstance(model.invoke("Hi").content, str)


def test_media_content_is_rejected_not_ignored(llm):
    with pytest.raises(ValueError, match="text-only"):
        llm.invoke([HumanMessage([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}])])


def test_prompt_too_long_is_a_clear_error(tiny_lm):
    model = AISPChatModel(
        method="aisp", reward=length_reward, model=tiny_lm, num_samples=2, num_iterations=1, max_tokens=8
    )
    with pytest.raises(
        ValueError, match=r"conversation is too long: \d+ tokens.*512 tokens.*shorten it by.*nothing is truncated"
    ):
        model.invoke("word " * 600)


# --- metadata, parameters -------------------------------------------------------------------


def test_default_is_best_of_32_in_one_round_and_method_aisp_gets_the_papers_split(tiny_lm):
    default = AISPChatModel(reward=length_reward, model=tiny_lm, max_tokens=4, seed=0)
    aisp = default.invoke("Name a fruit.").response_metadata["aisp"]
    assert aisp["method"] == "bon" and aisp["samples"] == 32
    assert len(aisp["rewards"]) == 1 and len(aisp["rewards"][0]) == 32  # one batch: no sequential rounds
    per_call = default.invoke("Name a fruit.", method="aisp").response_metadata["aisp"]
    assert per_call["method"] == "aisp" and [len(r) for r in per_call["rewards"]] == [8, 8, 8, 8]


def test_metadata_and_usage(llm, tiny_lm):
    msg = llm.invoke("Name a fruit.")
    aisp = msg.response_metadata["aisp"]
    assert aisp["samples"] == 4 and aisp["method"] == "aisp"
    assert len(aisp["rewards"]) == 2 and all(len(r) == 2 for r in aisp["rewards"])
    assert aisp["reward"] == max(max(r) for r in aisp["rewards"]) == float(len(msg.content))
    for key in ("ess", "lambdas", "u_norms"):
        assert len(aisp[key]) == 2
    assert aisp["best_iteration"] in (0, 1) and aisp["finish_reason"] in ("stop", "length")
    assert aisp["generated_tokens"] >= msg.usage_metadata["output_tokens"]
    prompt_ids = llm.prepare([HumanMessage("Name a fruit.")])._job.token_ids
    usage = msg.usage_metadata
    assert usage["input_tokens"] == len(prompt_ids)
    assert 1 <= usage["output_tokens"] <= 8
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert msg.response_metadata["model_name"] == "tiny-llama"


def test_seed_max_tokens_and_stop_are_honoured(llm, monkeypatch):
    a = llm.invoke("Hello")
    b = llm.invoke("Hello")
    assert a.content == b.content
    assert llm.invoke("Hello", max_tokens=3).usage_metadata["output_tokens"] <= 3
    calls: list[dict[str, Any]] = []
    llm = llm.model_copy(update={"runner": scripted_run(["ok"], calls)})
    llm.invoke("Hello", stop=["END"], temperature=0.5, top_k=5, seed=7, num_samples=3)
    sampling, params = calls[0]["sampling"], calls[0]["params"]
    assert sampling.stop == ("END",) and sampling.temperature == 0.5 and sampling.top_k == 5
    assert params.num_samples == 3 and calls[0]["seed"] == 7
    llm.model_copy(update={"stop": ["X"]}).invoke("Hello")
    assert calls[1]["sampling"].stop == ("X",)
    greedy = AISPChatModel(reward=length_reward, model=llm.model, temperature=0, runner=scripted_run(["ok"], calls))
    greedy.invoke("Hello")
    assert calls[2]["sampling"].top_k == 1  # temperature 0 = greedy


def test_unknown_invoke_kwargs_raise(llm):
    with pytest.raises(TypeError, match=r"unsupported keyword argument\(s\) \['logprobs'\]"):
        llm.invoke("Hello", logprobs=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, r"num_samples must be an integer in \[1, 4096\], got 0"),
        ({"num_iterations": 2000}, r"num_iterations must be an integer in \[1, 1024\]"),
        ({"sigma": -1.0}, r"sigma must be a finite number > 0"),
        ({"alpha": 1.5}, r"alpha must be a number in \[0.0, 1.0\]"),
        ({"top_p": 0.0}, r"top_p must be a number in \(0.0, 1.0\]"),
        ({"temperature": -1.0}, r"temperature must be a finite number >= 0"),
        ({"lambda_": 0.0}, r"lambda_ must be a finite number > 0"),
        ({"method": "greedy"}, r"method"),
        ({"format_weight": -1.0}, r"format_weight must be a finite number >= 0"),
        ({"timeout": -1}, r"timeout must be a finite number of seconds > 0 or None, got -1"),
        ({"max_retries": -1}, r"max_retries must be an integer in \[0, 100\], got -1"),
        ({"api_key": "sk"}, r"api_key"),
        ({"reward": 3}, r"reward must be a Reward instance"),
    ],
)
def test_validation_errors_name_field_and_range(tiny_lm, kwargs, message):
    params = {"reward": length_reward, "model": tiny_lm, **kwargs}
    with pytest.raises(ValidationError, match=message):
        AISPChatModel(**params)


def test_identifying_params_differ_between_configs(tiny_lm):
    a = AISPChatModel(reward=length_reward, model=tiny_lm)
    b = AISPChatModel(method="aisp", reward=length_reward, model=tiny_lm, sigma=0.1)
    c = AISPChatModel(reward=ConstantReward(), model=tiny_lm)
    assert a._identifying_params != b._identifying_params != c._identifying_params
    for key in (
        "method",
        "num_samples",
        "num_iterations",
        "sigma",
        "lambda_",
        "alpha",
        "tau",
        "reward",
        "model",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
    ):
        assert key in a._identifying_params
    assert a._get_llm_string() != b._get_llm_string()
    ls = a._get_ls_params(stop=["x"], model="other")
    assert ls["ls_model_name"] == "other" and ls["ls_stop"] == ["x"] and ls["ls_provider"] == "aisp"


# --- batch, stream, async --------------------------------------------------------------------


def test_batch_is_one_batched_aisp_run_equal_to_invokes(llm, monkeypatch):
    calls: list[int] = []
    real_run = llm.runner

    def spy(lm, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return real_run(lm, prompts, *args, **kwargs)

    llm = llm.model_copy(update={"runner": spy})
    questions = ["Name a fruit.", "Name a color.", "Name a city."]
    batched = llm.batch(questions)
    assert calls == [3]
    singles = [llm.invoke(q) for q in questions]
    assert [m.content for m in batched] == [m.content for m in singles]
    assert [m.response_metadata["aisp"]["rewards"] for m in batched] == [
        m.response_metadata["aisp"]["rewards"] for m in singles
    ]


def test_batch_keeps_langchain_semantics(llm, monkeypatch):
    calls: list[int] = []
    real_run = llm.runner

    def spy(lm, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return real_run(lm, prompts, *args, **kwargs)

    llm = llm.model_copy(update={"runner": spy})
    ok_and_bad = ["Name a fruit.", [HumanMessage([{"type": "image", "url": "x"}])], "Name a city."]
    out = llm.batch(ok_and_bad, config={"max_concurrency": 1}, return_exceptions=True)
    assert isinstance(out[0], AIMessage) and isinstance(out[2], AIMessage)
    assert isinstance(out[1], ValueError)
    assert calls == [2]  # the two valid prompts shared one engine call
    with pytest.raises(ValueError):
        llm.batch(ok_and_bad)


def test_stream_concatenates_to_invoke_with_metadata_last(llm):
    full = llm.invoke("Name a fruit.")
    chunks = list(llm.stream("Name a fruit."))
    assert "".join(c.content for c in chunks) == full.content
    assert len(chunks) >= 2
    last = chunks[-1]
    assert last.chunk_position == "last"
    assert last.response_metadata["aisp"]["reward"] == full.response_metadata["aisp"]["reward"]
    assert last.usage_metadata == full.usage_metadata
    assert all(not c.usage_metadata for c in chunks[:-1])


async def test_async_invoke_stream_batch(llm, monkeypatch):
    expected = llm.invoke("Name a fruit.")
    assert (await llm.ainvoke("Name a fruit.")).content == expected.content
    text = "".join([c.content async for c in llm.astream("Name a fruit.")])
    assert text == expected.content
    calls: list[int] = []
    real_run = llm.runner

    def spy(lm, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return real_run(lm, prompts, *args, **kwargs)

    llm = llm.model_copy(update={"runner": spy})
    out = await llm.abatch(["Name a fruit.", "Name a color."])
    assert calls == [2] and out[0].content == expected.content


class ProgressHandler(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], UUID]] = []
        self.starts = 0
        self.ends = 0

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts += 1

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        self.ends += 1

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data, run_id))


class AsyncProgressHandler(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append(data)


def test_progress_events_per_iteration(llm):
    handler = ProgressHandler()
    msg = llm.invoke("Name a fruit.", config={"callbacks": [handler]})
    assert [e[0] for e in handler.events] == [cm.PROGRESS_EVENT] * 2
    data = [e[1] for e in handler.events]
    assert [d["iteration"] for d in data] == [0, 1] and data[0]["num_iterations"] == 2
    assert [d["rewards"] for d in data] == msg.response_metadata["aisp"]["rewards"]
    handler = ProgressHandler()
    llm.batch(["Name a fruit.", "Name a color."], config={"callbacks": [handler], "max_concurrency": 1})
    assert handler.starts == 2 and handler.ends == 2
    assert len(handler.events) == 4 and len({e[2] for e in handler.events}) == 2  # 2 iterations x 2 runs


async def test_async_progress_events(llm):
    handler = AsyncProgressHandler()
    await llm.ainvoke("Name a fruit.", config={"callbacks": [handler]})
    assert [d["iteration"] for d in handler.events] == [0, 1]


# --- tools and structured output ------------------------------------------------------------------


def test_tool_call_parsing_valid_and_invalid(llm, monkeypatch):
    reply = '1, "b": 2}}\n</tool_call>'
    llm = llm.model_copy(update={"runner": scripted_run([reply])})
    msg = llm.bind_tools([add], tool_choice="add").invoke("What is 1 + 2?")
    assert msg.tool_calls[0]["name"] == "add" and msg.tool_calls[0]["args"] == {"a": 1, "b": 2}
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    assert msg.response_metadata["aisp"]["format_validity"] == 1.0
    assert msg.response_metadata["aisp"]["reward"] == pytest.approx(  # + the format and grounding terms
        len(msg.response_metadata["aisp"]["prefill"] + reply) + 10 + 1  # (1 and 2 are both in the question)
    )
    streamed = None
    for chunk in llm.bind_tools([add], tool_choice="add").stream("What is 1 + 2?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.tool_calls[0]["args"] == {"a": 1, "b": 2}

    llm = llm.model_copy(update={"runner": scripted_run(['"one"}}</tool_call>'])})
    msg = llm.bind_tools([add], tool_choice="any").invoke("What is 1 + 2?")
    assert not msg.tool_calls and msg.invalid_tool_calls[0]["name"] == "add"
    assert "missing required property 'b'" in msg.invalid_tool_calls[0]["error"]

    llm = llm.model_copy(update={"runner": scripted_run(["I would rather chat."])})
    msg = llm.bind_tools([add]).invoke("Hi")  # optional call: plain text is fine
    assert msg.content == "I would rather chat." and not msg.tool_calls and not msg.invalid_tool_calls
    # auto: engine prompt 0 is the prose variant, prompt 1 the forced-call variant (prefilled up to "a":)
    llm = llm.model_copy(update={"runner": scripted_run(["Five.", ' 2, "b": 3}}\n</tool_call>'])})
    msg = llm.bind_tools([add]).invoke("What is 2 + 3?")  # a call whose arguments come from the question
    assert msg.tool_calls[0]["args"] == {"a": 2, "b": 3} and msg.response_metadata["aisp"]["auto_choice"] == "call"
    msg = llm.bind_tools([add]).invoke("Hi")  # invented arguments: prose
    assert msg.content == "Five." and not msg.tool_calls and msg.response_metadata["aisp"]["auto_choice"] == "prose"


def test_tool_choice_forms_and_errors(llm):
    assert normalize_tool_choice("required", ["add"]) == "any"
    assert normalize_tool_choice({"type": "function", "function": {"name": "add"}}, ["add"]) == "add"
    with pytest.raises(ValueError, match="tool_choice must be"):
        llm.bind_tools([add], tool_choice="mul")


def test_format_validity_scores():
    tools = OutputFormat(tools=(convert_to_openai_tool(add)["function"],), tool_choice="any")
    good = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    assert format_validity(good, tools) == 1.0
    assert format_validity('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>', tools) == -0.5
    assert format_validity('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}', tools) == -1.0  # cut
    assert format_validity("<tool_call>oops", tools) == -1.0
    assert format_validity("no call", tools) == -1.0
    optional = dataclasses.replace(tools, tool_choice="auto")
    assert format_validity("no call", optional) == 0.0
    js = OutputFormat(json_schema=convert_to_json_schema(City))
    assert format_validity('{"name": "Oslo", "population": 7}', js) == 1.0
    assert format_validity('{"name": "Oslo"}', js) == -0.5
    assert format_validity("Oslo", js) == -1.0


def test_format_term_steers_selection(tiny_lm, monkeypatch):
    """Between a long malformed reply and a short valid call, the valid call wins."""
    texts = iter([["x" * 20 + " not a call", '1, "b": 2}}</tool_call>']])

    def fake_run(lm, prompts, score, params, sampling, **kwargs):
        candidates = next(texts)
        rewards = list(score([0] * len(candidates), candidates))
        best = max(range(len(candidates)), key=rewards.__getitem__)
        return [PromptResult(index=0, text=candidates[best], reward=rewards[best], rewards=[rewards], samples=2)]

    model = AISPChatModel(
        method="aisp", reward=length_reward, model=tiny_lm, num_samples=2, num_iterations=1, runner=fake_run
    )
    msg = model.bind_tools([add], tool_choice="add").invoke("1 + 2?")
    assert (
        msg.tool_calls
        and msg.response_metadata["aisp"]["rewards"][0][1] > msg.response_metadata["aisp"]["rewards"][0][0]
    )


@pytest.mark.parametrize("schema", [City, CityDict, City.model_json_schema()])
@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_structured_output_valid_and_invalid(llm, monkeypatch, schema, method):
    valid = 'Oslo", "population": 700000}' + ("}</tool_call>" if method == "function_calling" else "")
    llm = llm.model_copy(update={"runner": scripted_run([valid])})
    out = llm.with_structured_output(schema, method=method, include_raw=True).invoke("A city?")
    assert out["parsing_error"] is None
    parsed = out["parsed"]
    assert (parsed.name if isinstance(parsed, City) else parsed["name"]) == "Oslo"
    assert isinstance(out["raw"], AIMessage)
    plain = llm.with_structured_output(schema, method=method).invoke("A city?")
    assert plain == parsed

    llm = llm.model_copy(update={"runner": scripted_run(["7 ... I cannot"])})
    out = llm.with_structured_output(schema, method=method, include_raw=True).invoke("A city?")
    assert out["parsed"] is None or isinstance(schema, dict) or method == "json_schema"
    if schema is City:
        assert out["parsing_error"] is not None and out["parsed"] is None
    assert isinstance(out["raw"], AIMessage)


def test_structured_output_json_mode_rejects_unknown_kwargs(llm):
    with pytest.raises(ValueError, match="unsupported arguments"):
        llm.with_structured_output(City, foo=1)
    with pytest.raises(ValueError, match="method must be"):
        llm.with_structured_output(City, method="xml")  # type: ignore[arg-type]


def test_structured_output_on_tiny_model_never_crashes(llm):
    out = llm.with_structured_output(City, include_raw=True).invoke("A city?")
    assert set(out) == {"raw", "parsed", "parsing_error"}
    assert (out["parsed"] is None) == (out["parsing_error"] is not None)


# --- errors, serialisation, chains ------------------------------------------------------------------


def test_reward_error_carries_partial(tiny_lm):
    calls = {"n": 0}

    def flaky(prompt: str, response: str) -> float:
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("judge down")
        return 1.0

    model = AISPChatModel(
        method="aisp", reward=flaky, model=tiny_lm, num_samples=2, num_iterations=2, max_tokens=6, seed=0
    )
    with pytest.raises(RewardError, match="judge down") as info:
        model.invoke("Hello")
    partial = info.value.partial
    assert len(partial) == 1 and partial[0] is not None and partial[0].samples == 2


def test_serialisation_round_trip_and_clear_error(tiny_lm):
    model = AISPChatModel(method="aisp", reward=length_reward, num_samples=3, sigma=0.1, seed=4, max_tokens=9)
    data = dumpd(model)
    assert data["kwargs"]["reward"] == "test_chat_model:length_reward"
    back = loads(dumps(model), valid_namespaces=["langchain_aisp"], allowed_objects=[AISPChatModel])
    assert isinstance(back, AISPChatModel)
    assert back._identifying_params == model._identifying_params
    assert AISPChatModel(reward="test_chat_model:ConstantReward").reward_name == "constant"

    lam = AISPChatModel(reward=lambda p, r: 1.0)
    assert dumpd(lam)["kwargs"]["reward"].startswith("<not serialisable>")  # tracing still works
    with pytest.raises(ValidationError, match=r"cannot load this AISPChatModel: reward .* lambda, a closure"):
        loads(dumps(lam), valid_namespaces=["langchain_aisp"], allowed_objects=[AISPChatModel])
    with_obj = AISPChatModel(reward=length_reward, model=tiny_lm)
    with pytest.raises(ValidationError, match="loaded objects cannot be serialised"):
        loads(dumps(with_obj), valid_namespaces=["langchain_aisp"], allowed_objects=[AISPChatModel])
    scripted = AISPChatModel(reward=length_reward, runner=scripted_run(["ok"]))
    assert "runner" not in dumpd(scripted)["kwargs"]  # a runner is a live object, never serialised
    restored = loads(dumps(scripted), valid_namespaces=["langchain_aisp"], allowed_objects=[AISPChatModel])
    assert restored.runner is run and model.runner is run  # the engine's entry by default
    with pytest.raises(ValidationError, match="runner"):
        AISPChatModel(reward=length_reward, runner="fast")


def test_lcel_chain(llm):
    chain = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{q}")]) | llm
    msg = chain.invoke({"q": "Name a fruit."})
    assert msg.response_metadata["aisp"]["samples"] == 4
    assert json.dumps(msg.response_metadata)  # metadata is JSON-serialisable


def test_a_reward_calling_this_very_model_inside_a_batch_runs_on_its_own(tiny_lm):
    """A judge reward that calls the model it scores for (from inside the batch's engine run) gets its own
    run: it neither takes an input's place in the batch nor waits on the batch's group (which it is inside)."""
    depth: list[int] = []
    nested: list[int] = []
    holder: dict[str, AISPChatModel] = {}

    def judge(prompt: str, response: str) -> float:
        if not depth:  # the nested call's own scoring does not call again
            depth.append(1)
            try:
                inner = holder["model"].invoke("Rate it: " + response)
                nested.append(inner.response_metadata["aisp"]["batch_prompts"])
            finally:
                depth.pop()
        return float(len(response))

    model = AISPChatModel(
        reward=judge, model=tiny_lm, num_samples=2, num_iterations=1, max_tokens=3, runner=scripted_run(["ok"])
    )
    holder["model"] = model
    done: list[list[AIMessage]] = []
    worker = threading.Thread(target=lambda: done.append(model.batch(["Hi", "Name a fruit."])), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the nested call waited on the batch it was called from"
    assert [m.response_metadata["aisp"]["batch_prompts"] for m in done[0]] == [2, 2]
    assert nested and set(nested) == {1}  # the nested calls ran alone


# --- batch with tool_choice="auto" ---------------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """Get the current weather of a city."""
    return f"Sunny in {city}."


def test_batch_answers_carry_the_auto_choice_of_the_run_like_invoke(tiny_lm):
    model = AISPChatModel(
        method="aisp", reward=length_reward, model=tiny_lm, num_samples=2, num_iterations=1, max_tokens=12, seed=0
    )
    bound = model.bind_tools([get_weather])
    questions = ["What is the weather in Paris?", "Say hello."]
    singles = [bound.invoke(q) for q in questions]
    batched = bound.batch(questions)
    for single, msg in zip(singles, batched, strict=True):
        choice = single.response_metadata["aisp"]["auto_choice"]
        assert choice in ("call", "prose")
        assert msg.response_metadata["aisp"]["auto_choice"] == choice
        assert msg.content == single.content
        assert [(c["name"], c["args"]) for c in msg.tool_calls] == [(c["name"], c["args"]) for c in single.tool_calls]
        assert msg.response_metadata["aisp"]["batch_prompts"] == 2
        assert single.response_metadata["aisp"]["batch_prompts"] == 1


@pytest.mark.parametrize("asynchronous", [False, True])
def test_batch_auto_choice_prose_is_not_parsed_and_each_input_is_rendered_once(llm, monkeypatch, asynchronous):
    # engine prompts alternate prose variant / forced-call variant (prefilled up to "a":)
    llm = llm.model_copy(update={"runner": scripted_run(["Five. <tool_call>", ' 2, "b": 3}}\n</tool_call>'])})
    renders: list[int] = []
    real_render = render

    def counting_render(*args: Any, **kwargs: Any) -> Any:
        renders.append(1)
        return real_render(*args, **kwargs)

    monkeypatch.setattr(replylib, "render", counting_render)
    bound = llm.bind_tools([add])
    questions = ["What is 2 + 3?", "Hi"]
    out = asyncio.run(bound.abatch(questions)) if asynchronous else bound.batch(questions)
    assert len(renders) == 4  # two inputs x (prose prompt + forced-call prompt), each rendered once
    call, prose = out
    assert call.response_metadata["aisp"]["auto_choice"] == "call" and call.tool_calls[0]["args"] == {"a": 2, "b": 3}
    assert prose.response_metadata["aisp"]["auto_choice"] == "prose"
    assert prose.content == "Five. <tool_call>" and not prose.tool_calls and not prose.invalid_tool_calls
    assert [m.response_metadata["aisp"]["batch_prompts"] for m in out] == [2, 2]


def test_unknown_arguments_name_the_closest_one(tiny_lm, llm):
    with pytest.raises(ValidationError, match=r"argument\(s\) \['temprature'\] \(did you mean 'temperature'\?\)"):
        AISPChatModel(reward=length_reward, model=tiny_lm, temprature=0.5)
    with pytest.raises(ValidationError, match=r"'num_sample' -> 'num_samples'"):
        AISPChatModel(reward=length_reward, model=tiny_lm, num_sample=3, api_key="sk")
    with pytest.raises(TypeError, match=r"argument\(s\) \['temprature'\] \(did you mean 'temperature'\?\)"):
        llm.invoke("hi", temprature=0.5)
    with pytest.raises(TypeError, match=r"\['tool_choise'\] \(did you mean 'tool_choice'\?\)"):
        llm.invoke("hi", tool_choise="auto")


def test_structured_output_batch_shares_one_engine_run(llm):
    calls: list[int] = []
    scripted = scripted_run(['Oslo", "population": 7}'])

    def spy(lm, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return scripted(lm, prompts, *args, **kwargs)

    llm = llm.model_copy(update={"runner": spy})
    out = llm.with_structured_output(City, method="json_schema").batch(["A city?", "Another city?"])
    assert calls == [2] and out == [City(name="Oslo", population=7)] * 2
