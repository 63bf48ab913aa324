"""Reward families for learning across calls (issue 27): does a memory learned under one reward help later calls?

Three kinds, each with a reward the memory is tuned on and a held-out one it is not:

* **style**, prompt-independent: ``sentiment`` (TextBlob polarity, tuned on); ``subjectivity`` (TextBlob
  subjectivity: personal, opinionated wording; held out).
* **length / format**: ``length`` (1 at exactly ``LENGTH_TARGET`` words, falling by 1/10 per word off it;
  tuned on); ``complete`` (held out: 1 when the answer is a finished text, ending with sentence punctuation
  before the token limit, plus a small bonus for each finished sentence).
* **prompt-dependent**: ``relevance`` (MiniLM prompt-answer cosine, tuned on); ``reference`` (MiniLM cosine
  to a hidden reference answer of each shipped prompt, held out).

A shared direction can serve the first two kinds; the third has none, and there a memory must not hurt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from langchain_aisp.bench.prompts import BenchPrompt
from langchain_aisp.rewards import LengthReward, Reward
from langchain_aisp.rewards.base import Conversation
from langchain_aisp.rewards.errors import check_lengths
from langchain_aisp.rewards.rules import require

LENGTH_TARGET = 10
"""Words the ``length`` reward asks for (the default model's answers at 24 tokens run 15-20 words)."""
KINDS: dict[str, str] = {
    "sentiment": "style",
    "subjectivity": "style",
    "length": "length/format",
    "complete": "length/format",
    "relevance": "prompt-dependent",
    "reference": "prompt-dependent",
}
TUNED: tuple[str, ...] = ("sentiment", "length", "relevance")
HELD_OUT: tuple[str, ...] = ("subjectivity", "complete", "reference")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")


class SubjectivityReward(Reward):
    """TextBlob's subjectivity of the response in [0, 1] (0 objective, 1 personal / opinionated)."""

    name = "subjectivity"

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        check_lengths(conversations, responses, self.name)
        textblob = require("textblob", "textblob", "SubjectivityReward")
        return [float(textblob.TextBlob(text).sentiment.subjectivity) for text in responses]


class CompleteReward(Reward):
    """1 when the response ends a sentence (``.``, ``!`` or ``?``) and is not empty, plus 0.1 per finished
    sentence up to 3; 0 for a response cut off mid-sentence."""

    name = "complete"

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        check_lengths(conversations, responses, self.name)
        values = []
        for text in responses:
            stripped = text.strip()
            finished = bool(stripped) and stripped[-1] in ".!?"
            sentences = min(3, len(_SENTENCE_END.findall(stripped)))
            values.append(float(finished) + 0.1 * sentences)
        return values


def family_rewards(names: Sequence[str], prompts: Sequence[BenchPrompt]) -> dict[str, Reward]:
    """The named rewards; ``reference`` needs the shipped reference answers of ``prompts``."""
    from langchain_aisp.bench.efficiency import resolve_eval_rewards
    from langchain_aisp.bench.scorers import builtin_reward

    rewards: dict[str, Reward] = {}
    for name in names:
        if name == "sentiment" or name == "relevance":
            rewards[name] = builtin_reward(name)
        elif name == "subjectivity":
            rewards[name] = SubjectivityReward()
        elif name == "length":
            rewards[name] = LengthReward(LENGTH_TARGET, LENGTH_TARGET, penalty_per_word=0.1, floor=-1.0)
        elif name == "complete":
            rewards[name] = CompleteReward()
        elif name == "reference":
            rewards.update(resolve_eval_rewards(["reference"], prompts))
        else:
            raise ValueError(f"unknown reward family {name!r}; choose from {list(KINDS)}")
    return rewards


__all__ = ["HELD_OUT", "KINDS", "LENGTH_TARGET", "TUNED", "CompleteReward", "SubjectivityReward", "family_rewards"]
