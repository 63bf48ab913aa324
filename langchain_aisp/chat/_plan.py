"""Call planning: one call -> a :class:`Job`, the plan of a ``batch`` call, and the auto choice.

A job holds what one call decodes: its settings, rendered prompt and token ids, grammar, and under
``tool_choice="auto"`` a second, forced-call variant. ``BATCH_PLAN`` is a context variable (not shared
state): it carries the jobs of one ``batch`` call to the per-input ``_generate`` calls so that they run
as one Batched AISP engine call.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import threading
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from langchain_aisp.chat import _grammar as grammarlib
from langchain_aisp.chat import _grounding as groundlib
from langchain_aisp.chat import _reply as replylib
from langchain_aisp.chat import _tool_formats as toolfmt
from langchain_aisp.chat._auto import auto_choice_score, rank_tools
from langchain_aisp.chat._format import OutputFormat, normalize_tool_choice
from langchain_aisp.chat._grounding import DEFAULT_GROUNDING_WEIGHT
from langchain_aisp.chat._loading import needs_tokenizer
from langchain_aisp.chat._parse import format_validity
from langchain_aisp.chat._progress import ProgressFn
from langchain_aisp.chat._render import PLAIN_STOP, RenderedPrompt
from langchain_aisp.engine.aisp import PromptResult, context_window_error
from langchain_aisp.engine.config import AISPParams, SamplingParams, check_seed

if TYPE_CHECKING:
    from langchain_aisp.chat_models import AISPChatModel

PER_CALL_FIELDS = (
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
    "reject_at",
    "keep_fraction",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "format_weight",
    "grounding_weight",
)
"""Fields of the model that a call may override (``invoke(..., temperature=0.5)``)."""

BINDING_KWARGS = (
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "strict",
    "model",
    "stream",
    "timeout",
)
"""Other per-call arguments (set by ``bind_tools`` / ``with_structured_output`` or passed directly)."""


def check_timeout(value: Any) -> float | None:
    """A call's timeout: a finite number of seconds > 0, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"timeout must be a finite number of seconds > 0 or None, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Settings:
    """A call's resolved engine settings."""

    params: AISPParams
    sampling: SamplingParams
    seed: int | None
    format_weight: float
    model: str | None
    grounding_weight: float = DEFAULT_GROUNDING_WEIGHT

    def key(self) -> tuple[Any, ...]:
        return (self.params, self.sampling, self.seed, self.format_weight, self.model, self.grounding_weight)

    def batch_key(self) -> tuple[Any, ...]:
        """What calls must share to run as one engine run (each prompt keeps its own seed)."""
        return (self.params, self.sampling, self.format_weight, self.model, self.grounding_weight)


@dataclass(frozen=True)
class Variant:
    """One engine prompt of a job: its token ids, rendered prompt (with prefill) and grammar."""

    token_ids: list[int]
    prompt: RenderedPrompt
    constraint: Any


@dataclass
class Job:
    """One call, validated and rendered: what the engine decodes for it and how to read the result."""

    messages: list[BaseMessage]
    token_ids: list[int]
    prompt: RenderedPrompt
    fmt: OutputFormat
    settings: Settings
    lm: Any
    constraint: Any = None
    """The compiled grammar of the reply (``chat._grammar.LLGuidanceConstraint``), or None for free text."""
    forced: Variant | None = None
    """Under ``tool_choice="auto"``: the forced-call prompt decoded beside the prose one (half the samples each)."""
    auto_choice: str | None = None
    """Under ``tool_choice="auto"``, set by the run: "call" or "prose" (what the choice rule took)."""
    timeout: float | None = None
    """Wall-clock limit of this call in seconds (the call's ``timeout`` argument, else the model's)."""
    deadline: float | None = None
    """``time.monotonic()`` deadline fixed by ``prepare`` (its clock starts there); None: the run's start + timeout."""
    batch_prompts: int | None = None
    """Set by the run: how many calls shared its engine run (1 when the call ran alone)."""
    conversation: groundlib.Conversation | None = None
    """Forced calls, structured output and the forced rows of ``"auto"`` with ``grounding_weight > 0``: what the
    grounding term reads (None for free text: grounding is skipped by construction)."""
    reply: replylib.ReplyPlan = replylib.PLAIN
    """Thinking and the tool-call format: how the reply is split and read (``chat/_reply.py``)."""
    max_tokens: int = 0
    """The answer's ``max_tokens`` (with a thinking budget the engine decodes more, see ``ReplyPlan``)."""

    def key(self) -> tuple[Any, ...]:
        return (tuple(self.token_ids), self.fmt.key(), self.settings.key(), id(self.lm), self.timeout)

    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one engine run: same settings, loaded model and variant count."""
        return (self.settings.batch_key(), id(self.lm), self.forced is None)

    def variants(self) -> list[Variant]:
        free = Variant(self.token_ids, self.prompt, self.constraint)
        return [free] if self.forced is None else [free, self.forced]


@dataclass
class BatchPlan:
    """The inputs of one ``batch`` call, rendered once: the first input of ``group`` to reach the engine runs
    the whole group; the per-input calls claim their job here instead of rendering it again."""

    owner: int
    """``id`` of the model whose ``batch`` made the plan (a nested call on another model does not claim)."""
    stop: list[str] | None
    """The batch's ``stop`` argument (a claim must match it)."""
    kwargs: dict[str, Any]
    """The batch's other per-call arguments (a claim must match them)."""
    jobs: list[Job]
    """One job per input that rendered (inputs that failed to render are left to their own call)."""
    group: list[int]
    """Indices into ``jobs`` of the jobs that share one engine run (the largest compatible group)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    claimed: list[bool] = field(default_factory=list)
    progress: dict[int, ProgressFn] = field(default_factory=dict)
    events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    delivered: dict[int, int] = field(default_factory=dict)
    outcomes: list[PromptResult | BaseException] | None = None
    """One per member of ``group``, set by the run."""
    claim_lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> int | None:
        """The index in ``jobs`` of the first unclaimed job of these messages and arguments, else None."""
        if stop != self.stop or kwargs != self.kwargs:
            return None
        with self.claim_lock:
            if not self.claimed:
                self.claimed = [False] * len(self.jobs)
            for i, job in enumerate(self.jobs):
                if not self.claimed[i] and job.messages == messages:
                    self.claimed[i] = True
                    return i
        return None

    def deliver(self, member: int) -> None:
        """Send the progress events of ``group[member]`` that its caller has not seen yet."""
        fn = self.progress.get(member)
        pending = self.events.get(member, [])
        start = self.delivered.get(member, 0)
        if fn is not None:
            for data in pending[start:]:
                fn(data)
            self.delivered[member] = len(pending)


BATCH_PLAN: ContextVar[BatchPlan | None] = ContextVar("langchain_aisp_batch_plan", default=None)


def check_model(model: AISPChatModel) -> None:
    """Validate the model's settings together (``ValueError`` naming the field, the bad value and the range)."""
    settings = resolve_settings(model, {})  # AISPParams / SamplingParams raise ValueError naming field and range
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
    check_timeout(model.timeout)
    replylib.check_settings(model.reasoning_tags, model.thinking_budget, model.tool_format)
    if isinstance(model.max_retries, bool) or not 0 <= model.max_retries <= 100:
        raise ValueError(f"max_retries must be an integer in [0, 100], got {model.max_retries!r}")


def resolve_settings(model: AISPChatModel, overrides: dict[str, Any]) -> Settings:
    """The model's settings with a call's ``overrides``; raises ``ValueError`` naming the field and range."""
    values = {name: overrides.get(name, getattr(model, name)) for name in PER_CALL_FIELDS}
    temperature = values["temperature"]
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    greedy = temperature == 0
    params = AISPParams(**{f.name: values[f.name] for f in dataclasses.fields(AISPParams)})
    seed = check_seed(values["seed"])
    sampling = SamplingParams(
        max_tokens=values["max_tokens"],
        temperature=1.0 if greedy else float(temperature),
        top_p=values["top_p"],
        top_k=1 if greedy else values["top_k"],
        stop=tuple(overrides["stop"] if overrides.get("stop") is not None else (model.stop or ())),
    )
    grounding_weight = values["grounding_weight"]
    if isinstance(grounding_weight, bool) or not isinstance(grounding_weight, (int, float)):
        raise ValueError(f"grounding_weight must be a finite number >= 0, got {grounding_weight!r}")
    if not (math.isfinite(grounding_weight) and grounding_weight >= 0):
        raise ValueError(f"grounding_weight must be a finite number >= 0, got {grounding_weight}")
    source = overrides.get("model", model.model if isinstance(model.model, str) else None)  # loaded objects: by lm
    return Settings(params, sampling, seed, float(values["format_weight"]), source, float(grounding_weight))


def output_format(kwargs: dict[str, Any]) -> OutputFormat:
    """The reply format of a call from its ``tools`` / ``tool_choice`` / ``response_format`` / ``strict``."""
    tools = tuple(kwargs.get("tools") or ())
    names = [t["name"] for t in tools]
    choice = normalize_tool_choice(kwargs.get("tool_choice"), names) if tools else "auto"
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
    return OutputFormat(
        tools=tools,
        tool_choice=choice,
        json_schema=schema,
        parallel_tool_calls=kwargs.get("parallel_tool_calls") is True,
        strict=strict,
    )


def grammars(fmt: OutputFormat, tool_format: toolfmt.ToolFormat = toolfmt.FORMATS["documented"]) -> list[str]:
    """The grammar(s) of a reply of ``fmt``; [] for free text.

    Forced calls and JSON: one grammar. ``tool_choice="auto"``: two, prose (no ``<``, so no
    call tag) and forced calls; each is decoded from its own prompt with half the samples, and
    :func:`_auto.auto_choice_score` decides between them (see :func:`merge_variants`).
    """
    strict = fmt.strict is not False
    if fmt.calls_tools:
        tools, parallel = list(fmt.tools), fmt.parallel_tool_calls
        if fmt.tool_choice == "auto":
            return [
                tool_format.prose_grammar(),
                tool_format.grammar(tools, choice="any", parallel=parallel, strict=strict),
            ]
        return [tool_format.grammar(tools, choice=fmt.tool_choice, parallel=parallel, strict=strict)]
    if fmt.json_schema is not None:
        return [grammarlib.json_grammar(fmt.json_schema, strict=strict)]
    return []


def unknown_arguments(names: Sequence[str], known: Sequence[str]) -> str:
    """``['temprature'] (did you mean 'temperature'?)``: the unknown names, each with its closest known name."""
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        if close:
            hints.append(f"{name!r} -> {close[0]!r}" if len(names) > 1 else repr(close[0]))
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    return f"{sorted(names)}{hint}"


def check_kwargs(kwargs: dict[str, Any]) -> None:
    """Refuse a per-call argument the model does not know, naming the closest known one."""
    known = (*PER_CALL_FIELDS, *BINDING_KWARGS)
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise TypeError(
            f"AISPChatModel got unsupported keyword argument(s) {unknown_arguments(unknown, (*known, 'stop'))}; "
            f"per-call arguments are {sorted(PER_CALL_FIELDS)} plus stop, model, timeout, tools, tool_choice, "
            "parallel_tool_calls, response_format"
        )


def build_job(model: AISPChatModel, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> Job:
    """Validate and render one call (raises ``ValueError`` / ``TypeError`` on bad input)."""
    check_kwargs(kwargs)
    out_fmt = output_format(kwargs)
    timeout = check_timeout(kwargs["timeout"]) if "timeout" in kwargs else model.timeout
    lm = model._get_lm(kwargs.get("model"))
    reply = replylib.reply_plan(
        lm.tokenizer,
        out_fmt,
        reasoning=model.reasoning,
        reasoning_tags=model.reasoning_tags,
        thinking_budget=model.thinking_budget,
        score_reasoning=model.score_reasoning,
        tool_format=model.tool_format,
    )
    reply_grammars = grammars(out_fmt, reply.tool_format)
    single = reply_grammars[0] if len(reply_grammars) == 1 else None  # forced call / JSON: prefill its start
    answer_grammar: str | list[str] | None = reply_grammars[0] if reply_grammars else None
    conversation = None
    if reply_grammars and kwargs.get("grounding_weight", model.grounding_weight):
        conversation = groundlib.Conversation.of(messages)  # the candidates, read once for the whole call
        if single is not None:  # 3 samples in 4 copy; under "auto" the term chooses among the forced-call rows
            answer_grammar = groundlib.sample_grammars(
                single, out_fmt, messages, reply.tool_format.grammar, conversation.candidates
            )
    free = replylib.render_variant(
        lm,
        messages,
        out_fmt,
        reply,
        answer_grammar,
        prefix_grammar=single,
        close=bool(single),
    )
    reply = dataclasses.replace(reply, inside=free.inside)
    prompt, constraint = free.prompt, free.constraint
    overrides = {k: kwargs[k] for k in PER_CALL_FIELDS if k in kwargs}
    answer_tokens = overrides.get("max_tokens", model.max_tokens)
    overrides["max_tokens"] = reply.engine_max_tokens(lm.tokenizer, answer_tokens)
    if isinstance(stop, str):
        stop = [stop]  # a lone string is one stop string, not one per character
    stops = list(stop if stop is not None else (model.stop or []))
    if prompt.plain:
        stops.append(PLAIN_STOP)
    overrides["stop"] = list(dict.fromkeys(stops))
    if "model" in kwargs:
        overrides["model"] = kwargs["model"]
    settings = resolve_settings(model, overrides)
    token_ids = list(lm.tokenizer(prompt.text, add_special_tokens=False).input_ids)
    limit = lm.max_context
    if limit is not None and len(token_ids) + settings.sampling.max_tokens > limit:
        raise ValueError(
            context_window_error("the conversation", len(token_ids), settings.sampling.max_tokens, limit, lm.name)
        )
    candidates = None if conversation is None else conversation.candidates
    forced = (
        None
        if len(reply_grammars) < 2
        else _forced_variant(lm, messages, out_fmt, reply, reply_grammars[1], candidates)
    )
    job = Job(list(messages), token_ids, prompt, out_fmt, settings, lm, constraint, forced, timeout=timeout)
    job.reply, job.max_tokens, job.conversation = reply, answer_tokens, conversation
    return job


def auto_rows(ranked: Sequence[str]) -> list[str]:
    """The tool of each forced-call row under ``"auto"`` (row ``i`` of the samples is entry ``i % len``): the
    most related tool every second row, the others in turn between (``[a, b, a, c, a, d]`` for 4 tools;
    ``[a]``, ``[a, b]`` for 1, 2), so every tool has a row once there are ``2 * (len - 1)`` samples."""
    if len(ranked) <= 2:
        return list(ranked)
    return [name for other in ranked[1:] for name in (ranked[0], other)]


def _forced_variant(
    lm: Any,
    messages: list[BaseMessage],
    out_fmt: OutputFormat,
    reply: replylib.ReplyPlan,
    forced_grammar: str,
    candidates: groundlib.Candidates | None = None,
) -> Variant:
    """The forced-call prompt of a ``tool_choice="auto"`` call.

    Forced-call rows of every tool, the tools most related to the request first, with arguments taken
    from the conversation, each from the candidates of its kind (the choice rule accepts no other;
    :func:`_grounding.grounded_tools`); every second row is the most related tool's (:func:`auto_rows`),
    so with 4 samples and 3+ tools it gets 2 and the grounding term chooses between them. strict=False:
    the user's own keywords were checked at bind time, values from the conversation may not satisfy all.
    ``candidates``: the call's, when the grounding term already read them (read here otherwise).
    """
    grounded = list(groundlib.grounded_tools(out_fmt, messages, candidates))
    per_tool = [
        reply.tool_format.grammar(grounded, choice=name, parallel=False, strict=False)
        for name in auto_rows(rank_tools(out_fmt, messages))
    ]
    variant = replylib.render_variant(lm, messages, out_fmt, reply, per_tool, prefix_grammar=forced_grammar)
    return Variant(
        list(lm.tokenizer(variant.prompt.text, add_special_tokens=False).input_ids), variant.prompt, variant.constraint
    )


TRACING_KWARGS = ("ls_structured_output_format",)
"""Arguments langchain-core takes off before ``_generate`` (tracing only)."""


def plan_batch(model: AISPChatModel, inputs: Sequence[LanguageModelInput], kwargs: dict[str, Any]) -> BatchPlan | None:
    """Render every input once, up front; inputs that fail to render are left to their own call (and error)."""
    stop = kwargs.get("stop")
    call_kwargs = {k: v for k, v in kwargs.items() if k != "stop" and k not in TRACING_KWARGS}
    jobs = []
    for item in inputs:
        try:
            messages = model._convert_input(item).to_messages()
            jobs.append(build_job(model, messages, stop, call_kwargs))
        except Exception:
            continue
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.batch_key(), []).append(i)
    if not groups:
        return None
    largest = max(groups.values(), key=len)
    return BatchPlan(owner=id(model), stop=stop, kwargs=call_kwargs, jobs=jobs, group=largest)


def merge_variants(
    entries: Sequence[tuple[int, Variant]], results: Sequence[PromptResult | None], jobs: Sequence[Job]
) -> list[PromptResult | None]:
    """One result per job. A job with a forced-call variant (``tool_choice="auto"``) returns that
    variant's best sample when it is a valid, grounded, new call (:func:`_auto.auto_choice_score`
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
        if forced:  # its prefill beyond the free prompt's (which the reply readers add)
            extra = variant.prompt.prefill.removeprefix(jobs[i].prompt.prefill)
            result = dataclasses.replace(
                result, text=extra + result.text, texts=[[extra + t for t in ts] for ts in result.texts]
            )
        current = merged[i]
        if current is None:
            merged[i] = result
            continue
        answer = jobs[i].reply.answer(jobs[i].prompt.prefill + result.text)
        call = auto_choice_score(answer, jobs[i].fmt, jobs[i].messages) > 0
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


def format_term(text: str, job: Job) -> float:
    """The format term of one reply (times ``format_weight``): validity, or the auto-choice rule."""
    if job.fmt.calls_tools and job.fmt.tool_choice == "auto":
        return auto_choice_score(text, job.fmt, job.messages)
    return format_validity(text, job.fmt)  # forced calls / JSON; grounding is its own term (_grounding)


def tool_binding(
    tools: Sequence[Any], tool_choice: Any, parallel_tool_calls: bool | None, strict: bool | None
) -> dict[str, Any]:
    """``bind_tools``' arguments as the per-call kwargs to bind; an unsupported schema fails here, not mid-decode."""
    formatted = [convert_to_openai_tool(t)["function"] for t in tools]
    choice = normalize_tool_choice(tool_choice, [t["name"] for t in formatted])
    bound: dict[str, Any] = {"tools": formatted, "tool_choice": choice}
    if parallel_tool_calls is not None:
        bound["parallel_tool_calls"] = parallel_tool_calls
    if strict is not None:
        bound["strict"] = strict
    fmt = OutputFormat(
        tools=tuple(formatted), tool_choice=choice, parallel_tool_calls=parallel_tool_calls is True, strict=strict
    )
    grammars(fmt)
    return bound
