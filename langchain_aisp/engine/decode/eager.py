"""A KV-cache decoder that adds a control input to the pre-logits.

The prompt is prefilled once (:func:`prefill`) and its cache is shared by every
row that continues it, across all samples and all iterations. :func:`decode` runs
one batched forward pass per token over the rows still alive, adds ``V[:, t]`` to
the pre-logit ``z_t`` for ``t < tau`` (rows carry a zero slice at index ``tau``,
used for every later position, so the loop never branches on the method), applies
the resolved logit transforms and samples with pre-drawn uniforms. Rows that end
(EOS, a stop string, ``max_tokens``) are dropped from the batch once enough of them
have ended. Stop strings are detected at token boundaries by transformers'
``StopStringCriteria`` while decoding.

Grammar constraints (:mod:`langchain_aisp.engine.constraints`) come in as one matcher per row:
their masks apply to the steered logits before the logit transforms, and each row's
matcher advances by its sampled token. ``deadline`` (a ``time.monotonic()`` value) stops
the loop after the step during which it passed; the output then says ``timed_out``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, StopStringCriteria

from langchain_aisp.engine.config import SamplingParams
from langchain_aisp.engine.constraints import Matcher, RowMasks
from langchain_aisp.engine.lm import CausalLM, HeadFn, head_for
from langchain_aisp.engine.processors import LogitsTransform, apply_processors, build_processors, sample_tokens

FINISH_STOP = "stop"
FINISH_LENGTH = "length"

StopCheck = Callable[[torch.Tensor], torch.Tensor]

_STOP_CRITERIA_LOCK = threading.Lock()
"""Serialises ``StopStringCriteria`` construction (it mutates transformers' module-level cache)."""


@dataclass(frozen=True)
class PromptPrefix:
    """The prefilled cache of one prompt: computed once, never modified."""

    keys: tuple[torch.Tensor, ...]
    """Per layer, shape (1, heads, L, head_dim)."""
    values: tuple[torch.Tensor, ...]
    last_prelogit: torch.Tensor
    """Pre-logit of the last prompt position, shape (d,): it samples the first new token."""
    length: int


@dataclass(frozen=True)
class DecodeOutput:
    """What :func:`decode` produced, one entry per row in input order."""

    token_ids: list[list[int]]
    texts: list[str]
    finish_reasons: list[str]
    lengths: torch.Tensor
    """Generated tokens per row (EOS included), shape (B,), on CPU."""
    timed_out: bool = False
    """The deadline passed before every row had ended: unfinished rows stop where they were."""
    path: str = "eager"
    """The decode path that produced it: ``"eager"``, ``"static"`` or ``"compiled"`` (failed compile: ``"static"``)."""


@torch.inference_mode()
def prefill(lm: CausalLM, token_ids: Sequence[int]) -> PromptPrefix:
    """Run the model body over one prompt and keep its KV cache and last pre-logit."""
    if len(token_ids) == 0:
        raise ValueError("cannot prefill an empty prompt (0 tokens)")
    ids = torch.tensor([list(token_ids)], dtype=torch.long, device=lm.device)  # (1, L)
    out = lm.body(input_ids=ids, use_cache=True, **{lm.cache_kwarg: DynamicCache()})
    cache = getattr(out, lm.cache_kwarg)
    keys = tuple(layer.keys for layer in cache.layers)
    values = tuple(layer.values for layer in cache.layers)
    return PromptPrefix(keys, values, out.last_hidden_state[0, -1], len(token_ids))  # (d,)


class _NoMasks:
    """Stands in for :class:`RowMasks` when no row is constrained, so the loop never branches on it."""

    def apply(self, logits: torch.Tensor, remaining: int) -> torch.Tensor:
        return logits  # (A, V)

    def advance(self, tokens: torch.Tensor, ended: torch.Tensor) -> None:
        pass

    def select(self, keep: torch.Tensor) -> None:
        pass


class _NoStop:
    def __call__(self, generated: torch.Tensor) -> torch.Tensor:
        return torch.zeros(generated.shape[0], dtype=torch.bool, device=generated.device)  # (B,)


class _StopStrings:
    """Wraps ``StopStringCriteria``: (B, t) generated ids -> (B,) bool."""

    def __init__(self, tokenizer: object, stop: Sequence[str]) -> None:
        # StopStringCriteria keeps a process-wide LRU cache (a plain OrderedDict) that concurrent
        # constructions can corrupt (KeyError on an entry another thread evicted): build one at a time.
        with _STOP_CRITERIA_LOCK:
            self._criteria = StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop))  # type: ignore[arg-type]

    def __call__(self, generated: torch.Tensor) -> torch.Tensor:
        scores = torch.empty(0, device=generated.device)
        return self._criteria(generated, scores).to(generated.device)  # (B,)


@dataclass(frozen=True)
class Decoder:
    """Everything :func:`decode` needs, resolved once per run."""

    lm: CausalLM
    sampling: SamplingParams
    processors: tuple[LogitsTransform, ...]
    stop_check: StopCheck
    eos: torch.Tensor
    """EOS ids, shape (E,)."""
    head: HeadFn
    """The model's logits of ``z + v`` in fp32, the control kept exact in half precision (:func:`head_for`)."""

    @classmethod
    def build(cls, lm: CausalLM, sampling: SamplingParams) -> Decoder:
        processors = build_processors(sampling.temperature, sampling.top_k, sampling.top_p)
        stop_check: StopCheck = _StopStrings(lm.tokenizer, sampling.stop) if sampling.stop else _NoStop()
        eos = torch.tensor(lm.eos_token_ids, dtype=torch.long, device=lm.device)
        return cls(lm, sampling, processors, stop_check, eos, head_for(lm))

    def text(self, token_ids: Sequence[int]) -> str:
        """Decode a response and cut it before the first stop string, if any."""
        text: str = self.lm.tokenizer.decode(list(token_ids), skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.sampling.stop) if i >= 0), default=-1)
        return text if cut < 0 else text[:cut]


def _batch_cache(
    prefixes: Sequence[PromptPrefix], row_prompt: torch.Tensor
) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad the prefixes to a common length and gather one cache row per output row.

    Returns the cache, the prompt attention mask (B, L_max), the prompt lengths (B,)
    and the first pre-logits (B, d).
    """
    max_len = max(p.length for p in prefixes)
    device = prefixes[0].last_prelogit.device
    lengths = torch.tensor([p.length for p in prefixes], device=device)  # (P,)
    layers = []
    for layer in range(len(prefixes[0].keys)):
        padded_k = [F.pad(p.keys[layer], (0, 0, max_len - p.length, 0)) for p in prefixes]
        padded_v = [F.pad(p.values[layer], (0, 0, max_len - p.length, 0)) for p in prefixes]
        keys = torch.cat(padded_k, dim=0).index_select(0, row_prompt)  # (B, H, L_max, Dh)
        values = torch.cat(padded_v, dim=0).index_select(0, row_prompt)  # (B, H, L_max, Dh)
        layers.append((keys, values))
    positions = torch.arange(max_len, device=device)  # (L_max,)
    prompt_mask = (positions[None, :] >= (max_len - lengths)[:, None]).long()  # (P, L_max)
    z0 = torch.stack([p.last_prelogit for p in prefixes]).index_select(0, row_prompt)  # (B, d)
    return (
        DynamicCache(ddp_cache_data=layers),
        prompt_mask.index_select(0, row_prompt),  # (B, L_max)
        lengths.index_select(0, row_prompt),  # (B,)
        z0,
    )


@torch.inference_mode()
def decode(
    decoder: Decoder,
    prefixes: Sequence[PromptPrefix],
    row_prompt: torch.Tensor,
    V: torch.Tensor,
    uniforms: torch.Tensor,
    matchers: Sequence[Matcher | None] | None = None,
    deadline: float = math.inf,
) -> DecodeOutput:
    """Decode one response per row.

    row_prompt (B,) indexes ``prefixes``; V (B, tau + 1, d) is the control input with a
    zero slice at index tau; uniforms (B, max_tokens) drive the token sampler;
    ``matchers`` (one per row, None = unconstrained) constrain rows to a grammar;
    ``deadline`` (``time.monotonic()`` seconds) stops decoding after the current step.
    """
    lm = decoder.lm
    max_tokens = decoder.sampling.max_tokens
    tau = V.shape[1] - 1
    total_rows = row_prompt.shape[0]
    device = lm.device
    row_prompt = row_prompt.to(device)
    cache, prompt_mask, prompt_len, z = _batch_cache(prefixes, row_prompt)
    prompt_width = prompt_mask.shape[1]
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(total_rows, max_tokens)], dim=1)  # (B, L_max + T)
    V = V.to(device=device, dtype=lm.dtype)  # (B, tau + 1, d)
    uniforms = uniforms.to(device)  # (B, T)
    out_tokens = torch.full((total_rows, max_tokens), lm.pad_token_id, dtype=torch.long, device=device)  # (B, T)
    lengths = torch.full((total_rows,), max_tokens, dtype=torch.long, device=device)  # (B,)
    stopped = torch.zeros(total_rows, dtype=torch.bool, device=device)  # (B,) ended by EOS or stop
    alive = torch.arange(total_rows, device=device)  # (A,) original row index of each live row
    done = torch.zeros(total_rows, dtype=torch.bool, device=device)  # (A,) ended, still in the batch
    masks: RowMasks | _NoMasks = _NoMasks()
    if matchers is not None and any(m is not None for m in matchers):
        masks = RowMasks(matchers, lm.head_weight.shape[0], lm.eos_token_ids, device)
    timed_out = False
    for step in range(max_tokens):
        logits = decoder.head(z, V[:, min(step, tau)])  # (A, vocab) fp32
        logits = apply_processors(masks.apply(logits, max_tokens - step), decoder.processors)  # (A, vocab)
        token = sample_tokens(logits, uniforms[:, step])  # (A,)
        token = torch.where(done, lm.pad_token_id, token)  # (A,)
        masks.advance(token, done)
        out_tokens[alive, step] = token
        ended = ~done & (torch.isin(token, decoder.eos) | decoder.stop_check(out_tokens[alive, : step + 1]))  # (A,)
        lengths[alive[ended]] = step + 1
        stopped[alive[ended]] = True
        done = done | ended
        n_done = int(done.sum())
        if n_done == done.shape[0] or step + 1 == max_tokens:
            break
        if time.monotonic() >= deadline:  # host clock only: no device sync
            lengths[alive[~done]] = step + 1
            timed_out = True
            break
        if 4 * n_done >= done.shape[0]:  # drop ended rows once a quarter of the batch has ended
            keep = (~done).nonzero().squeeze(-1)  # (A',)
            cache.batch_select_indices(keep)
            masks.select(keep)
            alive, mask, prompt_len = alive[keep], mask[keep], prompt_len[keep]
            V, uniforms, token, done = V[keep], uniforms[keep], token[keep], done[keep]
        hidden = lm.body(
            input_ids=token[:, None],  # (A, 1)
            attention_mask=mask[:, : prompt_width + step + 1],  # (A, L_max + step + 1)
            position_ids=(prompt_len + step)[:, None],  # (A, 1)
            use_cache=True,
            **{lm.cache_kwarg: cache},
        ).last_hidden_state
        z = hidden[:, -1]  # (A, d)
    lengths_cpu = lengths.cpu()
    tokens_cpu = out_tokens.cpu()
    token_ids = [tokens_cpu[i, : int(lengths_cpu[i])].tolist() for i in range(total_rows)]
    texts = [decoder.text(ids) for ids in token_ids]
    reasons = [FINISH_STOP if s else FINISH_LENGTH for s in stopped.cpu().tolist()]
    return DecodeOutput(token_ids, texts, reasons, lengths_cpu, timed_out)
