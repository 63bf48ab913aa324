"""JudgeReward with scripted LangChain chat models: parsing, retries, timeouts, failures."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from langchain_aisp.rewards import JudgeParseError, JudgeReward, RewardFailure, parse_score

CONV = [HumanMessage("Explain gravity in one sentence.")]


class ScriptedJudge(BaseChatModel):
    """Calls ``responder(text_of_last_message, call_number)``: returns a reply, raises, or sleeps."""

    responder: Callable[[str, int], str]
    calls: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any):
        text = str(messages[-1].content)
        self.calls.append(text)
        reply = self.responder(text, len(self.calls))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(reply))])


def fast(judge: BaseChatModel, **kwargs: Any) -> JudgeReward:
    """A JudgeReward without backoff waits, for tests."""
    kwargs.setdefault("backoff", 0.0)
    return JudgeReward(judge, **kwargs)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Score: 7/10", 7.0),
        ("7", 7.0),
        ("7.", 7.0),
        ("**8**", 8.0),
        ("The answer is clear. **8** overall.", 8.0),
        ("rating = 6.5", 6.5),
        ("Reasoning: covers 3 points well.\nScore: 9", 9.0),
        ("I'd give it 6 out of 10.", 6.0),
        ("Overall 4/10 because it misses 2 of the 3 key facts", 4.0),
        ("My grade is 5", 5.0),
        ("A solid answer; I would say 8.", 8.0),
    ],
)
def test_parse_score_formats(reply, expected):
    assert parse_score(reply, 1, 10) == expected


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("I cannot decide.", "no score in"),
        ("Score: 15", "score 15 is outside [1, 10]"),
        ("It has 3 strengths and 5 flaws.", "no score in"),
        ("**0**", "bold score 0 is outside"),
        ("", "no score in"),
    ],
)
def test_parse_score_rejects(reply, message):
    with pytest.raises(JudgeParseError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_score(reply, 1, 10)


def test_judge_scores_with_the_rubric_and_normalizes():
    replies = {"Objects attract each other.": "Score: 10", "Dunno.": "Score: 1", "Mass bends spacetime.": "7"}
    judge = ScriptedJudge(responder=lambda text, n: next(v for k, v in replies.items() if f"[Answer]\n{k}" in text))
    reward = fast(judge)
    responses = list(replies)
    assert reward.score([CONV] * 3, responses) == pytest.approx([1.0, 0.0, 6 / 9])
    assert "Explain gravity in one sentence." in judge.calls[0]
    assert "from 1 to 10" in judge.calls[0]
    raw = fast(ScriptedJudge(responder=lambda text, n: "Score: 7"), normalize=False, min_score=0, max_score=10)
    assert raw.score([CONV], ["x"]) == [7.0]


def test_generic_fake_chat_model_as_judge():
    judge = GenericFakeChatModel(messages=iter([AIMessage("Score: 3/5"), AIMessage("**5**")]))
    reward = fast(judge, min_score=1, max_score=5)
    assert reward.score([CONV] * 2, ["meh", "great"]) == [0.5, 1.0]
    assert reward.judge_name == "GenericFakeChatModel"


def test_identical_responses_are_judged_once():
    judge = ScriptedJudge(responder=lambda text, n: f"Score: {n + 1}")
    assert fast(judge).score([CONV] * 3, ["a", "a", "b"]) == pytest.approx([1 / 9, 1 / 9, 2 / 9])
    assert len(judge.calls) == 2


def test_transient_error_is_retried_with_backoff():
    def flaky(text, n):
        if n < 3:
            raise ConnectionError("rate limited")
        return "Score: 8"

    judge = ScriptedJudge(responder=flaky)
    start = time.perf_counter()
    assert JudgeReward(judge, backoff=0.05, attempts=3).score([CONV], ["x"]) == [pytest.approx(7 / 9)]
    assert len(judge.calls) == 3
    assert time.perf_counter() - start >= 0.05 + 0.1  # waits 0.05 then 0.1 s


def test_judge_that_always_fails_raises_reward_failure_naming_judge_and_index():
    def fails_on_bad(text, n):
        if "[Answer]\nbad" in text:
            raise ConnectionError("server unavailable")
        return "Score: 5"

    judge = ScriptedJudge(responder=fails_on_bad)
    with pytest.raises(RewardFailure) as info:
        fast(judge, attempts=3).score([CONV] * 3, ["good", "good", "bad"])
    err = info.value
    assert str(err) == (
        "judge ScriptedJudge failed on response 2 after 3 attempts: ConnectionError: server unavailable"
    )
    assert err.index == 2 and err.reward == "judge(ScriptedJudge)"
    assert isinstance(err.__cause__, ConnectionError)
    assert len(judge.calls) == 1 + 3  # "good" once (deduplicated), "bad" three times


def test_error_outside_retry_on_fails_at_once():
    def broken(text, n):
        raise KeyError("bug")

    judge = ScriptedJudge(responder=broken)
    with pytest.raises(RewardFailure, match="failed on response 0 with a non-retryable KeyError"):
        fast(judge, retry_on=(ConnectionError,)).score([CONV], ["x"])
    assert len(judge.calls) == 1


def test_slow_judge_times_out_and_is_retried():
    def slow(text, n):
        time.sleep(1.0)
        return "Score: 9"

    judge = ScriptedJudge(responder=slow)
    start = time.perf_counter()
    with pytest.raises(RewardFailure, match=r"after 2 attempts: TimeoutError: the judge did not reply within 0.1 s"):
        fast(judge, timeout=0.1, attempts=2).score([CONV], ["x"])
    assert time.perf_counter() - start < 0.9
    time.sleep(0.05)
    assert len(judge.calls) == 2


def test_slow_first_call_then_fast_succeeds():
    judge = ScriptedJudge(responder=lambda text, n: (time.sleep(1.0) if n == 1 else None) or "Score: 10")
    assert fast(judge, timeout=0.2, attempts=2).score([CONV], ["x"]) == [1.0]


def test_unparseable_reply_is_retried_then_fails_clearly():
    judge = ScriptedJudge(responder=lambda text, n: "What a lovely answer!")
    with pytest.raises(RewardFailure, match=r"response 0 after 2 attempts: JudgeParseError: no score in \[1, 10\]"):
        fast(judge, attempts=2).score([CONV], ["x"])
    assert len(judge.calls) == 2

    recovering = ScriptedJudge(responder=lambda text, n: "hmm" if n == 1 else "Score: 4")
    assert fast(recovering, attempts=2, normalize=False).score([CONV], ["x"]) == [4.0]


def test_custom_template_keeps_literal_braces():
    template = 'Q: {prompt}\nA: {response}\nReply as JSON like {"score": N} with N in {min_score}..{max_score}.'
    judge = ScriptedJudge(responder=lambda text, n: '{"score": 4}')
    reward = fast(judge, template=template, system="You are strict.", min_score=0, max_score=4)
    assert reward.score([CONV], ["{prompt} is not replaced here"]) == [1.0]
    assert judge.calls[0] == (
        "Q: Explain gravity in one sentence.\nA: {prompt} is not replaced here\n"
        'Reply as JSON like {"score": N} with N in 0..4.'
    )
    assert [m.type for m in reward.messages("p", "r")] == ["system", "human"]


def test_concurrent_judging_gives_the_same_scores():
    def by_length(text, n):
        answer = text.split("[Answer]\n", 1)[1].split("\n", 1)[0]
        return f"Score: {len(answer)}"

    responses = ["a", "bb", "ccc", "dddd", "bb"]
    sequential = fast(ScriptedJudge(responder=by_length), normalize=False).score([CONV] * 5, responses)
    parallel = fast(ScriptedJudge(responder=by_length), normalize=False, max_concurrency=3).score([CONV] * 5, responses)
    assert sequential == parallel == [1.0, 2.0, 3.0, 4.0, 2.0]


def test_judge_validation():
    judge = ScriptedJudge(responder=lambda text, n: "1")
    with pytest.raises(ValueError, match="must contain the \\{response\\} placeholder"):
        JudgeReward(judge, template="Rate {prompt}")
    with pytest.raises(ValueError, match="need finite min_score < max_score, got min_score=5, max_score=5"):
        JudgeReward(judge, min_score=5, max_score=5)
    with pytest.raises(ValueError, match="attempts must be an integer >= 1, got 0"):
        JudgeReward(judge, attempts=0)
    with pytest.raises(TypeError, match="judge must be a LangChain BaseChatModel, got function"):
        JudgeReward(lambda m: "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry_on must be a tuple of exception types"):
        JudgeReward(judge, retry_on=ConnectionError)  # type: ignore[arg-type]
