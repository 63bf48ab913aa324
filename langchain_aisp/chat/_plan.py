"""Call planning: one call -> a :class:`Job`, and the plan of a ``batch`` call.

A job holds what one call decodes: its settings, rendered prompt and token ids, grammar, and under
``tool_choice="auto"`` a second, forced-call variant. Every function here takes data: the chat model's
settings (:class:`ModelSettings`), the loaded ``lm``, the messages and the call's arguments.

A ``batch`` call renders its inputs once (:func:`plan_batch`) and gives input ``i`` the :class:`Slot`
``(plan, i)`` through that input's own config (``configurable[SLOT_KEY]``, a private key LangChain
neither traces nor copies into metadata); the per-input call takes its job from the slot, and the jobs of
the plan's group share one engine run (``_execute.run_member``). ``BATCH_SLOT`` is a context variable (not
shared state) that carries the slot from ``invoke`` to ``_generate`` of the same call, which takes it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import threading
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.utils.function_calling import convert_to_openai_tool

from langchain_aisp.chat import _grammar as grammarlib
from langchain_aisp.chat import _grounding as groundlib
from langchain_aisp.chat import _reply as replylib
from langchain_aisp.chat import _tool_formats as toolfmt
from langchain_aisp.chat._auto import Turn, auto_rows, rank_tools
from langchain_aisp.chat._format import OutputFormat, normalize_tool_choice
from langchain_aisp.chat._grounding import DEFAULT_GROUNDING_WEIGHT
from langchain_aisp.chat._render import PLAIN_STOP, RenderedPrompt
from langchain_aisp.engine.aisp import PromptResult, context_window_error
from langchain_aisp.engine.config import AISPParams, SamplingParams, check_seed

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
class ModelSettings:
    """The chat model's fields that shape a call, as data (``AISPChatModel`` builds it; calls override it)."""

    defaults: Mapping[str, Any]
    """The model's value of each of ``PER_CALL_FIELDS``."""
    stop: tuple[str, ...] = ()
    source: str | None = None
    """The model as a hub id or path; None when it was given as loaded objects (calls then differ by ``lm``)."""
    timeout: float | None = None
    reasoning: bool | None = None
    reasoning_tags: Any = None
    thinking_budget: int | None = None
    score_reasoning: bool = False
    tool_format: str = "auto"


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
    """Forced calls and structured output with ``grounding_weight > 0``, and every ``"auto"`` call: the values the
    grounding term and the auto rule read (None for free text: grounding is skipped by construction)."""
    turn: Turn | None = None
    """Under ``tool_choice="auto"``: what the choice rule reads of the conversation (read once per call)."""
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
    """The inputs of one ``batch`` call, rendered once: ``jobs[i]`` is input ``i``'s job (None when it did not
    render: its own call raises the error); the inputs of ``group`` share one engine run, made by the first of
    their calls to get there (``_execute.run_member``)."""

    jobs: list[Job | None]
    group: list[int]
    """Input indices of the jobs that share one engine run (the largest compatible group)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: dict[int, PromptResult | BaseException] | None = None
    """Input index -> outcome, for every member of ``group``; set by the run."""
    events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    """The progress events of the members that did not run the group, kept for their own calls."""


@dataclass(frozen=True)
class Slot:
    """Input ``index`` of the batch ``plan``."""

    plan: BatchPlan
    index: int

    @property
    def job(self) -> Job | None:
        return self.plan.jobs[self.index]

    @property
    def shared(self) -> bool:
        """Whether this input's job shares the group's engine run."""
        return self.index in self.plan.group


SLOT_KEY = "__langchain_aisp_batch_slot"
"""The ``configurable`` key of a batch input's :class:`Slot` (``__`` keys are private to the runnable)."""

BATCH_SLOT: ContextVar[Slot | None] = ContextVar("langchain_aisp_batch_slot", default=None)
"""The slot of the call being made: set by ``invoke`` from its config, taken by that call's ``_generate``."""


def slot_configs(plan: BatchPlan | None, configs: list[RunnableConfig]) -> list[RunnableConfig]:
    """Each input's config with its slot of ``plan`` (the configs unchanged when there is no plan)."""
    if plan is None:
        return configs
    return [
        {**config, "configurable": {**(config.get("configurable") or {}), SLOT_KEY: Slot(plan, i)}}  # type: ignore[typeddict-item]
        for i, config in enumerate(configs)
    ]


def slot_of(config: RunnableConfig | None) -> Slot | None:
    """The batch slot a config carries (None: not an input of a ``batch`` call)."""
    found = ((config or {}).get("configurable") or {}).get(SLOT_KEY)
    return found if isinstance(found, Slot) else None


def take_slot() -> Slot | None:
    """The current call's batch slot, taken: calls made while it runs (a judge reward on this very model)
    run on their own."""
    slot = BATCH_SLOT.get()
    if slot is not None:
        BATCH_SLOT.set(None)
    return slot


def resolve_settings(model: ModelSettings, overrides: dict[str, Any]) -> Settings:
    """The model's settings with a call's ``overrides``; raises ``ValueError`` naming the field and range."""
    values = {name: overrides.get(name, model.defaults[name]) for name in PER_CALL_FIELDS}
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
        stop=tuple(overrides["stop"] if overrides.get("stop") is not None else model.stop),
    )
    grounding_weight = values["grounding_weight"]
    if isinstance(grounding_weight, bool) or not isinstance(grounding_weight, (int, float)):
        raise ValueError(f"grounding_weight must be a finite number >= 0, got {grounding_weight!r}")
    if not (math.isfinite(grounding_weight) and grounding_weight >= 0):
        raise ValueError(f"grounding_weight must be a finite number >= 0, got {grounding_weight}")
    source = overrides.get("model", model.source)  # loaded objects: told apart by lm
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
    :func:`_auto.auto_choice_score` decides between them (``_execute.merge_variants``).
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


def build_job(
    model: ModelSettings, lm: Any, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
) -> Job:
    """Validate and render one call of ``lm`` (raises ``ValueError`` / ``TypeError`` on bad input).

    The conversation's values are read once (grounding, the ``"auto"`` rule), then every engine prompt of the
    call (the free one and, under ``"auto"``, the forced-call one) is rendered with its constraint.
    """
    check_kwargs(kwargs)
    out_fmt = output_format(kwargs)
    timeout = check_timeout(kwargs["timeout"]) if "timeout" in kwargs else model.timeout
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
    auto = len(reply_grammars) == 2
    grounds = bool(kwargs.get("grounding_weight", model.defaults["grounding_weight"]))
    conversation = groundlib.Conversation.of(messages) if reply_grammars and (grounds or auto) else None
    answer_grammar: str | list[str] | None = reply_grammars[0] if reply_grammars else None
    if single is not None and grounds and conversation is not None:  # 3 samples in 4 copy the conversation
        answer_grammar = groundlib.sample_grammars(
            single, out_fmt, messages, reply.tool_format.grammar, conversation.candidates
        )
    turn = Turn.of(messages, conversation) if auto and conversation is not None else None
    variants = [(answer_grammar, single, bool(single))]  # (grammar, prefix grammar, close)
    if turn is not None:
        # The forced-call rows of "auto": every tool's, the tools most related to the request first, every
        # second row the most related one's (auto_rows), its arguments restricted to the conversation's
        # candidates of their kind (the choice rule accepts no other). strict=False: the user's own keywords
        # were checked at bind time; values from the conversation may not satisfy them all.
        grounded = list(groundlib.grounded_tools(out_fmt, messages, turn.conversation.candidates))
        rows = auto_rows(rank_tools(out_fmt, turn))
        per_row = [reply.tool_format.grammar(grounded, choice=name, parallel=False, strict=False) for name in rows]
        variants.append((per_row, reply_grammars[1], True))
    rendered = [  # the free prompt, then the forced-call prompt of "auto"
        replylib.render_variant(lm, messages, out_fmt, reply, grammar, prefix_grammar=prefix, close=close)
        for grammar, prefix, close in variants
    ]
    free = rendered[0]
    reply = dataclasses.replace(reply, inside=free.inside, forced=free.forced)
    overrides = {k: kwargs[k] for k in PER_CALL_FIELDS if k in kwargs}
    answer_tokens = overrides.get("max_tokens", model.defaults["max_tokens"])
    overrides["max_tokens"] = reply.engine_max_tokens(lm.tokenizer, answer_tokens)
    if isinstance(stop, str):
        stop = [stop]  # a lone string is one stop string, not one per character
    stops = list(stop if stop is not None else model.stop)
    if free.prompt.plain:
        stops.append(PLAIN_STOP)
    overrides["stop"] = list(dict.fromkeys(stops))
    if "model" in kwargs:
        overrides["model"] = kwargs["model"]
    settings = resolve_settings(model, overrides)
    token_ids = _token_ids(lm, free.prompt)
    limit = lm.max_context
    if limit is not None and len(token_ids) + settings.sampling.max_tokens > limit:
        raise ValueError(
            context_window_error("the conversation", len(token_ids), settings.sampling.max_tokens, limit, lm.name)
        )
    forced = None
    if len(rendered) == 2:
        forced = Variant(_token_ids(lm, rendered[1].prompt), rendered[1].prompt, rendered[1].constraint)
    job = Job(list(messages), token_ids, free.prompt, out_fmt, settings, lm, free.constraint, forced, timeout=timeout)
    job.reply, job.max_tokens, job.conversation, job.turn = reply, answer_tokens, conversation, turn
    return job


def _token_ids(lm: Any, prompt: RenderedPrompt) -> list[int]:
    return list(lm.tokenizer(prompt.text, add_special_tokens=False).input_ids)


TRACING_KWARGS = ("ls_structured_output_format",)
"""Arguments langchain-core takes off before ``_generate`` (tracing only)."""


def plan_batch(
    model: ModelSettings, lm: Any, conversations: Sequence[list[BaseMessage] | None], kwargs: dict[str, Any]
) -> BatchPlan | None:
    """Render every input of a ``batch`` once, up front (None: no input rendered). An input that failed to
    convert (None) or to render is left to its own call, which raises its error."""
    stop = kwargs.get("stop")
    call_kwargs = {k: v for k, v in kwargs.items() if k != "stop" and k not in TRACING_KWARGS}
    jobs: list[Job | None] = []
    for messages in conversations:
        try:
            jobs.append(None if messages is None else build_job(model, lm, messages, stop, call_kwargs))
        except Exception:
            jobs.append(None)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, job in enumerate(jobs):
        if job is not None:
            groups.setdefault(job.batch_key(), []).append(i)
    if not groups:
        return None
    return BatchPlan(jobs, max(groups.values(), key=len))


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
