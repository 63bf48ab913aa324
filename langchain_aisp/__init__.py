"""langchain-aisp: test-time reward alignment (AISP, Best-of-N) for local Hugging Face chat models.

Importing the package is cheap: the heavy modules (torch, transformers) load on
first use of the names below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_aisp.chat_models import AISPChatModel
    from langchain_aisp.embeddings import MiniLMEmbeddings
    from langchain_aisp.engine.aisp import PromptResult
    from langchain_aisp.engine.config import AISPParams, SamplingParams
    from langchain_aisp.engine.memory import ControlMemory
    from langchain_aisp.errors import (
        ModelLoadError,
        RewardError,
        RewardFailure,
        RunCancelledError,
        RunError,
        RunFailedError,
        RunTimeoutError,
    )
    from langchain_aisp.rewards import FunctionReward, Reward, as_reward, batched

__version__ = "0.1.0"

_EXPORTS = {
    "AISPChatModel": "langchain_aisp.chat_models",
    "AISPParams": "langchain_aisp.engine.config",
    "SamplingParams": "langchain_aisp.engine.config",
    "ControlMemory": "langchain_aisp.engine.memory",
    "MiniLMEmbeddings": "langchain_aisp.embeddings",
    "PromptResult": "langchain_aisp.engine.aisp",
    "RewardError": "langchain_aisp.errors",
    "RewardFailure": "langchain_aisp.errors",
    "RunError": "langchain_aisp.errors",
    "RunFailedError": "langchain_aisp.errors",
    "RunTimeoutError": "langchain_aisp.errors",
    "RunCancelledError": "langchain_aisp.errors",
    "ModelLoadError": "langchain_aisp.errors",
    "Reward": "langchain_aisp.rewards",
    "FunctionReward": "langchain_aisp.rewards",
    "as_reward": "langchain_aisp.rewards",
    "batched": "langchain_aisp.rewards",
}

__all__ = [
    "AISPChatModel",
    "AISPParams",
    "ControlMemory",
    "FunctionReward",
    "MiniLMEmbeddings",
    "ModelLoadError",
    "PromptResult",
    "Reward",
    "RewardError",
    "RewardFailure",
    "RunCancelledError",
    "RunError",
    "RunFailedError",
    "RunTimeoutError",
    "SamplingParams",
    "__version__",
    "as_reward",
    "batched",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'langchain_aisp' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
