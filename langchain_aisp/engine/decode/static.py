"""The static-shape decode path: a preallocated KV cache and, on CUDA, one captured CUDA graph per step.

:func:`decode_static` has the contract of :func:`langchain_aisp.engine.decode.eager.decode` (same inputs, same
:class:`~langchain_aisp.engine.decode.eager.DecodeOutput`, the same tokens for the same uniforms) but every
tensor of the per-token loop has a fixed shape and address:

* the rows are padded to a power of two (``rows_bucket``) and the KV cache is preallocated for
  ``(rows_bucket, cache_len)`` with ``cache_len`` = prompt width + ``token_bucket(max_tokens)`` rounded
  up to a multiple of :data:`LENGTH_BUCKET`; prompts are left-padded into it as in the eager path;
* the model body gets its own 4D attention mask and position ids (built from device tensors), and
  the cache writes at a device-side position, so the forward runs no data-dependent Python;
* ended rows are masked (they feed and emit the pad token), never dropped;
* one step (body forward on the last token, LM head on ``z + V[:, min(t, tau)]``, the logit
  transforms, inverse-CDF sampling from the pre-drawn uniforms, EOS bookkeeping) is captured once
  as a CUDA graph and replayed for every token;
* the host looks at the rows only every :data:`CHECK_EVERY_CUDA` steps (one window late, so the
  GPU never waits on it); stop strings are checked on the host then, off the captured step, and a
  row's length is cut at the first token that completes one, exactly as the eager path does;
* for grouped-query models the captured attention groups the query heads per K/V head
  (:func:`decode_sdpa`) instead of copying K and V to every head;
* with grammar constraints (one :class:`~langchain_aisp.engine.constraints.Matcher` per row, driven by
  :class:`~langchain_aisp.engine.constraints.RowMasks` as in the eager path) the graph stops at the logits
  (body + head) and each step's mask, sampling, matcher advance and stop-string check run outside
  it (one sync per step); ended rows leave the matchers' live rows and are never advanced again;
* a ``deadline`` (``time.monotonic()`` seconds) is checked on the host clock after each step (no
  device sync): decoding stops there with ``DecodeOutput.timed_out`` as in the eager path. On CUDA
  the unconstrained loop enqueues steps ahead of the GPU, so it stops enqueuing at the deadline and
  returns once the steps already queued (at most two check windows) have run;
* ``compile_step`` (``decoding="compiled"``) compiles the body with ``torch.compile`` before the
  capture: fewer, fused kernels per token for a first call of tens of seconds per bucket.

Buffers and graphs are cached per model in a byte-bounded :class:`~langchain_aisp.engine.decode.runners.RunnerCache`
(``lm.static_graphs["cache"]``) per (rows bucket, cache length, ``max_tokens`` bucket, logit transforms, mode):
``max_tokens`` is rounded up to a power of two (:func:`token_bucket`), so clients that vary it share buckets.
A new bucket's capture cost is logged and listed by :func:`static_graph_stats`; a capture or compile holds
only its own model's capture lock; a decode holds its model's replay lock (the graphs of one model share
a memory pool: the replay rule in :mod:`~langchain_aisp.engine.decode.runners`); an out-of-memory error
drops every bucket of the model. On CPU the same path runs without graphs (that is what the CPU test
suite checks against the eager path). If a capture fails the bucket falls back to the static cache without
graphs and says so in the log; if a compile fails the bucket takes the uncompiled step, with one warning.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from langchain_aisp.engine.constraints import Matcher, RowMasks
from langchain_aisp.engine.decode import compile_cache
from langchain_aisp.engine.decode.eager import (
    FINISH_LENGTH,
    FINISH_STOP,
    DecodeOutput,
    Decoder,
    PromptPrefix,
    StopCheck,
    decode,
    head_for,
)
from langchain_aisp.engine.decode.runners import RunnerCache, default_budget
from langchain_aisp.engine.lm import CausalLM
from langchain_aisp.engine.processors import LogitsTransform, apply_processors, sample_tokens

_log = logging.getLogger(__name__)

LENGTH_BUCKET = 64
"""Cache lengths are rounded up to a multiple of this, so prompts of similar length share a graph."""
MIN_TOKEN_BUCKET = 16
"""The smallest ``max_tokens`` bucket; above it ``max_tokens`` is rounded up to a power of two."""
CHECK_EVERY_CUDA = 8
"""Steps between two looks of the host at the rows on CUDA (ended rows, stop strings)."""
COMPILE_WHEN_WARM: Literal["when_warm"] = "when_warm"
"""``compile_step`` value of ``decoding="auto"``: compile a bucket only when its compile is paid already."""
CompileStep = bool | Literal["when_warm"]
_ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")

DECODE_ATTENTION = "langchain_aisp_decode_sdpa"
"""Name under which :func:`decode_sdpa` is registered in transformers' ``AttentionInterface``."""


def rows_bucket(rows: int) -> int:
    """The smallest power of two >= ``rows``: the row count a graph is captured for."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    return 1 << (rows - 1).bit_length()


def token_bucket(max_tokens: int) -> int:
    """The ``max_tokens`` a bucket is built for: the smallest power of two >= ``max_tokens``, at least 16."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    return max(MIN_TOKEN_BUCKET, 1 << (max_tokens - 1).bit_length())


def cache_length(prompt_width: int, max_tokens: int) -> int:
    """Preallocated cache length: ``prompt_width + max_tokens`` rounded up to a multiple of LENGTH_BUCKET."""
    need = prompt_width + max_tokens
    return -(-need // LENGTH_BUCKET) * LENGTH_BUCKET


def _text_config(lm: CausalLM) -> Any:
    config = lm.model.config
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if callable(getter) else config


def model_type(lm: CausalLM) -> str:
    """The decoder's ``model_type`` (``"llama"``, ``"qwen3"``, ...)."""
    return str(getattr(_text_config(lm), "model_type", ""))


def static_unsupported(lm: CausalLM) -> str | None:
    """Why this model cannot take the static path at all, or None when it can."""
    config = _text_config(lm)
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation not in _ATTENTION_IMPLEMENTATIONS:
        return f"attention implementation {implementation!r} (supported: {list(_ATTENTION_IMPLEMENTATIONS)})"
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return f"layer types {sorted(set(layer_types))} (only full attention is supported)"
    return None


def _sliding_window(lm: CausalLM) -> int | None:
    config = _text_config(lm)
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window) if isinstance(window, int) and window > 0 else None


def runner_cache(lm: CausalLM) -> RunnerCache[_Runner]:
    """The model's runner cache, created on first use with :func:`~.runners.default_budget` of its device."""
    cache = lm.static_graphs.get("cache")
    if cache is None:
        cache = lm.static_graphs.setdefault("cache", RunnerCache(default_budget(lm.device)))
    return cache  # type: ignore[no-any-return]


def set_static_cache_budget(lm: CausalLM, budget_bytes: int) -> None:
    """Bound the bytes ``lm``'s static buckets may hold (default: a quarter of the memory free at first use)."""
    runner_cache(lm).set_budget(budget_bytes)


def decode_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA for one query token of a grouped-query model without copying K and V per query head.

    transformers (5.17) repeats K and V to every query head whenever a mask is given; with one
    query token the query heads of a group can instead be the "query positions" of their K/V head:
    query (B, H, 1, D) -> (B, Hkv, H / Hkv, D), the (B, 1, 1, L) mask broadcasts over them. Any
    other call goes to transformers' own ``sdpa_attention_forward`` unchanged.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = int(getattr(module, "num_key_value_groups", 1))
    plain = kwargs.get("softcap") is None and kwargs.get("position_bias") is None and not module.training
    mask_ok = attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[1] == 1
    if groups > 1 and query.shape[2] == 1 and mask_ok and plain:
        b, h, _, d = query.shape
        grouped = query.reshape(b, h // groups, groups, d)  # (B, Hkv, G, D): head h uses K/V head h // G
        out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, scale=scaling)
        return out.reshape(b, h, 1, value.shape[-1]).transpose(1, 2).contiguous(), None  # (B, 1, H, Dv)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)  # type: ignore[no-any-return]


@contextlib.contextmanager
def _decode_attention(lm: CausalLM) -> Iterator[None]:
    """While capturing: route a grouped-query sdpa model's attention through :func:`decode_sdpa`.

    The kernels it launches are what the graph keeps; the model's configuration is restored on
    exit (another thread's forward in between still gets transformers' result: decode_sdpa hands
    every other shape to transformers' sdpa).
    """
    config = _text_config(lm)
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if getattr(config, "_attn_implementation", None) != "sdpa" or not heads or kv_heads == heads:
        yield
        return
    from transformers import AttentionInterface

    AttentionInterface.register(DECODE_ATTENTION, decode_sdpa)
    config._attn_implementation = DECODE_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


class _StaticKV(DynamicCache):
    """A KV cache over preallocated (R, H, L, Dh) tensors that writes one position, read from a device tensor.

    It subclasses ``DynamicCache`` only so transformers accepts it as a cache; the model body calls
    nothing but :meth:`update` when given position ids and a 4D mask.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], write_pos: torch.Tensor) -> None:
        super().__init__()
        self.static_keys = keys
        self.static_values = values
        self.write_pos = write_pos  # (1,) cache index written by the next update

    def update(  # type: ignore[override]
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.static_keys[layer_idx], self.static_values[layer_idx]
        keys.index_copy_(2, self.write_pos, key_states)  # (R, H, L, Dh) <- (R, H, 1, Dh)
        values.index_copy_(2, self.write_pos, value_states)
        return keys, values


@dataclass
class _Stats:
    rows: int
    cache_len: int
    max_tokens: int
    """The bucket's ``max_tokens`` (:func:`token_bucket`); calls may ask for fewer."""
    graph: bool
    compiled: bool = False
    host_sampling: bool = False
    capture_s: float = 0.0
    calls: int = 0
    error: str = ""
    compile_s: float = 0.0
    compile_cache: str = ""
    """``"hit"``: the compile cache held this bucket's artifacts; ``"miss"``: compiled here and saved."""
    compile_error: str = ""


def buffer_bytes(
    lm: CausalLM, rows: int, cache_len: int, max_tokens: int, kv_shapes: Sequence[tuple[int, int, int]], logits: bool
) -> int:
    """Bytes of a bucket's preallocated buffers (KV cache, controls, uniforms, tokens, logits), before any graph."""
    elem = lm.head_weight.element_size()
    kv = rows * cache_len * sum(h * (dk + dv) for h, dk, dv in kv_shapes) * elem
    controls = rows * (max_tokens + 2) * lm.hidden_size * elem  # V and z
    per_token = rows * max_tokens * (4 + 8)  # uniforms (fp32) and out_tokens (int64)
    return kv + controls + per_token + (rows * lm.head_weight.shape[0] * 4 if logits else 0)


class _Runner:
    """Preallocated buffers of one bucket and, on CUDA, the captured decode step."""

    def __init__(
        self,
        lm: CausalLM,
        processors: tuple[LogitsTransform, ...],
        rows: int,
        cache_len: int,
        max_tokens: int,
        kv_shapes: Sequence[tuple[int, int, int]],
        pool: Any,
        compile_step: bool = False,
        host_sampling: bool = False,
    ) -> None:
        device, dtype = lm.device, lm.dtype
        self.lm = lm
        self.processors = processors
        self.head = head_for(lm)  # W (z + v) + b in fp32; the control kept exact in half precision
        self.rows, self.cache_len, self.max_tokens = rows, cache_len, max_tokens
        self.call_tokens = max_tokens  # max_tokens of the call being decoded (<= the bucket's)
        self.is_cuda = device.type == "cuda"
        self.pool = pool
        self.graph: Any = None
        self.graph_bytes = 0
        self.stats = _Stats(rows, cache_len, max_tokens, self.is_cuda, compile_step, host_sampling)
        self.keys = [torch.zeros(rows, h, cache_len, dk, dtype=dtype, device=device) for h, dk, _ in kv_shapes]
        self.values = [torch.zeros(rows, h, cache_len, dv, dtype=dtype, device=device) for h, _, dv in kv_shapes]
        self.write_pos = torch.zeros(1, dtype=torch.long, device=device)  # (1,)
        self.step = torch.zeros(1, dtype=torch.long, device=device)  # (1,) index of the token being produced
        self.width = torch.zeros(1, dtype=torch.long, device=device)  # (1,) left-padded prompt width
        self.tau = torch.zeros(1, dtype=torch.long, device=device)  # (1,) V[:, tau] is the zero slice
        self.row_start = torch.zeros(rows, dtype=torch.long, device=device)  # (R,) first unpadded position
        self.prompt_len = torch.ones(rows, dtype=torch.long, device=device)  # (R,)
        self.z = torch.zeros(rows, lm.hidden_size, dtype=dtype, device=device)  # (R, d) pre-logit
        self.V = torch.zeros(rows, max_tokens + 1, lm.hidden_size, dtype=dtype, device=device)  # (R, T + 1, d)
        self.uniforms = torch.zeros(rows, max_tokens, device=device)  # (R, T)
        self.token = torch.zeros(rows, dtype=torch.long, device=device)  # (R,) last sampled token
        self.out_tokens = torch.zeros(rows, max_tokens, dtype=torch.long, device=device)  # (R, T)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)  # (R,)
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)  # (R,) ended by EOS
        self.positions = torch.arange(cache_len, device=device)  # (L,)
        self.eos = torch.tensor(lm.eos_token_ids, dtype=torch.long, device=device)  # (E,)
        self.float_mask = getattr(_text_config(lm), "_attn_implementation", "eager") == "eager"
        self.cache = _StaticKV(self.keys, self.values, self.write_pos)
        self.host_sampling = host_sampling
        vocab = lm.head_weight.shape[0] if host_sampling else 0
        self.logits = torch.zeros(rows, vocab, device=device)  # (R, vocab) raw logits, host-sampling mode only
        # optional: inductor fuses the body's small kernels before the step is captured (compiled by
        # prepare()); the sampler stays as is (inductor 2.11 fails on its cumsum over the vocabulary)
        self.body_fn: Callable[[], None] = self._body
        self.flags = (
            [torch.zeros(1, dtype=torch.bool).pin_memory() for _ in range(2)] if self.is_cuda else []
        )  # host copies of "all rows ended", one per window in flight

    # --- the step: plain tensor code, captured as is -----------------------------------

    def _raw_logits(self) -> torch.Tensor:
        """Logits of ``z + V[:, min(step, tau)]`` before any transform, (R, vocab) in fp32."""
        v = self.V.index_select(1, torch.minimum(self.step, self.tau)).squeeze(1)  # (R, d)
        return self.head(self.z, v)  # (R, vocab) fp32

    def _head_sample(self) -> None:
        """Sample token ``step`` from ``z + V[:, min(step, tau)]`` for every row; advance ``step``."""
        self._pick(self._raw_logits())

    def _pick(self, logits: torch.Tensor) -> None:
        """Transform (R, vocab) logits, sample token ``step`` of every row, record it, advance ``step``."""
        lm, step = self.lm, self.step
        logits = apply_processors(logits, self.processors)  # (R, vocab)
        token = sample_tokens(logits, self.uniforms.index_select(1, step).squeeze(1))  # (R,)
        token = torch.where(self.done, lm.pad_token_id, token)  # (R,)
        self.out_tokens.index_copy_(1, step, token[:, None])  # (R, T)
        ended = ~self.done & (token[:, None] == self.eos[None, :]).any(dim=-1)  # (R,)
        self.lengths.copy_(torch.where(ended, step + 1, self.lengths))  # (R,)
        self.done.logical_or_(ended)
        self.token.copy_(token)
        self.step.add_(1)

    def _body(self) -> None:
        """Run the body on the last token (cache position ``width + step - 1``) into ``z``."""
        lm = self.lm
        pos = self.width + self.step - 1  # (1,)
        self.write_pos.copy_(pos)
        keep = (self.positions[None, :] >= self.row_start[:, None]) & (self.positions[None, :] <= pos)  # (R, L)
        mask: torch.Tensor = keep[:, None, None, :]  # (R, 1, 1, L)
        if self.float_mask:  # the eager attention adds its mask to the scores
            mask = torch.zeros(mask.shape, dtype=lm.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(lm.dtype).min
            )  # (R, 1, 1, L)
        hidden = lm.body(
            input_ids=self.token[:, None],  # (R, 1)
            attention_mask=mask,
            position_ids=(self.prompt_len + self.step - 1)[:, None],  # (R, 1)
            use_cache=True,
            **{lm.cache_kwarg: self.cache},
        ).last_hidden_state
        self.z.copy_(hidden[:, -1])  # (R, d)

    def _step(self) -> None:
        self.body_fn()
        if self.host_sampling:  # the host masks, samples and advances: the graph stops at the logits
            self.logits.copy_(self._raw_logits())
        else:
            self._head_sample()

    # --- build: compile (optional) and capture ---------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes this bucket holds: its buffers and, on CUDA, what its capture added (the pool is shared)."""
        tensors = [*self.keys, *self.values, self.z, self.V, self.uniforms, self.out_tokens, self.logits]
        return sum(t.nbytes for t in tensors) + self.graph_bytes

    def describe(self) -> dict[str, Any]:
        """The bucket's statistics (rows, cache length, max_tokens bucket, graph, compile, calls, errors)."""
        return dict(vars(self.stats))

    def prepare(self, compile_step: bool) -> None:
        """Compile the body (``compile_step``; a failure falls back to the plain body) and capture the step."""
        if compile_step:
            self._compile()
        self.capture()

    def _own_body(self) -> Callable[[], None]:
        """:meth:`_body` bound to this runner through its own copy of the code object.

        dynamo caches compiled frames per code object and stops compiling one after
        ``recompile_limit`` (8) variants, silently running it uncompiled from then on: with one shared
        code object a process's ninth compiled bucket would be eager. A copy per runner keeps each
        bucket's compile its own.
        """
        body = _Runner._body
        code = body.__code__.replace()  # a new code object: its own dynamo cache
        return types.MethodType(types.FunctionType(code, body.__globals__, body.__name__), self)

    def _compile(self) -> None:
        """``torch.compile`` the body through the persistent compile cache; on failure keep the plain body."""
        key = compile_cache.compile_key(self.lm, self.rows, self.cache_len)
        start = time.perf_counter()
        try:
            self.stats.compile_cache = "hit" if compile_cache.load_artifacts(key) else "miss"
            self.body_fn = torch.compile(self._own_body(), dynamic=False, fullgraph=False)
            self.step.fill_(1)
            self.width.fill_(1)
            with _decode_attention(self.lm) if self.is_cuda else contextlib.nullcontext():
                self.body_fn()  # compiles now, in the attention setup the capture (or CPU calls) will use
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # inductor or dynamo could not compile this model: the static step still works
            self.body_fn = self._body
            self.stats.compiled = False
            self.stats.compile_error = f"{type(exc).__name__}: {exc}"
            runner_cache(self.lm).note_once(
                "compile-failed",
                logging.WARNING,
                "torch.compile failed for %s (rows %d, cache %d): %s; decoding takes the static path uncompiled",
                self.lm.name,
                self.rows,
                self.cache_len,
                self.stats.compile_error,
            )
        else:
            if self.stats.compile_cache == "miss":
                compile_cache.save_artifacts(key)
        self.stats.compile_s = time.perf_counter() - start

    # --- capture --------------------------------------------------------------------------

    def capture(self) -> None:
        """Warm up and capture :meth:`_step` as a CUDA graph; on failure keep running without graphs."""
        if not self.is_cuda:
            return
        start = time.perf_counter()
        device = self.lm.device
        try:
            self.step.fill_(1)
            self.width.fill_(1)
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with _decode_attention(self.lm):
                with torch.cuda.stream(stream):
                    for _ in range(2):  # cuBLAS handles, workspaces, lazy module state, compilation
                        self.step.fill_(1)
                        self._step()
                torch.cuda.current_stream(device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                self.step.fill_(1)
                reserved = torch.cuda.memory_reserved(device)
                with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                    self._step()
            torch.cuda.synchronize(device)
            self.graph = graph
            self.graph_bytes = max(0, torch.cuda.memory_reserved(device) - reserved)  # pool growth (approximate)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # a model whose forward cannot be captured: keep the static cache, no graph
            self.graph = None
            self.stats.graph = False
            self.stats.error = f"{type(exc).__name__}: {exc}"
            try:
                torch.cuda.synchronize(device)
            except Exception:
                pass
            _log.warning(
                "CUDA graph capture failed for %s (rows %d, cache %d): %s; this bucket decodes with the static "
                "cache without graphs",
                self.lm.name,
                self.rows,
                self.cache_len,
                self.stats.error,
            )
        self.stats.capture_s = time.perf_counter() - start
        if self.graph is not None:
            _log.info(
                "captured the decode step of %s for %d rows, cache %d, max_tokens %d in %.2f s",
                self.lm.name,
                self.rows,
                self.cache_len,
                self.max_tokens,
                self.stats.capture_s,
            )

    # --- one call ---------------------------------------------------------------------------

    def load(
        self, prefixes: Sequence[PromptPrefix], row_prompt: torch.Tensor, V: torch.Tensor, uniforms: torch.Tensor
    ) -> None:
        """Reset the state and copy in the prompts' caches, first pre-logits, controls and uniforms.

        ``uniforms`` (B, T) sets the call's ``max_tokens`` T (at most the bucket's).
        """
        rows = row_prompt.shape[0]
        self.call_tokens = uniforms.shape[1]
        width = max(p.length for p in prefixes)
        tau = V.shape[1] - 1
        for layer in range(len(self.keys)):
            for store, source in ((self.keys, [p.keys for p in prefixes]), (self.values, [p.values for p in prefixes])):
                if len(prefixes) == 1:
                    kv = source[0][layer]  # (1, H, L, Dh)
                    store[layer][:rows, :, :width].copy_(kv.expand(rows, -1, -1, -1))
                else:
                    padded = [
                        F.pad(s[layer], (0, 0, width - p.length, 0)) for s, p in zip(source, prefixes, strict=True)
                    ]
                    store[layer][:rows, :, :width].copy_(torch.cat(padded).index_select(0, row_prompt))  # (B, H, W, Dh)
        lengths = torch.tensor([p.length for p in prefixes], device=self.z.device).index_select(0, row_prompt)  # (B,)
        z0 = torch.stack([p.last_prelogit for p in prefixes]).index_select(0, row_prompt)  # (B, d)
        self.z[:rows].copy_(z0)
        self.prompt_len[:rows].copy_(lengths)
        self.row_start[:rows].copy_(width - lengths)
        self.row_start[rows:].fill_(0)
        self.prompt_len[rows:].fill_(1)
        self.V[:rows, : tau + 1].copy_(V)
        self.uniforms[:rows, : self.call_tokens].copy_(uniforms)
        self.done.fill_(False)
        self.done[rows:] = True  # padding rows: ended from the start, they emit pad tokens
        self.lengths.fill_(self.call_tokens)
        self.out_tokens.fill_(self.lm.pad_token_id)
        self.step.fill_(0)
        self.width.fill_(width)
        self.tau.fill_(tau)

    def run_host_masked(
        self, rows: int, masks: RowMasks, stop_check: StopCheck | None, deadline: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Decode under grammar matchers; returns (tokens (B, T), lengths (B,), stopped (B,), timed_out), on CPU.

        Per step the graph (body + head) fills ``logits``; the logits of the rows not ended yet (the
        live rows of ``masks``, in the same order) are masked, then every row is transformed and
        sampled on the device; one host transfer brings the tokens back to advance the matchers and
        check stop strings (one sync per step, inherent: the next mask depends on the token). An
        ended row leaves the matchers' live rows (``masks.select``), so it is never advanced again.
        """
        T, device = self.call_tokens, self.logits.device
        step_fn = self.graph.replay if self.graph is not None else self._step
        tokens = torch.full((rows, T), self.lm.pad_token_id, dtype=torch.long)  # (B, T) host copy
        lengths = torch.full((rows,), T, dtype=torch.long)  # (B,)
        stopped = torch.zeros(rows, dtype=torch.bool)  # (B,) ended by EOS or a stop string
        live = torch.arange(rows)  # (A,) rows not ended, in the order of the matchers' live rows
        live_index = live.to(device)  # (A,)
        timed_out = False
        self.logits.copy_(self._raw_logits())  # token 0 from the prompts' last pre-logits
        for t in range(T):
            if t > 0:
                step_fn()
            masked = masks.apply(self.logits.index_select(0, live_index), T - t)  # (A, vocab)
            self._pick(self.logits.index_copy_(0, live_index, masked))  # (R, vocab)
            sampled = torch.stack([self.token[:rows], self.done[:rows].long()]).cpu()  # (2, B): one sync
            token, ended = sampled[0][live], sampled[1][live].bool()  # (A,), (A,) ended by EOS
            tokens[live, t] = token
            masks.advance(token, torch.zeros_like(ended))  # every live row was running before this step
            check = (~ended).nonzero().squeeze(-1)  # (C,) live rows that did not just end by EOS
            if stop_check is not None and check.numel():
                hit = check[stop_check(tokens[live[check], : t + 1]).cpu()]  # (H,)
                if hit.numel():
                    ended[hit] = True
                    self.done.index_fill_(0, live[hit].to(device), True)  # from now on they emit pad
            lengths[live[ended]] = t + 1
            stopped[live[ended]] = True
            running = ~ended  # (A,)
            if not bool(running.any()) or t + 1 == T:
                break
            if time.monotonic() >= deadline:  # host clock only
                lengths[live[running]] = t + 1
                timed_out = True
                break
            if not bool(running.all()):
                keep = running.nonzero().squeeze(-1)  # (A',)
                masks.select(keep)
                live = live[keep]
                live_index = live.to(device)
        return tokens, lengths, stopped, timed_out

    def run(
        self, rows: int, stop_check: StopCheck | None, deadline: float = math.inf
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Decode every token; returns (tokens (B, T), lengths (B,), stopped (B,), timed_out) on CPU.

        The deadline is checked on the host after each step is queued (no sync): at the deadline no
        further step is queued, unfinished rows end at the steps queued so far.
        """
        T = self.call_tokens
        every = CHECK_EVERY_CUDA if self.is_cuda else 1
        step_fn = self.graph.replay if self.graph is not None else self._step
        stop_len = torch.full((rows,), T + 1, dtype=torch.long)  # (B,) host side: length at the first stop string
        pending: tuple[Any, torch.Tensor] | None = None  # the previous window's "all ended" flag and its event
        self._head_sample()  # token 0 from the prompts' last pre-logits
        produced, checked, window = 1, 0, 0
        late = time.monotonic() >= deadline
        while True:
            if stop_check is not None:  # the host looks at the new tokens: one sync per window
                tokens = self.out_tokens[:rows, :produced].cpu()  # (B, t)
                eos_len = self.lengths[:rows].cpu()  # (B,)
                for t in range(checked, produced):
                    live = ((stop_len > T) & (eos_len > t)).nonzero().squeeze(-1)  # (A,) rows not ended before t
                    if live.numel() == 0:
                        break
                    hit = stop_check(tokens[live, : t + 1]).cpu()  # (A,)
                    stop_len[live[hit]] = t + 1
                checked = produced
                if bool(((stop_len <= T) | (eos_len <= produced)).all()):
                    break
            elif self.is_cuda:  # look one window late: the GPU already has the next window queued
                flag = self.flags[window % 2]
                flag.copy_(self.done[:rows].all()[None], non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                window += 1
                if pending is not None:
                    pending[0].synchronize()
                    if bool(pending[1]):
                        break
                pending = (event, flag)
            elif bool(self.done[:rows].all()):
                break
            if produced >= T or late:
                break
            for _ in range(min(every, T - produced)):
                step_fn()
                produced += 1
                if time.monotonic() >= deadline:  # host clock only: the queued steps still run
                    late = True
                    break
        # copies (on CPU .cpu() would alias the buffers, which the next call overwrites)
        tokens = self.out_tokens[:rows, :T].to("cpu", copy=True)  # (B, T)
        eos_len = self.lengths[:rows].to("cpu", copy=True)  # (B,)
        eos_done = self.done[:rows].to("cpu", copy=True)  # (B,)
        lengths = torch.minimum(eos_len, stop_len)  # (B,)
        stopped = eos_done | (stop_len <= T)  # (B,)
        timed_out = late and produced < T and not bool(stopped.all())
        if timed_out:
            lengths = torch.where(stopped, lengths, produced)  # (B,) unfinished rows end where decoding stopped
        return tokens, lengths, stopped, timed_out


def _runner_for(
    decoder: Decoder,
    prefixes: Sequence[PromptPrefix],
    rows: int,
    compile_step: CompileStep,
    host_sampling: bool = False,
) -> _Runner:
    """The cached runner of this call's bucket, built (compiled, captured) on first use."""
    lm = decoder.lm
    cache = runner_cache(lm)
    max_tokens = token_bucket(decoder.sampling.max_tokens)
    width = max(p.length for p in prefixes)
    kv_shapes = tuple(
        (k.shape[1], k.shape[3], v.shape[3]) for k, v in zip(prefixes[0].keys, prefixes[0].values, strict=True)
    )
    bucket, length = rows_bucket(rows), cache_length(width, max_tokens)  # sized for the max_tokens bucket
    base = (bucket, length, max_tokens, decoder.processors, kv_shapes, host_sampling)
    if compile_step == COMPILE_WHEN_WARM:  # "auto": compile only what is paid for already
        for compiled in (True, False):
            runner = cache.get((*base, compiled))
            if runner is not None:
                return runner
        compile_step = compile_cache.has_entry(compile_cache.compile_key(lm, bucket, length))
    compiled = bool(compile_step)

    def build() -> _Runner:
        if lm.device.type == "cuda" and cache.pool is None:  # one pool for every graph of the model: replay rule
            cache.pool = torch.cuda.graph_pool_handle()
        runner = _Runner(
            lm, decoder.processors, bucket, length, max_tokens, kv_shapes, cache.pool, compiled, host_sampling
        )
        runner.prepare(compiled)
        return runner

    estimate = buffer_bytes(lm, bucket, length, max_tokens, kv_shapes, host_sampling)
    return cache.get_or_build((*base, compiled), estimate, build)


@torch.inference_mode()
def decode_static(
    decoder: Decoder,
    prefixes: Sequence[PromptPrefix],
    row_prompt: torch.Tensor,
    V: torch.Tensor,
    uniforms: torch.Tensor,
    matchers: Sequence[Matcher | None] | None = None,
    deadline: float = math.inf,
    *,
    compile_step: CompileStep = False,
) -> DecodeOutput:
    """Decode one response per row on the static path; same arguments and result as ``decoding.decode``.

    ``matchers`` (one per row, None = unconstrained; :mod:`langchain_aisp.engine.constraints`) keep the
    body and head in the graph and mask, sample and advance each step outside it; ``deadline``
    (``time.monotonic()`` seconds) stops decoding after the step during which it passed
    (``DecodeOutput.timed_out``). ``compile_step=True`` compiles the body with ``torch.compile``
    (inductor, fewer and fused kernels) before capturing it: tens of seconds per bucket the first
    time on a machine, then loaded from :mod:`~langchain_aisp.engine.decode.compile_cache`;
    ``compile_step="when_warm"`` (``decoding="auto"``) compiles a bucket only when that cache holds it.
    ``DecodeOutput.path`` says what ran: ``"compiled"``, ``"static"`` or (sliding-window fallback)
    ``"eager"``. An out-of-memory error drops every cached bucket of the model before it propagates.
    """
    lm = decoder.lm
    rows = row_prompt.shape[0]
    width = max(p.length for p in prefixes)
    window = _sliding_window(lm)
    cache = runner_cache(lm)
    if window is not None and cache_length(width, decoder.sampling.max_tokens) > window:
        cache.note_once(
            "sliding-window",
            logging.WARNING,
            "the static path of %s decodes with the eager path when prompt + max_tokens exceeds its sliding "
            "window of %d tokens (the static attention mask has no window)",
            lm.name,
            window,
        )
        return decode(decoder, prefixes, row_prompt, V, uniforms, matchers, deadline)
    constrained = matchers is not None and any(m is not None for m in matchers)
    stop_check = decoder.stop_check if decoder.sampling.stop else None
    try:
        runner = _runner_for(decoder, prefixes, rows, compile_step, constrained)
        with cache.replay_lock:  # the model's graphs share one memory pool: one decode at a time
            runner.load(
                prefixes, row_prompt.to(lm.device), V.to(device=lm.device, dtype=lm.dtype), uniforms.to(lm.device)
            )
            if matchers is not None and constrained:
                masks = RowMasks(matchers, lm.head_weight.shape[0], lm.eos_token_ids, lm.device)
                tokens, lengths, stopped, timed_out = runner.run_host_masked(rows, masks, stop_check, deadline)
            else:
                tokens, lengths, stopped, timed_out = runner.run(rows, stop_check, deadline)
            runner.stats.calls += 1
    except torch.OutOfMemoryError:
        cache.evict_all(f"out of memory decoding {rows} rows of {lm.name}")
        raise
    token_ids = [tokens[i, : int(lengths[i])].tolist() for i in range(rows)]
    texts = [decoder.text(ids) for ids in token_ids]
    reasons = [FINISH_STOP if s else FINISH_LENGTH for s in stopped.tolist()]
    path = "compiled" if runner.stats.compiled else "static"
    return DecodeOutput(token_ids, texts, reasons, lengths, timed_out, path)


def static_graph_stats(lm: CausalLM) -> list[dict[str, Any]]:
    """One entry per cached bucket, least recently used first: rows, cache length, max_tokens bucket, graph or
    not, compiled or not, capture and compile seconds, compile-cache hit or miss, calls, errors, bytes."""
    cache = lm.static_graphs.get("cache")
    return [] if cache is None else cache.stats()  # type: ignore[no-any-return]


def clear_static_cache(lm: CausalLM) -> None:
    """Free every cached bucket (buffers and graphs) of ``lm``."""
    cache = lm.static_graphs.get("cache")
    if cache is not None:
        cache.evict_all("cleared", logging.DEBUG)
