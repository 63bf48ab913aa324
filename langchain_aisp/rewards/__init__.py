"""Rewards: one protocol (:class:`Reward`) and adapters for rules, models, embeddings and judges."""

from langchain_aisp.rewards.base import (
    Conversation,
    FunctionReward,
    Reward,
    as_reward,
    batched,
    message_text,
    prompt_text,
)

__all__ = ["Conversation", "FunctionReward", "Reward", "as_reward", "batched", "message_text", "prompt_text"]
