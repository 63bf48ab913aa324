"""Rule rewards: sentiment, non-toxicity, length, regular expressions and JSON schemas.

``SentimentReward`` and ``NonToxicityReward`` need optional packages (the ``rewards``
extra); each imports its package on first use and, when it is missing, raises an
ImportError that says what to install. Nothing here touches the network.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

from langchain_aisp._json import find_json, validate
from langchain_aisp.rewards.base import Conversation, Reward
from langchain_aisp.rewards.errors import check_lengths

INSTALL_HINT = "pip install 'langchain-aisp[rewards]'"


def require(module: str, package: str, user: str, extra: str | None = "rewards") -> Any:
    """Import ``module`` or raise an ImportError telling how to install ``package``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = (
            f"pip install 'langchain-aisp[{extra}]' (or pip install {package})" if extra else f"pip install {package}"
        )
        raise ImportError(f"{user} needs the optional package {package!r}, which is not installed: {hint}") from exc


class SentimentReward(Reward):
    """The response's sentiment in [-1, 1]: VADER's compound score (``backend="vader"``, the default; needs
    ``vaderSentiment``) or TextBlob's polarity (``backend="textblob"``; needs ``textblob``).

    Both are lexicon based and fast. VADER saturates quickly on long texts (the best of 16 samples
    of the default model already scores ~0.9), so it is a weak reward on its own; TextBlob keeps
    headroom and is what the benchmarks use (docs/benchmarks.md).
    """

    name = "sentiment"

    def __init__(self, backend: Literal["vader", "textblob"] = "vader") -> None:
        if backend not in ("vader", "textblob"):
            raise ValueError(f"backend must be 'vader' or 'textblob', got {backend!r}")
        self.backend = backend
        self._polarity: Any = None

    def _load(self) -> Any:
        if self.backend == "textblob":
            textblob = require("textblob", "textblob", "SentimentReward(backend='textblob')")
            return lambda text: float(textblob.TextBlob(text).sentiment.polarity)
        vader = require("vaderSentiment.vaderSentiment", "vaderSentiment", "SentimentReward")
        analyzer = vader.SentimentIntensityAnalyzer()
        return lambda text: float(analyzer.polarity_scores(text)["compound"])

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        check_lengths(conversations, responses, self.name)
        if self._polarity is None:
            self._polarity = self._load()
        cache: dict[str, float] = {}
        for text in responses:
            if text not in cache:
                cache[text] = self._polarity(text)
        return [cache[text] for text in responses]


class NonToxicityReward(Reward):
    """``1 - p(offensive)`` from alt-profanity-check's linear SVM, in [0, 1] (needs ``alt-profanity-check``)."""

    name = "non_toxicity"

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        check_lengths(conversations, responses, self.name)
        if not responses:
            return []
        profanity = require("profanity_check", "alt-profanity-check", "NonToxicityReward")
        unique = list(dict.fromkeys(responses))
        probs = dict(zip(unique, (float(p) for p in profanity.predict_prob(unique)), strict=True))
        return [1.0 - probs[text] for text in responses]


class LengthReward(Reward):
    """1.0 when the response has between ``min_words`` and ``max_words`` words, less outside.

    Words are whitespace-separated tokens. Outside the range the score falls by
    ``penalty_per_word`` for each word missing or in excess, down to ``floor``. The
    default penalty is relative: ``1 / bound`` for the bound that is violated, so a
    response twice ``max_words`` long, or an empty one with ``min_words`` set, scores
    ``floor`` (0).
    """

    def __init__(
        self,
        min_words: int | None = None,
        max_words: int | None = None,
        *,
        penalty_per_word: float | None = None,
        floor: float = 0.0,
        name: str = "length",
    ) -> None:
        if min_words is None and max_words is None:
            raise ValueError("LengthReward needs min_words and/or max_words, got neither")
        for field, value in (("min_words", min_words), ("max_words", max_words)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{field} must be None or an integer >= 0, got {value!r}")
        if min_words is not None and max_words is not None and min_words > max_words:
            raise ValueError(f"min_words must be <= max_words, got min_words={min_words}, max_words={max_words}")
        if penalty_per_word is not None and not (0 < penalty_per_word < math.inf):
            raise ValueError(f"penalty_per_word must be None or a finite number > 0, got {penalty_per_word!r}")
        if not (-math.inf < floor < 1.0):
            raise ValueError(f"floor must be a finite number < 1, got {floor!r}")
        self.min_words = min_words
        self.max_words = max_words
        self.penalty_per_word = penalty_per_word
        self.floor = floor
        self.name = name

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        check_lengths(conversations, responses, self.name)
        return [self._one(len(text.split())) for text in responses]

    def _one(self, words: int) -> float:
        if self.min_words is not None and words < self.min_words:
            missing, bound = self.min_words - words, self.min_words
        elif self.max_words is not None and words > self.max_words:
            missing, bound = words - self.max_words, self.max_words
        else:
            return 1.0
        rate = self.penalty_per_word if self.penalty_per_word is not None else 1.0 / max(bound, 1)
        return max(self.floor, 1.0 - rate * missing)


class RegexReward(Reward):
    """Scores a regular expression against the response.

    ``mode="search"``: ``match_score`` if the pattern occurs anywhere, else
    ``miss_score``; ``mode="fullmatch"``: the same for the whole (stripped) response;
    ``mode="count"``: the number of non-overlapping matches, capped at ``max_count``.
    """

    def __init__(
        self,
        pattern: str | re.Pattern[str],
        *,
        mode: Literal["search", "fullmatch", "count"] = "search",
        flags: int = 0,
        match_score: float = 1.0,
        miss_score: float = 0.0,
        max_count: int | None = None,
        name: str | None = None,
    ) -> None:
        if mode not in ("search", "fullmatch", "count"):
            raise ValueError(f"mode must be 'search', 'fullmatch' or 'count', got {mode!r}")
        if max_count is not None and (isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1):
            raise ValueError(f"max_count must be None or an integer >= 1, got {max_count!r}")
        try:
            self.pattern = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern, flags)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        self.mode = mode
        self.match_score = float(match_score)
        self.miss_score = float(miss_score)
        self.max_count = max_count
        self.name = name or f"regex({self.pattern.pattern!r})"

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        check_lengths(conversations, responses, self.name)
        return [self._one(text) for text in responses]

    def _one(self, text: str) -> float:
        if self.mode == "count":
            count = sum(1 for _ in self.pattern.finditer(text))
            return float(count if self.max_count is None else min(count, self.max_count))
        found = self.pattern.search(text) if self.mode == "search" else self.pattern.fullmatch(text.strip())
        return self.match_score if found else self.miss_score


_MISSING = object()


def extract_json(text: str) -> Any:
    """The JSON value in ``text``, found as the chat model finds it (:func:`langchain_aisp._json.find_json`):
    the whole text, else each ``` fence's body (```json or plain), each as a whole or from its first ``{``.

    Returns a private sentinel (``_MISSING``) when nothing parses.
    """
    found = find_json(text)
    return _MISSING if found is None else found.value


class JSONSchemaReward(Reward):
    """1.0 when the response is JSON that validates against ``schema``; ``partial_credit`` when it parses but
    does not validate; 0.0 when no JSON is found.

    The JSON may be the whole response, inside a ``` fence (```json or plain), or the first
    JSON object in either (:func:`extract_json`).
    ``schema=None`` only asks for parseable JSON. Validation uses the ``jsonschema``
    package (full JSON Schema, the draft named by ``$schema``, default the latest) when
    it is installed and ``validator="auto"``; otherwise the built-in check the chat model uses
    (:func:`langchain_aisp._json.validate`: ``$ref``, ``anyOf``/``oneOf``/``allOf``, ``type``,
    ``enum``, ``const``, ``required``, ``properties``, ``additionalProperties``, ``items``; other
    keywords are ignored; objects are open unless ``additionalProperties: false``, as in JSON
    Schema). ``validator="jsonschema"`` requires the package, ``"minimal"`` never uses it.
    ``validator_used`` says which one is active.
    """

    def __init__(
        self,
        schema: dict[str, Any] | None = None,
        *,
        partial_credit: float = 0.5,
        validator: Literal["auto", "jsonschema", "minimal"] = "auto",
        name: str = "json_schema",
    ) -> None:
        if not 0.0 <= partial_credit <= 1.0:
            raise ValueError(f"partial_credit must be in [0, 1], got {partial_credit!r}")
        if validator not in ("auto", "jsonschema", "minimal"):
            raise ValueError(f"validator must be 'auto', 'jsonschema' or 'minimal', got {validator!r}")
        if schema is not None and not isinstance(schema, dict):
            raise TypeError(f"schema must be a dict (a JSON Schema) or None, got {type(schema).__name__}")
        self.schema = schema
        self.partial_credit = float(partial_credit)
        self.name = name
        self._validator: Any = None
        self.validator_used: str = "minimal"
        if schema is not None and validator != "minimal":
            try:
                jsonschema = importlib.import_module("jsonschema")
            except ImportError as exc:
                if validator == "jsonschema":
                    raise ImportError(
                        "JSONSchemaReward(validator='jsonschema') needs the optional package 'jsonschema': "
                        f"{INSTALL_HINT} (or pip install jsonschema)"
                    ) from exc
            else:
                cls = jsonschema.validators.validator_for(schema)
                cls.check_schema(schema)  # a bad schema fails here, not on every response
                self._validator = cls(schema)
                self.validator_used = "jsonschema"

    def errors(self, response: str) -> list[str] | None:
        """Validation errors of ``response`` (empty when valid), or None when it holds no JSON."""
        value = extract_json(response)
        if value is _MISSING:
            return None
        if self.schema is None:
            return []
        if self._validator is not None:
            return [error.message for error in self._validator.iter_errors(value)]
        return validate(value, self.schema)

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        check_lengths(conversations, responses, self.name)
        out = []
        for text in responses:
            errors = self.errors(text)
            out.append(0.0 if errors is None else 1.0 if not errors else self.partial_credit)
        return out
