"""Server settings: one validated dataclass shared by the CLI, the FastAPI app and the Ray Serve builder.

Plain Python (no HTTP or Ray import). Rewards are registered by the operator, by name:
``NAME=module:qualname`` specs are imported at start, never from a request. With ``app_dir`` set
(the CLI's ``--app-dir``, default ``.``) they are imported here, from that folder first, as uvicorn
imports an app; without it, by the chat model from ``sys.path``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

API_KEY_ENV = "LANGCHAIN_AISP_API_KEY"
"""Environment variable read for the bearer token when no ``api_key`` is given."""

DEFAULT_REWARD_SPEC = "relevance=langchain_aisp.rewards:EmbeddingSimilarityReward"
"""The reward served when none is registered: prompt/answer cosine similarity (the ``rewards`` extra)."""

_REWARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")

CHAT_MODEL_DEFAULTS = ("method", "num_samples", "num_iterations", "max_tokens", "temperature", "top_p", "sigma", "tau")
"""AISPChatModel fields an operator may set as server-wide defaults (``ServeConfig.defaults``)."""


def parse_reward_spec(spec: str) -> tuple[str, str]:
    """``"NAME=module:qualname"`` -> ``(NAME, "module:qualname")``, with a message naming what is wrong."""
    name, sep, path = spec.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise ValueError(f"a reward must be given as NAME=module:callable, got {spec!r}")
    if not _REWARD_NAME.match(name):
        raise ValueError(
            f"reward name {name!r} must be 1-64 characters of letters, digits, '_', '.', '-' (starting with a "
            "letter or digit)"
        )
    module, colon, qualname = path.partition(":")
    if not colon or not module or not qualname:
        raise ValueError(f"reward {name!r}: the path must look like 'package.module:callable', got {path!r}")
    return name, path


def _positive_int(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


@dataclass
class ServeConfig:
    """Everything the server needs; validated in ``__post_init__`` (messages name the field, value, range)."""

    model: str | None = None
    """Hub id or local folder of the served model; None serves the embedded default model."""
    served_model_name: str | None = None
    """Name listed by ``GET /v1/models`` (default: the model's name); requests may also say ``"default"``."""
    rewards: dict[str, Any] = field(default_factory=dict)
    """Reward name -> ``"module:qualname"`` (or, from Python, a Reward / function); the first is the default.
    Empty: ``DEFAULT_REWARD_SPEC``."""
    api_key: str | None = None
    """Bearer token required on ``/v1/*`` and ``/metrics``; None reads ``$LANGCHAIN_AISP_API_KEY`` (unset: open)."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Server-wide AISPChatModel defaults (``CHAT_MODEL_DEFAULTS``) for requests that do not set them."""
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    batch_window_ms: float = 5.0
    """How long the first request of a batch waits for others (milliseconds, >= 0; 0 disables batching waits)."""
    batch_window_max_ms: float = 50.0
    """While other requests are still being read and validated when the window ends (a burst of
    clients), the batch waits for them up to this long after its first request (milliseconds);
    a lone request never waits longer than ``batch_window_ms``."""
    max_batch_prompts: int = 32
    """Most requests collected into one round of engine runs."""
    max_batch_rows: int = 64
    """Rows (prompts x num_samples) decoded together (AISPChatModel.max_batch_rows)."""
    max_queue: int = 128
    """Requests waiting or running at once; one more gets 429 with Retry-After."""
    max_budget: int = 256
    """Per-request cap on num_samples x num_iterations (400 above it)."""
    max_tokens_limit: int = 1024
    """Per-request cap on max_tokens (400 above it)."""
    max_timeout_s: float = 600.0
    """Per-request cap on ``timeout`` in seconds (400 above it). A request's timeout counts from its
    admission (queue time included); at the deadline it gets its best answer so far
    (``aisp.timed_out``), or 504 when not one of its samples had been scored."""
    max_pending_work: int = 1 << 21
    """Server-wide cap on the work admitted and not yet done, in sampled tokens
    (sum of num_samples x num_iterations x max_tokens); a request that would pass it gets 429."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted (413 above it)."""
    warmup: bool = True
    """Score a ping with every reward and decode one token at start, so a broken reward fails the start."""
    memory: bool = False
    """One :class:`~langchain_aisp.ControlMemory` per registered reward: every request of that reward (Best-of-N or
    AISP, no tools or schema) steers by it and teaches it (docs/benchmarks.md, "Learning across calls")."""
    memory_dir: str | None = None
    """With ``memory``: the folder of their profiles, ``<reward name>.safetensors``, loaded at start when present
    and saved at shutdown, so a restarted server comes back warm. None: the memories live in the process only.
    (Ray Serve replicas learn apart; give each its own folder or none.)"""
    app_dir: str | None = None
    """Folder searched first for reward modules (as uvicorn's ``--app-dir``; put first on ``sys.path``);
    string rewards are then imported when the config is built, and an error names the folder. None: the
    rewards are imported from ``sys.path`` only, when the service starts."""

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise ValueError("api_key must be a non-empty string or None")
        if not self.rewards:
            name, path = parse_reward_spec(DEFAULT_REWARD_SPEC)
            self.rewards = {name: path}
        for name, reward in self.rewards.items():
            if not isinstance(name, str) or not _REWARD_NAME.match(name):
                raise ValueError(f"reward name {name!r} must be 1-64 letters, digits, '_', '.', '-'")
            if isinstance(reward, str):
                parse_reward_spec(f"{name}={reward}")
        if self.app_dir is not None:
            self.rewards = {name: _import_reward(name, reward, self.app_dir) for name, reward in self.rewards.items()}
        unknown = sorted(set(self.defaults) - set(CHAT_MODEL_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown server default(s) {unknown}; allowed: {list(CHAT_MODEL_DEFAULTS)}")
        for name in ("batch_window_ms", "batch_window_max_ms"):
            window = getattr(self, name)
            if isinstance(window, bool) or not isinstance(window, (int, float)) or not math.isfinite(window):
                raise ValueError(f"{name} must be a finite number in [0, 10000], got {window!r}")
            if not 0 <= window <= 10_000:
                raise ValueError(f"{name} must be a finite number in [0, 10000], got {window}")
        for name in ("max_batch_prompts", "max_batch_rows", "max_queue", "max_budget", "max_tokens_limit"):
            _positive_int(name, getattr(self, name))
        _positive_int("max_pending_work", self.max_pending_work)
        cap = self.max_timeout_s
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not (math.isfinite(cap) and cap > 0):
            raise ValueError(f"max_timeout_s must be a finite number of seconds > 0, got {cap!r}")
        _positive_int("max_body_bytes", self.max_body_bytes, low=1024)
        if self.memory_dir is not None and not self.memory:
            raise ValueError("memory_dir keeps the control memories' profiles: it needs memory=True")

    @property
    def default_reward(self) -> str:
        return next(iter(self.rewards))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ServeConfig:
        """Build from strings (Ray Serve builder arguments, ``key=value``): numbers and booleans are parsed,
        ``rewards`` may be ``"a=mod:fn,b=mod:fn"`` and AISP defaults may be given by their field names."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        defaults: dict[str, Any] = dict(values.get("defaults") or {})
        for key, raw in values.items():
            if key == "defaults":
                continue
            if key in ("rewards", "reward"):
                kwargs["rewards"] = _parse_rewards(raw)
            elif key in CHAT_MODEL_DEFAULTS:
                defaults[key] = _parse_scalar(raw) if isinstance(raw, str) and key != "method" else raw
            elif key in known:
                kwargs[key] = _coerce(key, raw, known[key].type)
            else:
                raise ValueError(f"unknown server setting {key!r}; settings: {sorted([*known, *CHAT_MODEL_DEFAULTS])}")
        kwargs["defaults"] = defaults
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """Plain values (for shipping to Ray replicas); rewards given as objects are kept as objects."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _import_reward(name: str, reward: Any, app_dir: str) -> Any:
    """A string reward imported from ``app_dir`` first (ValueError naming the reward, its path and the folder)."""
    if not isinstance(reward, str):
        return reward
    from langchain_aisp.rewards.base import import_reward

    try:
        return import_reward(reward, app_dir=app_dir)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"reward {name!r} ({reward!r}) cannot be served: {exc}") from exc


def _parse_rewards(raw: Any) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    specs = raw.split(",") if isinstance(raw, str) else list(raw)
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.strip():
            name, path = parse_reward_spec(spec)
            if name in out:
                raise ValueError(f"reward name {name!r} is registered twice")
            out[name] = path
    return out


def _parse_scalar(raw: str) -> Any:
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def _coerce(key: str, raw: Any, annotation: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    kind = str(annotation)
    if "bool" in kind:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key} must be true or false, got {raw!r}")
    if "int" in kind and "None" not in kind:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{key} must be an integer, got {raw!r}") from None
    if "float" in kind:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {raw!r}") from None
    return raw
