"""Structured output: the parsers behind ``with_structured_output`` (cut replies, schema checks)."""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from langchain_aisp.chat import _grammar as grammarlib
from langchain_aisp.chat._parse import schema_errors

StructuredMethod = Literal["function_calling", "json_schema", "json_mode"]


def cut_message(max_tokens: int, what: str, *, thinking: bool = False) -> str:
    """The error of a reply cut by ``max_tokens`` inside ``what`` (a tool call, JSON), or with ``thinking``
    inside its think section, before any answer (thinking never ended)."""
    if thinking:
        return (
            f"thinking never ended: the reply was cut by max_tokens={max_tokens} inside its think section "
            f"(finish_reason 'length'), before the {what} was started; the reasoning is in "
            f"additional_kwargs['reasoning_content']. Set thinking_budget (e.g. thinking_budget={max_tokens}: the "
            "think section is closed after that many tokens and the answer keeps its own max_tokens), pass "
            f"reasoning=False, or raise max_tokens (e.g. to {4 * max_tokens})"
        )
    return (
        f"the reply was cut by max_tokens={max_tokens} inside the {what} (finish_reason 'length'): decoding is "
        f"grammar-constrained, so only the length limit can leave it incomplete; raise max_tokens (e.g. to "
        f"{2 * max_tokens})"
    )


def _cut_error(message: AIMessage, what: str) -> OutputParserException:
    """The parser error of a reply cut by ``max_tokens`` (inside ``what``, or before its think section ended)."""
    aisp = message.response_metadata.get("aisp") or {}
    thinking = aisp.get("thinking_ended") is False
    return OutputParserException(
        cut_message(int(aisp.get("max_tokens") or 0), what, thinking=thinking), llm_output=message.text
    )


def _parse_tool_output(inner: Runnable[Any, Any], name: str, message: AIMessage) -> Any:
    """Structured output (function_calling): the first valid call, else an ``OutputParserException``."""
    if (message.response_metadata.get("aisp") or {}).get("finish_reason") == "length":
        raise _cut_error(message, f"{name} call")
    if not message.tool_calls:
        errors = "; ".join(str(c.get("error") or "") for c in message.invalid_tool_calls)
        raise OutputParserException(
            f"the reply contains no valid {name} call: {errors or 'no tool call'}", llm_output=message.text
        )
    return inner.invoke(message)


def _parse_json_output(inner: Runnable[Any, Any], schema: dict[str, Any], message: AIMessage) -> Any:
    """Structured output (json_schema / json_mode): parse, then check the JSON against the schema."""
    cut = message.response_metadata.get("finish_reason") == "length"
    if cut:  # a lenient parser could close the cut JSON: never return a truncated value
        raise _cut_error(message, "JSON")
    value = inner.invoke(message)
    error = schema_errors(value, schema) if isinstance(value, dict) else None
    if value is None:
        raise OutputParserException("the reply contains no JSON object", llm_output=message.text)
    if error is not None:
        raise OutputParserException(f"the JSON reply does not match the schema: {error}", llm_output=message.text)
    return value


_RAW: Runnable[Any, Any] = RunnableLambda(lambda x: x["raw"])


def structured_output(
    model: BaseChatModel, schema: dict[str, Any] | type | None, include_raw: bool, method: str, strict: bool | None
) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
    """The chain of ``with_structured_output`` (arguments checked by the caller): bound model | parser."""
    json_schema = convert_to_json_schema(schema) if schema is not None else {"type": "object"}
    is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
    ls_format = {"kwargs": {"method": method}, "schema": schema if schema is not None else json_schema}
    if method == "function_calling":
        name = convert_to_openai_tool(schema)["function"]["name"]  # type: ignore[arg-type]
        llm = model.bind_tools(
            [schema],  # type: ignore[list-item]
            tool_choice=name,
            parallel_tool_calls=False,
            strict=strict,
            ls_structured_output_format=ls_format,
        )
        inner: Runnable[Any, Any] = (
            PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
            if is_pydantic
            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        )
        parser: Runnable[Any, Any] = RunnableLambda(partial(_parse_tool_output, inner, name))
    else:
        grammarlib.json_grammar(json_schema, strict=strict is not False)  # unsupported schema: fail now
        bound: dict[str, Any] = {"response_format": {"type": method, "schema": json_schema}}
        if strict is not None:
            bound["strict"] = strict
        llm = model.bind(**bound, ls_structured_output_format=ls_format)
        inner = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()  # type: ignore[arg-type]
        parser = RunnableLambda(partial(_parse_json_output, inner, json_schema))
    if not include_raw:
        return llm | parser
    parser_assign = RunnablePassthrough.assign(parsed=_RAW | parser, parsing_error=lambda _: None)
    parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
    parser_with_fallback = parser_assign.with_fallbacks([parser_none], exception_key="parsing_error")
    return RunnableMap(raw=llm) | parser_with_fallback
