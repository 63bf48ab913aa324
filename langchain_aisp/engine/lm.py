"""Loading a Hugging Face causal LM and exposing the pieces AISP needs.

AISP perturbs the pre-logit ``z_t``: the final hidden state after the final norm,
the input of the LM head ``W, b``. :class:`CausalLM` splits a loaded model into its
body (which returns that hidden state) and its head, and resolves everything the
decoding loop needs once: EOS ids, pad id, dtype, device, the pre-logit scale.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from langchain_aisp.errors import ModelLoadError

# A short, neutral text used once per model to measure the scale of its pre-logits.
_CALIBRATION_TEXT = (
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France, "
    "and water boils at 100 degrees Celsius at sea level."
)


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
    logit_softcap: float | None
    """``final_logit_softcapping`` of models that use it (Gemma 2), else None."""
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


@torch.inference_mode()
def _measure_prelogit_rms(body: nn.Module, tokenizer: Any, device: torch.device) -> float:
    ids = tokenizer(_CALIBRATION_TEXT, return_tensors="pt").input_ids.to(device)  # (1, L)
    hidden = body(input_ids=ids, use_cache=False).last_hidden_state  # (1, L, d)
    rms = hidden[0, 1:].float().pow(2).mean().sqrt().item()  # skip the first position (attention sink)
    if not rms > 0 or rms != rms:
        raise ModelLoadError(f"the model's pre-logits have a degenerate scale (RMS {rms})")
    return float(rms)


def wrap_model(model: Any, tokenizer: Any, name: str | None = None) -> CausalLM:
    """Split an already loaded ``PreTrainedModel`` and tokenizer into a :class:`CausalLM`."""
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
    softcap = getattr(model.config, "final_logit_softcapping", None)
    model.eval()
    params = inspect.signature(body.forward).parameters
    cache_kwarg = "cache" if "cache" in params else "past_key_values"
    device = head.weight.device
    return CausalLM(
        model=model,
        body=body,
        head_weight=head.weight.detach(),
        head_bias=None if head.bias is None else head.bias.detach(),
        tokenizer=tokenizer,
        eos_token_ids=eos,
        pad_token_id=pad_id,
        logit_softcap=float(softcap) if softcap else None,
        prelogit_rms=_measure_prelogit_rms(body, tokenizer, device),
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
