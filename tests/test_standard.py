"""LangChain's standard chat-model suites, run against the embedded default model with a small budget.

Every xfail below carries the reason it fails and names the unit test in
``tests/test_chat_model.py`` that proves the same code path with a scripted engine.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_aisp import AISPChatModel


def wordy_reward(prompt: str, response: str) -> float:
    """Prefers non-empty answers of up to 20 words (module level: importable, so serialisable)."""
    return min(len(response.split()), 20) / 20.0


pytestmark = pytest.mark.usefixtures("single_torch_thread")


PARAMS: dict[str, Any] = {
    "reward": wordy_reward,
    "model": None,
    "num_samples": 2,
    "num_iterations": 1,
    "max_tokens": 32,
    "seed": 0,
}

_BUDGET = "SmolLM2-135M at num_samples=2, num_iterations=1, max_tokens=32 "
_PROVEN_TOOLS = "the parse/validate path is proven by test_chat_model.py::test_tool_call_parsing_valid_and_invalid"
_PROVEN_STRUCTURED = (
    "the structured-output path is proven by test_chat_model.py::test_structured_output_valid_and_invalid"
)

_SCHEMA_TYPES = [
    pytest.param(
        "pydantic",
        marks=pytest.mark.xfail(
            reason=_BUDGET
            + "with sigma=0.02 and seed 0 stops the Joke call after 'setup' (missing required 'punchline'; "
            + "it passed at sigma=0.05, so it depends on the sample drawn); "
            + _PROVEN_STRUCTURED,
            strict=False,
        ),
    ),
    pytest.param(
        "typeddict",
        marks=pytest.mark.xfail(
            reason=_BUDGET
            + "closes the JokeDict object after 'setup' (missing required 'punchline'); "
            + _PROVEN_STRUCTURED,
            strict=False,
        ),
    ),
    "json_schema",
]

NOT_APPLICABLE = ("timeout", "max_retries", "api_key")
"""Standard params of hosted APIs; a local model has no network, retries or key, and rejects them (extra='forbid')."""


class _Capabilities:
    """What AISPChatModel declares to both standard suites (honestly: see the xfails below)."""

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return AISPChatModel

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestAISPChatModelUnit(_Capabilities, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        # the suite passes max_tokens itself in test_standard_params
        return {k: v for k, v in PARAMS.items() if k != "max_tokens"}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        params = super().standard_chat_model_params
        return {k: v for k, v in params.items() if k not in NOT_APPLICABLE}

    @pytest.mark.xfail(
        reason="langchain-core's load(allowed_objects='all') admits only classes listed in langchain-core's own "
        "mapping, so no third-party class can load there; the snapshot part passes, and the round trip with "
        "allowed_objects=[AISPChatModel] is tested in test_chat_model.py (serialisation test)",
        raises=ValueError,
        strict=True,
    )
    def test_serdes(self, model: BaseChatModel, snapshot: Any) -> None:
        super().test_serdes(model, snapshot)


@pytest.mark.model
class TestAISPChatModelIntegration(_Capabilities, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return dict(PARAMS)

    @property
    def supports_model_override(self) -> bool:
        return True

    # --- xfails: the 135M default model at n=2, k=1, max_tokens=32 (measured on CPU, seed 0) ---

    @pytest.mark.xfail(
        reason=_BUDGET + "writes answer_style with a non-string value, so the forced call is "
        "invalid (invalid_tool_calls); " + _PROVEN_TOOLS,
        strict=False,
    )
    def test_bind_runnables_as_tools(self, model: BaseChatModel) -> None:
        super().test_bind_runnables_as_tools(model)

    @pytest.mark.xfail(
        reason=_BUDGET + "writes one of the two forced calls (magic_function / get_weather) with "
        "arguments that break the schema; " + _PROVEN_TOOLS,
        strict=False,
    )
    def test_tool_choice(self, model: BaseChatModel) -> None:
        super().test_tool_choice(model)

    @pytest.mark.xfail(
        False,  # inactive: only the marked parameters carry an active xfail (see _SCHEMA_TYPES)
        reason="only the pydantic and typeddict variants are expected to fail; overridden to mark those parameters",
    )
    @pytest.mark.parametrize("schema_type", _SCHEMA_TYPES)
    def test_structured_output(self, model: BaseChatModel, schema_type: Any) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(
        False,  # inactive: only the marked parameters carry an active xfail (see _SCHEMA_TYPES)
        reason="only the pydantic and typeddict variants are expected to fail; overridden to mark those parameters",
    )
    @pytest.mark.parametrize("schema_type", _SCHEMA_TYPES)
    async def test_structured_output_async(self, model: BaseChatModel, schema_type: Any) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(
        reason=_BUDGET + "closes the Joke object after 'setup' (missing required 'punchline'); " + _PROVEN_STRUCTURED,
        strict=False,
    )
    def test_structured_output_pydantic_2_v1(self, model: BaseChatModel) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(
        reason=_BUDGET + "in json_mode writes {'setup': ...} without 'punchline'; " + _PROVEN_STRUCTURED, strict=False
    )
    def test_json_mode(self, model: BaseChatModel) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(
        reason=_BUDGET + "answers in prose instead of calling get_weather when the call is optional "
        "(tool_choice=None); the optional-call parsing is proven by "
        "test_chat_model.py::test_tool_call_parsing_valid_and_invalid",
        strict=False,
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(
        reason=_BUDGET + "omits the required 'description' argument of unicode_customer; " + _PROVEN_TOOLS, strict=False
    )
    def test_unicode_tool_call_integration(
        self, model: BaseChatModel, *, tool_choice: str | None = None, force_tool_call: bool = True
    ) -> None:
        super().test_unicode_tool_call_integration(model, tool_choice=tool_choice, force_tool_call=force_tool_call)

    @property
    def model_override_value(self) -> str:
        """The default model's converted folder, loaded by path: a second, real model id."""
        from langchain_aisp.default_model import default_model_dir

        return str(default_model_dir())
