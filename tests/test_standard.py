"""LangChain's standard chat-model suites, run against the embedded default model with a small budget.

Tool calls and structured output are grammar-constrained (docs/grammar.md), so the integration
suite runs with no xfail at n=2, k=1, max_tokens=32. The one xfail left is the unit suite's
``test_serdes`` (a langchain-core limitation for third-party classes, reason below).
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

NOT_APPLICABLE = ("api_key",)
"""Hosted-API parameter: a local model has no key and rejects it (extra='forbid'). ``timeout`` and
``max_retries`` are accepted with a local meaning (deadline of the anytime run, retries of the reward)."""


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

    @property
    def model_override_value(self) -> str:
        """The default model's converted folder, loaded by path: a second, real model id."""
        from langchain_aisp.engine.default_model import default_model_dir

        return str(default_model_dir())
