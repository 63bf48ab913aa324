"""The process-wide model caches and rewards as import paths (serialisation of ``AISPChatModel``).

Module-level state (documented caches, each guarded by ``_LM_CACHE_LOCK``):

- ``_LM_CACHE`` shares a model loaded by name between instances with the same ``(model, device, dtype,
  trust_remote_code)``, so ``AISPChatModel(reward=a)`` and ``AISPChatModel(reward=b)`` load the default model
  once per process. It is bounded: at most :data:`MODEL_CACHE_SIZE` models are held (least recently used
  evicted first); an evicted model that a live chat model still uses stays shared through a weak reference
  (``_LM_WEAK``) instead of being loaded a second time. A load holds only its own key's lock
  (``_LM_LOADING``), so loading one model never blocks a call that uses or loads another.
- ``_WRAPPED`` maps a transformers ``PreTrainedModel`` (weakly) to the ``CausalLM`` that wraps it (weakly):
  every chat model over one model object and tokenizer shares one ``CausalLM`` and so one static
  (CUDA-graph) cache; nothing here keeps either alive.

:func:`clear_model_cache` empties both.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from langchain_aisp.rewards import import_reward as import_path

UNSERIALISABLE = "<not serialisable> "
"""Prefix of the placeholder ``to_json`` writes for a reward or model that cannot be re-created."""

MODEL_CACHE_SIZE = 2
"""Most models the process-wide cache holds; older ones are dropped once no chat model uses them."""

CacheKey = tuple[Any, ...]
"""``(model, device, dtype, trust_remote_code)``."""

_LM_CACHE: OrderedDict[CacheKey, Any] = OrderedDict()
_LM_WEAK: weakref.WeakValueDictionary[CacheKey, Any] = weakref.WeakValueDictionary()
_LM_LOADING: dict[CacheKey, threading.Lock] = {}
_WRAPPED: weakref.WeakKeyDictionary[Any, weakref.ref[Any]] = weakref.WeakKeyDictionary()
_LM_CACHE_LOCK = threading.Lock()


def clear_model_cache() -> None:
    """Drop every model shared through the process-wide caches (instances keep theirs)."""
    with _LM_CACHE_LOCK:
        _LM_CACHE.clear()
        _LM_WEAK.clear()
        _WRAPPED.clear()


def _lookup(key: CacheKey) -> Any:
    """The cached model of ``key`` (now the most recently used) or None; call under ``_LM_CACHE_LOCK``."""
    lm = _LM_CACHE.get(key)
    if lm is None:
        lm = _LM_WEAK.get(key)
        if lm is None:
            return None
        _LM_CACHE[key] = lm  # used again: held again
    _LM_CACHE.move_to_end(key)
    while len(_LM_CACHE) > MODEL_CACHE_SIZE:
        _LM_CACHE.popitem(last=False)  # still reachable through _LM_WEAK while a chat model holds it
    return lm


def cached_lm(
    model: str | None,
    device: str,
    dtype: str,
    trust_remote_code: bool,
    *,
    load: Callable[..., Any] | None = None,
) -> Any:
    """The ``CausalLM`` of ``model`` from the process-wide cache, loaded on first use by ``load`` (default
    :func:`~langchain_aisp.engine.lm.load_causal_lm`). Two threads asking for one model load it once; a
    load blocks only the callers of that same model."""
    if load is None:
        from langchain_aisp.engine.lm import load_causal_lm

        load = load_causal_lm
    key = (model, device, dtype, trust_remote_code)
    with _LM_CACHE_LOCK:
        lm = _lookup(key)
        if lm is not None:
            return lm
        key_lock = _LM_LOADING.setdefault(key, threading.Lock())
    try:
        with key_lock:
            with _LM_CACHE_LOCK:
                lm = _lookup(key)  # loaded by the thread this one waited for
            if lm is None:
                lm = load(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
                with _LM_CACHE_LOCK:
                    _LM_WEAK[key] = lm
                    _LM_CACHE[key] = lm
                    _lookup(key)  # evicts down to MODEL_CACHE_SIZE
            return lm
    finally:
        with _LM_CACHE_LOCK:
            if _LM_LOADING.get(key) is key_lock and not key_lock.locked():
                del _LM_LOADING[key]


def wrapped_lm(hf_model: Any, tokenizer: Any) -> Any:
    """The ``CausalLM`` over a transformers model and tokenizer, shared by every caller passing the same
    two objects (one static graph cache per model); wrapped on first use."""
    from langchain_aisp.engine.lm import wrap_model

    with _LM_CACHE_LOCK:
        ref = _WRAPPED.get(hf_model)
        lm = None if ref is None else ref()
    if lm is not None and lm.tokenizer is tokenizer:
        return lm
    lm = wrap_model(hf_model, tokenizer)  # outside the lock: it runs the model once (pre-logit scale)
    with _LM_CACHE_LOCK:
        ref = _WRAPPED.get(hf_model)
        shared = None if ref is None else ref()
        if shared is not None and shared.tokenizer is tokenizer:
            return shared  # another thread wrapped it meanwhile
        _WRAPPED[hf_model] = weakref.ref(lm)
    return lm


def no_marker(value: Any) -> Any:
    """``value``, unless it is a ``to_json`` marker: then the ``ValueError`` that says why it cannot load."""
    if isinstance(value, str) and value.startswith(UNSERIALISABLE):
        raise ValueError(f"cannot load this AISPChatModel: {value[len(UNSERIALISABLE) :]}")
    return value


def reward_value(value: Any) -> Any:
    """``reward=`` validated: a ``"module:qualname"`` path imported (``ValueError`` if it does not import)."""
    if isinstance(no_marker(value), str):
        try:
            return import_path(value)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"reward path {value!r} does not import: {exc}") from exc
    return value


def model_value(value: Any) -> Any:
    """``model=`` validated: None, a hub id or an existing local path (a str), a ``CausalLM`` or a transformers
    ``PreTrainedModel``; anything else is a ``ValueError`` saying what is accepted."""
    from langchain_aisp.engine.lm import CausalLM, resolve_model_source
    from langchain_aisp.errors import ModelLoadError

    if value is None or isinstance(value, CausalLM):
        return value
    if isinstance(no_marker(value), (str, os.PathLike)):
        try:
            resolve_model_source(value)  # a local path must exist now; a hub id is only checked when loaded
        except ModelLoadError as exc:
            raise ValueError(str(exc)) from exc
        return os.fspath(value)
    from transformers import PreTrainedModel

    if isinstance(value, PreTrainedModel):
        return value
    raise ValueError(
        "model must be None, a hub id or a local path, a langchain_aisp CausalLM or a transformers "
        f"PreTrainedModel (with tokenizer=), got {value!r} ({type(value).__name__})"
    )


def needs_tokenizer(value: Any) -> bool:
    """Whether ``model=`` is a transformers model (then ``tokenizer=`` is required, else refused)."""
    from langchain_aisp.engine.lm import CausalLM

    return value is not None and not isinstance(value, (str, CausalLM))


def model_lm(model: Any) -> Any:
    """The ``CausalLM`` of a chat model's ``model=``: loaded through the cache, given, or wrapped (shared)."""
    from langchain_aisp.engine.lm import CausalLM

    value = model.model
    if value is None or isinstance(value, str):
        return cached_lm(value, model.device, model.dtype, model.trust_remote_code)
    if isinstance(value, CausalLM):
        return value
    return wrapped_lm(value, model.tokenizer)


def display_name(value: Any) -> str:
    """The display name of ``model=``: the hub id or path, the loaded model's name, or the default's."""
    if isinstance(value, str):
        return value
    if value is None:
        from langchain_aisp.engine.default_model import DEFAULT_MODEL_NAME

        return DEFAULT_MODEL_NAME
    name = getattr(value, "name", None)  # a CausalLM
    if isinstance(name, str):
        return name
    return str(getattr(value.config, "_name_or_path", "") or type(value).__name__)


def reward_path(reward: Any) -> tuple[str | None, str]:
    """("module:qualname", "") when ``reward`` can be re-imported by path, else (None, why not)."""
    if isinstance(reward, str):
        return reward, ""
    target = reward
    fn = getattr(reward, "fn", None)
    if isinstance(reward, _function_reward_type()) and fn is not None:
        target = fn
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if module is None or qualname is None or "<" in qualname:
        return None, (
            f"reward {reward!r} is a lambda, a closure or an instance, which cannot be re-imported; "
            "pass a module-level function, a Reward subclass or its 'module:qualname' path"
        )
    try:
        found = import_path(f"{module}:{qualname}")
    except Exception as exc:
        return None, f"reward path {module}:{qualname} does not import: {exc}"
    if found is not target and not isinstance(target, type):
        return None, f"{module}:{qualname} does not resolve to the reward {reward!r}"
    return f"{module}:{qualname}", ""


def _function_reward_type() -> type:
    from langchain_aisp.rewards import FunctionReward

    return FunctionReward


def mark_unserialisable(model: Any, kwargs: dict[str, Any]) -> None:
    """Write ``to_json``'s constructor ``kwargs`` of ``model``: the reward as its path, or a marker with the
    reason; a model passed as loaded objects and a control memory as markers (``load`` raises with the reason)."""
    path, why = reward_path(model.reward)
    kwargs["reward"] = path if path is not None else UNSERIALISABLE + why
    if model.model is not None and not isinstance(model.model, str):
        kwargs["model"] = (
            UNSERIALISABLE + "a model passed as loaded objects cannot be serialised; pass model=<hub id or local path>"
        )
        kwargs.pop("tokenizer", None)
    if model.control_memory is not None:
        kwargs["control_memory"] = (
            UNSERIALISABLE + "a control memory is not serialised with the model; save it with "
            "memory.save(path) and pass control_memory=ControlMemory.load(path)"
        )
