"""Bad input at every boundary: one table, one row per case (issue 6).

Each row names how the engine, the chat model or a reward is called, the exception it must
raise and fragments its message must contain (the bad value and what is allowed). Rows whose
expected exception is None must *work*: unicode, emoji, right-to-left and control characters
in prompts and stop strings, a tokenizer without a pad token, ``temperature=0`` (greedy, the
LangChain convention). Everything runs on the tiny random Llama (max_position_embeddings=512).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage
from pydantic import ValidationError

from langchain_aisp import AISPChatModel
from langchain_aisp.engine.aisp import RewardError, run
from langchain_aisp.engine.config import MAX_SEED, AISPParams, SamplingParams
from langchain_aisp.engine.lm import ModelLoadError, load_causal_lm
from langchain_aisp.rewards import SafeReward

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def length_reward(prompt: str, response: str) -> float:
    return float(len(response))


@dataclass
class Ctx:
    """What a row's call gets: the tiny model and helpers to build chat models on it."""

    lm: Any
    prompts_seen: list[str]

    def model(self, **kwargs: Any) -> AISPChatModel:
        def reward(prompt: str, response: str) -> float:
            self.prompts_seen.append(prompt)
            return float(len(response))

        settings: dict[str, Any] = {
            "model": self.lm,
            "reward": reward,
            "num_samples": 2,
            "num_iterations": 1,
            "max_tokens": 4,
            "seed": 0,
        }
        settings.update(kwargs)
        return AISPChatModel(**settings)

    def invoke(self, messages: Any, **kwargs: Any) -> AIMessage:
        return self.model().invoke(messages, **kwargs)

    def run(self, prompts: list[list[int]], *, seed: Any = 0, **sampling: Any) -> Any:
        sampling.setdefault("max_tokens", 4)
        return run(
            self.lm,
            prompts,
            lambda _i, texts: [float(len(t)) for t in texts],
            AISPParams(method="aisp", num_samples=2, num_iterations=1),
            SamplingParams(**sampling),
            seed=seed,
        )

    def fresh_model(self, *, eos: bool, pad: bool) -> AISPChatModel:
        """A fresh tiny Llama whose tokenizer (and generation config) may lack EOS / pad."""
        from transformers import LlamaForCausalLM

        with torch.random.fork_rng(devices=[]):  # the weights' init must not move the global RNG
            torch.manual_seed(0)
            hf_model = LlamaForCausalLM(self.lm.model.config)
        tokenizer = copy.deepcopy(self.lm.tokenizer)
        if not eos:
            tokenizer.eos_token = None
            hf_model.generation_config.eos_token_id = None
        if not pad:
            tokenizer.pad_token = None
        return AISPChatModel(
            method="aisp",
            model=hf_model,
            tokenizer=tokenizer,
            reward=length_reward,
            num_samples=2,
            num_iterations=1,
            max_tokens=4,
        )


# --- rows that must work ---------------------------------------------------------------------

UNICODE_PROMPT = (
    "Héllo 👋🏽 — שלום עולם, مرحبا \u202eRTL override\u202c \u200fRLM, tab\t bell\x07 nul\x00 esc\x1b[31m 中文"
)
UNICODE_STOPS = ["🙂", "שלום", "\x00", "\u202e", "\n\n"]


def _valid(message: AIMessage) -> AIMessage:
    assert isinstance(message, AIMessage) and isinstance(message.content, str)
    aisp = message.response_metadata["aisp"]
    assert aisp["samples"] == 2 and aisp["finish_reason"] in ("stop", "length")
    return message


def unicode_prompt(ctx: Ctx) -> AIMessage:
    message = _valid(ctx.invoke(UNICODE_PROMPT))
    assert ctx.prompts_seen and all(p == UNICODE_PROMPT for p in ctx.prompts_seen)  # reached the reward intact
    return message


def unicode_stops(ctx: Ctx) -> AIMessage:
    message = _valid(ctx.model(stop=UNICODE_STOPS, max_tokens=12).invoke(UNICODE_PROMPT))
    assert not any(s in message.content for s in UNICODE_STOPS)
    return message


def unicode_stops_per_call(ctx: Ctx) -> AIMessage:
    message = _valid(ctx.invoke("Say 🙂", stop=["🙂", "\u05d0"]))
    assert "🙂" not in message.content
    return message


def lone_string_stop(ctx: Ctx) -> AIMessage:
    message = _valid(ctx.invoke("hi", stop="ab"))  # one stop string "ab", not "a" and "b"
    assert "ab" not in message.content
    return message


def greedy_temperature_zero(ctx: Ctx) -> AIMessage:
    model = ctx.model(temperature=0, method="bon")
    first, second = _valid(model.invoke("hi")), _valid(model.invoke("hi", seed=123))
    assert first.content == second.content  # greedy: the seed does not matter without AISP noise
    return first


def no_pad_token(ctx: Ctx) -> AIMessage:
    model = ctx.fresh_model(eos=True, pad=False)
    message = _valid(model.invoke("hi"))
    lm = model._get_lm()
    assert lm.pad_token_id == lm.eos_token_ids[0]  # EOS doubles as pad
    return message


def no_eos_token(ctx: Ctx) -> AIMessage:
    return ctx.fresh_model(eos=False, pad=True).invoke("hi")


def engine_seed(ctx: Ctx, seed: Any) -> Any:
    return ctx.run([[1, 2, 3]], seed=seed)


NAN, INF = float("nan"), float("inf")
SEED_RANGE = f"seed must be an integer in [0, {MAX_SEED}] or None"
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}

Call = Callable[[Ctx], Any]
ROWS: list[tuple[str, Call, type[BaseException] | None, tuple[str, ...]]] = [
    # messages
    ("empty_message_list", lambda c: c.invoke([]), ValueError, ("empty conversation (0 messages)",)),
    ("empty_string_content", lambda c: c.invoke([HumanMessage("")]), ValueError, ("has empty content ''",)),
    ("whitespace_content", lambda c: c.invoke([HumanMessage(" \n")]), ValueError, ("has empty content ' \\n'",)),
    ("none_content_dict", lambda c: c.invoke([{"role": "user", "content": None}]), ValueError, ("empty content",)),
    (
        "none_content_object",
        lambda c: c.invoke([HumanMessage.model_construct(content=None)]),
        ValueError,
        ("content must be a string or a list of content blocks, got None (NoneType)",),
    ),
    (
        "image_content",
        lambda c: c.invoke([HumanMessage(content=[{"type": "text", "text": "What is this?"}, IMAGE])]),
        ValueError,
        ("'image_url' content block", "text-only model and cannot read images, audio or files"),
    ),
    (
        "audio_content",
        lambda c: c.invoke([HumanMessage(content=[AUDIO])]),
        ValueError,
        ("audio' content block", "cannot read images, audio"),
    ),
    (
        "unknown_content_block",
        lambda c: c.invoke([HumanMessage(content=[{"type": "hologram"}])]),
        ValueError,
        ("unsupported content block type 'hologram'",),
    ),
    (
        "unknown_role_chat_message",
        lambda c: c.invoke([ChatMessage(role="wizard", content="hi")]),
        ValueError,
        ("unknown role 'wizard'", "allowed roles: ['ai', 'assistant', 'developer', 'human', 'system', 'tool'"),
    ),
    (
        "unknown_role_dict",
        lambda c: c.invoke([{"role": "wizard", "content": "hi"}]),
        ValueError,
        ("'wizard'", "'human', 'user', 'ai', 'assistant'"),
    ),
    (
        "conversation_longer_than_context",
        lambda c: c.invoke("word " * 600),
        ValueError,
        ("the conversation is too long:", "context window of tiny-llama is 512 tokens", "shorten it by at least"),
    ),
    (
        "engine_prompt_longer_than_context",
        lambda c: c.run([[42] * 600]),
        ValueError,
        ("prompt 0 is too long: 600 tokens", "context window of tiny-llama is 512 tokens", "by at least 89 tokens"),
    ),
    ("engine_empty_prompt", lambda c: c.run([[1, 2], []]), ValueError, ("prompt 1 is empty (0 tokens)",)),
    # max_tokens
    ("max_tokens_zero", lambda c: c.invoke("hi", max_tokens=0), ValueError, ("max_tokens must be", "got 0")),
    (
        "max_tokens_negative",
        lambda c: c.model(max_tokens=-5),
        ValidationError,
        ("max_tokens must be an integer in [1, 1048576], got -5",),
    ),
    (
        "max_tokens_above_context",
        lambda c: c.invoke("hi", max_tokens=1000),
        ValueError,
        ("max_tokens is 1000", "(512 tokens)", "lower max_tokens to at most"),
    ),
    # budgets: a documented cap (config.MAX_SAMPLES / MAX_ITERATIONS) refuses before anything is allocated
    ("num_samples_zero", lambda c: c.model(num_samples=0), ValidationError, ("num_samples must be", "got 0")),
    (
        "num_samples_absurd",
        lambda c: c.model(num_samples=10**9),
        ValidationError,
        ("num_samples must be an integer in [1, 4096], got 1000000000",),
    ),
    (
        "num_iterations_zero",
        lambda c: c.invoke("hi", num_iterations=0),
        ValueError,
        ("num_iterations must be an integer in [1, 1024], got 0",),
    ),
    (
        "num_iterations_absurd",
        lambda c: c.model(num_iterations=10**6),
        ValidationError,
        ("num_iterations must be an integer in [1, 1024], got 1000000",),
    ),
    ("num_samples_float", lambda c: c.invoke("hi", num_samples=2.5), ValueError, ("num_samples", "got 2.5")),
    # sigma, lambda_, temperature
    ("sigma_zero", lambda c: c.model(sigma=0), ValidationError, ("sigma must be a finite number > 0, got 0",)),
    ("sigma_negative", lambda c: c.model(sigma=-0.1), ValidationError, ("sigma must be a finite number > 0", "-0.1")),
    ("sigma_nan", lambda c: c.invoke("hi", sigma=NAN), ValueError, ("sigma must be a finite number > 0, got nan",)),
    ("sigma_inf", lambda c: c.model(sigma=INF), ValidationError, ("sigma must be a finite number > 0, got inf",)),
    ("lambda_zero", lambda c: c.model(lambda_=0.0), ValidationError, ("lambda_ must be a finite number > 0, got 0",)),
    ("lambda_negative", lambda c: c.invoke("hi", lambda_=-2.0), ValueError, ("lambda_ must be", "got -2.0")),
    ("lambda_nan", lambda c: c.model(lambda_=NAN), ValidationError, ("lambda_ must be a finite number > 0, got nan",)),
    ("lambda_inf", lambda c: c.model(lambda_=INF), ValidationError, ("lambda_ must be a finite number > 0, got inf",)),
    (
        "temperature_negative",
        lambda c: c.model(temperature=-0.5),
        ValidationError,
        ("temperature must be a finite number >= 0 (0 means greedy), got -0.5",),
    ),
    (
        "temperature_nan",
        lambda c: c.invoke("hi", temperature=NAN),
        ValueError,
        ("temperature must be a finite number >= 0 (0 means greedy), got nan",),
    ),
    (
        "temperature_inf",
        lambda c: c.model(temperature=INF),
        ValidationError,
        ("temperature must be a finite number >= 0 (0 means greedy), got inf",),
    ),
    (
        "engine_temperature_zero",
        lambda c: c.run([[1, 2]], temperature=0.0),
        ValueError,
        ("temperature must be a finite number > 0, got 0.0",),
    ),
    ("temperature_zero_is_greedy", greedy_temperature_zero, None, ()),
    # tau, top_p, top_k, other ranges
    ("tau_zero", lambda c: c.model(tau=0), ValidationError, ("tau must be an integer in [1, 65536], got 0",)),
    ("tau_negative", lambda c: c.invoke("hi", tau=-3), ValueError, ("tau must be an integer in [1, 65536], got -3",)),
    ("top_p_zero", lambda c: c.model(top_p=0.0), ValidationError, ("top_p must be a number in (0.0, 1.0], got 0.0",)),
    ("top_p_above_one", lambda c: c.invoke("hi", top_p=1.5), ValueError, ("top_p must be a number in (0.0, 1.0]",)),
    ("top_p_nan", lambda c: c.model(top_p=NAN), ValidationError, ("top_p must be a number in (0.0, 1.0], got nan",)),
    ("top_k_negative", lambda c: c.model(top_k=-1), ValidationError, ("top_k must be an integer in [0,", "got -1")),
    ("ess_target_zero", lambda c: c.model(ess_target=0.0), ValidationError, ("ess_target must be a number in (0.0",)),
    ("alpha_above_one", lambda c: c.model(alpha=2.0), ValidationError, ("alpha must be a number in [0.0, 1.0]",)),
    ("max_batch_rows_zero", lambda c: c.model(max_batch_rows=0), ValidationError, ("max_batch_rows must be", "got 0")),
    (
        "format_weight_nan",
        lambda c: c.model(format_weight=NAN),
        ValidationError,
        ("format_weight must be a finite number >= 0",),
    ),
    # method
    (
        "unknown_method",
        lambda c: c.model(method="magic"),
        ValidationError,
        ("'aisp', 'bon' or 'sample'", "magic"),
    ),
    (
        "unknown_method_per_call",
        lambda c: c.invoke("hi", method="magic"),
        ValueError,
        ("method must be one of ['aisp', 'bon', 'sample'], got 'magic'",),
    ),
    (
        "unknown_call_argument",
        lambda c: c.invoke("hi", logprobs=True),
        TypeError,
        ("unsupported keyword argument(s) ['logprobs']",),
    ),
    # rewards
    (
        "reward_not_callable",
        lambda c: c.model(reward=42),
        ValidationError,
        ("reward must be a Reward instance, a function fn(prompt: str, response: str) -> float", "got 42 (int)"),
    ),
    ("reward_none", lambda c: c.model(reward=None), ValidationError, ("got None (NoneType)",)),
    ("reward_a_class", lambda c: c.model(reward=SafeReward), ValidationError, ("reward must be a Reward instance",)),
    (
        "reward_wrong_signature",
        lambda c: c.model(reward=lambda text: 1.0),
        ValidationError,
        ("must accept (prompt, response)",),
    ),
    (
        "reward_returns_text",
        lambda c: c.model(reward=lambda p, r: "high").invoke("hi"),
        RewardError,
        ("reward <lambda> returned 'high' (str); expected a float (prompt 0, iteration 0, response 0: ",),
    ),
    (
        "safe_reward_bad_on_invalid",
        lambda c: SafeReward(length_reward, on_invalid="ignore"),  # type: ignore[arg-type]
        ValueError,
        ("on_invalid must be 'raise' or 'worst', got 'ignore'",),
    ),
    # models and tokenizers
    (
        "model_path_missing",
        lambda c: AISPChatModel(model="/no/such/model", reward=length_reward),
        ValidationError,
        ("model path '/no/such/model' does not exist",),
    ),
    (
        "model_relative_path_missing",
        lambda c: AISPChatModel(model="./missing-model-dir", reward=length_reward),
        ValidationError,
        ("model path './missing-model-dir' does not exist",),
    ),
    (
        "engine_model_path_missing",
        lambda c: load_causal_lm("~/no/such/model"),
        ModelLoadError,
        ("model path '~/no/such/model' does not exist",),
    ),
    (
        "model_not_a_string",
        lambda c: AISPChatModel(model=3.5, reward=length_reward),
        ValidationError,
        ("model must be None, a hub id or a local path, a langchain_aisp CausalLM", "got 3.5 (float)"),
    ),
    ("tokenizer_without_eos", no_eos_token, ModelLoadError, ("the tokenizer has no EOS token",)),
    ("tokenizer_without_pad_uses_eos", no_pad_token, None, ()),
    # stop strings
    (
        "empty_stop_string",
        lambda c: c.model(stop=[""]),
        ValidationError,
        ("stop strings must be non-empty strings, got ['']",),
    ),
    (
        "empty_stop_string_per_call",
        lambda c: c.invoke("hi", stop=["User:", ""]),
        ValueError,
        ("stop strings must be non-empty strings, got ['User:', '']", "position 1"),
    ),
    (
        "non_string_stop",
        lambda c: c.invoke("hi", stop=["ok", 3]),
        ValueError,
        ("stop must be a sequence of non-empty strings, got ('ok', 3)",),
    ),
    ("lone_string_stop", lone_string_stop, None, ()),
    # unicode, emoji, right-to-left and control characters must work
    ("unicode_prompt", unicode_prompt, None, ()),
    ("unicode_stop_strings", unicode_stops, None, ()),
    ("unicode_stop_strings_per_call", unicode_stops_per_call, None, ()),
    # seeds
    ("seed_float", lambda c: c.model(seed=1.5), ValidationError, (SEED_RANGE, "got 1.5 (float)")),
    ("seed_integral_float", lambda c: c.model(seed=7.0), ValidationError, (SEED_RANGE, "got 7.0 (float)")),
    ("seed_string", lambda c: c.model(seed="7"), ValidationError, (SEED_RANGE, "got '7' (str)")),
    ("seed_bool", lambda c: c.model(seed=True), ValidationError, (SEED_RANGE, "got True (bool)")),
    (
        "seed_negative",
        lambda c: c.model(seed=-1),
        ValidationError,
        (
            SEED_RANGE,
            "got -1",
        ),
    ),
    ("seed_too_large", lambda c: c.model(seed=2**64), ValidationError, (SEED_RANGE, f"got {2**64}")),
    ("seed_string_per_call", lambda c: c.invoke("hi", seed="7"), ValueError, (SEED_RANGE, "got '7' (str)")),
    ("engine_seed_float", lambda c: engine_seed(c, 0.5), ValueError, (SEED_RANGE, "got 0.5 (float)")),
]


def test_rows_are_unique_and_cover_the_issue():
    ids = [row[0] for row in ROWS]
    assert len(ids) == len(set(ids))
    assert len(ROWS) >= 60


@pytest.mark.parametrize(("case", "call", "expected", "fragments"), ROWS, ids=[row[0] for row in ROWS])
def test_bad_input(tiny_lm, case, call, expected, fragments):
    ctx = Ctx(lm=tiny_lm, prompts_seen=[])
    if expected is None:
        call(ctx)  # must work; the row's function asserts a valid answer
        return
    with pytest.raises(expected) as info:
        call(ctx)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{case}: {fragment!r} not in {message!r}"
