"""Grounding: how much of a forced tool call's or structured output's values the conversation contains.

A small model under a grammar writes *valid* calls whose values are often invented (``customer_name=
"Your Photo"`` for "Create a customer named '你好啊集团'"). Two pieces make the values come from the
conversation when it holds them (issue 21); both apply to forced calls (``tool_choice`` = a tool
name, ``"any"``, ``"required"``), to ``with_structured_output`` and to the forced-call rows of
``tool_choice="auto"``, never to free text. What each field may copy is the candidates of its *kind*
(``chat/_spans.py``: name runs for a name, dates for a date, places after "in" / "from" for a city,
whole spans that cut no name or date for other strings, sources / destinations for from / to fields).

* **the grounding term** :func:`reply_grounding`: ``g`` in [0, 1], the mean over the reply's value
  leaves of :func:`value_grounding` (1: a value the user quoted; ``SPAN_CREDIT`` 0.9: a candidate of
  its field; ``UNFIT_CREDIT`` 0.6: another span of the conversation, e.g. a name cut short or a date
  as a place; numbers 1 when written there; 0.5 x the share of its words found there; 0: invented or
  empty), a value copied into two fields counting 0. Leaves the conversation cannot supply are left
  out: booleans, nulls, enum / const values and *generative* fields (a joke's ``setup``, a ``summary``,
  an ``answer``: :func:`is_generative`). A reply without such leaves has ``g = 1``. The chat model adds
  ``grounding_weight * g`` to the reward, beside the format term. **How it combines with the user's
  reward:** additively, so a user reward wins wherever it separates two samples by more than
  ``grounding_weight`` times their difference in ``g``. AISP's importance weights and the final choice
  both see the sum, across every iteration of the call.
* **grounded samples** :func:`sample_grammars`: three samples in four are decoded under a grammar whose
  free string fields take only their field's candidates and whose free integer / number fields only
  the conversation's numbers (:func:`grounded_schema`); the fourth follows the call's own grammar, so a
  value the conversation does not hold (a paraphrase) still has candidates. One exception: when the
  user quoted at least as many values as the schema has name fields (:func:`claims`), the name fields
  take a quoted value in *every* sample, the fourth included (a quoted literal is the value to copy;
  no reward can then choose another). ``grounding_weight=0`` turns both pieces off.

Pure functions over text and JSON values; the conversation is read once per call (:class:`Conversation`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage

from langchain_aisp._json import resolve_ref
from langchain_aisp.chat import _grammar as grammarlib
from langchain_aisp.chat._format import OutputFormat
from langchain_aisp.chat._parse import parse_json_reply, parse_tool_reply
from langchain_aisp.chat._spans import SEP as _SEP
from langchain_aisp.chat._spans import (
    Candidates,
    conversation_texts,
    field_kind,
    field_role,
    key,
    key_words,
    normalize,
    units,
)

__all__ = ["Candidates", "normalize", "units"]

DEFAULT_GROUNDING_WEIGHT = 1.0
"""Default weight of the grounding term (reward units; the term is ``weight * g`` with ``g`` in [0, 1])."""

SPAN_CREDIT = 0.9
"""Grounding of a string that is a candidate of its field (``_spans``: a name run for a name, a date for a
date, a whole span for text) but not one the user put in quotes (those score 1)."""
UNFIT_CREDIT = 0.6
"""Grounding of a string that is a span of the conversation but not a candidate of its field: cut short
(``"21"`` of ``21 August``), of another kind (``"Book a call"`` as a place, a bare number as a product), or
marked for the other direction (``from_currency="EUR"`` in "Convert 100 USD to EUR")."""
OVERLAP_FACTOR = 0.0
"""Factor on the grounding of a value that repeats another field's value, contains it or is contained in it
(one span copied into two fields: at most one is right, and which is unknown, so neither earns credit)."""
PARTIAL_CREDIT = 0.5
"""Grounding of a string none of whose spans is in the conversation, times the share of its words that are."""

GENERATIVE_KEYS = frozenset(
    "joke setup punchline summary summarize story poem reason reasoning explanation explain answer response reply "
    "message content text body description comment comments feedback advice recommendation suggestion translation "
    "sentence paragraph essay note notes opinion review thought thoughts justification rationale".split()
)
"""Words of a field name marking a value to compose, not to copy (the field is left out of grounding)."""

GENERATIVE_DESCRIPTIONS = frozenset(
    "joke punchline summary story poem explanation reasoning translation essay opinion advice justification".split()
)
"""Words of a field description with the same meaning (narrower: descriptions mention "text", "name", ...)."""


@dataclass(frozen=True)
class Conversation:
    """What values may be copied from: the user and tool text of a conversation, read once per call."""

    joined: str
    """The normalised units of the text joined by a separator (with one at both ends), for span search."""
    words: frozenset[str]
    """The set of those units."""
    numbers: frozenset[float]
    """The numbers written in the text (``1,500`` is 1500)."""
    quoted: tuple[str, ...] = ()
    """The values the user put in quotes, as written (the literals most worth copying)."""
    quoted_units: frozenset[str] = frozenset()
    """The same, normalised and joined like ``joined``."""
    candidates: Candidates = field(default_factory=Candidates)
    """The values each kind of field may take (``_spans``)."""

    @classmethod
    def of(cls, messages: Sequence[BaseMessage]) -> Conversation:
        """The user and tool text of ``messages`` (the text the ``"auto"`` rule reads too)."""
        found = units("\n".join(conversation_texts(messages)))
        candidates = Candidates.of(messages)
        return cls(
            _SEP + _SEP.join(found) + _SEP,
            frozenset(found),
            frozenset(float(x) for x in candidates.numbers),
            candidates.quoted,
            frozenset(_SEP.join(units(q)) for q in candidates.quoted),
            candidates,
        )


def value_grounding(value: Any, conversation: Conversation, kind: str = "text", role: str | None = None) -> float:
    """How grounded one string or number is, in [0, 1], as the value of a field of ``kind`` and direction
    ``role`` (:func:`langchain_aisp.chat._spans.field_kind`, ``field_role``).

    Strings: 1 when it is (after :func:`normalize`) a value the user put in quotes; ``SPAN_CREDIT`` when it
    is one of the field's candidates (:meth:`Candidates.fits`); ``UNFIT_CREDIT`` when its normalised units
    are another contiguous span of the conversation's; otherwise ``PARTIAL_CREDIT`` x the share (by
    characters) of its units found anywhere in the conversation; 0 when empty. Numbers: 1 when the
    conversation writes that number, else 0. Anything else: 1.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return 1.0
    if not isinstance(value, str):
        return 1.0 if float(value) in conversation.numbers else 0.0
    mine = units(value)
    if not mine:
        return 0.0
    if _SEP.join(mine) in conversation.quoted_units:
        return 1.0
    if _SEP + _SEP.join(mine) + _SEP in conversation.joined:
        return SPAN_CREDIT if conversation.candidates.fits(value, kind, role) else UNFIT_CREDIT
    covered = sum(len(u) for u in mine if u in conversation.words)
    return PARTIAL_CREDIT * covered / sum(len(u) for u in mine)


def is_generative(name: str, schema: Any) -> bool:
    """Whether the field ``name`` (with its ``schema``) holds a value to compose rather than copy: its name
    has a word of ``GENERATIVE_KEYS`` (``setup``, ``punchline``, ``summary``, ``answer``, ...) or its
    description one of ``GENERATIVE_DESCRIPTIONS``."""
    if key_words(name) & GENERATIVE_KEYS:
        return True
    description = schema.get("description") if isinstance(schema, dict) else None
    return isinstance(description, str) and bool(set(re.findall(r"\w+", description.lower())) & GENERATIVE_DESCRIPTIONS)


def _fixed(schema: dict[str, Any]) -> bool:
    """A schema whose value comes from the schema itself (enum / const), not from the conversation."""
    options = schema.get("anyOf") or schema.get("oneOf") or []
    return "enum" in schema or "const" in schema or (bool(options) and all(_fixed(o) for o in options if o))


Leaf = tuple[Any, str, "str | None"]
"""A value leaf with its field's kind and direction."""


def _collect(value: Any, schema: Any, root: dict[str, Any], out: list[Leaf], name: str = "") -> None:
    """Append every leaf of ``value`` that the conversation could supply, with its field's kind and role
    (array items are read as their array's field)."""
    node = resolve_ref(schema, root)
    if _fixed(node) or value is None or isinstance(value, bool):
        return
    if isinstance(value, dict):
        found = node.get("properties")
        props: dict[str, Any] = found if isinstance(found, dict) else {}
        for prop, item in value.items():
            sub = resolve_ref(props.get(prop, {}), root)
            if not is_generative(str(prop), sub):
                _collect(item, sub, root, out, str(prop))
    elif isinstance(value, list):
        for item in value:
            _collect(item, node.get("items", {}), root, out, name)
    elif isinstance(value, (str, int, float)):
        out.append((value, field_kind(name), field_role(name)))


def _overlaps(leaves: Sequence[Any]) -> list[bool]:
    """For each leaf: whether another leaf has the same normalised text or contains it, or it contains
    another (``name="36", age=36``; ``customer="Chloe"``, ``product="Chloe Dubois"``): a value copied twice."""
    keys = [key(str(v)) for v in leaves]
    return [
        any(j != i and len(b) > 2 and len(a) > 2 and (a in b or b in a) for j, b in enumerate(keys))  # non-empty
        for i, a in enumerate(keys)
    ]


def grounding(value: Any, schema: dict[str, Any] | None, conversation: Conversation) -> float:
    """The mean :func:`value_grounding` of the leaves of ``value`` (validated against ``schema``) that the
    conversation could supply, each as a value of its field's kind; a leaf that repeats or contains another
    (or is contained in one) counts ``OVERLAP_FACTOR`` times its grounding (one span copied into two
    fields); 1.0 when there are none (nothing to ground, nothing invented)."""
    leaves: list[Leaf] = []
    root = schema if isinstance(schema, dict) else {}
    _collect(value, root, root, leaves)
    scores = [
        value_grounding(v, conversation, kind, role) * (OVERLAP_FACTOR if twice else 1.0)
        for (v, kind, role), twice in zip(leaves, _overlaps([v for v, _, _ in leaves]), strict=True)
    ]
    return sum(scores) / len(scores) if scores else 1.0


def reply_grounding(text: str, fmt: OutputFormat, conversation: Conversation) -> float:
    """``g`` of one reply under ``fmt``: the mean :func:`grounding` of its valid tool calls (forced calls and
    the forced-call rows of ``"auto"``), or of its JSON object (structured output). A reply with no valid
    call / no JSON object scores 0 (the format term already penalises it)."""
    if fmt.calls_tools:
        calls = parse_tool_reply(text, fmt).tool_calls
        if not calls:
            return 0.0
        params = {t["name"]: t.get("parameters") or {} for t in fmt.tools}
        return sum(grounding(c["args"], params.get(c["name"]), conversation) for c in calls) / len(calls)
    if fmt.json_schema is not None:
        value, error = parse_json_reply(text)
        return 0.0 if error is not None else grounding(value, fmt.json_schema, conversation)
    return 1.0


# --- the grammar of the grounded samples -------------------------------------------------

Choose = Callable[[str, "str | None"], "Sequence[str] | None"]
"""``(kind, role) -> the values a free string field of that kind / direction may take`` (None: left free)."""


def _restrict(schema: dict[str, Any], spans: Sequence[str] | None, numbers: Sequence[float]) -> dict[str, Any] | None:
    """A free string / integer / number schema restricted to ``spans`` / ``numbers``; None when it is not
    free (enum, const, pattern, format, other types) or nothing fits."""
    if any(k in schema for k in ("enum", "const", "pattern", "format", "$ref", "anyOf", "oneOf", "allOf")):
        return None
    kind = schema.get("type")
    rest = {k: v for k, v in schema.items() if k not in ("type", "minLength", "maxLength", "minimum", "maximum")}
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength", float("inf"))
        values: list[Any] = [s for s in spans or () if low <= len(s) <= high]
    elif kind in ("integer", "number"):
        low, high = schema.get("minimum", -float("inf")), schema.get("maximum", float("inf"))
        fits = [x for x in numbers if low <= x <= high and (kind == "number" or x.is_integer())]
        values = [int(x) if x.is_integer() else x for x in fits]
    else:
        return None
    return {**rest, "enum": values} if values else None


def restrict_fields(
    schema: Any,
    choose: Choose,
    numbers: Sequence[float],
    *,
    generative: bool = False,
    root: dict[str, Any] | None = None,
    name: str = "",
) -> tuple[Any, bool]:
    """(a copy of ``schema`` whose free string fields take only ``choose(kind, role)`` of the field and whose
    free integer / number fields only ``numbers``, whether anything was restricted). Object properties,
    array items (read as their array's field) and ``anyOf`` / ``oneOf`` options (``Optional[str]``) are
    followed; local ``$ref`` targets are restricted in ``$defs``. Generative fields stay free unless
    ``generative`` (then they are read as ``text``)."""
    if not isinstance(schema, dict):
        return schema, False
    root = schema if root is None else root
    free = not any(k in schema for k in ("enum", "const", "pattern", "format", "$ref", "anyOf", "oneOf", "allOf"))
    if free and schema.get("type") in ("string", "integer", "number"):
        spans = choose(field_kind(name), field_role(name)) if schema.get("type") == "string" else None
        restricted = _restrict(schema, spans, numbers)
        if restricted is not None:
            return restricted, True
    out, changed = dict(schema), False

    def follow(sub: Any, field: str) -> Any:
        nonlocal changed
        new, did = restrict_fields(sub, choose, numbers, generative=generative, root=root, name=field)
        changed = changed or did
        return new

    if isinstance(schema.get("properties"), dict):
        out["properties"] = {
            k: sub
            if not generative and is_generative(str(k), sub)
            else follow(sub, "text" if is_generative(str(k), sub) else str(k))
            for k, sub in schema["properties"].items()
        }
    for key_ in ("anyOf", "oneOf"):
        if isinstance(schema.get(key_), list):
            out[key_] = [follow(o, name) for o in schema[key_]]
    if isinstance(schema.get("items"), dict):
        out["items"] = follow(schema["items"], name)
    for key_ in ("$defs", "definitions"):
        if isinstance(schema.get(key_), dict):
            out[key_] = {n: follow(d, "") for n, d in schema[key_].items()}
    return out, changed


def string_field_kinds(schema: Any) -> list[str]:
    """The kinds of the free, non-generative string fields of ``schema`` (one entry per field)."""
    found: list[str] = []

    def record(kind: str, role: str | None) -> None:
        found.append(kind)

    restrict_fields(schema, record, ())
    return found


def grounded_schema(schema: Any, candidates: Candidates, mode: str = "spans", **kw: Any) -> tuple[Any, bool]:
    """``schema`` with its free fields restricted to values of the conversation (:func:`restrict_fields`):

    * ``"spans"``: every string field takes the candidates of its kind and direction
      (:meth:`Candidates.strings`), every number field the conversation's numbers;
    * ``"quoted"``: the same, except that the name fields (or, when there are none, the text fields)
      take only the values the user quoted;
    * ``"claim"``: only those fields are restricted (to the quoted values), every other field stays free.
    """
    kinds = string_field_kinds(schema)
    quoted_kind = "name" if "name" in kinds else "text"  # places are rarely quoted
    quoted = list(candidates.quoted)

    def choose(kind: str, role: str | None) -> Sequence[str] | None:
        if mode != "spans" and kind == quoted_kind and quoted:
            return quoted
        apart = "name" in kinds or "place" in kinds  # a text field takes no name run (it is the names')
        return None if mode == "claim" else candidates.strings(kind, role, apart)

    return restrict_fields(schema, choose, () if mode == "claim" else candidates.numbers, **kw)


def claims(schema: Any, candidates: Candidates) -> bool:
    """Whether the user's quoted values claim the name fields of ``schema`` in *every* sample: the user quoted
    at least as many values as the schema has name fields (or text fields, when it has no name field),
    and it has one (``Create a customer named '你好啊集团'`` with a ``customer_name`` field)."""
    kinds = string_field_kinds(schema)
    count = kinds.count("name") or kinds.count("text")
    return bool(candidates.quoted) and 0 < count <= len(candidates.quoted)


ToolGrammar = Callable[..., str]
"""``(tools, *, choice, parallel, strict) -> grammar``: the tool-call grammar of the call's tool format."""


def _grammar(fmt: OutputFormat, candidates: Candidates, mode: str, tool_grammar: ToolGrammar) -> str | None:
    """The grammar of ``fmt`` with its free fields restricted (:func:`grounded_schema` ``mode``); None if
    none is (in ``"claim"`` mode: also when the quoted values do not claim every tool's fields)."""
    if fmt.forces_call:
        tools, changed = [], False
        for tool in fmt.tools:
            params = tool.get("parameters") or {}
            if mode == "claim" and not claims(params, candidates):
                return None
            params, did = grounded_schema(params, candidates, mode)
            tools.append({**tool, "parameters": params})
            changed = changed or did
        if not changed:
            return None
        return tool_grammar(tools, choice=fmt.tool_choice, parallel=fmt.parallel_tool_calls, strict=False)
    if fmt.json_schema is not None and not fmt.calls_tools:
        if mode == "claim" and not claims(fmt.json_schema, candidates):
            return None
        schema, changed = grounded_schema(fmt.json_schema, candidates, mode)
        return grammarlib.json_grammar(schema, strict=False) if changed else None
    return None


GROUNDED_CYCLE = 4
"""Samples per cycle of grammars: sample 0 of every 4 follows the call's own grammar, the other 3 a grounded one."""


def sample_grammars(
    grammar: str,
    fmt: OutputFormat,
    messages: Sequence[BaseMessage],
    tool_grammar: ToolGrammar = grammarlib.tool_call_grammar,
    candidates: Candidates | None = None,
) -> list[str]:
    """The grammar of each sample (sample ``i`` follows entry ``i % len``): ``[grammar]`` when nothing can
    be grounded (:func:`grounded_grammars` is empty); else one sample in ``GROUNDED_CYCLE`` follows
    ``grammar`` (or, when the user's quoted values claim the name fields, :func:`claims`, ``grammar`` with
    those fields restricted to the quoted values) and the others the grounded grammars, in turn (quoted
    values, every span, quoted values when the user quoted some): 2 samples are one free and one
    grounded, 4 are one free and three grounded. ``candidates``: those of ``messages`` (read if None)."""
    candidates = candidates if candidates is not None else Candidates.of(messages)
    grounded = grounded_grammars(fmt, messages, tool_grammar, candidates)
    if not grounded:
        return [grammar]
    first = _grammar(fmt, candidates, "claim", tool_grammar) or grammar
    return [first, *(grounded[i % len(grounded)] for i in range(GROUNDED_CYCLE - 1))]


def grounded_grammars(
    fmt: OutputFormat,
    messages: Sequence[BaseMessage],
    tool_grammar: ToolGrammar = grammarlib.tool_call_grammar,
    candidates: Candidates | None = None,
) -> list[str]:
    """The grammars of the grounded samples of a forced call or structured output (see the module
    docstring): when the user quoted values, one where the name fields (or the text fields) take only
    those (the literals a user quotes are the ones to copy) and one with every field's candidates
    (:func:`grounded_schema` ``"quoted"``, ``"spans"``); else the latter alone. [] when no field can be
    restricted (nothing to copy, or only generative / enum fields, or ``tool_choice="auto"``, which has
    its own forced-call rows, :func:`grounded_tools`). ``strict=False``: values from the conversation need
    not satisfy keywords llguidance cannot enforce (the reply is validated after)."""
    candidates = candidates if candidates is not None else Candidates.of(messages)
    modes = ["quoted", "spans"] if candidates.quoted else ["spans"]
    found = [_grammar(fmt, candidates, mode, tool_grammar) for mode in modes]
    return [g for g in dict.fromkeys(found) if g is not None]


def grounded_tools(
    fmt: OutputFormat, messages: Sequence[BaseMessage], candidates: Candidates | None = None
) -> tuple[dict[str, Any], ...]:
    """The bound tools with every free string and number argument (generative ones too: the ``"auto"`` rule
    accepts only calls whose values come from the conversation) restricted to the candidates of its kind
    (:func:`grounded_schema` ``"spans"``): the forced-call rows of ``tool_choice="auto"`` propose calls
    that the choice rule can accept, and the model picks which candidate fills which argument.
    ``candidates``: those of ``messages`` (read if None)."""
    if candidates is None:
        candidates = Candidates.of(messages)
    return tuple(
        {**t, "parameters": grounded_schema(t.get("parameters") or {}, candidates, generative=True)[0]}
        for t in fmt.tools
    )
