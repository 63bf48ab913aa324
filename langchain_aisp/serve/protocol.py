"""The OpenAI chat-completions wire format: request validation and translation, response and chunk bodies.

Plain functions over JSON-like values and LangChain messages (no HTTP framework import):
``parse_chat_request`` turns a request body into a :class:`ChatCall` (LangChain messages plus
``AISPChatModel`` per-call arguments) or raises :class:`APIError` naming the bad field;
``completion_body`` / ``chunk_events`` turn the chat model's ``AIMessage`` back into the
OpenAI shapes. Nothing in a request is imported, evaluated or unpickled: bodies are parsed
with ``json.loads`` and only known fields are read.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from langchain_aisp._text import stream_pieces
from langchain_aisp.engine.config import MAX_SEED, METHODS

SUPPORTED_FIELDS = (
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "stream",
    "stream_options",
    "timeout",
    "aisp",
)
"""Fields that change the answer (``timeout``: seconds for this request, an anytime deadline)."""

IGNORED_FIELDS = ("user", "metadata")
"""Accepted and not used: ``user`` (an end-user id for abuse tracking) and ``metadata`` (labels for stored
completions) carry no generation setting, and this server stores nothing."""

DEFAULT_ONLY_FIELDS: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "store": (None, False),
    "service_tier": (None, "auto", "default"),
    "modalities": (None, ["text"]),
}
"""Accepted only at their neutral value; anything else is refused (400) with the reason in ``_WHY``."""

_WHY = {
    "n": "one answer per request: AISP already samples num_samples x num_iterations candidates and returns the best "
    "(send several requests, they are batched together)",
    "logprobs": "the answer is selected by reward from many samples; token log-probabilities are not reported",
    "top_logprobs": "token log-probabilities are not reported",
    "frequency_penalty": "repetition penalties are not implemented",
    "presence_penalty": "repetition penalties are not implemented",
    "logit_bias": "logit bias is not implemented",
    "store": "this server stores no completions",
    "service_tier": "there is one service tier",
    "modalities": "the served model is text-only",
    "functions": "the deprecated functions API is not supported: use tools",
    "function_call": "the deprecated functions API is not supported: use tool_choice",
    "audio": "the served model is text-only",
    "prediction": "predicted outputs are not supported",
}

AISP_FIELDS = ("method", "num_samples", "num_iterations", "reward")
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_MAX_STOPS = 16


class APIError(Exception):
    """An error answered as OpenAI's ``{"error": {...}}`` body with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        error.update(self.extra)
        return {"error": error}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class ChatCall:
    """A validated request, translated: LangChain messages and ``AISPChatModel`` per-call arguments."""

    model: str
    messages: list[BaseMessage]
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Per-call arguments of ``AISPChatModel`` (max_tokens, temperature, top_p, seed, method, ...)."""
    stop: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    """OpenAI tool definitions, for ``AISPChatModel.bind_tools``."""
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    reward: str | None = None
    """The reward name asked for (None: the server's default)."""
    stream: bool = False
    include_usage: bool = False


# --- requests ----------------------------------------------------------------------------------


def parse_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object (plain ``json.loads``; nothing is evaluated)."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(value, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(value).__name__}", code="invalid_json")
    return value


def parse_chat_request(data: dict[str, Any]) -> ChatCall:
    """Validate a chat-completions body and translate it; raises :class:`APIError` (400) naming the field."""
    unknown = sorted(set(data) - set(SUPPORTED_FIELDS) - set(IGNORED_FIELDS) - set(DEFAULT_ONLY_FIELDS))
    for name in unknown:
        if name in _WHY:
            raise bad_request(f"{name} is not supported: {_WHY[name]}", param=name, code="unsupported_parameter")
    if unknown:
        raise bad_request(
            f"unknown field(s) {unknown}; this server accepts {sorted([*SUPPORTED_FIELDS, *DEFAULT_ONLY_FIELDS])} "
            f"(and ignores {list(IGNORED_FIELDS)})",
            param=unknown[0],
            code="unsupported_parameter",
        )
    for name, allowed in DEFAULT_ONLY_FIELDS.items():
        if name in data and not any(_same(data[name], a) for a in allowed):
            raise bad_request(
                f"{name}={data[name]!r} is not supported: {_WHY[name]}", param=name, code="unsupported_parameter"
            )
    model = data.get("model", "default")
    if not isinstance(model, str) or not model:
        raise bad_request(f"model must be a non-empty string, got {model!r}", param="model")
    call = ChatCall(model=model, messages=parse_messages(data.get("messages")))
    kwargs = call.kwargs
    max_tokens = _optional_int(data, "max_tokens", low=1)
    max_completion = _optional_int(data, "max_completion_tokens", low=1)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise bad_request(
            f"max_tokens ({max_tokens}) and max_completion_tokens ({max_completion}) disagree; send one of them",
            param="max_completion_tokens",
        )
    if (chosen := max_completion if max_completion is not None else max_tokens) is not None:
        kwargs["max_tokens"] = chosen
    if (temperature := _optional_number(data, "temperature", low=0.0)) is not None:
        kwargs["temperature"] = temperature
    if (top_p := _optional_number(data, "top_p", low=0.0)) is not None:
        if not 0 < top_p <= 1:
            raise bad_request(f"top_p must be a number in (0, 1], got {top_p}", param="top_p")
        kwargs["top_p"] = top_p
    if (timeout := data.get("timeout")) is not None:
        if not _is_number(timeout) or not math.isfinite(timeout) or timeout <= 0:
            raise bad_request(f"timeout must be a finite number of seconds > 0, got {timeout!r}", param="timeout")
        kwargs["timeout"] = float(timeout)
    if (seed := _optional_int(data, "seed", low=0)) is not None:
        if seed > MAX_SEED:
            raise bad_request(f"seed must be an integer in [0, {MAX_SEED}], got {seed}", param="seed")
        kwargs["seed"] = seed
    call.stop = _stops(data.get("stop"))
    _tools(data, call)
    if (response_format := _response_format(data.get("response_format"))) is not None:
        kwargs["response_format"] = response_format
    stream = data.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_request(f"stream must be true or false, got {stream!r}", param="stream")
    call.stream = bool(stream)
    options = data.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or set(options) - {"include_usage", "include_obfuscation"}:
            raise bad_request(
                f"stream_options must be an object with include_usage (true/false), got {options!r}",
                param="stream_options",
            )
        call.include_usage = bool(options.get("include_usage", False))
    _aisp_options(data.get("aisp"), call)
    return call


def _same(value: Any, allowed: Any) -> bool:
    if allowed is None or isinstance(allowed, bool):
        return value is allowed
    if _is_number(allowed):
        return _is_number(value) and value == allowed
    return type(value) is type(allowed) and value == allowed


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _optional_int(data: dict[str, Any], name: str, *, low: int) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise bad_request(f"{name} must be an integer >= {low}, got {value!r}", param=name)
    return value


def _optional_number(data: dict[str, Any], name: str, *, low: float) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(value) or value < low:
        raise bad_request(f"{name} must be a finite number >= {low}, got {value!r}", param=name)
    return float(value)


def _stops(value: Any) -> list[str] | None:
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or not stops
        or len(stops) > _MAX_STOPS
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise bad_request(
            f"stop must be a non-empty string or a list of 1-{_MAX_STOPS} non-empty strings, got {value!r}",
            param="stop",
        )
    return list(stops)


def _tools(data: dict[str, Any], call: ChatCall) -> None:
    tools = data.get("tools")
    choice = data.get("tool_choice")
    parallel = data.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad_request(f"parallel_tool_calls must be true or false, got {parallel!r}", param="parallel_tool_calls")
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise bad_request(f"tool_choice {choice!r} needs tools", param="tool_choice")
        return
    if not isinstance(tools, list):
        raise bad_request(f"tools must be a list of function tools, got {type(tools).__name__}", param="tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise bad_request(
                f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., 'parameters': {{...}}}}}}, "
                f"got {tool!r}",
                param=f"tools[{i}]",
            )
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise bad_request(
                f"tools[{i}].function.name must be 1-64 letters, digits, '_' or '-', got {name!r}",
                param=f"tools[{i}].function.name",
            )
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise bad_request(
                f"tools[{i}].function.parameters must be a JSON schema object, got {parameters!r}",
                param=f"tools[{i}].function.parameters",
            )
        description = function.get("description", "")
        if not isinstance(description, str):
            raise bad_request(f"tools[{i}].function.description must be a string", param=f"tools[{i}].function")
        # ``strict`` is accepted: validity of calls is what the chat model's format term rewards.
        out.append(
            {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}
        )
    names = [t["function"]["name"] for t in out]
    if len(set(names)) != len(names):
        raise bad_request(f"tool names must be unique, got {names}", param="tools")
    call.tools = out
    call.tool_choice = choice
    call.parallel_tool_calls = parallel


def _response_format(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_mode"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad_request(
                "response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}, "
                f"got {value!r}",
                param="response_format",
            )
        return {"type": "json_schema", "schema": schema}
    raise bad_request(
        f"response_format type must be 'text', 'json_object' or 'json_schema', got {value!r}", param="response_format"
    )


def _aisp_options(value: Any, call: ChatCall) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise bad_request(f"aisp must be an object with {list(AISP_FIELDS)}, got {value!r}", param="aisp")
    unknown = sorted(set(value) - set(AISP_FIELDS))
    if unknown:
        raise bad_request(f"unknown aisp field(s) {unknown}; allowed: {list(AISP_FIELDS)}", param="aisp")
    method = value.get("method")
    if method is not None:
        if method not in METHODS:
            raise bad_request(f"aisp.method must be one of {list(METHODS)}, got {method!r}", param="aisp.method")
        call.kwargs["method"] = method
    for name in ("num_samples", "num_iterations"):
        number = value.get(name)
        if number is not None:
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise bad_request(f"aisp.{name} must be an integer >= 1, got {number!r}", param=f"aisp.{name}")
            call.kwargs[name] = number
    reward = value.get("reward")
    if reward is not None and not isinstance(reward, str):
        raise bad_request(f"aisp.reward must be a reward name (string), got {reward!r}", param="aisp.reward")
    call.reward = reward


# --- messages ----------------------------------------------------------------------------------


def parse_messages(raw: Any) -> list[BaseMessage]:
    """OpenAI messages -> LangChain messages (system/developer, user, assistant with tool_calls, tool)."""
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty list of messages", param="messages")
    messages: list[BaseMessage] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object with role and content, got {message!r}", param=where)
        role = message.get("role")
        allowed = {
            "system": {"content", "name"},
            "developer": {"content", "name"},
            "user": {"content", "name"},
            "assistant": {"content", "name", "tool_calls", "refusal", "annotations", "audio", "function_call"},
            "tool": {"content", "tool_call_id", "name"},
        }
        if role not in allowed:
            raise bad_request(
                f"{where}.role must be one of {sorted(allowed)}, got {role!r}"
                + (" (the deprecated function role: use tool)" if role == "function" else ""),
                param=f"{where}.role",
            )
        extra = sorted(set(message) - allowed[role] - {"role"})
        if extra:
            raise bad_request(f"{where}: unknown field(s) {extra} for a {role} message", param=where)
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise bad_request(f"{where}.name must be a string, got {name!r}", param=f"{where}.name")
        named = {"name": name} if name else {}
        if role in ("system", "developer"):
            messages.append(SystemMessage(content=_text(message.get("content"), where), **named))
        elif role == "user":
            messages.append(HumanMessage(content=_text(message.get("content"), where), **named))
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise bad_request(f"{where}.tool_call_id must be a non-empty string", param=f"{where}.tool_call_id")
            messages.append(ToolMessage(content=_text(message.get("content"), where), tool_call_id=call_id))
        else:
            messages.append(_assistant(message, where, named))
    return messages


def _assistant(message: dict[str, Any], where: str, named: dict[str, Any]) -> AIMessage:
    for name in ("audio", "function_call"):
        if message.get(name) is not None:
            raise bad_request(f"{where}.{name} is not supported: {_WHY[name]}", param=f"{where}.{name}")
    content = message.get("content")
    text = "" if content is None else _text(content, where)
    calls = []
    for j, call in enumerate(message.get("tool_calls") or []):
        here = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(
                f"{here} must be {{'id': ..., 'type': 'function', 'function': {{'name': ..., 'arguments': '...'}}}}",
                param=here,
            )
        arguments = function.get("arguments", "{}")
        try:
            args = json.loads(arguments) if isinstance(arguments, str) else None
        except json.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            raise bad_request(
                f"{here}.function.arguments must be a JSON object encoded as a string, got {arguments!r}",
                param=f"{here}.function.arguments",
            )
        call_id = call.get("id") or f"call_{uuid.uuid4().hex[:24]}"
        calls.append({"name": function["name"], "args": args, "id": str(call_id), "type": "tool_call"})
    if not text and not calls:
        raise bad_request(f"{where}: an assistant message needs content or tool_calls", param=where)
    return AIMessage(content=text, tool_calls=calls, **named)


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif kind in ("image_url", "input_audio", "file", "image", "audio"):
                raise bad_request(
                    f"{where}.content[{j}] is a {kind} part: the served model is text-only", param=f"{where}.content"
                )
            else:
                raise bad_request(
                    f"{where}.content[{j}] must be {{'type': 'text', 'text': '...'}}, got {part!r}",
                    param=f"{where}.content",
                )
        return "".join(parts)
    raise bad_request(
        f"{where}.content must be a string or a list of text parts, got {type(content).__name__}",
        param=f"{where}.content",
    )


# --- responses ---------------------------------------------------------------------------------


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def aisp_summary(message: AIMessage, **extra: Any) -> dict[str, Any]:
    """The ``aisp`` object of a response: what the alignment did for this answer."""
    meta = message.response_metadata.get("aisp", {})
    rewards = meta.get("rewards") or []
    out: dict[str, Any] = {
        "reward": meta.get("reward"),
        "method": meta.get("method"),
        "samples": meta.get("samples"),
        "iterations": len(rewards),
        "num_samples": meta.get("num_samples"),
        "num_iterations": meta.get("num_iterations"),
        "best_iteration": meta.get("best_iteration"),
        "best_rewards": [max(r) for r in rewards if r],
        "generated_tokens": meta.get("generated_tokens"),
        "batch_prompts": meta.get("batch_prompts", 1),
        "timed_out": bool(meta.get("timed_out", False)),
    }
    if "format_validity" in meta:
        out["format_validity"] = meta["format_validity"]
    if meta.get("memory") is not None:  # how the server's control memory steered this answer (--memory)
        out["memory"] = meta["memory"]
    if message.invalid_tool_calls:
        out["invalid_tool_calls"] = [
            {"name": c.get("name"), "arguments": c.get("args"), "error": c.get("error")}
            for c in message.invalid_tool_calls
        ]
    out.update(extra)
    return out


AISP_HEADERS = {
    "x-aisp-reward": "reward",
    "x-aisp-samples": "samples",
    "x-aisp-iterations": "iterations",
    "x-aisp-batch-prompts": "batch_prompts",
}
"""Response headers -> the ``aisp`` fields they repeat (for clients that drop unknown body fields, such as
``ChatOpenAI(include_response_headers=True)``)."""


def aisp_headers(aisp: dict[str, Any]) -> dict[str, str]:
    """The key figures of an ``aisp`` object as response headers (a field that is None is left out)."""
    return {header: str(aisp[key]) for header, key in AISP_HEADERS.items() if aisp.get(key) is not None}


def _tool_calls(message: AIMessage) -> list[dict[str, Any]]:
    return [
        {
            "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["args"], ensure_ascii=False)},
        }
        for call in message.tool_calls
    ]


def _usage(message: AIMessage) -> dict[str, int]:
    usage = message.usage_metadata or {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    return {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": usage["output_tokens"],
        "total_tokens": usage["total_tokens"],
    }


def _finish_reason(message: AIMessage) -> str:
    reason = message.response_metadata.get("finish_reason") or "stop"
    return "tool_calls" if message.tool_calls else ("length" if reason == "length" else "stop")


def completion_body(
    message: AIMessage, *, completion_id: str, model: str, aisp: dict[str, Any], created: int | None = None
) -> dict[str, Any]:
    """A ``chat.completion`` object for one answer."""
    text = message.content if isinstance(message.content, str) else message.text
    tool_calls = _tool_calls(message)
    reply: dict[str, Any] = {"role": "assistant", "content": text if (text or not tool_calls) else None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    reasoning = message.additional_kwargs.get("reasoning_content")
    if reasoning:  # a thinking model's reasoning, as vLLM's and DeepSeek's APIs send it
        reply["reasoning_content"] = reasoning
    reply["refusal"] = None
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [{"index": 0, "message": reply, "finish_reason": _finish_reason(message), "logprobs": None}],
        "usage": _usage(message),
        "system_fingerprint": None,
        "aisp": aisp,
    }


def chunk_events(
    message: AIMessage,
    *,
    completion_id: str,
    model: str,
    aisp: dict[str, Any],
    include_usage: bool,
    created: int | None = None,
) -> Iterator[str]:
    """Server-sent events of a streamed answer, OpenAI's ``chat.completion.chunk`` format, ending in ``[DONE]``.

    The answer is selected before streaming starts (as ``AISPChatModel.stream`` does); the last
    chunk with choices carries ``finish_reason`` and the ``aisp`` object. With ``include_usage`` the
    final chunk (no choices, the ``usage``) carries the ``aisp`` object too, so the last chunk a client
    reads always has it.
    """
    created = int(time.time()) if created is None else created

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": choices,
        }
        body.update(extra)
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def delta(values: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": values, "finish_reason": finish, "logprobs": None}]

    yield event(delta({"role": "assistant", "content": ""}))
    for piece in stream_pieces(message.additional_kwargs.get("reasoning_content") or ""):
        yield event(delta({"reasoning_content": piece}))  # a thinking model's reasoning first, as vLLM streams it
    text = message.content if isinstance(message.content, str) else message.text
    for piece in stream_pieces(text):
        yield event(delta({"content": piece}))
    for index, call in enumerate(_tool_calls(message)):
        yield event(delta({"tool_calls": [{"index": index, **call}]}))
    last: dict[str, Any] = {"aisp": aisp}
    if include_usage:
        last["usage"] = None
    yield event(delta({}, _finish_reason(message)), **last)
    if include_usage:
        yield event([], usage=_usage(message), aisp=aisp)
    yield "data: [DONE]\n\n"
