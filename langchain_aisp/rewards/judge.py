"""LLM-as-judge: any LangChain chat model grades responses against a rubric."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from langchain_aisp.errors import JudgeParseError
from langchain_aisp.rewards.base import Conversation, Reward, message_text, prompt_text
from langchain_aisp.rewards.errors import RewardFailure, check_lengths, check_timeout
from langchain_aisp.rewards.safety import call_with_timeout

DEFAULT_TEMPLATE = """You are grading an AI assistant's answer to a user's request.

[Request]
{prompt}

[Answer]
{response}

Rate the answer from {min_score} (useless, wrong or harmful) to {max_score} (helpful, correct, clear and safe).
Reply with one line in the form "Score: N" where N is a number from {min_score} to {max_score}."""
"""The default rubric. Placeholders: {prompt}, {response}, {min_score}, {max_score}."""

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_KEYWORD = re.compile(rf"\b(?:score|rating|grade)\b\s*(?:is|of)?\s*[:=]?\s*\**\s*({_NUMBER})", re.IGNORECASE)
_FRACTION = re.compile(rf"({_NUMBER})\s*(?:/|out of)\s*({_NUMBER})", re.IGNORECASE)
_BOLD = re.compile(rf"\*\*\s*({_NUMBER})\s*\**")
_ANY = re.compile(rf"(?<![\w.]){_NUMBER}(?![\w])")


def parse_score(reply: str, min_score: float, max_score: float) -> float:
    """The score in a judge's reply, within ``[min_score, max_score]``; JudgeParseError otherwise.

    Tried in order: a keyword ("Score: 7", "rating = 8.5", "Score: 7/10"; the last one
    wins), a fraction whose denominator is ``max_score`` ("7/10", "7 out of 10"), a bold
    number ("**8**"), a reply that is only a number, and finally the only number in the
    reply that lies in range. A candidate outside the range is an error, not skipped.
    """
    text = reply.strip()

    def check(value: float, how: str) -> float:
        if not min_score <= value <= max_score:
            raise JudgeParseError(f"{how} {value:g} is outside [{min_score:g}, {max_score:g}] in reply {text!r:.200}")
        return value

    keyword = _KEYWORD.findall(text)
    if keyword:
        return check(float(keyword[-1]), "score")
    fractions = [float(n) for n, d in _FRACTION.findall(text) if float(d) == max_score]
    if fractions:
        return check(fractions[-1], "score")
    bold = _BOLD.findall(text)
    if bold:
        return check(float(bold[-1]), "bold score")
    if re.fullmatch(rf"{_NUMBER}\.?", text):
        return check(float(text.rstrip(".")), "score")
    in_range = {float(n) for n in _ANY.findall(text) if min_score <= float(n) <= max_score}
    if len(in_range) == 1:
        return in_range.pop()
    raise JudgeParseError(f"no score in [{min_score:g}, {max_score:g}] found in reply {text!r:.200}")


def judge_name(judge: Any) -> str:
    """A readable name for a chat model: its class and model name when it has one."""
    model = getattr(judge, "model_name", None) or getattr(judge, "model", None)
    return f"{type(judge).__name__}({model})" if isinstance(model, str) and model else type(judge).__name__


class JudgeReward(Reward):
    """A chat model grades each response with a rubric; the number it replies is the reward.

    ``template`` is a user message with the placeholders ``{prompt}`` (:func:`prompt_text`
    of the conversation), ``{response}``, ``{min_score}`` and ``{max_score}``, replaced
    literally (other braces, e.g. JSON examples, are left alone); ``system`` is an
    optional system message. The reply is parsed with :func:`parse_score`; with
    ``normalize=True`` the score is mapped to [0, 1].

    Each judge call runs in a worker thread and counts as failed after ``timeout``
    seconds. A call that raises one of ``retry_on``, times out, or replies without a
    usable score is retried, up to ``attempts`` calls in all, waiting
    ``backoff * 2**k`` seconds (at most ``max_backoff``) between them (tenacity).
    After the last attempt :class:`RewardFailure` names the judge, the response index
    and the last error. Exceptions not in ``retry_on`` fail at once. Identical
    (prompt, response) pairs are judged once per call; ``max_concurrency`` > 1 judges
    that many responses at a time in threads.
    """

    def __init__(
        self,
        judge: BaseChatModel,
        *,
        template: str = DEFAULT_TEMPLATE,
        system: str | None = None,
        min_score: float = 1.0,
        max_score: float = 10.0,
        normalize: bool = True,
        attempts: int = 3,
        timeout: float | None = 60.0,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_concurrency: int = 1,
        name: str | None = None,
    ) -> None:
        if not isinstance(judge, BaseChatModel):
            raise TypeError(f"judge must be a LangChain BaseChatModel, got {type(judge).__name__}")
        if "{response}" not in template:
            raise ValueError(f"template must contain the {{response}} placeholder, got {template!r:.200}")
        if not (math.isfinite(min_score) and math.isfinite(max_score) and min_score < max_score):
            raise ValueError(f"need finite min_score < max_score, got min_score={min_score!r}, max_score={max_score!r}")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts must be an integer >= 1, got {attempts!r}")
        if not (0 <= backoff < math.inf and 0 <= max_backoff < math.inf):
            raise ValueError(f"backoff and max_backoff must be finite and >= 0, got {backoff!r}, {max_backoff!r}")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")
        if not isinstance(retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            raise TypeError(f"retry_on must be a tuple of exception types, got {retry_on!r}")
        self.judge = judge
        self.template = template
        self.system = system
        self.min_score = float(min_score)
        self.max_score = float(max_score)
        self.normalize = normalize
        self.attempts = attempts
        self.timeout = check_timeout(timeout)
        self.retry_on = retry_on
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_concurrency = max_concurrency
        self.judge_name = judge_name(judge)
        self.name = name or f"judge({self.judge_name})"

    def messages(self, prompt: str, response: str) -> list[BaseMessage]:
        """The messages sent to the judge for one response."""
        text = (
            self.template.replace("{prompt}", prompt)
            .replace("{min_score}", f"{self.min_score:g}")
            .replace("{max_score}", f"{self.max_score:g}")
            .replace("{response}", response)  # last: a response may itself contain "{prompt}"
        )
        out: list[BaseMessage] = [SystemMessage(self.system)] if self.system else []
        return [*out, HumanMessage(text)]

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        check_lengths(conversations, responses, self.name)
        pairs = [(prompt_text(c), r) for c, r in zip(conversations, responses, strict=True)]
        first: dict[tuple[str, str], int] = {}
        for i, pair in enumerate(pairs):
            first.setdefault(pair, i)
        jobs = list(first.items())
        if self.max_concurrency > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(jobs))) as pool:
                results = list(pool.map(lambda job: self._judge_one(job[0], job[1]), jobs))
        else:
            results = [self._judge_one(pair, index) for pair, index in jobs]
        values = {pair: value for (pair, _), value in zip(jobs, results, strict=True)}
        return [values[p] for p in pairs]

    def _judge_one(self, pair: tuple[str, str], index: int) -> float:
        messages = self.messages(*pair)
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff, max=self.max_backoff),
            retry=retry_if_exception_type((*self.retry_on, TimeoutError, JudgeParseError)),
            reraise=False,
        )
        try:
            raw = retrying(self._ask, messages)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise RewardFailure(
                f"judge {self.judge_name} failed on response {index} after {self.attempts} attempts: "
                f"{type(last).__name__}: {last}",
                reward=self.name,
                index=index,
            ) from last
        except Exception as exc:  # not retryable
            raise RewardFailure(
                f"judge {self.judge_name} failed on response {index} with a non-retryable {type(exc).__name__}: {exc}",
                reward=self.name,
                index=index,
            ) from exc
        if not self.normalize:
            return raw
        return (raw - self.min_score) / (self.max_score - self.min_score)

    def _ask(self, messages: list[BaseMessage]) -> float:
        try:
            reply = call_with_timeout(self.judge.invoke, self.timeout, messages)
        except TimeoutError as exc:
            raise TimeoutError(f"the judge did not reply within {self.timeout:g} s") from exc
        text = message_text(reply) if isinstance(reply, BaseMessage) else str(reply)
        return parse_score(text, self.min_score, self.max_score)
