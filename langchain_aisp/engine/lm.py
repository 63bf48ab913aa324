"""Loading a Hugging Face causal LM and exposing the pieces AISP needs.

AISP perturbs the pre-logit ``z_t``: the final hidden state after the final norm,
the input of the LM head ``W, b``. :class:`CausalLM` splits a loaded model into its
body (which returns that hidden state) and its head, and resolves everything the
decoding loop needs once: EOS ids, pad id, dtype, device, the pre-logit scale.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from langchain_aisp.engine.processors import Softcap
from langchain_aisp.errors import ModelLoadError

# A short, neutral text used once per model to measure the scale of its pre-logits.
_CALIBRATION_TEXT = (
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France, "
    "and water boils at 100 degrees Celsius at sea level."
)


@dataclass(frozen=True)
class HeadField:
    """A config field that a causal LM's ``forward`` applies to the head's output (from the survey below)."""

    field: str
    ops: tuple[str, ...]
    """What the forwards that read it do with it, the most common first: "multiply", "divide", "softcap"."""
    seen_in: str
    """The ``model_type`` values of transformers (5.25) whose forward does it."""


HEAD_FIELDS: tuple[HeadField, ...] = (
    HeadField(
        "logits_scaling",
        ("divide", "multiply"),
        "divide: granite, granite_swa, granitemoe, granitemoe_swa, granitemoehybrid, granitemoeshared, "
        "granite4_vision / granite_docling (text_config), minicpm3 (divides the pre-logits; its head has no bias); "
        "multiply: hyperclovax, hyperclovax_vision_v2",
    ),
    HeadField("logit_scale", ("multiply",), "cohere, cohere2, cohere2_moe, cohere_compass, aya_vision (text_config)"),
    HeadField("lm_head_multiplier", ("multiply",), "falcon_h1"),
    HeadField("output_multiplier", ("multiply",), "muse_spark, muse_glimmer (before their soft-capping)"),
    HeadField("logits_mup_width_multiplier", ("divide",), "inkling (divides the pre-logits; no head bias)"),
    HeadField(
        "final_logit_softcapping",
        ("softcap",),
        "gemma2, gemma3_text, gemma3n_text, gemma4_text, gemma4_unified_text, vaultgemma, nanochat, beam, "
        "inkling2, paligemma, t5gemma, t5gemma2, mistral_large4, muse_spark, muse_glimmer",
    ),
    HeadField("logits_soft_cap", ("softcap",), "recurrent_gemma"),
    HeadField("output_logit_soft_cap", ("softcap",), "xlstm"),
)
"""Every head transform of the causal LMs transformers 5.25 ships (a survey of the ``*ForCausalLM`` /
``*ForConditionalGeneration`` forwards: what they do to ``logits`` after ``lm_head``). Each forward computes
``softcap(scale * (W z + b))``: a product of multiplications/divisions by config fields, then at most one
soft-capping (``cap * tanh(x / cap)``). Every other causal LM returns ``W z + b`` as is. A field name does not
fix the operation (``logits_scaling`` divides in Granite and multiplies in HyperCLOVA X): :func:`wrap_model`
tries the listed operations of the fields a config has, in order, and keeps the first whose logits equal the
model's own ``forward`` logits."""

_HEAD_FIELD_LOOKALIKE = re.compile(r"logit|lm_head|soft_?cap|output_mult|mup", re.IGNORECASE)
"""Config field names that may be head transforms (named when a model is refused)."""


@dataclass(frozen=True)
class HeadTransform:
    """What a model's ``forward`` does to the head's output: ``logits = softcap(scale * (W z + b))``."""

    scale: float = 1.0
    softcap: float | None = None
    """``cap`` of ``cap * tanh(logits / cap)``, or None."""
    fields: tuple[str, ...] = ()
    """How it was read from the config, e.g. ``("logits_scaling: divide by 8.0",)``."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"head scale must be a finite number > 0, got {self.scale}")
        if self.softcap is not None and not (math.isfinite(self.softcap) and self.softcap > 0):
            raise ValueError(f"head softcap must be a finite number > 0 or None, got {self.softcap}")

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None


HeadFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``head(z, v) -> softcap(scale * (W (z + v) + b))``: pre-logits z (A, d), control v (A, d) -> the model's
logits (A, vocab) in fp32."""


def build_head(weight: torch.Tensor, bias: torch.Tensor | None, transform: HeadTransform) -> HeadFn:
    """The LM head with the control added and the model's head transform applied, resolved once.

    fp32 models add ``v`` to ``z`` before the head. Half-precision models cannot: bf16 spaces
    representable values 0.016 apart at ``|z|`` ~ 2 and 0.125 at the outlier coordinates, while
    ``sigma`` is a few hundredths, so ``z + v`` would round most of the control away. There the head
    runs on ``z`` and ``v`` stacked into one matrix (one pass over ``W``, which is what a small batch
    costs on a GPU) and the two products are added in fp32: ``W z + W v + b`` keeps the shift ``W v``.
    The transform (a scale, a soft-capping) is composed here, once: the step runs no branch on it.
    """
    if weight.dtype == torch.float32:

        def linear(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.linear(z + v, weight, bias)  # (A, vocab)

    else:
        bias32 = bias.float() if bias is not None else None  # (vocab,)

        def linear(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            rows = z.shape[0]
            both = F.linear(torch.cat([z, v.to(z.dtype)]), weight)  # (2A, vocab): W z and W v
            logits = both[:rows].float() + both[rows:].float()  # (A, vocab) fp32
            return logits if bias32 is None else logits + bias32  # (A, vocab)

    if transform.identity:
        return linear
    scale = transform.scale
    if transform.softcap is None:

        def scaled(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return linear(z, v) * scale  # (A, vocab)

        return scaled
    cap = Softcap(transform.softcap)

    def capped(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return cap(linear(z, v) * scale)  # (A, vocab)

    return capped


@dataclass(frozen=True)
class CausalLM:
    """A causal LM split into body and head, with its tokenizer and resolved settings."""

    model: Any
    """The full ``PreTrainedModel`` (kept for ``generate`` comparisons and configs)."""
    body: nn.Module
    """Returns ``last_hidden_state`` after the final norm: the pre-logits."""
    head_weight: torch.Tensor
    """LM head weight ``W``, shape (V, d)."""
    head_bias: torch.Tensor | None
    """LM head bias ``b``, shape (V,), or None."""
    tokenizer: Any
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    head_transform: HeadTransform
    """What the model's ``forward`` does to ``W z + b`` (a scale, a soft-capping): read from the config's own
    fields (:data:`HEAD_FIELDS`) and checked against the model's ``forward`` once, in :func:`wrap_model`."""
    prelogit_rms: float
    """Root-mean-square of one pre-logit coordinate on a calibration text."""
    name: str
    cache_kwarg: str = "past_key_values"
    """Name of the KV-cache argument and output field of ``body`` ("cache" in transformers >= 5.2x)."""
    static_graphs: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    """Cache of the static decode path (``langchain_aisp.engine.decode.static``): preallocated buffers and
    CUDA graphs per row bucket and cache length. Empty until that path runs; lives and dies with this
    object (a ``dataclasses.replace`` copy starts empty); ``static_decoding.clear_static_cache`` frees it."""

    @property
    def device(self) -> torch.device:
        return self.head_weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head_weight.dtype

    @property
    def hidden_size(self) -> int:
        return int(self.head_weight.shape[1])

    @property
    def max_context(self) -> int | None:
        """The model's context window in tokens, when its config states one."""
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if isinstance(value, int) and value > 0 else None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None picks CUDA when available, else CPU; anything else is validated."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but CUDA is not available here")
    return resolved


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``"auto"``/None: fp32 on CPU, bf16 on CUDA where supported, else fp16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"dtype must be one of {sorted(_DTYPES)} or 'auto', got {dtype!r}")
    return _DTYPES[dtype]


def _eos_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    ids: list[int] = []
    candidates: list[Any] = [getattr(tokenizer, "eos_token_id", None)]
    gen_config = getattr(model, "generation_config", None)
    if gen_config is not None:
        candidates.append(getattr(gen_config, "eos_token_id", None))
    for value in candidates:
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, (list, tuple)):
            ids.extend(int(v) for v in value)
    unique = tuple(dict.fromkeys(ids))
    if not unique:
        raise ModelLoadError(
            "the tokenizer has no EOS token (tokenizer.eos_token_id is None and the "
            "generation config names none): set tokenizer.eos_token before passing it"
        )
    return unique


def head_for(lm: CausalLM) -> HeadFn:
    """``lm``'s head: ``softcap(scale * (W (z + v) + b))`` in fp32 (:func:`build_head`)."""
    return build_head(lm.head_weight, lm.head_bias, lm.head_transform)


def _prelogit_rms(hidden: torch.Tensor) -> float:
    """RMS of one pre-logit coordinate of ``hidden`` (1, L, d), the first position (attention sink) skipped."""
    rms = hidden[0, 1:].float().pow(2).mean().sqrt().item()
    if not rms > 0 or rms != rms:
        raise ModelLoadError(f"the model's pre-logits have a degenerate scale (RMS {rms})")
    return float(rms)


def _head_candidates(config: Any) -> list[HeadTransform]:
    """The transforms a config's own fields allow (:data:`HEAD_FIELDS`), the likeliest first: every present
    field with its first operation, ..., the fields ignored last."""
    present = []
    for spec in HEAD_FIELDS:
        value = getattr(config, spec.field, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            present.append((spec, float(value)))
    candidates = []
    for ops in itertools.product(*[(*spec.ops, None) for spec, _ in present]):
        scale, softcap, fields = 1.0, None, []
        for (spec, value), op in zip(present, ops, strict=True):
            if op == "multiply":
                scale *= value
            elif op == "divide":
                scale /= value
            elif op == "softcap":
                softcap = value
            if op is not None:
                fields.append(f"{spec.field}: {op} by {value:g}" if op != "softcap" else f"{spec.field}: {value:g}")
        candidates.append(HeadTransform(scale, softcap, tuple(fields)))
    return candidates


HEAD_CHECK_POSITIONS = 4
"""Positions of the calibration text whose logits :func:`resolve_head_transform` compares."""


def head_tolerance(dtype: torch.dtype) -> float:
    """Largest relative difference (to the largest logit) between the engine's head and the model's own logits:
    rounding only (the same pre-logits go through both)."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


def _relative_error(engine: torch.Tensor, reference: torch.Tensor) -> float:
    return float((engine - reference).abs().max() / reference.abs().max().clamp_min(1e-12))


@torch.inference_mode()
def resolve_head_transform(
    model: Any, hidden: torch.Tensor, ids: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> HeadTransform:
    """The head transform that makes the engine's logits the model's own, or :class:`ModelLoadError`.

    ``hidden`` (1, L, d) are the body's pre-logits on ``ids`` (1, L). The model's ``forward`` runs once
    on ``ids``; the engine's head (:func:`build_head`) with each candidate of :func:`_head_candidates` must
    match its logits at the last :data:`HEAD_CHECK_POSITIONS` positions within :func:`head_tolerance`.
    """
    positions = min(HEAD_CHECK_POSITIONS, ids.shape[1])
    try:
        reference = model(input_ids=ids, use_cache=False).logits[0, -positions:].float()  # (P, vocab)
    except Exception as exc:
        raise ModelLoadError(
            f"{type(model).__name__}: could not run the model's forward to check its LM head ({exc})"
        ) from exc
    z = hidden[0, -positions:]  # (P, d)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    tolerance = head_tolerance(weight.dtype)
    errors = []
    for candidate in _head_candidates(config):
        engine = build_head(weight, bias, candidate)(z, torch.zeros_like(z))  # (P, vocab)
        if engine.shape != reference.shape:
            raise ModelLoadError(
                f"{type(model).__name__}: the LM head gives {engine.shape[-1]} logits per token but the model's "
                f"forward {reference.shape[-1]}: AISP needs the head in closed form"
            )
        error = _relative_error(engine, reference)
        if error <= tolerance:
            return candidate
        errors.append((error, candidate))
    plain = build_head(weight, bias, HeadTransform())(z, torch.zeros_like(z))  # (P, vocab)
    ratio = float((plain * reference).sum() / (plain * plain).sum().clamp_min(1e-30))
    lookalike = sorted(k for k in config.to_dict() if _HEAD_FIELD_LOOKALIKE.search(k))
    tried = "; ".join(f"{', '.join(c.fields) or 'no transform'}: {e:.3g}" for e, c in errors)
    raise ModelLoadError(
        f"{type(model).__name__} (model_type {getattr(config, 'model_type', None)!r}): its forward changes the LM "
        f"head's logits in a way this package does not apply, so AISP would sample from the wrong distribution. "
        f"Max relative difference to the model's own logits ({tried}; tolerance {tolerance:g}); the model's "
        f"logits are about {ratio:.4g}x W z + b. Config fields that look like head transforms: "
        f"{lookalike or 'none'}. Known transforms: {[f.field for f in HEAD_FIELDS]}"
    )


@torch.inference_mode()
def _calibrate(model: Any, body: nn.Module, head: nn.Linear, tokenizer: Any) -> tuple[float, HeadTransform]:
    """One body forward on the calibration text: the pre-logit RMS and the checked head transform."""
    ids = tokenizer(_CALIBRATION_TEXT, return_tensors="pt").input_ids.to(head.weight.device)  # (1, L)
    hidden = body(input_ids=ids, use_cache=False).last_hidden_state  # (1, L, d)
    bias = None if head.bias is None else head.bias.detach()
    transform = resolve_head_transform(model, hidden, ids, head.weight.detach(), bias)
    return _prelogit_rms(hidden), transform


def wrap_model(model: Any, tokenizer: Any, name: str | None = None) -> CausalLM:
    """Split an already loaded ``PreTrainedModel`` and tokenizer into a :class:`CausalLM`.

    The head's transform (a logit scale, a soft-capping) is read from the config and checked once against
    the model's own ``forward``: a model whose logits the engine cannot reproduce is refused
    (:class:`ModelLoadError` naming the architecture, the mismatch and the config fields), not run wrong.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        raise ModelLoadError(
            f"model {type(model).__name__} has no linear LM head (get_output_embeddings() "
            f"returned {type(head).__name__}); AISP needs the head to perturb pre-logits"
        )
    body = getattr(model, "base_model", None)
    if body is None or body is model:
        raise ModelLoadError(f"model {type(model).__name__} exposes no separate body (base_model)")
    eos = _eos_ids(model, tokenizer)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad_id = int(pad) if isinstance(pad, int) else eos[0]
    model.eval()
    params = inspect.signature(body.forward).parameters
    cache_kwarg = "cache" if "cache" in params else "past_key_values"
    prelogit_rms, transform = _calibrate(model, body, head, tokenizer)
    return CausalLM(
        model=model,
        body=body,
        head_weight=head.weight.detach(),
        head_bias=None if head.bias is None else head.bias.detach(),
        tokenizer=tokenizer,
        eos_token_ids=eos,
        pad_token_id=pad_id,
        head_transform=transform,
        prelogit_rms=prelogit_rms,
        name=name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__),
        cache_kwarg=cache_kwarg,
    )


def resolve_model_source(model: str | os.PathLike[str]) -> str:
    """A local folder (expanded) or a plain hub id; a path that does not exist raises :class:`ModelLoadError`.

    Only ``"name"`` or ``"org/name"`` may go to the hub: anything that looks like a path
    (``./x``, ``/x``, ``~/x``, ``a/b/c``) must exist on disk. Touches no network.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise ModelLoadError(f"model must be None, a hub id or a local path, got {model!r} ({type(model).__name__})")
    source = os.fspath(model)
    if Path(source).expanduser().exists():
        return str(Path(source).expanduser())
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or not source.strip():
        raise ModelLoadError(f"model path {source!r} does not exist")
    return source


HUB_TIMEOUT = 10.0
"""Seconds the hub lookup of an uncached hub id may take (one request, no retries) before the load fails."""

_TRUE = ("1", "true", "yes", "on")
_DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded default model's hub id (for hints)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now (not at import)."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _did_you_mean(repo_id: str) -> str:
    """`` (did you mean 'X'?)`` for a close match among the hub ids cached here and the default model's, else ""."""
    import difflib

    candidates = {_DEFAULT_MODEL_HUB_ID}
    try:
        from huggingface_hub import constants

        folders = Path(constants.HF_HUB_CACHE).glob("models--*")  # the cache's layout: models--org--name
        candidates.update(f.name[len("models--") :].replace("--", "/") for f in folders)
    except OSError:  # an unreadable cache: no suggestion from it
        pass
    match = difflib.get_close_matches(repo_id, sorted(candidates - {repo_id}), n=1, cutoff=0.8)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_hub_model(repo_id: str, *, timeout: float = HUB_TIMEOUT) -> None:
    """Fail at once, with the reason, when the hub id ``repo_id`` cannot be loaded; return when it can be tried.

    * in the local Hugging Face cache: fine (``from_pretrained`` loads it, online or not);
    * not cached and ``HF_HUB_OFFLINE=1``: :class:`ModelLoadError` at once (no network is touched);
    * not cached: one hub request (``model_info``, no retries, ``timeout`` seconds); an unknown id
      says it was not found, a gated one says so, an unreachable hub says so, all without the
      minute of download retries ``from_pretrained`` would spend. Other hub errors (5xx) are left
      to ``from_pretrained``.
    """
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # a malformed id is reported by the hub lookup / from_pretrained below
        cached = None
    if isinstance(cached, str):
        return
    hint = _did_you_mean(repo_id)
    where = "or pass a local folder"
    if hub_offline():
        raise ModelLoadError(
            f"model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set, so it cannot be "
            f"downloaded{hint}: check the id, download it once with network access, {where}"
        )
    try:
        HfApi().model_info(repo_id, timeout=timeout)
    except GatedRepoError as exc:
        raise ModelLoadError(
            f"model {repo_id!r} is gated on the Hugging Face hub: accept its terms at "
            f"https://huggingface.co/{repo_id} and log in (`hf auth login` or HF_TOKEN)"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(
            f"model id {repo_id!r} was not found on the Hugging Face hub{hint} (a private model needs a login: "
            f"`hf auth login` or HF_TOKEN); check the id, {where}"
        ) from exc
    except HfHubHTTPError:
        return  # the hub answered with another error: from_pretrained reports it
    except Exception as exc:  # no network, DNS failure, refused or timed-out connection, blocked sockets
        raise ModelLoadError(
            f"model {repo_id!r} is not in the local Hugging Face cache and the hub cannot be reached "
            f"({type(exc).__name__}: {exc}){hint}: check the network, set HF_HUB_OFFLINE=1 to fail at once "
            f"when offline, {where}"
        ) from exc


def load_causal_lm(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    trust_remote_code: bool = False,
) -> CausalLM:
    """Load a causal LM by hub id or local path; ``None`` loads the embedded default model.

    Nothing is downloaded for the default model. A hub id that is not in the local
    cache is first looked up once (:func:`check_hub_model`: an unknown id, no network or
    ``HF_HUB_OFFLINE=1`` fail at once with the reason), then goes through ``from_pretrained``
    as usual. ``trust_remote_code`` stays off unless passed explicitly.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from langchain_aisp.engine.default_model import DEFAULT_MODEL_NAME, ensure_default_model

    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    if model is None:
        source: str = str(ensure_default_model())
        name = DEFAULT_MODEL_NAME
    else:
        name = os.fspath(model)
        source = resolve_model_source(model)
        if not Path(source).exists():
            check_hub_model(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        loaded = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=resolved_dtype,
            trust_remote_code=trust_remote_code,
            # The default model's cache is safetensors only: never fall back to a pickled checkpoint there.
            # Elsewhere safetensors are preferred where present (transformers loads .bin with weights_only=True).
            use_safetensors=True if model is None else None,
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load model {source!r}: {exc}") from exc
    loaded = loaded.to(resolved_device)  # type: ignore[arg-type]
    return wrap_model(loaded, tokenizer, name=name)
