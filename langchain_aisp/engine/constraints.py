"""Per-row grammar constraints for decoding: the protocol and the batched mask.

Plain torch, no grammar library. A grammar library plugs in through two small protocols:

* :class:`Constraint`: a compiled grammar for one prompt's responses (immutable, shareable
  across threads); ``matcher(sample)`` returns a fresh :class:`Matcher` for the prompt's
  ``sample``-th response of an iteration (so a constraint may give different samples
  different grammars, e.g. half of them a forced tool call);
* :class:`Matcher`: the stateful grammar state of one decoding row. Before each step it
  writes the row's allowed tokens into an int32 bitmask row (bit ``t % 32`` of word
  ``t // 32``; little-endian, the layout llguidance and xgrammar use), knowing how many
  tokens the row may still generate (so a matcher can steer a reply to completion within
  ``max_tokens``); after the step it advances by the sampled token.

:class:`RowMasks` drives the matchers of one decoding batch: the bitmask of the live rows
is filled on the CPU, copied to the logits' device once per step, unpacked to a boolean
mask and applied with one ``masked_fill`` (the protocol a static-shape CUDA decoder uses
too). Rows without a constraint allow every token. A row whose grammar has completed
allows only EOS. When the decoder drops ended rows, :meth:`RowMasks.select` drops the
same rows, so every matcher stays aligned with its row.

The mask is applied to the logits of the steered pre-logits (``W (z + v) + b``), before
temperature, top-k and top-p, so sampling renormalises over the allowed tokens only.

:class:`ThinkingBudget` wraps a constraint for thinking models: a reply that starts inside a
think section may think for at most ``budget`` tokens, then the closing tag's tokens are forced,
and the wrapped constraint (a grammar, or none) applies to the answer after the tag and the
whitespace the model writes after it (Qwen3 writes ``"\n\n"`` after ``</think>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from langchain_aisp.errors import ConstraintError


@runtime_checkable
class Matcher(Protocol):
    """The grammar state of one decoding row."""

    def fill_bitmask(self, bitmask: torch.Tensor, row: int, remaining: int) -> None:
        """Write the tokens allowed next into ``bitmask[row]`` (int32 words, CPU, zeroed); set bits only.

        ``remaining`` is the number of tokens the row may still generate, this one included.
        """
        ...

    def advance(self, token: int) -> None:
        """Consume the sampled token; raise :class:`ConstraintError` if the grammar rejects it."""
        ...

    def is_finished(self) -> bool:
        """True when the grammar is complete and admits no further text (only EOS may follow)."""
        ...


@runtime_checkable
class Constraint(Protocol):
    """A compiled grammar for the responses of one prompt."""

    def matcher(self, sample: int) -> Matcher:
        """A fresh matcher for sample ``sample`` (in [0, n)) of an iteration."""
        ...


def bitmask_words(vocab_size: int) -> int:
    """int32 words per row of a token bitmask over ``vocab_size`` tokens."""
    return (vocab_size + 31) // 32


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int32 bitmask (B, W) -> bool allowed-token mask (B, vocab_size), on the bitmask's device."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)  # (32,)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # (B, W, 32)
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()  # (B, vocab)


class RowMasks:
    """The matchers of one decoding batch, aligned with its live rows.

    ``matchers[i]`` belongs to row ``i`` of the batch (None: unconstrained). Per step:
    :meth:`apply` masks the logits of the live rows, :meth:`advance` moves each live,
    not yet ended row by its sampled token, :meth:`select` follows the decoder when it
    drops ended rows. The bitmask buffer is allocated once (pinned on CUDA).
    """

    def __init__(
        self, matchers: Sequence[Matcher | None], vocab_size: int, eos_token_ids: Sequence[int], device: torch.device
    ) -> None:
        if not eos_token_ids:
            raise ValueError("a constrained decode needs at least one EOS token id, got none")
        self.matchers: list[Matcher | None] = list(matchers)
        self.live: list[int] = list(range(len(self.matchers)))  # batch row of each live row
        self.vocab_size = vocab_size
        self.device = device
        words = bitmask_words(vocab_size)
        self.bitmask = torch.full(
            (len(self.matchers), words), -1, dtype=torch.int32, pin_memory=device.type == "cuda"
        )  # (B, W)
        eos_only = torch.zeros(words, dtype=torch.int32)  # (W,)
        for token in eos_token_ids:
            eos_only[token // 32] |= _bit(token % 32)
        self.eos_only = eos_only

    def apply(self, logits: torch.Tensor, remaining: int) -> torch.Tensor:
        """Set the logits of the tokens each live row's grammar forbids to -inf: (A, V) -> (A, V).

        ``remaining``: tokens each row may still generate, this one included (``max_tokens - step``).
        """
        rows = len(self.live)
        bitmask = self.bitmask[:rows]  # (A, W)
        bitmask.fill_(-1)
        for a, row in enumerate(self.live):
            matcher = self.matchers[row]
            if matcher is None:
                continue
            if matcher.is_finished():
                bitmask[a] = self.eos_only
            else:
                bitmask[a] = 0
                matcher.fill_bitmask(bitmask, a, remaining)
        allowed = unpack_bitmask(bitmask.to(logits.device, non_blocking=True), logits.shape[-1])  # (A, V)
        return logits.masked_fill(~allowed, float("-inf"))  # (A, V)

    def advance(self, tokens: torch.Tensor, ended: torch.Tensor) -> None:
        """Advance every live row that had not ended before this step: tokens (A,), ended (A,) bool."""
        values = torch.stack([tokens, ended.long()]).tolist()  # one host transfer
        for a, row in enumerate(self.live):
            matcher = self.matchers[row]
            if matcher is None or values[1][a] or matcher.is_finished():
                continue
            matcher.advance(int(values[0][a]))

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the live rows at positions ``keep`` (A',), as the decoder does."""
        self.live = [self.live[i] for i in keep.tolist()]


MAX_GAP = 4
"""Most whitespace tokens a thinking reply may write between the closing tag and its answer."""


class ThinkingMatcher:
    """One row's state under :class:`ThinkingBudget`: thinking (counting tokens), closing the tag, the gap of
    whitespace after it, answering."""

    __slots__ = ("_answer", "_answering", "_closed", "_gap", "_rule", "_started", "_thought")

    def __init__(self, rule: ThinkingBudget, answer: Matcher | None) -> None:
        self._rule = rule
        self._answer = answer
        self._thought = 0  # thinking tokens so far (the closing tag not included)
        self._closed = 0  # tokens of the closing tag written so far
        self._answering = False
        self._gap = 0  # whitespace tokens written after the tag, before the answer
        self._started = False  # the answer's constraint has consumed a token

    def _in_gap(self) -> bool:
        """Whether a gap token may come next (after the tag, before the answer, fewer than ``MAX_GAP`` so far)."""
        return not self._started and self._gap < MAX_GAP and bool(self._rule.gap)

    @property
    def answering(self) -> bool:
        """True once the closing tag is complete (the answer part has begun)."""
        return self._answering

    @property
    def thought(self) -> int:
        """Thinking tokens generated so far (the closing tag excluded)."""
        return self._thought

    def fill_bitmask(self, bitmask: torch.Tensor, row: int, remaining: int) -> None:
        rule = self._rule
        if self._answering:
            if self._answer is None:
                bitmask[row] = -1
            else:
                self._answer.fill_bitmask(bitmask, row, remaining)
                if rule.gap_mask is not None and self._in_gap():
                    bitmask[row] |= rule.gap_mask  # (W,) whitespace may come first
        elif self._closed or (rule.budget is not None and self._thought >= rule.budget):
            token = rule.close_ids[self._closed]  # the tag was begun or the budget is spent: finish the tag
            bitmask[row, token // 32] = _bit(token % 32)
        else:
            bitmask[row] = rule.thinking_mask

    def advance(self, token: int) -> None:
        rule = self._rule
        if self._answering:
            if self._answer is None:
                return
            if self._in_gap() and token in rule.gap:
                self._gap += 1  # the answer (what its constraint reads) starts after the whitespace
                return
            self._started = True
            self._answer.advance(token)
        elif token == rule.close_ids[self._closed]:
            self._closed += 1
            self._answering = self._closed == len(rule.close_ids)
        elif self._closed:
            raise ConstraintError(
                f"token {token} breaks the closing tag {list(rule.close_ids)} after {self._closed} of its tokens"
            )
        else:
            self._thought += 1

    def is_finished(self) -> bool:
        return self._answering and self._answer is not None and self._answer.is_finished()


class ThinkingBudget:
    """A constraint for replies that start inside a think section (:class:`Constraint`).

    While thinking, a row may use the tokens of ``thinking_mask`` (the caller leaves out EOS, so
    that every reply reaches its answer, and tokens that would write the closing tag other than
    through ``close_ids``). Once the row writes ``close_ids[0]``, or has thought ``budget`` tokens,
    the rest of ``close_ids`` is forced; after the tag, ``answer`` (a constraint, or None for free
    text) applies to the rest of the reply. ``budget=None`` never forces the tag.

    ``gap``: tokens (whitespace) that may come between the tag and an answer that has a constraint, up to
    ``MAX_GAP`` of them, before its first token; they are not passed to the answer's constraint, which reads the
    answer from its first other token (so a grammar that starts with ``{`` or a tag token accepts the
    ``"\n\n"`` a model writes after ``</think>``).

    A caller that wants the answer to keep ``max_tokens`` of room decodes
    ``budget + len(close_ids) + max_tokens`` tokens in all.
    """

    def __init__(
        self,
        close_ids: Sequence[int],
        budget: int | None,
        thinking_mask: torch.Tensor,
        answer: Constraint | None = None,
        gap: Sequence[int] = (),
    ) -> None:
        if not close_ids:
            raise ValueError("close_ids must hold the token ids of the closing tag, got none")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budget must be an integer >= 0 or None, got {budget!r}")
        if thinking_mask.dtype != torch.int32 or thinking_mask.dim() != 1:
            raise ValueError(
                f"thinking_mask must be a 1-d int32 bitmask, got {thinking_mask.dtype} of shape "
                f"{tuple(thinking_mask.shape)}"
            )
        vocab_size = 32 * thinking_mask.numel()
        if any(not 0 <= t < vocab_size for t in gap):
            raise ValueError(f"gap tokens must be in [0, {vocab_size}), got {sorted(gap)}")
        self.close_ids = tuple(int(t) for t in close_ids)
        self.budget = budget
        self.thinking_mask = thinking_mask.cpu()  # (W,)
        self.answer = answer
        self.gap = frozenset(int(t) for t in gap)
        self.gap_mask = ~_all_but(thinking_mask.numel(), self.gap) if self.gap else None  # (W,) the gap tokens only

    def matcher(self, sample: int) -> ThinkingMatcher:
        return ThinkingMatcher(self, None if self.answer is None else self.answer.matcher(sample))


def thinking_mask(vocab_size: int, forbidden: Sequence[int]) -> torch.Tensor:
    """The int32 bitmask (W,) that allows every token of ``vocab_size`` except ``forbidden``."""
    for token in forbidden:
        if not 0 <= token < vocab_size:
            raise ValueError(f"forbidden token {token} is outside the vocabulary [0, {vocab_size})")
    return _all_but(bitmask_words(vocab_size), forbidden)


def _all_but(words: int, forbidden: Sequence[int] | frozenset[int]) -> torch.Tensor:
    """The int32 bitmask (words,) with every bit set except those of ``forbidden`` (ids checked by the caller)."""
    mask = torch.full((words,), -1, dtype=torch.int32)  # (W,)
    for token in forbidden:
        mask[token // 32] &= ~_bit(token % 32)
    return mask


def _bit(position: int) -> int:
    """The int32 value with only bit ``position`` set (bit 31 is the sign bit)."""
    return -(1 << 31) if position == 31 else 1 << position
