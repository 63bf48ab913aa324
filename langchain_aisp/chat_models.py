"""``AISPChatModel``: a LangChain chat model over a local Hugging Face LLM, aligned to a reward at test time.

The class translates LangChain messages and settings into token ids and engine
parameters, calls :func:`langchain_aisp.engine.aisp.run` and turns its :class:`PromptResult`
into an ``AIMessage``. No part of the algorithm lives here.

Module-level state: ``_LM_CACHE`` (guarded by ``_LM_CACHE_LOCK``) shares a loaded model
between instances with the same ``(model, device, dtype, trust_remote_code)``, so
``AISPChatModel(reward=a)`` and ``AISPChatModel(reward=b)`` load the default model once
per process. ``_BATCH_PLAN`` is a context variable (not shared state): it carries the
prompts of one ``batch`` call to the per-input ``_generate`` calls so that they run as
one Batched AISP engine call. Use :func:`clear_model_cache` to free the cache.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.callbacks.manager import ahandle_event, handle_event
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolCallChunk, UsageMetadata
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.runnables.config import ensure_config, run_in_executor
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator
from tenacity import Retrying, stop_after_attempt, stop_before_delay, wait_exponential

from langchain_aisp import _chat_format as fmtlib
from langchain_aisp import _grammar_llguidance as grammarlib
from langchain_aisp._text import stream_pieces as _split_chunks
from langchain_aisp.engine.aisp import (
    IterationEvent,
    PromptResult,
    RewardError,
    RunTimeoutError,
    context_window_error,
    run,
)
from langchain_aisp.engine.config import (
    DEFAULT_ALPHA,
    DEFAULT_CONTROL,
    DEFAULT_DECODING,
    DEFAULT_ELITE_FRACTION,
    DEFAULT_ESS_TARGET,
    DEFAULT_LAMBDA,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_TOKENS,
    DEFAULT_METHOD,
    DEFAULT_NUM_ITERATIONS,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_SIGMA,
    DEFAULT_TAU,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOKEN_STEP,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    AISPParams,
    Control,
    Decoding,
    Method,
    SamplingParams,
    check_seed,
)
from langchain_aisp.engine.memory import ControlMemory, run_with_memory
from langchain_aisp.errors import RunCancelledError
from langchain_aisp.rewards import Reward, as_reward
from langchain_aisp.rewards import import_reward as _import_path

PROGRESS_EVENT = "aisp_progress"
"""Name of the custom callback event sent after every AISP/BoN iteration."""

_UNSERIALISABLE = "<not serialisable> "
"""Prefix of the placeholder ``to_json`` writes for a reward or model that cannot be re-created."""

_LM_CACHE: dict[tuple[Any, ...], Any] = {}
_LM_CACHE_LOCK = threading.Lock()

_PER_CALL_FIELDS = (
    "method",
    "num_samples",
    "num_iterations",
    "sigma",
    "lambda_",
    "ess_target",
    "alpha",
    "tau",
    "control",
    "elite_fraction",
    "token_step",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "format_weight",
)
_BINDING_KWARGS = (
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "strict",
    "model",
    "stream",
    "timeout",
)
RETRY_WAIT_MAX = 8.0
"""Longest wait (seconds) between two attempts of a failing reward call (exponential backoff from 0.5 s)."""


def _check_timeout(value: Any) -> float | None:
    """A call's timeout: a finite number of seconds > 0, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"timeout must be a finite number of seconds > 0 or None, got {value!r}")
    return float(value)


def clear_model_cache() -> None:
    """Drop every model shared through the process-wide cache (instances keep theirs)."""
    with _LM_CACHE_LOCK:
        _LM_CACHE.clear()


def _cached_lm(model: str | None, device: str, dtype: str, trust_remote_code: bool) -> Any:
    from langchain_aisp.engine.lm import load_causal_lm

    key = (model, device, dtype, trust_remote_code)
    with _LM_CACHE_LOCK:
        if key not in _LM_CACHE:
            _LM_CACHE[key] = load_causal_lm(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        return _LM_CACHE[key]


# --- rewards as import paths (serialisation) -----------------------------------------


def _reward_path(reward: Any) -> tuple[str | None, str]:
    """("module:qualname", "") when ``reward`` can be re-imported by path, else (None, why not)."""
    if isinstance(reward, str):
        return reward, ""
    target = reward
    fn = getattr(reward, "fn", None)
    if isinstance(reward, _function_reward_type()) and fn is not None:
        target = fn
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if module is None or qualname is None or "<" in qualname:
        return None, (
            f"reward {reward!r} is a lambda, a closure or an instance, which cannot be re-imported; "
            "pass a module-level function, a Reward subclass or its 'module:qualname' path"
        )
    try:
        found = _import_path(f"{module}:{qualname}")
    except Exception as exc:
        return None, f"reward path {module}:{qualname} does not import: {exc}"
    if found is not target and not isinstance(target, type):
        return None, f"{module}:{qualname} does not resolve to the reward {reward!r}"
    return f"{module}:{qualname}", ""


def _function_reward_type() -> type:
    from langchain_aisp.rewards import FunctionReward

    return FunctionReward


# --- per-call settings and jobs -------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    params: AISPParams
    sampling: SamplingParams
    seed: int | None
    format_weight: float
    model: str | None

    def key(self) -> tuple[Any, ...]:
        return (self.params, self.sampling, self.seed, self.format_weight, self.model)

    def batch_key(self) -> tuple[Any, ...]:
        """What calls must share to run as one engine run (each prompt keeps its own seed)."""
        return (self.params, self.sampling, self.format_weight, self.model)


@dataclass(frozen=True)
class _Variant:
    """One engine prompt of a job: its token ids, rendered prompt (with prefill) and grammar."""

    token_ids: list[int]
    prompt: fmtlib.RenderedPrompt
    constraint: Any


@dataclass
class _Job:
    messages: list[BaseMessage]
    token_ids: list[int]
    prompt: fmtlib.RenderedPrompt
    fmt: fmtlib.OutputFormat
    settings: _Settings
    lm: Any
    constraint: Any = None
    """The compiled grammar of the reply (``_grammar_llguidance.LLGuidanceConstraint``), or None for free text."""
    forced: _Variant | None = None
    """Under ``tool_choice="auto"``: the forced-call prompt decoded beside the prose one (half the samples each)."""
    auto_choice: str | None = None
    """Under ``tool_choice="auto"``, set by the run: "call" or "prose" (what the choice rule took)."""
    timeout: float | None = None
    """Wall-clock limit of this call in seconds (the call's ``timeout`` argument, else the model's)."""
    deadline: float | None = None
    """``time.monotonic()`` deadline fixed by ``prepare`` (its clock starts there); None: the run's start + timeout."""

    def key(self) -> tuple[Any, ...]:
        return (tuple(self.token_ids), self.fmt.key(), self.settings.key(), id(self.lm), self.timeout)

    def variants(self) -> list[_Variant]:
        free = _Variant(self.token_ids, self.prompt, self.constraint)
        return [free] if self.forced is None else [free, self.forced]


ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class _BatchPlan:
    """The prompts of one ``batch`` call: the first input to reach the engine runs them all."""

    owner: int
    jobs: list[_Job]
    lock: threading.Lock = field(default_factory=threading.Lock)
    claimed: list[bool] = field(default_factory=list)
    progress: dict[int, ProgressFn] = field(default_factory=dict)
    events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    delivered: dict[int, int] = field(default_factory=dict)
    outcomes: list[PromptResult | BaseException] | None = None
    claim_lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self, key: tuple[Any, ...]) -> int | None:
        with self.claim_lock:
            if not self.claimed:
                self.claimed = [False] * len(self.jobs)
            for i, job in enumerate(self.jobs):
                if not self.claimed[i] and job.key() == key:
                    self.claimed[i] = True
                    return i
        return None

    def deliver(self, index: int) -> None:
        fn = self.progress.get(index)
        pending = self.events.get(index, [])
        start = self.delivered.get(index, 0)
        if fn is not None:
            for data in pending[start:]:
                fn(data)
            self.delivered[index] = len(pending)


_BATCH_PLAN: ContextVar[_BatchPlan | None] = ContextVar("langchain_aisp_batch_plan", default=None)


@dataclass(frozen=True)
class _RunRef:
    """The LangChain run of the current public call: its id (fixed up front) and config."""

    run_id: uuid.UUID
    config: RunnableConfig


_CURRENT_RUN: ContextVar[_RunRef | None] = ContextVar("langchain_aisp_current_run", default=None)
"""Set by ``invoke``/``ainvoke``/``stream``/``astream`` only while LangChain's code runs for them:
langchain-core calls ``_stream`` without a run manager (``stream``, ``astream``, ``streaming=True``,
``astream_events``), so progress events find their run here."""


def _new_run_id() -> uuid.UUID:
    try:
        from langchain_core.utils.uuid import uuid7  # the run ids LangChain itself makes (time-ordered)
    except ImportError:  # langchain-core < 1.x
        return uuid.uuid4()
    return uuid7()


def _with_run_id(config: RunnableConfig | None) -> tuple[RunnableConfig, _RunRef]:
    """A copy of ``config`` with ``run_id`` set (the caller's, else a fresh one): that id is the chat model run's."""
    config = ensure_config(config)
    run_id = config.get("run_id") or _new_run_id()
    config["run_id"] = run_id
    return config, _RunRef(run_id, dict(config))  # type: ignore[arg-type]


@dataclass(frozen=True)
class PreparedCall:
    """One call validated and rendered by :meth:`AISPChatModel.prepare`, ready for :meth:`~AISPChatModel.run_prepared`.

    Built for callers that batch calls themselves (a server collecting concurrent requests):
    calls of one model with equal ``batch_key`` share one Batched AISP engine run.
    """

    _job: _Job = field(repr=False)

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Calls with equal keys (on the same model) can run together: same settings and loaded model."""
        return (self._job.settings.batch_key(), id(self._job.lm), self._job.forced is None)

    @property
    def params(self) -> AISPParams:
        """The call's resolved alignment settings (``num_samples``, ``num_iterations``, ...)."""
        return self._job.settings.params

    @property
    def sampling(self) -> SamplingParams:
        """The call's resolved sampling settings (``max_tokens``, ``stop``, ...)."""
        return self._job.settings.sampling

    @property
    def prompt_tokens(self) -> int:
        """Length of the rendered prompt in tokens."""
        return len(self._job.token_ids)


class AISPChatModel(BaseChatModel):
    """Chat model over a local Hugging Face LLM whose answers are aligned to a reward (AISP or Best-of-N).

    Every call samples ``num_samples`` responses per iteration for ``num_iterations``
    iterations, scores them with ``reward`` and returns the best one. ``method="aisp"``
    adapts a control on the model's pre-logits between iterations (adaptive importance
    sampling); ``"bon"`` is plain Best-of-N with the same budget; ``"sample"`` draws one
    response (no reward).

    Setup:
        ``pip install langchain-aisp`` ships a small default model (SmolLM2-135M-Instruct),
        used when ``model=None``; nothing is downloaded for it.

    Key init args — alignment:
        reward: ``fn(prompt, response) -> float``, a ``Reward`` or a ``"module:qualname"`` path.
        method: ``"aisp"`` | ``"bon"`` | ``"sample"``.
        num_samples, num_iterations, sigma, lambda_, ess_target, alpha, tau: see the fields.
        format_weight: weight of the tool-call / JSON validity term added to the reward.

    Key init args — model and sampling:
        model: hub id or local path (None: the embedded default); or ``llm=`` a loaded
        ``CausalLM``, or ``hf_model=`` + ``tokenizer=`` loaded transformers objects.
        max_tokens, temperature (0 = greedy), top_p, top_k, seed, stop, max_batch_size,
        decoding (static KV cache + CUDA graphs on GPU), device, dtype, trust_remote_code.

    Instantiate:
        .. code-block:: python

            from langchain_aisp import AISPChatModel

            def brevity(prompt: str, response: str) -> float:
                return -abs(len(response.split()) - 12)

            llm = AISPChatModel(reward=brevity, num_samples=2, num_iterations=1, max_tokens=16, seed=0)

    Invoke:
        .. code-block:: python

            msg = llm.invoke("Name a fruit.")
            msg.content                                  # the selected answer
            msg.response_metadata["aisp"]["reward"]      # its reward (float)
            msg.response_metadata["aisp"]["rewards"]     # rewards per iteration
            msg.usage_metadata                           # input / output tokens of the answer

    Stream (the answer is chosen first, then streamed; the last chunk carries the metadata):
        .. code-block:: python

            for chunk in llm.stream("Name a fruit."):
                print(chunk.content, end="")

    Batch (one Batched AISP engine run over all prompts):
        .. code-block:: python

            llm.batch(["Name a fruit.", "Name a color."])

    Async:
        .. code-block:: python

            await llm.ainvoke("Name a fruit.")   # also astream / abatch; the event loop is not blocked

    Tool calling:
        .. code-block:: python

            from langchain_core.tools import tool

            @tool
            def add(a: int, b: int) -> int:
                '''Add two integers.'''
                return a + b

            msg = llm.bind_tools([add], tool_choice="add").invoke("What is 2 + 3?")
            msg.tool_calls or msg.invalid_tool_calls

    Structured output:
        .. code-block:: python

            from pydantic import BaseModel

            class City(BaseModel):
                name: str

            out = llm.with_structured_output(City, include_raw=True).invoke("Name a city.")
            out["parsed"] or out["parsing_error"]

    Progress:
        After every iteration each input's run receives a custom callback event
        ``"aisp_progress"`` (``BaseCallbackHandler.on_custom_event``) with ``iteration``,
        ``num_iterations``, ``rewards`` (that iteration's) and ``best_reward``.

    Control memory (learn across calls; off by default):
        .. code-block:: python

            from langchain_aisp import ControlMemory

            memory = ControlMemory()          # or ControlMemory.load("profile.safetensors")
            llm = AISPChatModel(reward=upbeat, control_memory=memory, num_iterations=1)
            llm.batch(prompts)                # warm-started from what earlier calls taught; one update per call
            msg.response_metadata["aisp"]["warm_start"], msg.response_metadata["aisp"]["warm_start_norm"]
            memory.save("profile.safetensors")

    Errors:
        A failing reward raises :class:`langchain_aisp.RewardError`; ``err.partial[0]`` is
        the best ``PromptResult`` found before the failure for that input (or None).
        Cancelling an async call stops its run at the next iteration; see ``docs/reliability.md``.

    Thread safety:
        One instance may serve many threads and asyncio tasks at once: the loaded model is
        only read, every run keeps its own random generators and state.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    reward: Any
    """The reward: ``fn(prompt, response) -> float``, a ``@batched`` function, a
    :class:`~langchain_aisp.rewards.Reward`, or the ``"module:qualname"`` path of one."""

    model: str | None = None
    """Hugging Face hub id or local folder; None uses the embedded default model."""

    llm: Any = Field(default=None, exclude=True)
    """An already loaded :class:`langchain_aisp.engine.lm.CausalLM` (then ``model`` is only a label)."""

    hf_model: Any = Field(default=None, exclude=True)
    """An already loaded transformers ``PreTrainedModel``; requires ``tokenizer``."""

    tokenizer: Any = Field(default=None, exclude=True)
    """The tokenizer of ``hf_model``."""

    method: Method = DEFAULT_METHOD
    """"aisp" (adaptive importance sampling), "bon" (Best-of-N) or "sample" (one plain sample)."""

    num_samples: int = DEFAULT_NUM_SAMPLES
    """n: responses per iteration, in [1, 4096]."""

    num_iterations: int = DEFAULT_NUM_ITERATIONS
    """k: iterations, in [1, 1024] (Best-of-N draws num_samples * num_iterations responses)."""

    sigma: float = DEFAULT_SIGMA
    """Control noise scale relative to the RMS of the pre-logits, > 0."""

    lambda_: float | None = DEFAULT_LAMBDA
    """Reward temperature, > 0; None picks it per iteration to reach ``ess_target``."""

    ess_target: float = DEFAULT_ESS_TARGET
    """Target effective sample size as a fraction of n, in (0, 1]."""

    alpha: float = DEFAULT_ALPHA
    """MPPI control-cost coefficient, in [0, 1]."""

    tau: int = DEFAULT_TAU
    """Number of leading generated tokens that are steered, in [1, 65536]."""

    control: Control = DEFAULT_CONTROL
    """``"position"``: one control vector per steered position (the paper's U); ``"shared"``: one
    vector for all of them."""

    elite_fraction: float = DEFAULT_ELITE_FRACTION
    """Share of the samples of iterations 2..k that reuse the best response's token-sampling noise, in [0, 1]."""

    token_step: float = DEFAULT_TOKEN_STEP
    """Extra drift of U along the reward-weighted embedding of sampled tokens, in units of sigma, >= 0."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    """Maximum new tokens per response, >= 1."""

    temperature: float = DEFAULT_TEMPERATURE
    """Sampling temperature, >= 0; 0 means greedy decoding (AISP's noise still makes samples differ)."""

    top_p: float = DEFAULT_TOP_P
    """Nucleus sampling mass, in (0, 1]."""

    top_k: int = DEFAULT_TOP_K
    """Top-k sampling, >= 0 (0 disables it)."""

    seed: int | None = None
    """Seed of the sampling noise; the same seed gives the same answer (per prompt, even in a batch)."""

    stop: list[str] | None = None
    """Stop strings: a response ends where one completes and is cut before it."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    """Rows decoded together; a batch of prompts shares them (Batched AISP)."""

    decoding: Decoding = DEFAULT_DECODING
    """Decode path, chosen once per run: ``"static"`` (preallocated KV cache; on CUDA each token is
    one replay of a captured CUDA graph, captured once per row bucket and reused), ``"compiled"``
    (the same with the step compiled by ``torch.compile`` first: faster tokens, a first call of tens
    of seconds per row bucket), ``"eager"`` (the plain KV-cache loop) or ``"auto"`` (static on CUDA
    for tested architectures, eager elsewhere)."""

    device: str = "auto"
    """"auto" (CUDA if available), "cpu", "cuda" or "cuda:N"."""

    dtype: str = "auto"
    """"auto", "float32", "float16" or "bfloat16"."""

    trust_remote_code: bool = False
    """Passed to transformers when loading ``model``."""

    format_weight: float = 10.0
    """Weight of the format term added to the reward when tools or a JSON schema are bound: a
    valid call / schema-valid JSON gets ``+format_weight``, a malformed or missing forced call
    ``-format_weight`` (see ``_chat_format.format_validity``). Large relative to rewards in
    [0, 1] so that well-formed outputs win first; 0 disables it."""

    streaming: bool = False
    """When True, ``invoke`` goes through ``_stream`` (LangChain's usual meaning)."""

    control_memory: ControlMemory | None = Field(default=None, exclude=True)
    """A :class:`~langchain_aisp.ControlMemory`: AISP calls start from the mean it learned on earlier calls
    (for this model, reward and control shape) and every call (a ``batch`` counts once) updates it. None
    (default): every call starts from U = 0. Calls with tools or a JSON schema bound neither use nor update
    it (their reward includes the format term). ``response_metadata["aisp"]["warm_start"]`` says whether a
    call was warm-started, ``warm_start_norm`` how strongly."""

    timeout: float | None = None
    """Wall-clock limit of one call, in seconds (None: none); also a per-call argument
    (``invoke(..., timeout=5)``). AISP is anytime: at the deadline the run stops after the current
    decoding step and the call returns the best answer scored so far, with
    ``response_metadata["aisp"]["timed_out"] = True``; a ``TimeoutError`` is raised only when not one
    sample had been scored (the first iteration did not finish in time). Calls that share a Batched
    AISP run (``batch``, ``run_prepared``) each keep their own deadline: one out of time stops before
    its next iteration while the others go on."""

    max_retries: int = 0
    """How many times a failing reward call is retried (exponential backoff from 0.5 s, at most
    ``RETRY_WAIT_MAX`` s between attempts, never past ``timeout``) before the run fails with
    ``RewardError``. 0: no retry (a local reward that raises once will raise again)."""

    _reward: Reward = PrivateAttr()
    _lm: Any = PrivateAttr(default=None)
    _lm_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # --- validation --------------------------------------------------------------------

    @field_validator("reward", mode="before")
    @classmethod
    def _import_reward(cls, value: Any) -> Any:
        if isinstance(value, str) and value.startswith(_UNSERIALISABLE):
            raise ValueError(f"cannot load this AISPChatModel: {value[len(_UNSERIALISABLE) :]}")
        if isinstance(value, str):
            try:
                return _import_path(value)
            except (ImportError, AttributeError) as exc:
                raise ValueError(f"reward path {value!r} does not import: {exc}") from exc
        return value

    @field_validator("llm", "control_memory", mode="before")
    @classmethod
    def _no_marker(cls, value: Any) -> Any:
        if isinstance(value, str) and value.startswith(_UNSERIALISABLE):
            raise ValueError(f"cannot load this AISPChatModel: {value[len(_UNSERIALISABLE) :]}")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("seed", mode="before")
    @classmethod
    def _strict_seed(cls, value: Any) -> Any:
        return check_seed(value)  # no lax coercion: "7" and 7.0 are not seeds

    @field_validator("model", mode="before")
    @classmethod
    def _existing_model(cls, value: Any) -> Any:
        if value is None:
            return value
        from langchain_aisp.engine.lm import resolve_model_source
        from langchain_aisp.errors import ModelLoadError

        try:
            resolve_model_source(value)  # a local path must exist now; a hub id is only checked when loaded
        except ModelLoadError as exc:
            raise ValueError(str(exc)) from exc
        return os.fspath(value)

    @model_validator(mode="after")
    def _check(self) -> AISPChatModel:
        try:
            reward = as_reward(self.reward)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc
        self._reward = reward
        self._settings({})  # AISPParams / SamplingParams raise ValueError naming the field and range
        if (self.hf_model is None) != (self.tokenizer is None):
            raise ValueError("hf_model and tokenizer must be passed together")
        if self.llm is not None and self.hf_model is not None:
            raise ValueError("pass either llm or hf_model + tokenizer, not both")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, got {self.max_batch_size}")
        if not (isinstance(self.format_weight, (int, float)) and math.isfinite(self.format_weight)):
            raise ValueError(f"format_weight must be a finite number >= 0, got {self.format_weight!r}")
        if self.format_weight < 0:
            raise ValueError(f"format_weight must be a finite number >= 0, got {self.format_weight}")
        _check_timeout(self.timeout)
        if isinstance(self.max_retries, bool) or not 0 <= self.max_retries <= 100:
            raise ValueError(f"max_retries must be an integer in [0, 100], got {self.max_retries!r}")
        return self

    def _settings(self, overrides: dict[str, Any]) -> _Settings:
        values = {name: overrides.get(name, getattr(self, name)) for name in _PER_CALL_FIELDS}
        temperature = values["temperature"]
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature)
            or temperature < 0
        ):
            raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
        greedy = temperature == 0
        params = AISPParams(
            method=values["method"],
            num_samples=values["num_samples"],
            num_iterations=values["num_iterations"],
            sigma=values["sigma"],
            lambda_=values["lambda_"],
            ess_target=values["ess_target"],
            alpha=values["alpha"],
            tau=values["tau"],
            control=values["control"],
            elite_fraction=values["elite_fraction"],
            token_step=values["token_step"],
        )
        seed = check_seed(values["seed"])
        sampling = SamplingParams(
            max_tokens=values["max_tokens"],
            temperature=1.0 if greedy else float(temperature),
            top_p=values["top_p"],
            top_k=1 if greedy else values["top_k"],
            stop=tuple(overrides["stop"] if overrides.get("stop") is not None else (self.stop or ())),
        )
        return _Settings(params, sampling, seed, float(values["format_weight"]), overrides.get("model", self.model))

    # --- LangChain identity ------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "aisp-chat"

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_aisp", "chat_models"]

    @property
    def reward_name(self) -> str:
        path, _ = _reward_path(self.reward)
        return path or str(getattr(self._reward, "name", None) or type(self._reward).__name__)

    @property
    def model_name(self) -> str:
        """The model's display name (hub id, path, or the default model's name)."""
        if self.model is not None:
            return self.model
        if self.llm is not None:
            return str(self.llm.name)
        if self.hf_model is not None:
            return str(getattr(self.hf_model.config, "_name_or_path", "") or type(self.hf_model).__name__)
        from langchain_aisp.engine.default_model import DEFAULT_MODEL_NAME

        return DEFAULT_MODEL_NAME

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "reward": self.reward_name,
            "method": self.method,
            "num_samples": self.num_samples,
            "num_iterations": self.num_iterations,
            "sigma": self.sigma,
            "lambda_": self.lambda_,
            "ess_target": self.ess_target,
            "alpha": self.alpha,
            "tau": self.tau,
            "control": self.control,
            "elite_fraction": self.elite_fraction,
            "token_step": self.token_step,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": self.stop,
            "format_weight": self.format_weight,
            "control_memory": None
            if self.control_memory is None
            else f"{self.control_memory.signal}, strength {self.control_memory.strength}",
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="aisp",
            ls_model_name=kwargs["model"] if isinstance(kwargs.get("model"), str) else self.model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    def to_json(self) -> Any:
        """Serialise the configuration; the reward becomes its ``"module:qualname"`` path.

        A reward that cannot be re-imported (lambda, closure, configured instance) and a
        model passed as loaded objects are written as ``"<not serialisable> <reason>"``
        markers, so ``dumpd`` works (tracing, caching) but ``load`` raises a validation
        error with the reason.
        """
        data = super().to_json()
        kwargs = data.get("kwargs")
        if data.get("type") != "constructor" or not isinstance(kwargs, dict):
            return data
        path, why = _reward_path(self.reward)
        kwargs["reward"] = path if path is not None else _UNSERIALISABLE + why
        if self.llm is not None or self.hf_model is not None:
            kwargs["llm"] = (
                _UNSERIALISABLE + "a model passed as loaded objects cannot be serialised; "
                "pass model=<hub id or local path>"
            )
        if self.control_memory is not None:
            kwargs["control_memory"] = (
                _UNSERIALISABLE + "a control memory is not serialised with the model; save it with "
                "memory.save(path) and pass control_memory=ControlMemory.load(path)"
            )
        return data

    # --- the model -----------------------------------------------------------------------

    def _get_lm(self, model_override: str | None = None) -> Any:
        """The loaded ``CausalLM`` (loaded once, on first use; thread-safe)."""
        if model_override is not None and model_override != self.model:
            return _cached_lm(model_override, self.device, self.dtype, self.trust_remote_code)
        if self._lm is None:
            with self._lm_lock:
                if self._lm is None:
                    if self.llm is not None:
                        self._lm = self.llm
                    elif self.hf_model is not None:
                        from langchain_aisp.engine.lm import wrap_model

                        self._lm = wrap_model(self.hf_model, self.tokenizer)
                    else:
                        self._lm = _cached_lm(self.model, self.device, self.dtype, self.trust_remote_code)
        return self._lm

    # --- jobs ----------------------------------------------------------------------------

    def _job(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Job:
        unknown = sorted(set(kwargs) - set(_PER_CALL_FIELDS) - set(_BINDING_KWARGS))
        if unknown:
            raise TypeError(
                f"AISPChatModel got unsupported keyword argument(s) {unknown}; per-call arguments are "
                f"{sorted(_PER_CALL_FIELDS)} plus stop, model, timeout, tools, tool_choice, parallel_tool_calls, "
                "response_format"
            )
        out_fmt = self._output_format(kwargs)
        timeout = _check_timeout(kwargs["timeout"]) if "timeout" in kwargs else self.timeout
        lm = self._get_lm(kwargs.get("model"))
        grammars = _grammars(out_fmt)
        vocab, eos = int(lm.head_weight.shape[0]), lm.eos_token_ids
        constraint, prefill, forced_grammar = None, "", None
        if len(grammars) == 1:  # forced call / JSON: prefill what every reply must start with
            prefill = grammarlib.forced_prefix(lm.tokenizer, vocab, eos, grammars[0])
            constraint = grammarlib.compile_constraint(lm.tokenizer, vocab, eos, grammars[0], prefill)
        elif grammars:  # auto: a prose prompt and a forced-call prompt
            constraint = grammarlib.compile_constraint(lm.tokenizer, vocab, eos, grammars[0], "", close=False)
            forced_grammar = grammars[1]
        prompt = fmtlib.render(lm.tokenizer, messages, out_fmt, prefill)
        overrides = {k: kwargs[k] for k in _PER_CALL_FIELDS if k in kwargs}
        if isinstance(stop, str):
            stop = [stop]  # a lone string is one stop string, not one per character
        stops = list(stop if stop is not None else (self.stop or []))
        if prompt.plain:
            stops.append(fmtlib.PLAIN_STOP)
        overrides["stop"] = list(dict.fromkeys(stops))
        if "model" in kwargs:
            overrides["model"] = kwargs["model"]
        settings = self._settings(overrides)
        token_ids = list(lm.tokenizer(prompt.text, add_special_tokens=False).input_ids)
        limit = lm.max_context
        if limit is not None and len(token_ids) + settings.sampling.max_tokens > limit:
            raise ValueError(
                context_window_error("the conversation", len(token_ids), settings.sampling.max_tokens, limit, lm.name)
            )
        forced = None
        if forced_grammar is not None:
            forced_prefill = grammarlib.forced_prefix(lm.tokenizer, vocab, eos, forced_grammar)
            forced_prompt = fmtlib.render(lm.tokenizer, messages, out_fmt, forced_prefill)
            # one forced-call row per tool, the tools most related to the request first, with arguments
            # taken from the conversation (the choice rule accepts no other); strict=False: the user's own
            # keywords were checked at bind time, values from the conversation may not satisfy all of them
            grounded = fmtlib.grounded_tools(out_fmt, messages)
            per_tool = [
                grammarlib.tool_call_grammar(grounded, choice=name, strict=False)
                for name in fmtlib.rank_tools(out_fmt, messages)
            ]
            forced = _Variant(
                list(lm.tokenizer(forced_prompt.text, add_special_tokens=False).input_ids),
                forced_prompt,
                grammarlib.compile_constraint(lm.tokenizer, vocab, eos, per_tool, forced_prefill),
            )
        return _Job(list(messages), token_ids, prompt, out_fmt, settings, lm, constraint, forced, timeout=timeout)

    @staticmethod
    def _output_format(kwargs: dict[str, Any]) -> fmtlib.OutputFormat:
        tools = tuple(kwargs.get("tools") or ())
        names = [t["name"] for t in tools]
        choice = fmtlib.normalize_tool_choice(kwargs.get("tool_choice"), names) if tools else "auto"
        response_format = kwargs.get("response_format")
        schema = None
        if response_format is not None:
            if not isinstance(response_format, dict) or response_format.get("type") not in ("json_schema", "json_mode"):
                raise ValueError(
                    "response_format must be {'type': 'json_schema' | 'json_mode', 'schema': {...}}, "
                    f"got {response_format!r}"
                )
            schema = response_format.get("schema") or {"type": "object"}
        strict = kwargs.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise ValueError(f"strict must be True, False or None, got {strict!r}")
        return fmtlib.OutputFormat(
            tools=tools,
            tool_choice=choice,
            json_schema=schema,
            parallel_tool_calls=kwargs.get("parallel_tool_calls") is True,
            strict=strict,
        )

    def _run_jobs(
        self,
        jobs: Sequence[_Job],
        on_event: Callable[[int, dict[str, Any]], None],
        cancel: threading.Event | None = None,
        keep: Callable[[int], bool] | None = None,
    ) -> list[PromptResult | BaseException]:
        """One engine call over ``jobs`` (same settings and model): results or per-job errors.

        ``cancel`` (set when an async caller is cancelled) stops the run at the next iteration
        boundary with :class:`RunCancelledError`, so an abandoned executor thread does not keep
        the CPU busy until the end of the run. ``keep(job_index)`` False drops that job alone at
        the next iteration boundary (its outcome is a ``RunCancelledError``). A reward failing
        on one job's responses fails that job only (a ``RewardError`` with its partial result);
        the others go on.
        """
        settings, lm = jobs[0].settings, jobs[0].lm
        entries = [(i, v) for i, job in enumerate(jobs) for v in job.variants()]  # engine prompts
        params = settings.params
        if len(entries) > len(jobs):  # auto: the free and the forced prompt share the samples
            params = dataclasses.replace(params, num_samples=max(1, math.ceil(params.num_samples / 2)))
        reward = self._reward
        start = time.monotonic()
        deadlines = [  # per job: prepare() fixed it, else this run's start + the call's timeout
            job.deadline if job.deadline is not None else (None if job.timeout is None else start + job.timeout)
            for job in jobs
        ]
        stop: Any = stop_after_attempt(self.max_retries + 1)
        if all(d is not None for d in deadlines):  # reward retries never outlast every call's deadline
            stop = stop | stop_before_delay(max(0.0, max(d for d in deadlines if d is not None) - time.monotonic()))
        retrying = Retrying(stop=stop, wait=wait_exponential(multiplier=0.5, max=RETRY_WAIT_MAX), reraise=True)
        seeds = [jobs[i].settings.seed for i, _ in entries]  # calls of one run may differ in seed only

        def score(indices: Sequence[int], responses: Sequence[str]) -> list[float]:
            full = [entries[e][1].prompt.prefill + r for e, r in zip(indices, responses, strict=True)]
            owners = [jobs[entries[e][0]] for e in indices]
            values = list(retrying(reward.score, [job.messages for job in owners], full))
            if settings.format_weight and len(values) == len(full):
                for pos, job in enumerate(owners):
                    if job.fmt.constrained:
                        values[pos] = values[pos] + settings.format_weight * _format_term(full[pos], job)
            return values

        score.name = self.reward_name  # type: ignore[attr-defined]  # errors name the user's reward

        def on_iteration(event: IterationEvent) -> None:
            if cancel is not None and cancel.is_set():
                raise RunCancelledError(
                    f"the run was cancelled by its caller after iteration {event.iteration + 1} of "
                    f"{event.num_iterations}"
                )
            per_job: dict[int, tuple[list[float], float]] = {}
            for pos, e in enumerate(event.prompt_indices):
                rewards, best = per_job.get(entries[e][0], ([], -math.inf))
                per_job[entries[e][0]] = ([*rewards, *event.rewards[pos]], max(best, event.best_rewards[pos]))
            for i, (rewards, best) in per_job.items():
                on_event(
                    i,
                    {
                        "iteration": event.iteration,
                        "num_iterations": event.num_iterations,
                        "rewards": rewards,
                        "best_reward": best,
                        "method": settings.params.method,
                    },
                )

        engine_keep = None if keep is None else (lambda e: keep(entries[e][0]))
        engine_deadlines = [deadlines[i] for i, _ in entries]
        memory = None if any(j.fmt.constrained for j in jobs) else self.control_memory
        # isolated: a reward failure or a timeout with nothing scored is recorded on its prompt, never raised
        results: list[PromptResult | None] = list(
            run_with_memory(
                memory,
                lm,
                [v.token_ids for _, v in entries],
                score,
                params,
                settings.sampling,
                reward=self.reward_name,
                seed=seeds[0] if len(set(seeds)) == 1 else seeds,
                max_batch_size=self.max_batch_size,
                on_iteration=on_iteration,
                runner=run,
                on_reward_error="isolate",
                keep=engine_keep,
                decoding=self.decoding,
                constraints=[v.constraint for _, v in entries],
                deadline=engine_deadlines[0] if len(set(engine_deadlines)) == 1 else engine_deadlines,
            )
        )
        scored = [r if r is not None and r.rewards else None for r in results]  # failed calls keep their partial
        merged = _merge_variants(entries, scored, jobs)
        outcomes: list[PromptResult | BaseException] = []
        for i in range(len(jobs)):
            mine = [r for (owner, _), r in zip(entries, results, strict=False) if owner == i and r is not None]
            failed = next((r.error for r in mine if isinstance(r.error, RewardError)), None)
            if failed is not None:
                err = RewardError(
                    str(failed),
                    [merged[i]],
                    reward=failed.reward,
                    prompt_index=i,
                    iteration=failed.iteration,
                    response_index=failed.response_index,
                    response=failed.response,
                )
                err.__cause__ = failed.__cause__  # the reward's own exception
                outcomes.append(err)
            elif any(r.cancelled for r in mine):
                done = max((len(r.rewards) for r in mine), default=0)
                outcomes.append(
                    RunCancelledError(f"the call was dropped by its caller after {done} iteration(s)", [merged[i]])
                )
            elif merged[i] is None:
                timed_out = TimeoutError(
                    f"timeout={jobs[i].timeout} s passed before the first {settings.params.num_samples} samples "
                    f"(max_tokens={settings.sampling.max_tokens}) were decoded, so no answer was scored; raise "
                    "timeout, or lower num_samples or max_tokens"
                )
                timed_out.__cause__ = next((r.error for r in mine if isinstance(r.error, RunTimeoutError)), None)
                outcomes.append(timed_out)
            else:
                outcomes.append(merged[i])  # type: ignore[arg-type]
        return outcomes

    def _execute(self, job: _Job, progress: ProgressFn | None, cancel: threading.Event | None = None) -> PromptResult:
        plan = _BATCH_PLAN.get()
        index = plan.claim(job.key()) if plan is not None and plan.owner == id(self) else None
        if plan is None or index is None:
            outcome = self._run_jobs([job], lambda _i, data: progress(data) if progress else None, cancel)[0]
        else:
            with plan.lock:
                if progress is not None:
                    plan.progress[index] = progress
                if plan.outcomes is None:

                    def on_event(i: int, data: dict[str, Any]) -> None:
                        plan.events.setdefault(i, []).append(data)
                        plan.deliver(i)

                    # Nested calls made by the reward (a judge on this very model) must not join the plan:
                    # they would wait on plan.lock, which this thread holds.
                    token = _BATCH_PLAN.set(None)
                    try:
                        plan.outcomes = self._run_jobs(plan.jobs, on_event, cancel)
                    except BaseException as exc:
                        # Interrupted, cancelled or failed: every input of the plan gets this error, so no
                        # other input re-runs the whole batch after the caller gave up on it.
                        plan.outcomes = [exc] * len(plan.jobs)
                        raise
                    finally:
                        _BATCH_PLAN.reset(token)
                plan.deliver(index)
                outcome = plan.outcomes[index]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    # --- results -> messages -------------------------------------------------------------

    def _message_parts(
        self, job: _Job, result: PromptResult
    ) -> tuple[fmtlib.ParsedReply, dict[str, Any], UsageMetadata]:
        text = job.prompt.prefill + result.text
        if job.prompt.plain and job.prompt.prefill:
            text = text[1:]  # the space after "Assistant:"
        if job.fmt.calls_tools and job.auto_choice != "prose":
            parsed = fmtlib.parse_tool_reply(text, job.fmt)
            if result.finish_reason == "length":
                cut = _cut_message(job.settings.sampling.max_tokens, "tool call")
                for call in parsed.invalid_tool_calls:
                    call["error"] = f"{cut} ({call.get('error')})"
        else:
            parsed = fmtlib.ParsedReply(content=text)
        finish = "tool_calls" if parsed.tool_calls else result.finish_reason
        aisp = {
            "reward": result.reward,
            "samples": result.samples,
            "rewards": result.rewards,
            "method": job.settings.params.method,
            "num_samples": job.settings.params.num_samples,
            "num_iterations": job.settings.params.num_iterations,
            "ess": result.ess,
            "lambdas": result.lambdas,
            "u_norms": result.u_norms,
            "warm_start": result.initial_U_norm > 0,
            "warm_start_norm": result.initial_U_norm,
            "best_iteration": result.best_iteration,
            "generated_tokens": result.generated_tokens,
            "finish_reason": result.finish_reason,
            "reward_name": self.reward_name,
            "prefill": job.prompt.prefill,
            "timed_out": result.timed_out,
            "max_tokens": job.settings.sampling.max_tokens,
        }
        if job.auto_choice is not None:
            aisp["auto_choice"] = job.auto_choice
        if job.fmt.constrained:
            aisp["format_validity"] = fmtlib.format_validity(text, job.fmt)
        metadata = {"model_name": str(job.lm.name), "finish_reason": finish, "aisp": aisp}
        output = len(result.token_ids)
        usage = UsageMetadata(
            input_tokens=result.prompt_tokens, output_tokens=output, total_tokens=result.prompt_tokens + output
        )
        return parsed, metadata, usage

    def _to_message(self, job: _Job, result: PromptResult) -> AIMessage:
        parsed, metadata, usage = self._message_parts(job, result)
        return AIMessage(
            content=parsed.content,
            tool_calls=parsed.tool_calls,
            invalid_tool_calls=parsed.invalid_tool_calls,
            response_metadata=metadata,
            usage_metadata=usage,
        )

    def _chunks(self, job: _Job, result: PromptResult) -> Iterator[ChatGenerationChunk]:
        parsed, metadata, usage = self._message_parts(job, result)
        for piece in _split_chunks(parsed.content):
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        tool_chunks = [
            ToolCallChunk(
                name=c["name"],
                args=json.dumps(c["args"], ensure_ascii=False),
                id=c["id"],
                index=i,
                type="tool_call_chunk",
            )
            for i, c in enumerate(parsed.tool_calls)
        ]
        last = AIMessageChunk(
            content="",
            tool_call_chunks=tool_chunks,
            response_metadata=metadata,
            usage_metadata=usage,
            chunk_position="last",
        )
        if parsed.invalid_tool_calls:
            last.invalid_tool_calls = list(parsed.invalid_tool_calls)
        yield ChatGenerationChunk(message=last)

    # --- progress callbacks --------------------------------------------------------------

    def _run_callbacks(self, ref: _RunRef, manager_type: type[Any]) -> Any:
        """The callback manager of the run ``ref`` (the handlers LangChain gives the chat model run)."""
        config = ref.config
        return manager_type.configure(
            config.get("callbacks"),
            self.callbacks,
            self.verbose,
            config.get("tags"),
            self.tags,
            config.get("metadata"),
            self.metadata,
        )

    def _sync_progress(self, run_manager: CallbackManagerForLLMRun | None) -> ProgressFn | None:
        if run_manager is None:
            ref = _CURRENT_RUN.get()
            if ref is None:
                return None
            manager = self._run_callbacks(ref, CallbackManager)
            return lambda data: manager.on_custom_event(PROGRESS_EVENT, data, run_id=ref.run_id)

        def emit(data: dict[str, Any]) -> None:
            handle_event(
                run_manager.handlers,
                "on_custom_event",
                "ignore_custom_event",
                PROGRESS_EVENT,
                data,
                run_id=run_manager.run_id,
                tags=run_manager.tags,
                metadata=run_manager.metadata,
            )

        return emit

    def _async_progress(
        self, run_manager: AsyncCallbackManagerForLLMRun | None, cancel: threading.Event | None = None
    ) -> ProgressFn | None:
        ref = _CURRENT_RUN.get()
        if run_manager is None and ref is None:
            return None
        loop = asyncio.get_running_loop()
        manager = None if run_manager is not None or ref is None else self._run_callbacks(ref, AsyncCallbackManager)

        def emit(data: dict[str, Any]) -> None:
            if cancel is not None and cancel.is_set():
                return  # the awaiting task is gone (its loop may be closing): nobody listens any more
            if run_manager is not None:
                coro = ahandle_event(
                    run_manager.handlers,
                    "on_custom_event",
                    "ignore_custom_event",
                    PROGRESS_EVENT,
                    data,
                    run_id=run_manager.run_id,
                    tags=run_manager.tags,
                    metadata=run_manager.metadata,
                )
            else:
                assert manager is not None and ref is not None
                coro = manager.on_custom_event(PROGRESS_EVENT, data, run_id=ref.run_id)
            asyncio.run_coroutine_threadsafe(coro, loop).result()

        return emit

    # --- the LangChain entry points -------------------------------------------------------

    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """``BaseChatModel.invoke``; with ``streaming=True`` progress events still reach the run (see ``stream``)."""
        config, ref = _with_run_id(config)
        token = _CURRENT_RUN.set(ref)
        try:
            return super().invoke(input, config, stop=stop, **kwargs)
        finally:
            _CURRENT_RUN.reset(token)

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """``BaseChatModel.ainvoke``; see ``invoke``."""
        config, ref = _with_run_id(config)
        token = _CURRENT_RUN.set(ref)
        try:
            return await super().ainvoke(input, config, stop=stop, **kwargs)
        finally:
            _CURRENT_RUN.reset(token)

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """``BaseChatModel.stream``, plus an ``"aisp_progress"`` event per iteration before the first chunk.

        langchain-core calls ``_stream`` without the run's callback manager here, so the run id
        is fixed up front and the run is made known to ``_stream`` only while LangChain's
        generator advances (never while the caller holds a chunk).
        """
        config, ref = _with_run_id(config)
        inner = super().stream(input, config, stop=stop, **kwargs)
        try:
            while True:
                token = _CURRENT_RUN.set(ref)
                try:
                    chunk = next(inner)
                except StopIteration:
                    return
                finally:
                    _CURRENT_RUN.reset(token)
                yield chunk
        finally:
            inner.close()  # type: ignore[attr-defined]  # a generator

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """``BaseChatModel.astream`` with progress events (also under ``astream_events``); see ``stream``."""
        config, ref = _with_run_id(config)
        inner = super().astream(input, config, stop=stop, **kwargs)
        try:
            while True:
                token = _CURRENT_RUN.set(ref)
                try:
                    chunk = await inner.__anext__()
                except StopAsyncIteration:
                    return
                finally:
                    _CURRENT_RUN.reset(token)
                yield chunk
        finally:
            await inner.aclose()  # type: ignore[attr-defined]  # an async generator

    def _aligned(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        progress: ProgressFn | None,
        kwargs: dict[str, Any],
        cancel: threading.Event | None = None,
    ) -> tuple[_Job, PromptResult]:
        job = self._job(messages, stop, kwargs)
        return job, self._execute(job, progress, cancel)

    async def _aligned_async(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: AsyncCallbackManagerForLLMRun | None,
        kwargs: dict[str, Any],
    ) -> tuple[_Job, PromptResult]:
        """``_aligned`` in an executor thread; cancelling the awaiting task stops the run at its next iteration."""
        cancel = threading.Event()
        progress = self._async_progress(run_manager, cancel)
        try:
            return await run_in_executor(None, self._aligned, messages, stop, progress, kwargs, cancel)
        except asyncio.CancelledError:
            cancel.set()
            raise

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        job, result = self._aligned(messages, stop, self._sync_progress(run_manager), kwargs)
        return ChatResult(generations=[ChatGeneration(message=self._to_message(job, result))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        job, result = await self._aligned_async(messages, stop, run_manager, kwargs)
        return ChatResult(generations=[ChatGeneration(message=self._to_message(job, result))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        job, result = self._aligned(messages, stop, self._sync_progress(run_manager), kwargs)
        for chunk in self._chunks(job, result):
            if run_manager is not None and isinstance(chunk.message.content, str):
                run_manager.on_llm_new_token(chunk.message.content, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        job, result = await self._aligned_async(messages, stop, run_manager, kwargs)
        for chunk in self._chunks(job, result):
            if run_manager is not None and isinstance(chunk.message.content, str):
                await run_manager.on_llm_new_token(chunk.message.content, chunk=chunk)
            yield chunk

    # --- Batched AISP ----------------------------------------------------------------------

    def _plan(self, inputs: Sequence[LanguageModelInput], kwargs: dict[str, Any]) -> _BatchPlan | None:
        """Render every input up front; inputs that fail to render are left to their own call (and error)."""
        call_kwargs = {k: v for k, v in kwargs.items() if k != "stop"}
        jobs = []
        for item in inputs:
            try:
                messages = self._convert_input(item).to_messages()
                jobs.append(self._job(messages, kwargs.get("stop"), call_kwargs))
            except Exception:
                continue
        groups: dict[tuple[Any, ...], list[_Job]] = {}
        for job in jobs:
            groups.setdefault((job.settings.batch_key(), id(job.lm), job.forced is None), []).append(job)
        if not groups:
            return None
        largest = max(groups.values(), key=len)
        return _BatchPlan(owner=id(self), jobs=largest) if len(largest) > 1 else None

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Like ``Runnable.batch`` (callbacks, configs, ``return_exceptions``, ``max_concurrency``
        unchanged), but all prompts run in one Batched AISP engine call."""
        plan = self._plan(inputs, kwargs) if len(inputs) > 1 else None
        token = _BATCH_PLAN.set(plan)
        try:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        finally:
            _BATCH_PLAN.reset(token)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Async ``batch``: one Batched AISP engine call, run in an executor thread."""
        plan = await run_in_executor(None, self._plan, inputs, kwargs) if len(inputs) > 1 else None
        token = _BATCH_PLAN.set(plan)
        try:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        finally:
            _BATCH_PLAN.reset(token)

    def prepare(self, input: LanguageModelInput, *, stop: list[str] | None = None, **kwargs: Any) -> PreparedCall:
        """Validate and render one call without running it (same arguments as ``invoke``).

        Raises ``ValueError`` / ``TypeError`` on bad input, exactly as ``invoke`` would;
        nothing is decoded. Run the result with :meth:`run_prepared`. A call's ``timeout`` (its
        ``timeout=`` argument, else the model's) counts from here: time spent waiting in a
        caller's queue counts against it, and calls with different timeouts still share a run.
        """
        messages = self._convert_input(input).to_messages()
        job = self._job(messages, stop, kwargs)
        if job.timeout is not None:
            job.deadline = time.monotonic() + job.timeout  # a prepared call's clock starts now
        return PreparedCall(job)

    def run_prepared(
        self, calls: Sequence[PreparedCall], *, keep: Callable[[int], bool] | None = None
    ) -> list[AIMessage | BaseException]:
        """Run prepared calls: those with equal ``batch_key`` share one Batched AISP engine run.

        Returns one outcome per call, in order: an ``AIMessage`` (as ``invoke`` returns it, with
        ``response_metadata["aisp"]["batch_prompts"]``, the number of calls that shared its engine
        run) or the call's own error: a :class:`RewardError` (with its partial result) when the
        reward failed on that call's responses, or :class:`RunCancelledError` when ``keep(i)``
        returned False at an iteration boundary (the call stopped there, the others went on).
        An error of the whole engine run is the outcome of every call of that run. No callbacks
        are invoked (this is the entry for servers; use ``batch`` in chains).
        """
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, call in enumerate(calls):
            groups.setdefault(call.batch_key, []).append(i)
        outcomes: list[AIMessage | BaseException | None] = [None] * len(calls)
        for members in groups.values():
            jobs = [calls[i]._job for i in members]
            group_keep = None if keep is None else (lambda pos, members=members: keep(members[pos]))
            try:
                results = self._run_jobs(jobs, lambda _i, _data: None, keep=group_keep)
            except Exception as exc:
                results = [exc] * len(jobs)
            for i, job, result in zip(members, jobs, results, strict=True):
                if isinstance(result, BaseException):
                    outcomes[i] = result
                    continue
                message = self._to_message(job, result)
                message.response_metadata["aisp"]["batch_prompts"] = len(jobs)
                outcomes[i] = message
        return [o for o in outcomes if o is not None]

    # --- tools and structured output ---------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (anything ``convert_to_openai_tool`` accepts); calls are grammar-constrained.

        ``tool_choice``: None/"auto" (each reply is prose or valid calls, see the choice rule in
        ``docs/chat_model.md``), "none" (prose, tools not shown), "any"/"required"/True (a valid
        call of some bound tool) or a tool name (a valid call of that tool). Forced calls are
        constrained from the first token. One call per reply unless ``parallel_tool_calls=True`` (small
        local models otherwise tend to repeat a call until ``max_tokens``).
        ``strict``: see :meth:`with_structured_output`. A tool schema the grammar cannot enforce
        raises ``ValueError`` here, naming the unsupported construct.
        """
        formatted = [convert_to_openai_tool(t)["function"] for t in tools]
        names = [t["name"] for t in formatted]
        choice = fmtlib.normalize_tool_choice(tool_choice, names)
        extra: dict[str, Any] = {}
        if parallel_tool_calls is not None:
            extra["parallel_tool_calls"] = parallel_tool_calls
        if strict is not None:
            extra["strict"] = strict
        fmt = fmtlib.OutputFormat(
            tools=tuple(formatted),
            tool_choice=choice,
            parallel_tool_calls=parallel_tool_calls is True,
            strict=strict,
        )
        _grammars(fmt)  # an unsupported schema fails now, not mid-decode
        return self.bind(tools=formatted, tool_choice=choice, **extra, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        include_raw: bool = False,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """Structured output for pydantic classes, TypedDicts and JSON schemas, valid by construction.

        Every sample is decoded under a grammar of the schema, so AISP / Best-of-N choose among
        schema-valid replies only. ``function_calling`` (default) forces a call of a tool named
        after the schema; ``json_schema`` asks for a bare JSON object of the schema; ``json_mode``
        for any JSON object (with a schema given, that schema is enforced too: it is what the
        result is parsed into). ``strict``: True/None refuse a schema keyword the grammar cannot
        enforce (``ValueError`` here, naming it); False drops such keywords from the grammar (the
        reply is still validated against the full schema after decoding). The one way to get an
        invalid reply is a reply cut by ``max_tokens``: the error says so and how far to raise it.
        With ``include_raw=True`` errors come back as ``parsing_error``.
        """
        if kwargs:
            raise ValueError(f"Received unsupported arguments {kwargs}")
        if method not in ("function_calling", "json_schema", "json_mode"):
            raise ValueError(f"method must be 'function_calling', 'json_schema' or 'json_mode', got {method!r}")
        if strict is not None and not isinstance(strict, bool):
            raise ValueError(f"strict must be True, False or None, got {strict!r}")
        if schema is None and method != "json_mode":
            raise ValueError(f"schema is required for method={method!r} (only json_mode takes schema=None)")
        json_schema = convert_to_json_schema(schema) if schema is not None else {"type": "object"}
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        ls_format = {"kwargs": {"method": method}, "schema": schema if schema is not None else json_schema}
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]  # type: ignore[arg-type]
            llm = self.bind_tools(
                [schema],  # type: ignore[list-item]
                tool_choice=name,
                parallel_tool_calls=False,
                strict=strict,
                ls_structured_output_format=ls_format,
            )
            inner: Runnable[Any, Any] = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
            parser: Runnable[Any, Any] = RunnableLambda(partial(_parse_tool_output, inner, name))
        else:
            grammarlib.json_grammar(json_schema, strict=strict is not False)  # unsupported schema: fail now
            bound: dict[str, Any] = {"response_format": {"type": method, "schema": json_schema}}
            if strict is not None:
                bound["strict"] = strict
            llm = self.bind(**bound, ls_structured_output_format=ls_format)
            inner = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()  # type: ignore[arg-type]
            parser = RunnableLambda(partial(_parse_json_output, inner, json_schema))
        if not include_raw:
            return llm | parser
        parser_assign = RunnablePassthrough.assign(parsed=_RAW | parser, parsing_error=lambda _: None)
        parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
        parser_with_fallback = parser_assign.with_fallbacks([parser_none], exception_key="parsing_error")
        return RunnableMap(raw=llm) | parser_with_fallback


def _grammars(fmt: fmtlib.OutputFormat) -> list[str]:
    """The grammar(s) of a reply of ``fmt``; [] for free text.

    Forced calls and JSON: one grammar. ``tool_choice="auto"``: two, prose (no ``<``, so no
    call tag) and forced calls; each is decoded from its own prompt with half the samples, and
    :func:`_chat_format.auto_choice_score` decides between them (see :func:`_merge_variants`).
    """
    strict = fmt.strict is not False
    if fmt.calls_tools:
        tools, parallel = list(fmt.tools), fmt.parallel_tool_calls
        if fmt.tool_choice == "auto":
            return [
                grammarlib.prose_grammar(),
                grammarlib.tool_call_grammar(tools, choice="any", parallel=parallel, strict=strict),
            ]
        return [grammarlib.tool_call_grammar(tools, choice=fmt.tool_choice, parallel=parallel, strict=strict)]
    if fmt.json_schema is not None:
        return [grammarlib.json_grammar(fmt.json_schema, strict=strict)]
    return []


def _merge_variants(
    entries: Sequence[tuple[int, _Variant]], results: Sequence[PromptResult | None], jobs: Sequence[_Job]
) -> list[PromptResult | None]:
    """One result per job. A job with a forced-call variant (``tool_choice="auto"``) returns that
    variant's best sample when it is a valid, grounded, new call (:func:`_chat_format.auto_choice_score`
    is positive), else the prose variant's best: the choice does not depend on the reward's scale.

    The forced variant's prefill is put in front of its texts (the free prompt has none); samples,
    tokens and per-iteration rewards of both variants are reported together.
    """
    merged: list[PromptResult | None] = [None] * len(jobs)
    seen: set[int] = set()
    for (i, variant), result in zip(entries, results, strict=False):
        forced = i in seen  # a job's second variant is its forced-call prompt
        seen.add(i)
        if result is None:
            continue
        if forced:
            result = dataclasses.replace(
                result,
                text=variant.prompt.prefill + result.text,
                texts=[[variant.prompt.prefill + t for t in ts] for ts in result.texts],
            )
        current = merged[i]
        if current is None:
            merged[i] = result
            continue
        call = fmtlib.auto_choice_score(result.text, jobs[i].fmt, jobs[i].messages) > 0
        jobs[i].auto_choice = "call" if call else "prose"
        best = result if call else current
        merged[i] = dataclasses.replace(
            best,
            samples=current.samples + result.samples,
            generated_tokens=current.generated_tokens + result.generated_tokens,
            rewards=[a + b for a, b in zip(current.rewards, result.rewards, strict=False)],
            texts=[a + b for a, b in zip(current.texts, result.texts, strict=False)],
        )
    return merged


def _format_term(text: str, job: _Job) -> float:
    """The format term of one reply (times ``format_weight``): validity, or the auto-choice rule."""
    if job.fmt.calls_tools:
        if job.fmt.tool_choice == "auto":
            return fmtlib.auto_choice_score(text, job.fmt, job.messages)
        return fmtlib.forced_call_score(text, job.fmt, job.messages)
    return fmtlib.format_validity(text, job.fmt)


def _cut_message(max_tokens: int, what: str) -> str:
    return (
        f"the reply was cut by max_tokens={max_tokens} inside the {what} (finish_reason 'length'): decoding is "
        f"grammar-constrained, so only the length limit can leave it incomplete; raise max_tokens (e.g. to "
        f"{2 * max_tokens})"
    )


def _max_tokens_of(message: AIMessage) -> int:
    aisp = message.response_metadata.get("aisp") or {}
    return int(aisp.get("max_tokens") or 0)


def _parse_tool_output(inner: Runnable[Any, Any], name: str, message: AIMessage) -> Any:
    """Structured output (function_calling): the first valid call, else an ``OutputParserException``."""
    if (message.response_metadata.get("aisp") or {}).get("finish_reason") == "length":
        raise OutputParserException(_cut_message(_max_tokens_of(message), f"{name} call"), llm_output=message.text)
    if not message.tool_calls:
        errors = "; ".join(str(c.get("error") or "") for c in message.invalid_tool_calls)
        raise OutputParserException(
            f"the reply contains no valid {name} call: {errors or 'no tool call'}", llm_output=message.text
        )
    return inner.invoke(message)


def _parse_json_output(inner: Runnable[Any, Any], schema: dict[str, Any], message: AIMessage) -> Any:
    """Structured output (json_schema / json_mode): parse, then check the JSON against the schema."""
    cut = message.response_metadata.get("finish_reason") == "length"
    if cut:  # a lenient parser could close the cut JSON: never return a truncated value
        raise OutputParserException(_cut_message(_max_tokens_of(message), "JSON"), llm_output=message.text)
    try:
        value = inner.invoke(message)
    except OutputParserException:
        if cut:
            cut_error = _cut_message(_max_tokens_of(message), "JSON")
            raise OutputParserException(cut_error, llm_output=message.text) from None
        raise
    error = fmtlib.schema_errors(value, schema) if isinstance(value, dict) else None
    if value is None or error is not None:
        if cut:
            raise OutputParserException(_cut_message(_max_tokens_of(message), "JSON"), llm_output=message.text)
        if value is None:
            raise OutputParserException("the reply contains no JSON object", llm_output=message.text)
        raise OutputParserException(f"the JSON reply does not match the schema: {error}", llm_output=message.text)
    return value


_RAW: Runnable[Any, Any] = RunnableLambda(lambda x: x["raw"])
