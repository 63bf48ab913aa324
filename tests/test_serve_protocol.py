"""The server's pure parts (issue 10): OpenAI wire format <-> LangChain messages, settings, metrics text.
No model, no HTTP: fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from langchain_aisp.serve.config import ServeConfig, parse_reward_spec
from langchain_aisp.serve.metrics import Metrics
from langchain_aisp.serve.protocol import (
    APIError,
    aisp_summary,
    chunk_events,
    completion_body,
    parse_body,
    parse_chat_request,
)

ROOT = Path(__file__).resolve().parents[1]


def _request(**extra):
    return {"model": "default", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_messages_map_onto_langchain_messages_including_a_tool_round_trip():
    call = parse_chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+3?"}]},
                {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "5"},
            ],
        }
    )
    system, user, assistant, tool = call.messages
    assert isinstance(system, SystemMessage) and system.content == "Be brief."
    assert isinstance(user, HumanMessage) and user.content == "What is 2+3?"
    assert isinstance(assistant, AIMessage) and assistant.tool_calls[0]["args"] == {"a": 2, "b": 3}
    assert assistant.tool_calls[0]["id"] == "c1"
    assert isinstance(tool, ToolMessage) and tool.tool_call_id == "c1" and tool.content == "5"


def test_sampling_fields_map_onto_chat_model_arguments():
    call = parse_chat_request(
        _request(
            max_completion_tokens=12,
            temperature=0,
            top_p=0.9,
            seed=7,
            stop="END",
            n=1,
            logprobs=False,
            user="someone",
            aisp={"method": "bon", "num_samples": 3, "num_iterations": 2, "reward": "r"},
            stream=True,
            stream_options={"include_usage": True},
            timeout=2.5,
        )
    )
    assert call.kwargs == {
        "max_tokens": 12,
        "timeout": 2.5,
        "temperature": 0.0,
        "top_p": 0.9,
        "seed": 7,
        "method": "bon",
        "num_samples": 3,
        "num_iterations": 2,
    }
    assert call.stop == ["END"] and call.reward == "r" and call.stream and call.include_usage


def test_tools_and_response_formats_are_translated():
    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}, "strict": True}}
    call = parse_chat_request(
        _request(tools=[tool], tool_choice={"type": "function", "function": {"name": "add"}}, parallel_tool_calls=False)
    )
    assert call.tools == [
        {"type": "function", "function": {"name": "add", "description": "", "parameters": {"type": "object"}}}
    ]
    assert call.tool_choice == {"type": "function", "function": {"name": "add"}} and call.parallel_tool_calls is False
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    fmt = parse_chat_request(_request(response_format={"type": "json_schema", "json_schema": {"schema": schema}}))
    assert fmt.kwargs["response_format"] == {"type": "json_schema", "schema": schema}
    assert parse_chat_request(_request(response_format={"type": "json_object"})).kwargs["response_format"] == {
        "type": "json_mode"
    }
    assert "response_format" not in parse_chat_request(_request(response_format={"type": "text"})).kwargs


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"n": 3}, "n=3 is not supported"),
        ({"n": True}, "n=True is not supported"),
        ({"presence_penalty": 0.5}, "repetition penalties"),
        ({"logit_bias": {"1": 2}}, "logit bias"),
        ({"store": True}, "stores no completions"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "disagree"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"top_p": 0}, "top_p must be a number in (0, 1]"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "function.name must be"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0] must be"),
        ({"stream": "yes"}, "stream must be true or false"),
        ({"aisp": {"method": "magic"}}, "aisp.method must be one of ['aisp', 'bon', 'sample']"),
        ({"aisp": {"reward": 3}}, "aisp.reward must be a reward name"),
        ({"timeout": 0}, "timeout must be a finite number of seconds > 0, got 0"),
        ({"timeout": -1.5}, "timeout must be a finite number of seconds > 0, got -1.5"),
        ({"timeout": "5"}, "timeout must be a finite number of seconds > 0, got '5'"),
        ({"timeout": True}, "timeout must be a finite number of seconds > 0, got True"),
        ({"timeout": float("inf")}, "timeout must be a finite number of seconds > 0, got inf"),
        ({"timeout": float("nan")}, "timeout must be a finite number of seconds > 0, got nan"),
    ],
)
def test_refused_fields_name_the_field_and_the_reason(extra, fragment):
    with pytest.raises(APIError) as info:
        parse_chat_request(_request(**extra))
    assert info.value.status == 400 and fragment in info.value.message


def test_bodies_are_parsed_as_plain_json_only():
    assert parse_body(b'{"a": 1}') == {"a": 1}
    for body in (b"\xff\xfe", b"pickle\x80", b'"a string"'):
        with pytest.raises(APIError) as info:
            parse_body(body)
        assert info.value.status == 400 and info.value.body()["error"]["code"] == "invalid_json"


def _answer() -> AIMessage:
    return AIMessage(
        content="Paris is nice.",
        response_metadata={
            "finish_reason": "stop",
            "aisp": {"reward": 0.5, "rewards": [[0.1, 0.5], [0.2, 0.3]], "samples": 4, "batch_prompts": 3},
        },
        usage_metadata={"input_tokens": 10, "output_tokens": 4, "total_tokens": 14},
    )


def test_completion_and_chunks_carry_the_answer_usage_and_aisp_object():
    message = _answer()
    aisp = aisp_summary(message, reward_name="r")
    assert aisp["iterations"] == 2 and aisp["best_rewards"] == [0.5, 0.3] and aisp["batch_prompts"] == 3
    assert aisp["timed_out"] is False
    message.response_metadata["aisp"]["timed_out"] = True
    assert aisp_summary(message)["timed_out"] is True
    assert "memory" not in aisp  # no control memory: no memory entry
    message.response_metadata["aisp"]["memory"] = {"own_rows": 1, "level": 0.25}
    assert aisp_summary(message)["memory"] == {"own_rows": 1, "level": 0.25}
    body = completion_body(message, completion_id="x", model="m", aisp=aisp)
    assert body["choices"][0]["message"]["content"] == "Paris is nice."
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
    events = list(chunk_events(message, completion_id="x", model="m", aisp=aisp, include_usage=True))
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Paris is nice."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["aisp"]["reward"] == 0.5
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 14


def test_tool_call_answers_use_openai_tool_calls():
    message = AIMessage(
        content="",
        tool_calls=[{"name": "add", "args": {"a": 2}, "id": "call_1", "type": "tool_call"}],
        response_metadata={"finish_reason": "stop", "aisp": {}},
    )
    body = completion_body(message, completion_id="x", model="m", aisp={})
    reply = body["choices"][0]
    assert reply["finish_reason"] == "tool_calls" and reply["message"]["content"] is None
    assert reply["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}
    ]
    events = list(chunk_events(message, completion_id="x", model="m", aisp={}, include_usage=False))
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert calls == [{"index": 0, **reply["message"]["tool_calls"][0]}]


def test_config_parses_reward_specs_and_builder_arguments():
    assert parse_reward_spec("a=pkg.mod:fn") == ("a", "pkg.mod:fn")
    for bad, fragment in [("a", "NAME=module:callable"), ("a b=m:f", "reward name"), ("a=mod", "package.module")]:
        with pytest.raises(ValueError, match=fragment):
            parse_reward_spec(bad)
    config = ServeConfig.from_mapping(
        {"rewards": "x=m:f,y=m:g", "batch_window_ms": "2.5", "max_queue": "9", "warmup": "false", "num_samples": "3"}
    )
    assert list(config.rewards) == ["x", "y"] and config.default_reward == "x"
    assert config.batch_window_ms == 2.5 and config.max_queue == 9 and config.warmup is False
    assert config.defaults == {"num_samples": 3}
    assert ServeConfig().rewards == {"relevance": "langchain_aisp.rewards:EmbeddingSimilarityReward"}
    with pytest.raises(ValueError, match="unknown server setting 'colour'"):
        ServeConfig.from_mapping({"colour": "red"})
    with pytest.raises(ValueError, match=r"batch_window_ms must be a finite number in \[0, 10000\], got -1"):
        ServeConfig(batch_window_ms=-1)
    with pytest.raises(ValueError, match="max_queue must be an integer >= 1, got 0"):
        ServeConfig(max_queue=0)
    assert ServeConfig.from_mapping({"max_timeout_s": "30"}).max_timeout_s == 30.0
    with pytest.raises(ValueError, match="max_timeout_s must be a finite number of seconds > 0, got inf"):
        ServeConfig(max_timeout_s=float("inf"))


def test_max_batch_rows_is_the_rows_setting_of_the_config_and_the_cli():
    """``max_batch_rows`` / ``--max-batch-rows`` (rows: prompts x samples); the pre-release ``max_batch_size`` is
    refused by name, not silently ignored."""
    from langchain_aisp.serve.cli import _parser, config_from_args

    assert ServeConfig.from_mapping({"max_batch_rows": "16"}).max_batch_rows == 16
    with pytest.raises(ValueError, match="max_batch_rows must be an integer >= 1, got 0"):
        ServeConfig(max_batch_rows=0)
    with pytest.raises(ValueError, match="unknown server setting 'max_batch_size'"):
        ServeConfig.from_mapping({"max_batch_size": "16"})
    rows = ["--max-batch-rows", "24", "--reward", "x=serve_rewards:overlap", "--app-dir", "tests"]
    args = _parser().parse_args(["serve", *rows])
    assert config_from_args(args).max_batch_rows == 24
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--max-batch-size", "24"])


def test_api_key_comes_from_the_environment_when_not_given(monkeypatch):
    monkeypatch.setenv("LANGCHAIN_AISP_API_KEY", "from-env")
    assert ServeConfig().api_key == "from-env"
    assert ServeConfig(api_key="given").api_key == "given"


def test_metrics_render_prometheus_text():
    metrics = Metrics()
    metrics.inc("aisp_requests_total", labels={"outcome": "ok"})
    metrics.observe("aisp_batch_prompts", 3)
    metrics.set("aisp_queue_depth", 2)
    text = metrics.render()
    assert 'aisp_requests_total{outcome="ok"} 1' in text
    assert 'aisp_batch_prompts_bucket{le="2"} 0' in text and 'aisp_batch_prompts_bucket{le="4"} 1' in text
    assert "aisp_batch_prompts_count 1" in text and "aisp_queue_depth 2" in text
    assert "# TYPE aisp_queue_wait_seconds histogram" in text and "aisp_samples_generated_total 0" in text
    with pytest.raises(KeyError, match="not a declared counter"):
        metrics.inc("made_up_total")


def test_no_http_or_ray_import_in_the_package_or_the_engine():
    code = (
        "import sys, langchain_aisp, langchain_aisp.serve, langchain_aisp.engine.aisp, langchain_aisp.chat_models;"
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'ray', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
