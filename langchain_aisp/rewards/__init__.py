"""Rewards: one protocol (:class:`Reward`) and adapters for rules, models, embeddings and judges.

Importing this package loads no model and needs none of the optional packages:
the adapters import torch/transformers models, VADER or profanity-check when first used.
"""

from langchain_aisp.rewards.base import (
    Conversation,
    FunctionReward,
    Reward,
    batched,
    import_reward,
    message_text,
    prompt_text,
    score_fn,
)
from langchain_aisp.rewards.composition import Normalized, WeightedSum
from langchain_aisp.rewards.embedding import EmbeddingSimilarityReward, context_text
from langchain_aisp.rewards.hf import HFRewardModel
from langchain_aisp.rewards.judge import DEFAULT_TEMPLATE, JudgeParseError, JudgeReward, parse_score
from langchain_aisp.rewards.reference import ReferenceSimilarityReward
from langchain_aisp.rewards.rules import (
    JSONSchemaReward,
    LengthReward,
    NonToxicityReward,
    RegexReward,
    SentimentReward,
    extract_json,
)
from langchain_aisp.rewards.safety import (
    RewardFailure,
    RewardWarning,
    SafeReward,
    as_reward,
    call_with_timeout,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "Conversation",
    "EmbeddingSimilarityReward",
    "FunctionReward",
    "HFRewardModel",
    "JSONSchemaReward",
    "JudgeParseError",
    "JudgeReward",
    "LengthReward",
    "NonToxicityReward",
    "Normalized",
    "ReferenceSimilarityReward",
    "RegexReward",
    "Reward",
    "RewardFailure",
    "RewardWarning",
    "SafeReward",
    "SentimentReward",
    "WeightedSum",
    "as_reward",
    "batched",
    "call_with_timeout",
    "context_text",
    "extract_json",
    "import_reward",
    "message_text",
    "parse_score",
    "prompt_text",
    "score_fn",
]
