"""The process-wide model cache and rewards as import paths (serialisation of ``AISPChatModel``).

Module-level state: ``_LM_CACHE`` (guarded by ``_LM_CACHE_LOCK``) shares a loaded model between
instances with the same ``(model, device, dtype, trust_remote_code)``, so ``AISPChatModel(reward=a)``
and ``AISPChatModel(reward=b)`` load the default model once per process. :func:`clear_model_cache`
frees it.
"""

from __future__ import annotations

import threading
from typing import Any

from langchain_aisp.rewards import import_reward as import_path

UNSERIALISABLE = "<not serialisable> "
"""Prefix of the placeholder ``to_json`` writes for a reward or model that cannot be re-created."""

_LM_CACHE: dict[tuple[Any, ...], Any] = {}
_LM_CACHE_LOCK = threading.Lock()


def clear_model_cache() -> None:
    """Drop every model shared through the process-wide cache (instances keep theirs)."""
    with _LM_CACHE_LOCK:
        _LM_CACHE.clear()


def cached_lm(model: str | None, device: str, dtype: str, trust_remote_code: bool) -> Any:
    """The ``CausalLM`` of ``model`` from the process-wide cache (loaded on first use)."""
    from langchain_aisp.engine.lm import load_causal_lm

    key = (model, device, dtype, trust_remote_code)
    with _LM_CACHE_LOCK:
        if key not in _LM_CACHE:
            _LM_CACHE[key] = load_causal_lm(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        return _LM_CACHE[key]


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
    if model.llm is not None or model.hf_model is not None:
        kwargs["llm"] = (
            UNSERIALISABLE + "a model passed as loaded objects cannot be serialised; pass model=<hub id or local path>"
        )
    if model.control_memory is not None:
        kwargs["control_memory"] = (
            UNSERIALISABLE + "a control memory is not serialised with the model; save it with "
            "memory.save(path) and pass control_memory=ControlMemory.load(path)"
        )
