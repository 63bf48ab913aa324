"""Rule rewards against the real offline packages (VADER, alt-profanity-check), and their install hints."""

from __future__ import annotations

import re
import sys

import pytest
from langchain_core.messages import HumanMessage

from langchain_aisp.rewards import (
    JSONSchemaReward,
    LengthReward,
    NonToxicityReward,
    RegexReward,
    SentimentReward,
    extract_json,
)

CONV = [HumanMessage("Tell me about your day.")]


def convs(n):
    return [CONV] * n


def test_sentiment_reward_is_vader_compound():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    texts = ["I love this, it is wonderful!", "It is a table.", "This is awful and I hate it."]
    scores = SentimentReward().score(convs(3), texts)
    assert scores[0] > scores[1] > scores[2]
    assert scores[1] == 0.0
    assert scores == [SentimentIntensityAnalyzer().polarity_scores(t)["compound"] for t in texts]
    assert all(-1.0 <= s <= 1.0 for s in scores)


def test_non_toxicity_reward_is_one_minus_profanity_probability():
    from profanity_check import predict_prob

    texts = ["Have a lovely afternoon.", "You are a stupid idiot, shut up.", "Have a lovely afternoon."]
    scores = NonToxicityReward().score(convs(3), texts)
    assert scores[0] > 0.5 > scores[1]
    assert scores[0] == scores[2]
    assert scores[:2] == pytest.approx([1.0 - p for p in predict_prob(texts[:2])])


@pytest.mark.parametrize(
    ("reward", "modules", "package"),
    [
        (SentimentReward, ["vaderSentiment", "vaderSentiment.vaderSentiment"], "vaderSentiment"),
        (NonToxicityReward, ["profanity_check"], "alt-profanity-check"),
    ],
)
def test_missing_optional_package_gives_install_hint(monkeypatch, reward, modules, package):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    hint = (
        f"{reward.__name__} needs the optional package '{package}', which is not installed: "
        f"pip install 'langchain-aisp[rewards]' (or pip install {package})"
    )
    with pytest.raises(ImportError, match=re.escape(hint)):
        reward().score(convs(1), ["hello"])


def test_length_reward():
    reward = LengthReward(min_words=2, max_words=4)
    texts = ["", "one", "one two", "a b c d", "a b c d e", "a b c d e f g h"]
    assert reward.score(convs(6), texts) == [0.0, 0.5, 1.0, 1.0, 0.75, 0.0]
    fixed = LengthReward(max_words=2, penalty_per_word=0.1, floor=-1.0)
    assert fixed.score(convs(2), ["a b c", " ".join(["w"] * 40)]) == [pytest.approx(0.9), -1.0]
    with pytest.raises(ValueError, match="min_words must be <= max_words, got min_words=5, max_words=2"):
        LengthReward(5, 2)
    with pytest.raises(ValueError, match="needs min_words and/or max_words"):
        LengthReward()
    with pytest.raises(ValueError, match="max_words must be None or an integer >= 0, got -1"):
        LengthReward(max_words=-1)


def test_regex_reward_modes():
    texts = ["The answer is 42.", "no digits here", "1, 2, 3, 4 and 5"]
    assert RegexReward(r"\d+").score(convs(3), texts) == [1.0, 0.0, 1.0]
    assert RegexReward(r"\d+", mode="count").score(convs(3), texts) == [1.0, 0.0, 5.0]
    assert RegexReward(r"\d+", mode="count", max_count=3).score(convs(3), texts) == [1.0, 0.0, 3.0]
    assert RegexReward(r"no \w+ here", mode="fullmatch").score(convs(3), texts) == [0.0, 1.0, 0.0]
    forbidden = RegexReward(r"(?i)as an ai", match_score=-1.0, miss_score=0.0)
    assert forbidden.score(convs(2), ["As an AI, I can't.", "Sure!"]) == [-1.0, 0.0]
    assert RegexReward("ANSWER", flags=re.IGNORECASE).score(convs(1), ["the answer"]) == [1.0]
    with pytest.raises(ValueError, match=r"invalid regular expression '\(unclosed'"):
        RegexReward("(unclosed")
    with pytest.raises(ValueError, match="mode must be 'search', 'fullmatch' or 'count', got 'match'"):
        RegexReward("x", mode="match")  # type: ignore[arg-type]


SCHEMA = {
    "type": "object",
    "required": ["name", "age"],
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


def test_extract_json():
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('Here you go:\n```json\n{"a": [1, 2]}\n```\nDone.') == {"a": [1, 2]}
    assert extract_json("```\n[1, 2]\n```") == [1, 2]
    assert extract_json('```json\nnot json\n```\n```json\n{"b": 2}\n```') == {"b": 2}
    assert extract_json("no json {here") is not None  # the private "missing" sentinel
    assert extract_json("no json {here") is extract_json("neither")


@pytest.mark.parametrize("validator", ["minimal", "auto"])
def test_json_schema_reward(validator):
    reward = JSONSchemaReward(SCHEMA, validator=validator, partial_credit=0.25)
    texts = [
        '{"name": "Ada", "age": 36}',
        'Sure:\n```json\n{"name": "Ada", "age": 36, "tags": ["math"]}\n```',
        '{"name": "Ada"}',  # missing age
        '{"name": "Ada", "age": "36"}',  # wrong type
        '{"name": "Ada", "age": 36, "tags": [1]}',  # wrong item type
        '{"name": "Ada", "age": true}',  # bool is not an integer
        "[1, 2]",  # not an object
        "Ada is 36.",  # no JSON
    ]
    assert reward.score(convs(len(texts)), texts) == [1.0, 1.0, 0.25, 0.25, 0.25, 0.25, 0.25, 0.0]
    assert reward.errors(texts[2]) and reward.errors(texts[0]) == []
    assert reward.errors(texts[-1]) is None


def test_json_schema_minimal_messages_and_no_schema():
    minimal = JSONSchemaReward(SCHEMA, validator="minimal")
    assert minimal.validator_used == "minimal"
    assert minimal.errors('{"age": 1.5, "tags": ["x", 2]}') == [
        "$: missing required property 'name'",
        "$.age: expected integer, got float",
        "$.tags[1]: expected string, got int",
    ]
    any_json = JSONSchemaReward()
    assert any_json.score(convs(3), ["[]", "```json\n{}\n```", "{oops}"]) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match=r"partial_credit must be in \[0, 1\], got 2"):
        JSONSchemaReward(SCHEMA, partial_credit=2)


def test_json_schema_requires_jsonschema_when_asked(monkeypatch):
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    with pytest.raises(
        ImportError, match=re.escape("pip install 'langchain-aisp[rewards]' (or pip install jsonschema)")
    ):
        JSONSchemaReward(SCHEMA, validator="jsonschema")
    assert JSONSchemaReward(SCHEMA).validator_used == "minimal"  # "auto" falls back


def test_json_schema_uses_jsonschema_when_installed():
    pytest.importorskip("jsonschema")
    reward = JSONSchemaReward(
        {**SCHEMA, "properties": {**SCHEMA["properties"], "age": {"type": "integer", "minimum": 0}}}
    )
    assert reward.validator_used == "jsonschema"
    # "minimum" is beyond the minimal checker: only jsonschema catches it
    assert reward.score(convs(2), ['{"name": "A", "age": 3}', '{"name": "A", "age": -3}']) == [1.0, 0.5]
