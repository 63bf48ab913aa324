"""``AISPChatModel``: a LangChain chat model over a local Hugging Face LLM, aligned to a reward at test time.

The class translates LangChain messages and settings into engine calls and their results into
``AIMessage``s; no part of the algorithm lives here. Its private rooms are in :mod:`langchain_aisp.chat`:
call planning (``_plan``), execution (``_execute``), progress events (``_progress``), results to
messages (``_messages``), structured output (``_structured``) and the model cache (``_loading``). They
take data, not the model: this module hands them its settings (``_settings``), the loaded ``lm`` and
what runs the jobs (``_engine``: the reward, the ``runner`` field, the retries, memory and row limit).
This module stays the public import path of ``AISPChatModel``, ``PreparedCall``, ``PROGRESS_EVENT``,
``RETRY_WAIT_MAX`` and ``clear_model_cache``.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import get_config_list, run_in_executor
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from langchain_aisp.chat import _execute, _plan, _progress
from langchain_aisp.chat._execute import RETRY_WAIT_MAX
from langchain_aisp.chat._grounding import DEFAULT_GROUNDING_WEIGHT
from langchain_aisp.chat._loading import (
    cached_lm,
    clear_model_cache,
    display_name,
    mark_unserialisable,
    model_lm,
    model_value,
    needs_tokenizer,
    no_marker,
    reward_path,
    reward_value,
)
from langchain_aisp.chat._messages import to_chunks, to_message
from langchain_aisp.chat._plan import Job, ModelSettings, Slot
from langchain_aisp.chat._progress import PROGRESS_EVENT
from langchain_aisp.chat._reply import check_settings
from langchain_aisp.chat._structured import StructuredMethod, structured_output
from langchain_aisp.chat._tool_formats import ToolFormatName
from langchain_aisp.engine.aisp import PromptResult, RewardError, run
from langchain_aisp.engine.config import (
    DEFAULT_ALPHA,
    DEFAULT_CHAT_TEMPERATURE,
    DEFAULT_CONTROL,
    DEFAULT_DECODING,
    DEFAULT_ELITE_FRACTION,
    DEFAULT_ESS_TARGET,
    DEFAULT_KEEP_FRACTION,
    DEFAULT_LAMBDA,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_TOKENS,
    DEFAULT_METHOD,
    DEFAULT_REJECT_AT,
    DEFAULT_SIGMA,
    DEFAULT_TAU,
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
from langchain_aisp.engine.memory import ControlMemory
from langchain_aisp.errors import RunCancelledError
from langchain_aisp.rewards import Reward, as_reward

__all__ = [
    "PROGRESS_EVENT",
    "RETRY_WAIT_MAX",
    "AISPChatModel",
    "PreparedCall",
    "RewardError",
    "RunCancelledError",
    "clear_model_cache",
]

_IDENTIFYING_FIELDS = (
    *_plan.PER_CALL_FIELDS,
    "stop",
    "reasoning",
    "reasoning_tags",
    "thinking_budget",
    "score_reasoning",
    "tool_format",
)
"""Fields that tell two configurations apart (with the model, the reward and the control memory)."""


@dataclass(frozen=True)
class PreparedCall:
    """One call validated and rendered by :meth:`AISPChatModel.prepare`, ready for :meth:`~AISPChatModel.run_prepared`.

    Built for callers that batch calls themselves (a server collecting concurrent requests):
    calls of one model with equal ``batch_key`` share one Batched AISP engine run.
    """

    _job: Job = field(repr=False)

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Calls with equal keys (on the same model) can run together: same settings and loaded model."""
        return self._job.batch_key()

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

    Key init args:
        reward: ``fn(prompt, response) -> float``, a ``Reward`` or a ``"module:qualname"`` path.
        model: a hub id or local path, a loaded ``CausalLM``, or a ``PreTrainedModel`` with ``tokenizer``.
        method, num_samples, num_iterations, sigma, lambda_, tau, ...: the alignment (see the fields).
        format_weight, grounding_weight: the tool-call / JSON format and grounding terms (0: off).
        max_tokens, temperature (0 = greedy), top_p, top_k, seed, stop, max_batch_rows, decoding: sampling.

    Instantiate and invoke:
        .. code-block:: python

            from langchain_aisp import AISPChatModel

            def brevity(prompt: str, response: str) -> float:
                return -abs(len(response.split()) - 12)

            llm = AISPChatModel(reward=brevity, num_samples=2, num_iterations=1, max_tokens=16, seed=0)
            msg = llm.invoke("Name a fruit.")
            msg.response_metadata["aisp"]["reward"]      # its reward; ["rewards"]: per iteration

    ``stream`` (the answer is chosen first, then streamed), ``batch`` (one Batched AISP engine run
    over all prompts), the async methods (the event loop is not blocked), ``bind_tools`` and
    ``with_structured_output`` (grammar-constrained), the ``"aisp_progress"`` callback event after
    every iteration, control memory and errors (a failed run's ``err.partial[0]`` is the best answer
    found before the failure) are documented with examples in ``docs/chat_model.md``.

    Thread safety:
        One instance may serve many threads and asyncio tasks at once: the loaded model is
        only read, every run keeps its own random generators and state.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    reward: Any
    """The reward: ``fn(prompt, response) -> float``, a ``@batched`` function, a
    :class:`~langchain_aisp.rewards.Reward`, or the ``"module:qualname"`` path of one."""

    model: Any = None
    """The LLM: a Hugging Face hub id or local folder (str), a loaded :class:`~langchain_aisp.engine.lm.CausalLM`,
    or a transformers ``PreTrainedModel`` with ``tokenizer``; None uses the embedded default model. Chat models
    over one ``PreTrainedModel`` and tokenizer share one wrapping (and its static decoding cache)."""

    tokenizer: Any = Field(default=None, exclude=True)
    """The tokenizer of a ``PreTrainedModel`` passed as ``model`` (required with one, refused otherwise)."""

    method: Method = DEFAULT_METHOD
    """"bon" (Best-of-N, the default: it ties AISP's update within noise on every reward measured and decodes
    in one batch), "aisp" (the paper's adaptive importance sampling) or "sample" (one plain sample)."""

    num_samples: int | None = None
    """n: responses per iteration, in [1, 4096]; None: the method's own (32 for "bon", 8 for "aisp")."""

    num_iterations: int | None = None
    """k: iterations, in [1, 1024]; None: the method's own (1 for "bon", 4 for "aisp"). Best-of-N draws
    num_samples * num_iterations responses; more iterations give a timeout a best-so-far to return."""

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

    reject_at: int = DEFAULT_REJECT_AT
    """Early rejection (``method="bon"`` only): decode every sample to this many tokens, score the partial
    answers and finish only the best ``keep_fraction``; 0 (default) disables it; < ``max_tokens``."""

    keep_fraction: float = DEFAULT_KEEP_FRACTION
    """Share of each round's samples finished after the early-rejection checkpoint, in (0, 1]."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    """Maximum new tokens per response, >= 1."""

    temperature: float = DEFAULT_CHAT_TEMPERATURE
    """Sampling temperature, >= 0; 0 means greedy decoding (AISP's noise still makes samples differ). The default
    0.7 is measured: Best-of-32 at 0.7 beats Best-of-32 at 1.0 by 4-5 standard errors on two of three rewards and
    ties on the third (docs/benchmarks.md); 1.0 samples the model's own distribution (more diverse candidates)."""

    top_p: float = DEFAULT_TOP_P
    """Nucleus sampling mass, in (0, 1]."""

    top_k: int = DEFAULT_TOP_K
    """Top-k sampling, >= 0 (0 disables it)."""

    seed: int | None = None
    """Seed of the sampling noise; the same seed gives the same answer (per prompt, even in a batch)."""

    stop: list[str] | None = None
    """Stop strings: a response ends where one completes and is cut before it."""

    max_batch_rows: int = DEFAULT_MAX_BATCH_SIZE
    """Most rows (responses: prompts x ``num_samples``) decoded together; a batch of prompts shares them
    (Batched AISP)."""

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
    ``-format_weight`` (see ``chat._parse.format_validity``). Large relative to rewards in
    [0, 1] so that well-formed outputs win first; 0 disables it."""

    grounding_weight: float = DEFAULT_GROUNDING_WEIGHT
    """Weight of the grounding term of forced tool calls and structured output: ``grounding_weight * g`` is
    added to the reward, ``g`` in [0, 1] how much of the reply's values is copied from the conversation
    (``langchain_aisp.chat._grounding``), and three samples in four are decoded with their free string /
    number fields restricted to spans / numbers of the conversation. A user reward that separates two
    samples by more than ``grounding_weight`` times their difference in ``g`` keeps its choice. 0 turns
    grounding off."""

    streaming: bool = False
    """When True, ``invoke`` goes through ``_stream`` (LangChain's usual meaning)."""

    control_memory: ControlMemory | None = Field(default=None, exclude=True)
    """A :class:`~langchain_aisp.ControlMemory`: a proposal learned across calls for this model and reward. Every
    call (Best-of-N or AISP) draws a quarter of its samples from the model's own proposal and the rest shifted
    along the direction the memory learned, as strongly as its self-check finds that the shifted samples win;
    every call (a ``batch`` counts once) teaches it. None (default): every sample is the model's own. Calls
    with tools or a JSON schema bound neither use nor update it (their reward includes the format term).
    ``response_metadata["aisp"]["warm_start"]`` says whether a call was steered, ``["memory"]`` how (own rows,
    level, strength in nats, estimated per-token KL). ``True``: this instance owns a new ``ControlMemory()`` (default
    settings) for its one reward; ``False`` is None. Off by default: docs/memory.md has the figures."""

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

    reasoning: bool | None = None
    """Thinking models (Qwen3, SmolLM3, DeepSeek-R1 distills): None uses the chat template's default, True
    thinks (an error for a model whose template has no think section, unless ``reasoning_tags`` is set),
    False turns thinking off (``enable_thinking=False`` where the template takes it, else an empty think
    section is prefilled). The reasoning goes to ``additional_kwargs["reasoning_content"]``, the answer to
    ``content``."""

    reasoning_tags: tuple[str, str] | None = None
    """The (open, close) think tags; None detects them from the chat template (``<think>``, ``</think>``)."""

    thinking_budget: int | None = None
    """Most thinking tokens, >= 0: then the closing tag is forced. With a budget the engine decodes
    ``thinking_budget + len(closing tag) + max_tokens`` tokens, so the answer always keeps ``max_tokens``;
    None: no limit, thinking and answer share ``max_tokens``."""

    score_reasoning: bool = False
    """False: the reward scores the answer only; True: the whole reply (the think section with its tags, then
    the answer)."""

    tool_format: ToolFormatName = "auto"
    """The tool-call format: ``"auto"`` (the chat template's own when it renders tools in a known format:
    ``"hermes"`` ``<tool_call>``, ``"llama3"`` ``{"name", "parameters"}``, ``"mistral"`` ``[TOOL_CALLS]``,
    ``"deepseek"`` ``<｜tool▁calls▁begin｜>``; else ``"documented"``, the tools described in the system message)
    or one of those names."""

    runner: Callable[..., list[PromptResult]] = Field(default=run, exclude=True)
    """The engine entry every call runs through: :func:`langchain_aisp.engine.aisp.run` (default), or anything
    with its arguments and result, e.g. a continuous :class:`~langchain_aisp.engine.scheduler.Scheduler`'s
    ``run`` (calls then join its running Batched AISP runs), or a stand-in in tests. Not serialised."""

    _reward: Reward = PrivateAttr()
    _lm: Any = PrivateAttr(default=None)
    _lm_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # --- validation --------------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _known_arguments(cls, data: Any) -> Any:
        """An unknown argument (``temprature=0.5``) names the closest field instead of "Extra inputs ..."."""
        if isinstance(data, dict):
            unknown = [name for name in data if name not in cls.model_fields]
            if unknown:
                fields = sorted(cls.model_fields)
                raise ValueError(f"AISPChatModel got unknown argument(s) {_plan.unknown_arguments(unknown, fields)}")
        return data

    @field_validator("reward", mode="before")
    @classmethod
    def _import_reward(cls, value: Any) -> Any:
        return reward_value(value)  # a "module:qualname" path is imported now

    @field_validator("control_memory", mode="before")
    @classmethod
    def _own_memory(cls, value: Any) -> Any:
        if isinstance(value, bool):  # True: this instance's own memory, for its one reward; False: none
            return ControlMemory() if value else None
        return no_marker(value)

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
        return model_value(value)  # a local path must exist now; a hub id is only checked when loaded

    @model_validator(mode="after")
    def _check(self) -> AISPChatModel:
        try:
            reward = as_reward(self.reward)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc
        self._reward = reward
        _check_fields(self)  # each error names the field, the bad value and the allowed range
        return self

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
        path, _ = reward_path(self.reward)
        return path or str(getattr(self._reward, "name", None) or type(self._reward).__name__)

    @property
    def model_name(self) -> str:
        """The model's display name (hub id, path, the loaded model's name, or the default model's name)."""
        return display_name(self.model)

    @property
    def _identifying_params(self) -> dict[str, Any]:
        memory = self.control_memory
        return {
            "model": self.model_name,
            "reward": self.reward_name,
            **{name: getattr(self, name) for name in _IDENTIFYING_FIELDS},
            "control_memory": None if memory is None else f"{memory.signal}, strength {memory.strength}",
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
        if data.get("type") == "constructor" and isinstance(kwargs, dict):
            mark_unserialisable(self, kwargs)
        return data

    # --- the model -----------------------------------------------------------------------

    def _get_lm(self, model_override: str | None = None) -> Any:
        """The loaded ``CausalLM`` (loaded once, on first use; thread-safe)."""
        if model_override is not None and model_override != self.model:
            return cached_lm(model_override, self.device, self.dtype, self.trust_remote_code)
        if self._lm is None:
            with self._lm_lock:
                if self._lm is None:
                    self._lm = model_lm(self)
        return self._lm

    def warmup(self, rows: Sequence[int] | None = None, prompt_tokens: Sequence[int] = (64,)) -> list[dict[str, Any]]:
        """Build this model's static decoding buckets before the first call (compiled under ``decoding="compiled"``,
        or ``"auto"`` on CUDA, and saved to the compile cache). ``rows`` defaults to ``num_samples``;
        ``prompt_tokens``: rendered prompt lengths (chat template included) of the calls to come. Returns one
        entry per bucket (:func:`langchain_aisp.engine.decode.warmup.warmup`); [] where decoding is eager."""
        from langchain_aisp.engine.decode.warmup import warmup

        settings = _plan.resolve_settings(_settings(self), {})
        sizes = rows or (1 if settings.params.method == "sample" else settings.params.num_samples,)
        sampling = settings.sampling
        return warmup(
            self._get_lm(),
            rows=sizes,
            max_tokens=(sampling.max_tokens,),
            prompt_tokens=prompt_tokens,
            decoding=self.decoding,
            sampling=sampling,
        )

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
        config, ref = _progress.with_run_id(config)
        token, slot = _progress.CURRENT_RUN.set(ref), _plan.BATCH_SLOT.set(_plan.slot_of(config))
        try:
            return super().invoke(input, config, stop=stop, **kwargs)
        finally:
            _plan.BATCH_SLOT.reset(slot)
            _progress.CURRENT_RUN.reset(token)

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """``BaseChatModel.ainvoke``; see ``invoke``."""
        config, ref = _progress.with_run_id(config)
        token, slot = _progress.CURRENT_RUN.set(ref), _plan.BATCH_SLOT.set(_plan.slot_of(config))
        try:
            return await super().ainvoke(input, config, stop=stop, **kwargs)
        finally:
            _plan.BATCH_SLOT.reset(slot)
            _progress.CURRENT_RUN.reset(token)

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
        config, ref = _progress.with_run_id(config)
        yield from _progress.iterate_as_run(ref, super().stream(input, config, stop=stop, **kwargs))

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """``BaseChatModel.astream`` with progress events (also under ``astream_events``); see ``stream``."""
        config, ref = _progress.with_run_id(config)
        async for chunk in _progress.aiterate_as_run(ref, super().astream(input, config, stop=stop, **kwargs)):
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        job, result = _call(self, messages, stop, kwargs, _plan.take_slot(), _progress.sync_progress(self, run_manager))
        return ChatResult(generations=[ChatGeneration(message=to_message(job, result, self.reward_name))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        job, result = await _acall(self, messages, stop, kwargs, run_manager)
        return ChatResult(generations=[ChatGeneration(message=to_message(job, result, self.reward_name))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        job, result = _call(self, messages, stop, kwargs, _plan.take_slot(), _progress.sync_progress(self, run_manager))
        for chunk in to_chunks(job, result, self.reward_name):
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
        job, result = await _acall(self, messages, stop, kwargs, run_manager)
        for chunk in to_chunks(job, result, self.reward_name):
            if run_manager is not None and isinstance(chunk.message.content, str):
                await run_manager.on_llm_new_token(chunk.message.content, chunk=chunk)
            yield chunk

    # --- Batched AISP ----------------------------------------------------------------------

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Like ``Runnable.batch`` (callbacks, configs, ``return_exceptions``, ``max_concurrency``
        unchanged), but all prompts run in one Batched AISP engine call: every input is rendered once, up
        front, and its own call (through LangChain, per input) takes its job from its config."""
        plan = _batch_plan(self, inputs, kwargs)
        configs = _plan.slot_configs(plan, get_config_list(config, len(inputs))) if plan is not None else config
        return super().batch(inputs, configs, return_exceptions=return_exceptions, **kwargs)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Async ``batch``: one Batched AISP engine call, rendered and run in executor threads."""
        plan = await run_in_executor(None, _batch_plan, self, inputs, kwargs)
        configs = _plan.slot_configs(plan, get_config_list(config, len(inputs))) if plan is not None else config
        return await super().abatch(inputs, configs, return_exceptions=return_exceptions, **kwargs)

    def prepare(self, input: LanguageModelInput, *, stop: list[str] | None = None, **kwargs: Any) -> PreparedCall:
        """Validate and render one call without running it (same arguments as ``invoke``).

        Raises ``ValueError`` / ``TypeError`` on bad input, exactly as ``invoke`` would;
        nothing is decoded. Run the result with :meth:`run_prepared`. A call's ``timeout`` (its
        ``timeout=`` argument, else the model's) counts from here: time spent waiting in a
        caller's queue counts against it, and calls with different timeouts still share a run.
        """
        job = _job(self, self._convert_input(input).to_messages(), stop, kwargs)
        if job.timeout is not None:
            job.deadline = time.monotonic() + job.timeout  # a prepared call's clock starts now
        return PreparedCall(job)

    def run_prepared(
        self,
        calls: Sequence[PreparedCall],
        *,
        keep: Callable[[int], bool] | None = None,
        runner: Callable[..., list[PromptResult]] | None = None,
    ) -> list[AIMessage | BaseException]:
        """Run prepared calls: those with equal ``batch_key`` share one Batched AISP engine run.

        Returns one outcome per call, in order: an ``AIMessage`` (as ``invoke`` returns it, with
        ``response_metadata["aisp"]["batch_prompts"]``, the number of calls that shared its engine
        run) or the call's own error: a :class:`RewardError` (with its partial result) when the
        reward failed on that call's responses, or :class:`RunCancelledError` when ``keep(i)``
        returned False at an iteration boundary (the call stopped there, the others went on).
        A failure of the whole engine run gives each of its calls its own error, with that call's
        best answer in ``.partial``. No callbacks are invoked (this is the entry for servers; use
        ``batch`` in chains). ``runner`` (default: the model's ``runner`` field,
        :func:`~langchain_aisp.engine.aisp.run` unless set) runs each engine call, e.g. a continuous
        :class:`~langchain_aisp.engine.scheduler.Scheduler`'s ``run``.
        """
        return _execute.run_prepared(_engine(self), [call._job for call in calls], keep, runner)

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
        return self.bind(**_plan.tool_binding(tools, tool_choice, parallel_tool_calls, strict), **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        include_raw: bool = False,
        method: StructuredMethod = "function_calling",
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
        return structured_output(self, schema, include_raw, method, strict)


def _check_fields(model: AISPChatModel) -> None:
    """Validate the model's fields together (``ValueError`` naming the field, the bad value and the range)."""
    settings = _plan.resolve_settings(_settings(model), {})  # AISPParams / SamplingParams name field and range
    if model.control_memory is not None and settings.params.method == "sample":
        raise ValueError(  # one sample: no learned row to compare with the model's own, a silently ignored memory
            "this control_memory would do nothing with method='sample' (one sample: nothing to compare the learned "
            "proposal with); use method='bon' (the default) or 'aisp'"
        )
    if needs_tokenizer(model.model) != (model.tokenizer is not None):
        raise ValueError(
            "tokenizer= goes with model=<a transformers PreTrainedModel> (and only with it); got model of type "
            f"{type(model.model).__name__} and tokenizer {'None' if model.tokenizer is None else 'given'}"
        )
    if model.max_batch_rows < 1:
        raise ValueError(f"max_batch_rows must be an integer >= 1, got {model.max_batch_rows}")
    if not (isinstance(model.format_weight, (int, float)) and math.isfinite(model.format_weight)):
        raise ValueError(f"format_weight must be a finite number >= 0, got {model.format_weight!r}")
    if model.format_weight < 0:
        raise ValueError(f"format_weight must be a finite number >= 0, got {model.format_weight}")
    _plan.check_timeout(model.timeout)
    check_settings(model.reasoning_tags, model.thinking_budget, model.tool_format)
    if isinstance(model.max_retries, bool) or not 0 <= model.max_retries <= 100:
        raise ValueError(f"max_retries must be an integer in [0, 100], got {model.max_retries!r}")


def _settings(model: AISPChatModel) -> ModelSettings:
    """This model's fields that shape a call, as data (read at each call: fields may be reassigned)."""
    return ModelSettings(
        {name: getattr(model, name) for name in _plan.PER_CALL_FIELDS},
        stop=tuple(model.stop or ()),
        source=model.model if isinstance(model.model, str) else None,
        timeout=model.timeout,
        reasoning=model.reasoning,
        reasoning_tags=model.reasoning_tags,
        thinking_budget=model.thinking_budget,
        score_reasoning=model.score_reasoning,
        tool_format=model.tool_format,
    )


def _engine(model: AISPChatModel) -> _execute.Engine:
    """What runs this model's jobs, as data."""
    return _execute.Engine(
        model._reward,
        model.reward_name,
        model.runner,
        model.max_retries,
        model.control_memory,
        model.max_batch_rows,
        model.decoding,
    )


def _job(model: AISPChatModel, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> Job:
    """One call validated and rendered (the arguments are checked before a model is loaded)."""
    _plan.check_kwargs(kwargs)
    return _plan.build_job(_settings(model), model._get_lm(kwargs.get("model")), messages, stop, kwargs)


def _batch_plan(
    model: AISPChatModel, inputs: Sequence[LanguageModelInput], kwargs: dict[str, Any]
) -> _plan.BatchPlan | None:
    """The inputs of a ``batch`` rendered once (None for fewer than 2 inputs, or when the model does not load:
    each input's own call then raises the error)."""
    if len(inputs) < 2:
        return None
    conversations: list[list[BaseMessage] | None] = []
    for item in inputs:
        try:
            conversations.append(model._convert_input(item).to_messages())
        except Exception:
            conversations.append(None)
    try:
        lm = model._get_lm(kwargs.get("model"))
    except Exception:
        return None
    return _plan.plan_batch(_settings(model), lm, conversations, kwargs)


def _call(
    model: AISPChatModel,
    messages: list[BaseMessage],
    stop: list[str] | None,
    kwargs: dict[str, Any],
    slot: Slot | None,
    progress: _progress.ProgressFn | None,
    cancel: threading.Event | None = None,
) -> tuple[Job, PromptResult]:
    """Run one call: the job its batch ``slot`` rendered, else rendered here; raises the call's error."""
    job = slot.job if slot is not None and slot.job is not None else _job(model, messages, stop, kwargs)
    return job, _execute.execute(_engine(model), job, slot, progress, cancel)


async def _acall(
    model: AISPChatModel,
    messages: list[BaseMessage],
    stop: list[str] | None,
    kwargs: dict[str, Any],
    run_manager: AsyncCallbackManagerForLLMRun | None,
) -> tuple[Job, PromptResult]:
    """:func:`_call` in an executor thread (the event loop is not blocked; cancelling stops the run)."""
    cancel = threading.Event()
    progress = _progress.async_progress(model, run_manager, cancel)
    call = functools.partial(_call, model, messages, stop, kwargs, _plan.take_slot())
    return await _execute.in_thread(call, progress, cancel)
