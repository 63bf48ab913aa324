"""The llguidance adapter: JSON-schema and tool-call grammars behind :mod:`langchain_aisp.engine.constraints`.

Why llguidance: see ``docs/grammar.md`` (measured against xgrammar and outlines-core on
SmolLM2's tokenizer: full JSON-schema coverage, ~0.6 ms of mask work per step at batch 32
on one CPU core, no dependencies, a 3 MB wheel, matchers usable from any thread).

Grammars are built as text (llguidance's Lark dialect with ``%json`` for embedded schemas)
and validated *without* a tokenizer, so an unsupported schema fails when it is bound
(``bind_tools`` / ``with_structured_output``) with llguidance's message naming the construct.
They are compiled against a tokenizer when a call runs.

Replies finish within ``max_tokens`` where they can: a matcher built with ``close=True``
(tool calls and JSON; not prose) keeps, for its last ``CLOSE_HORIZON`` tokens, the length
of its *closing path* (end the current string, add required keys with minimal values, close
every bracket, then EOS: forced bytes first, otherwise the first of a short list of closing
tokens the grammar allows). Within ``CLOSE_SLACK`` tokens of needing the whole remaining
budget, tokens that open more structure (containing ``,``, ``{`` or ``[``) are withheld
unless the path needs them; once the path needs every remaining token, only its next token
is allowed. A reply is then cut by ``max_tokens`` only when even the shortest completion
does not fit.

JSON is generated compactly with the separators models are trained on (``", "`` and
``": "``), no free whitespace, raw Unicode in strings (no ``\\uXXXX`` escapes). Objects
that list ``properties`` and say nothing about ``additionalProperties`` are closed
(``additionalProperties: false``): a key the schema does not name is never generated.

Module-level caches (documented, bounded, guarded by ``_LOCK``):

* ``_TOKENIZERS``: one ``LLTokenizer`` per (Hugging Face tokenizer, vocabulary size, EOS ids),
  held weakly by the tokenizer object (~2 s to build for a 49k vocabulary, once);
* ``_COMPILED``: the compiled matcher of each (LLTokenizer, grammar, prefill) pair, an LRU of
  ``COMPILED_CACHE_SIZE`` entries; every decoding row gets a ``deep_copy`` of it (microseconds).
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import torch

from langchain_aisp._json import close_objects
from langchain_aisp.chat._format import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from langchain_aisp.engine.constraints import bitmask_words
from langchain_aisp.errors import ConstraintError, GrammarError

JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
COMPILED_CACHE_SIZE = 128
CLOSE_HORIZON = 64
"""Tokens before ``max_tokens`` from which a closing matcher tracks its closing path."""
CLOSE_SLACK = 8
"""Within this many tokens of its closing path filling the budget, a reply opens no more structure."""
CLOSERS = ('"', "}", "]", ",", "0", "1", "false", "null", "{", "[", "\n")
"""Tokens tried, in order, to extend a closing path where the grammar forces nothing."""

_LOCK = threading.Lock()
_TOKENIZERS: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()
_COMPILED: OrderedDict[tuple[int, str, str], tuple[Any, Any]] = OrderedDict()


# --- grammar text -----------------------------------------------------------------------


def _with_options(schema: dict[str, Any], strict: bool) -> dict[str, Any]:
    options = dict(JSON_OPTIONS)
    if not strict:
        options["lenient"] = True  # keywords llguidance cannot enforce are dropped instead of refused
    return {**close_objects(schema), "x-guidance": options}


def _check(grammar: str, what: str) -> str:
    error = llguidance.LLMatcher.validate_grammar(grammar, None)
    if error and not error.startswith("WARNING"):
        lines = error.strip().splitlines()
        detail = next((line.strip() for line in lines if "JSON schema" in line or "Unimplemented" in line), lines[0])
        raise GrammarError(
            f"{what} cannot be enforced while decoding: {detail} "
            "(pass strict=False to drop the keywords the grammar cannot enforce; the reply is still validated "
            "against the full schema after decoding)"
        )
    return grammar


def json_grammar(schema: dict[str, Any], *, strict: bool = True) -> str:
    """The grammar of one JSON value that validates against ``schema`` (``{"type": "object"}`` = any object)."""
    if not isinstance(schema, dict):
        raise GrammarError(f"a JSON schema must be a dict, got {type(schema).__name__}")
    grammar = llguidance.LLMatcher.grammar_from_json_schema(_with_options(schema, strict))
    return _check(grammar, "the JSON schema")


@dataclass(frozen=True)
class CallSyntax:
    """How a reply writes its tool calls (a chat template's own format; see ``chat/_tool_formats.py``).

    A reply of calls is ``tag prefix call (separator call)* suffix`` (one call unless parallel), each
    call ``call_open {"name": ..., <args_key>: {...}} call_close``, or with ``name_sep``
    ``call_open <name> name_sep {...} call_close``.
    """

    call_open: str = TOOL_CALL_OPEN + "\n"
    """Text before each call's JSON object."""
    call_close: str = "\n" + TOOL_CALL_CLOSE
    """Text after each call's JSON object."""
    separator: str = "\n"
    """Text between two calls (parallel calls)."""
    args_key: str = "arguments"
    """The key of the arguments object ("parameters" for Llama 3.1+)."""
    tag: str = ""
    """A marker before all calls (Mistral's ``[TOOL_CALLS]``)."""
    prefix: str = ""
    """Text after ``tag``, before the first call (Mistral v0.3: ``" ["``, Nemo: ``"["``; read from the template)."""
    suffix: str = ""
    """Text after the last call (Mistral: ``"]"``)."""
    tokens: tuple[tuple[str, int], ...] = ()
    """(text, token id) of the tokenizer's added tokens that occur in this syntax's texts (``<tool_call>`` of
    Qwen, ``[TOOL_CALLS]`` of Mistral; :func:`added_tokens_in`): the grammar asks for each as its token."""
    name_sep: str | None = None
    """None: the name is a key of the call's JSON object; else the call writes its name before its arguments
    object, this text between them (DeepSeek: ``"\\n```json\\n"``)."""

    def texts(self) -> tuple[str, ...]:
        """The fixed texts of a reply of calls (where a tag that is one token can occur)."""
        return (
            self.call_open,
            self.call_close,
            self.separator,
            self.tag,
            self.prefix,
            self.suffix,
            self.name_sep or "",
        )


HERMES = CallSyntax()
"""The Hermes / Qwen ``<tool_call>`` format (the documented one)."""


def _literal(text: str, tokens: Sequence[tuple[str, int]] = ()) -> str:
    """``text`` as Lark items: each occurrence of a token's text as that token (``<[id]>``), the rest as strings."""
    if not text:
        return ""
    if not tokens:
        return json.dumps(text, ensure_ascii=False)
    ids = dict(tokens)
    pattern = "|".join(re.escape(t) for t in sorted(ids, key=len, reverse=True))
    pieces = re.split(f"({pattern})", text)  # odd positions: the tokens' texts
    return " ".join(
        f"<[{ids[piece]}]>" if i % 2 else json.dumps(piece, ensure_ascii=False)
        for i, piece in enumerate(pieces)
        if piece
    )


def added_tokens_in(tokenizer: Any, texts: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """(text, id) of each added token of ``tokenizer`` whose text occurs in one of ``texts``.

    The tokenizer writes an added token's text as that one token wherever it occurs, and llguidance
    treats every added token as special (its bytes never match grammar text): a grammar must ask for
    it by id (``<[id]>``). Decided from the tokenizer's own added vocabulary, special or not (Qwen's
    ``<tool_call>`` is added but not special; Mistral-Nemo's ``[TOOL_CALLS]`` is special but missing
    from ``all_special_ids``); a text the tokenizer does not encode as exactly that token is left as text.
    """
    added: dict[str, int] = getattr(tokenizer, "get_added_vocab", dict)()
    found = []
    for text, token in added.items():
        if text and any(text in t for t in texts):
            if list(tokenizer(text, add_special_tokens=False).input_ids) == [token]:
                found.append((text, int(token)))
    return tuple(sorted(found, key=lambda item: item[1]))


def _params_schema(tool: dict[str, Any]) -> Any:
    params = tool.get("parameters") or {"type": "object", "properties": {}}
    if isinstance(params, dict) and params.get("type") == "object" and not params.get("properties"):
        params = {**params, "properties": {}}  # no arguments: exactly {}
    return params


def _call_schema(tool: dict[str, Any], args_key: str = "arguments") -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool["name"]}, args_key: _params_schema(tool)},
        "required": ["name", args_key],
        "additionalProperties": False,
    }


def tool_call_grammar(
    tools: Sequence[dict[str, Any]],
    *,
    choice: str,
    parallel: bool = False,
    strict: bool = True,
    syntax: CallSyntax = HERMES,
) -> str:
    """The grammar of a reply under ``tool_choice``.

    ``choice`` is "any" (one or more calls of any bound tool), a tool name (calls of that
    tool), or "auto" (either prose without ``<`` characters, or prose followed by calls).
    Each call is ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``;
    with ``parallel`` several calls follow each other, separated by a newline. ``syntax``: another
    call format (a chat template's own, :class:`CallSyntax`).
    """
    if not tools:
        raise GrammarError("tool_call_grammar needs at least one tool")
    names = [t["name"] for t in tools]
    if choice not in ("any", "auto") and choice not in names:
        raise GrammarError(f"tool choice must be 'any', 'auto' or one of {names}, got {choice!r}")
    chosen = [t for t in tools if choice in ("any", "auto") or t["name"] == choice]
    tokens = syntax.tokens
    if syntax.name_sep is None:
        schemas = [_call_schema(t, syntax.args_key) for t in chosen]
        body = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
        bodies = ["body: %json " + json.dumps(_with_options(body, strict), ensure_ascii=False)]
    else:  # the name before its arguments: one alternative per tool
        named = (
            f"{_literal(t['name'], tokens)} {_literal(syntax.name_sep, tokens)} args{i}" for i, t in enumerate(chosen)
        )
        bodies = ["body: " + " | ".join(named)]
        bodies += [
            f"args{i}: %json " + json.dumps(_with_options(_params_schema(t), strict), ensure_ascii=False)
            for i, t in enumerate(chosen)
        ]
    more = f"({_literal(syntax.separator, tokens)} call)*" if parallel else ""
    calls = [
        _literal(syntax.tag, tokens),
        _literal(syntax.prefix, tokens),
        "call",
        more,
        _literal(syntax.suffix, tokens),
    ]
    lines = [
        "start: TEXT | TEXT? calls" if choice == "auto" else "start: calls",
        " ".join(["calls:", *calls]),
        " ".join(["call:", _literal(syntax.call_open, tokens), "body", _literal(syntax.call_close, tokens)]),
        *bodies,
        "TEXT: /[^<]+/",
    ]
    grammar = llguidance.LLMatcher.grammar_from_lark("\n".join(lines) + "\n")
    return _check(grammar, "the tool definitions (" + ", ".join(names) + ")")


def prose_grammar(pattern: str = "[^<]+") -> str:
    """Free text matching ``pattern`` (default: no ``<``, so no ``<tool_call>`` tag): the free rows under
    ``tool_choice="auto"``."""
    grammar = llguidance.LLMatcher.grammar_from_lark(f"start: TEXT\nTEXT: /{pattern}/\n")
    return _check(grammar, "the prose grammar")


# --- compiled grammars and matchers ----------------------------------------------------------


def _tokenizer(tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> Any:
    key = (vocab_size, tuple(eos_token_ids))
    with _LOCK:
        per_tokenizer = _TOKENIZERS.setdefault(tokenizer, {})
        if key not in per_tokenizer:
            per_tokenizer[key] = llguidance.hf.from_tokenizer(
                tokenizer, n_vocab=vocab_size, eos_token=list(eos_token_ids)
            )
        return per_tokenizer[key]


def text_tokens(ll_tokenizer: Any, text: str) -> list[int]:
    """The tokens of ``text`` as it is written after other text (in a prompt, in a reply), by llguidance's own
    tokenizer: a tokenizer that adds a leading space to a text tokenized on its own (SentencePiece's prefix
    space, Mistral v0.3) gets it taken off, so that the tokens spell exactly ``text``; added tokens (the
    tokenizer's own split) are kept as such. What a matcher consumes for a prefill, and the closing tokens."""
    return list(ll_tokenizer.tokenize_str(text))


def _compiled(ll_tokenizer: Any, grammar: str, prefill: str) -> Any:
    """The matcher of ``grammar`` after ``prefill``, from the LRU cache (compiled on a miss)."""
    key = (id(ll_tokenizer), grammar, prefill)
    with _LOCK:
        hit = _COMPILED.get(key)
        if hit is not None and hit[0] is ll_tokenizer:
            _COMPILED.move_to_end(key)
            return hit[1]
    matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
    if prefill:
        matcher.consume_tokens(text_tokens(ll_tokenizer, prefill))
    if matcher.is_error():
        raise GrammarError(f"the grammar does not compile for this tokenizer: {matcher.get_error()}")
    with _LOCK:
        _COMPILED[key] = (ll_tokenizer, matcher)
        while len(_COMPILED) > COMPILED_CACHE_SIZE:
            _COMPILED.popitem(last=False)
    return matcher


def clear_cache() -> None:
    """Drop every compiled grammar (the tokenizer cache empties itself with its tokenizers)."""
    with _LOCK:
        _COMPILED.clear()


class LLGuidanceMatcher:
    """One row's grammar state (:class:`langchain_aisp.engine.constraints.Matcher`)."""

    __slots__ = ("_closing", "_eos", "_matcher", "_path", "_path_at")

    def __init__(self, matcher: Any, eos_token_ids: frozenset[int], closing: _Closing | None) -> None:
        self._matcher = matcher
        self._eos = eos_token_ids
        self._closing = closing  # None: never steer towards completion (prose)
        self._path: list[int] | None = None  # the closing path; None: not computed, or no completion found
        self._path_at = 0  # ``remaining`` when the closing path was last computed

    def fill_bitmask(self, bitmask: torch.Tensor, row: int, remaining: int) -> None:
        target = bitmask[row]  # (W,) int32, contiguous, CPU
        path = None
        if self._closing is not None and remaining <= CLOSE_HORIZON:
            length = len(self._path) if self._path is not None else 0
            # recompute every 8 steps, and every step once the path nearly fills the budget
            if self._path is None or remaining <= length + CLOSE_SLACK or self._path_at - remaining >= 8:
                self._path, self._path_at = self._closing_path(remaining), remaining
            path = self._path
            if path is not None and len(path) >= remaining:  # no token to spare: follow the path
                _set_bit(target, path[0])
                return
        self._matcher.unsafe_compute_mask_ptr(target.data_ptr(), target.numel() * target.element_size())
        if self._matcher.is_error():
            raise ConstraintError(f"grammar matcher failed: {self._matcher.get_error()}")
        if path is not None and self._closing is not None and remaining <= len(path) + CLOSE_SLACK:
            target.bitwise_and_(self._closing.no_growth)  # (W,) open no more structure...
            _set_bit(target, path[0])  # ...except what the path itself needs

    def _closing_path(self, limit: int) -> list[int] | None:
        """The tokens (EOS last) that complete the grammar soonest from here (at most ``limit + 1`` of them);
        None when no completion is found."""
        closers = self._closing.closers if self._closing is not None else ()
        probe = self._matcher.deep_copy()
        path: list[int] = []
        while len(path) <= limit:
            if probe.is_accepting():
                return [*path, min(self._eos)]
            forced = probe.compute_ff_tokens()
            if forced:
                probe.consume_tokens(forced)
                path.extend(forced)
                continue
            token = next((t for t in closers if probe.try_consume_tokens([t]) == 1), None)
            if token is None:
                token = _first_allowed(probe.compute_bitmask())
                if token is None or not probe.consume_token(token):
                    return None
            path.append(token)
        return path

    def advance(self, token: int) -> None:
        if token in self._eos and self._matcher.is_accepting():
            return
        if not self._matcher.consume_token(token):
            raise ConstraintError(f"the grammar rejected token {token}: {self._matcher.get_error()}")

    def is_finished(self) -> bool:
        return bool(self._matcher.is_stopped())


def _set_bit(words: torch.Tensor, token: int) -> None:
    words[token // 32] |= -(1 << 31) if token % 32 == 31 else 1 << (token % 32)


def _first_allowed(mask: bytes) -> int | None:
    for i, byte in enumerate(mask):
        if byte:
            return i * 8 + (byte & -byte).bit_length() - 1
    return None


@dataclass(frozen=True, eq=False)
class _Closing:
    """Per-tokenizer data for steering replies to completion (see the module docstring)."""

    closers: tuple[int, ...]
    """Token ids of ``CLOSERS`` (those that are one token), in order."""
    no_growth: torch.Tensor
    """int32 bitmask (W,): every token except those containing ``,``, ``{`` or ``[``."""


def _closing_for(tokenizer: Any, ll_tokenizer: Any, vocab_size: int) -> _Closing:
    key = ("closing", vocab_size)
    with _LOCK:
        found = _TOKENIZERS.setdefault(tokenizer, {}).get(key)
    if found is not None:
        return found  # type: ignore[no-any-return]
    closers = []
    for text in CLOSERS:
        encoded = text_tokens(ll_tokenizer, text)
        if len(encoded) == 1:
            closers.append(int(encoded[0]))
    no_growth = torch.full((bitmask_words(vocab_size),), -1, dtype=torch.int32)  # (W,)
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    for token, piece in enumerate(pieces):
        if piece is not None and any(c in piece for c in ",{["):
            no_growth[token // 32] &= ~(-(1 << 31) if token % 32 == 31 else 1 << (token % 32))
    closing = _Closing(tuple(closers), no_growth)
    with _LOCK:
        _TOKENIZERS[tokenizer][key] = closing
    return closing


@dataclass(frozen=True)
class LLGuidanceConstraint:
    """Compiled grammars for one prompt (:class:`langchain_aisp.engine.constraints.Constraint`).

    Sample ``i`` of an iteration follows ``templates[i % len(templates)]`` (one template: every
    sample alike; several: e.g. the forced-call rows of ``tool_choice="auto"``, one tool each).
    """

    templates: tuple[Any, ...]
    eos_token_ids: frozenset[int]
    closing: _Closing | None
    """How to complete a reply within ``max_tokens``; None: no steering to completion."""

    def matcher(self, sample: int) -> LLGuidanceMatcher:
        with _LOCK:  # a template is shared by every thread: copy it one thread at a time
            state = self.templates[sample % len(self.templates)].deep_copy()
        return LLGuidanceMatcher(state, self.eos_token_ids, self.closing)


def compile_constraint(
    tokenizer: Any,
    vocab_size: int,
    eos_token_ids: Sequence[int],
    grammar: str | Sequence[str],
    prefill: str = "",
    *,
    close: bool = True,
) -> LLGuidanceConstraint:
    """Compile ``grammar`` (or several, alternating over samples) for ``tokenizer`` (cached); matchers
    start after ``prefill``.

    ``close``: steer each reply to completion within ``max_tokens`` (see the module docstring);
    off for free text, where ending early would only hide that the answer was cut.
    """
    ll_tokenizer = _tokenizer(tokenizer, vocab_size, eos_token_ids)
    grammars = [grammar] if isinstance(grammar, str) else list(grammar)
    templates = tuple(_compiled(ll_tokenizer, g, prefill) for g in grammars)
    closing = _closing_for(tokenizer, ll_tokenizer, vocab_size) if close else None
    return LLGuidanceConstraint(templates, frozenset(eos_token_ids), closing)


def forced_prefix(tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int], grammar: str) -> str:
    """The text every reply under ``grammar`` starts with (to prefill), without trailing whitespace.

    Whitespace is left to the model so that it keeps its usual tokenisation (``" 3"`` rather
    than a bare ``"3"`` after a prompt ending in a space).
    """
    template = _compiled(_tokenizer(tokenizer, vocab_size, eos_token_ids), grammar, "")
    with _LOCK:
        forced = bytes(template.deep_copy().compute_ff_bytes())
    # a special token (``<[id]>`` in the grammar) is forced as the bytes 0xFF "[id]": write the token's own text
    forced = _SPECIAL_BYTES.sub(lambda m: tokenizer.convert_ids_to_tokens(int(m.group(1))).encode(), forced)
    return forced.decode("utf-8", errors="ignore").rstrip()


_SPECIAL_BYTES = re.compile(rb"\xff\[(\d+)\]")

WHITESPACE_GRAMMAR = llguidance.LLMatcher.grammar_from_lark("start: WS\nWS: /[ \\t\\r\\n]+/\n")
"""Text of only spaces, tabs and newlines."""


def whitespace_tokens(tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> tuple[int, ...]:
    """The ids of the tokens whose text is only whitespace (spaces, tabs, newlines), by llguidance's own
    token bytes (cached per tokenizer): what may separate a think section's closing tag from the answer."""
    key = ("whitespace", vocab_size, tuple(eos_token_ids))
    with _LOCK:
        found = _TOKENIZERS.setdefault(tokenizer, {}).get(key)
    if found is not None:
        return found  # type: ignore[no-any-return]
    template = _compiled(_tokenizer(tokenizer, vocab_size, eos_token_ids), WHITESPACE_GRAMMAR, "")
    with _LOCK:
        mask = template.deep_copy().compute_bitmask()
    bits = torch.frombuffer(bytearray(mask), dtype=torch.uint8)  # (W * 4,) little-endian bytes
    allowed = ((bits.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)[:vocab_size]  # (vocab,)
    tokens = tuple(int(t) for t in allowed.nonzero().squeeze(-1).tolist() if t not in eos_token_ids)
    with _LOCK:
        _TOKENIZERS[tokenizer][key] = tokens
    return tokens
