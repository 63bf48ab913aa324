"""An engine result -> an ``AIMessage`` or stream chunks: tool-call parsing, ``response_metadata["aisp"]``, usage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, ToolCallChunk, UsageMetadata
from langchain_core.outputs import ChatGenerationChunk

from langchain_aisp._text import stream_pieces
from langchain_aisp.chat import _reply as replylib
from langchain_aisp.chat._parse import ParsedReply, format_validity, parse_tool_reply
from langchain_aisp.chat._plan import Job
from langchain_aisp.chat._structured import cut_message
from langchain_aisp.engine.aisp import PromptResult


def message_parts(
    job: Job, result: PromptResult, reward_name: str
) -> tuple[ParsedReply, dict[str, Any], UsageMetadata, str | None]:
    """The parsed reply (content, tool calls), the response metadata, the usage and the reasoning (None when
    the reply did not think) of one answer."""
    text = job.prompt.prefill + result.text
    if job.prompt.plain and job.prompt.prefill:
        text = text[1:]  # the space after "Assistant:"
    split = job.reply.split(text)
    reasoning = split.reasoning
    text = job.reply.answer(text)  # the answer part, tool calls in the documented form
    max_tokens = job.max_tokens or job.settings.sampling.max_tokens
    if job.fmt.calls_tools and job.auto_choice != "prose":
        parsed = parse_tool_reply(text, job.fmt, job.reply.tool_format.closing)
        if result.finish_reason == "length":
            cut = cut_message(max_tokens, "tool call", thinking=job.reply.thinks() and not split.closed)
            for call in parsed.invalid_tool_calls:
                call["error"] = f"{cut} ({call.get('error')})"
    else:
        parsed = ParsedReply(content=text)
    finish = "tool_calls" if parsed.tool_calls else result.finish_reason
    aisp = {
        "reward": result.reward,
        "samples": result.samples,
        "rewards": result.rewards,
        "method": job.settings.params.method,
        "num_samples": job.settings.params.num_samples,
        "num_iterations": job.settings.params.num_iterations,
        "ess": result.ess,
        "lambdas": result.lambdas,
        "u_norms": result.u_norms,
        "warm_start": result.memory is not None and result.memory["strength"] > 0,
        "memory": result.memory,
        "best_iteration": result.best_iteration,
        "generated_tokens": result.generated_tokens,
        "finish_reason": result.finish_reason,
        "reward_name": reward_name,
        "prefill": job.prompt.prefill,
        "timed_out": result.timed_out,
        "max_tokens": max_tokens,
        "decoding": result.decoding,
        "batch_prompts": job.batch_prompts,
    }
    if job.reply.thinks():
        aisp["thinking_budget"] = job.reply.thinking_budget
        aisp["thinking_ended"] = split.closed
    if job.fmt.calls_tools:
        aisp["tool_format"] = job.reply.tool_format.name
    if job.auto_choice is not None:
        aisp["auto_choice"] = job.auto_choice
    if job.fmt.constrained:
        aisp["format_validity"] = format_validity(text, job.fmt)
    metadata = {"model_name": str(job.lm.name), "finish_reason": finish, "aisp": aisp}
    output = len(result.token_ids)
    usage = UsageMetadata(
        input_tokens=result.prompt_tokens, output_tokens=output, total_tokens=result.prompt_tokens + output
    )
    return parsed, metadata, usage, reasoning


def to_message(job: Job, result: PromptResult, reward_name: str) -> AIMessage:
    """The ``AIMessage`` of one answer."""
    parsed, metadata, usage, reasoning = message_parts(job, result, reward_name)
    return AIMessage(
        content=parsed.content,
        additional_kwargs=replylib.reasoning_kwargs(reasoning),
        tool_calls=parsed.tool_calls,
        invalid_tool_calls=parsed.invalid_tool_calls,
        response_metadata=metadata,
        usage_metadata=usage,
    )


def to_chunks(job: Job, result: PromptResult, reward_name: str) -> Iterator[ChatGenerationChunk]:
    """One answer as stream chunks: the reasoning's words (``additional_kwargs["reasoning_content"]``, first, as
    DeepSeek and vLLM stream it), the answer's words, then a last chunk with tool calls, metadata and usage."""
    parsed, metadata, usage, reasoning = message_parts(job, result, reward_name)
    for piece in stream_pieces(reasoning or ""):
        yield ChatGenerationChunk(message=AIMessageChunk(content="", additional_kwargs={"reasoning_content": piece}))
    for piece in stream_pieces(parsed.content):
        yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
    tool_chunks = [
        ToolCallChunk(
            name=c["name"],
            args=json.dumps(c["args"], ensure_ascii=False),
            id=c["id"],
            index=i,
            type="tool_call_chunk",
        )
        for i, c in enumerate(parsed.tool_calls)
    ]
    last = AIMessageChunk(
        content="",
        tool_call_chunks=tool_chunks,
        response_metadata=metadata,
        usage_metadata=usage,
        chunk_position="last",
    )
    if parsed.invalid_tool_calls:
        last.invalid_tool_calls = list(parsed.invalid_tool_calls)
    yield ChatGenerationChunk(message=last)
