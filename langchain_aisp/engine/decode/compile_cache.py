"""A persistent cache of the compiled static step: ``torch.compile`` artifacts saved once per machine.

``decoding="compiled"`` compiles the model body of each bucket with inductor: tens of seconds per
bucket, in every process. After a bucket compiles, :func:`save_artifacts` writes what torch's own
caches hold (``torch.compiler.save_cache_artifacts``: the FX-graph, AOTAutograd, autotuning and
kernel caches) to one file per bucket under ``cache_root()/compile`` (or ``$LANGCHAIN_AISP_COMPILE_CACHE``);
before a bucket compiles, :func:`load_artifacts` hands that file back to torch
(``torch.compiler.load_cache_artifacts``), so a fresh process pays only dynamo's tracing, not
inductor's code generation and autotuning.

An entry is keyed by :func:`compile_key`: the model's configuration (not its weights: compiled code
depends on shapes only), dtype, attention implementation, the bucket (rows, cache length), the
device and the torch / transformers / CUDA versions. File layout: a magic line, one JSON header line
(the key, the payload's length and SHA-256), the payload. A corrupt entry (bad magic, header,
length or hash, or torch refuses it) and a foreign one (its header holds another key) are deleted
with a log line, never used. :func:`prune_foreign` removes entries written by other versions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers

from langchain_aisp.engine.default_model import cache_root
from langchain_aisp.engine.lm import CausalLM

_log = logging.getLogger(__name__)

FORMAT = 1
"""Version of the entry layout; part of every key."""
MAGIC = b"langchain-aisp compile cache\n"
SUBDIR = "compile"
DIR_ENV_VAR = "LANGCHAIN_AISP_COMPILE_CACHE"
"""Environment variable naming another folder for the entries (a volume of a server image, a test's folder)."""
_VERSION_FIELDS = ("format", "torch", "transformers", "cuda")


def cache_dir() -> Path:
    """Where entries live: ``$LANGCHAIN_AISP_COMPILE_CACHE``, else ``cache_root()/compile``."""
    folder = os.environ.get(DIR_ENV_VAR)
    return Path(folder).expanduser() if folder else cache_root() / SUBDIR


def environment() -> dict[str, Any]:
    """The versions every key carries (an entry from other versions is never loaded)."""
    return {
        "format": FORMAT,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda or "none",
    }


def _device_label(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"cuda:{torch.cuda.get_device_name(device)}:sm{major}{minor}"


def model_fingerprint(lm: CausalLM) -> str:
    """SHA-256 (16 hex digits) of the model's configuration, without its name or path."""
    config = lm.model.config.to_dict()
    for name in ("_name_or_path", "name_or_path", "transformers_version"):
        config.pop(name, None)
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def compile_key(lm: CausalLM, rows: int, cache_len: int) -> dict[str, Any]:
    """The key of one bucket's compiled body on ``lm`` (see the module docstring)."""
    config = lm.model.config
    return {
        **environment(),
        "model": model_fingerprint(lm),
        "model_type": str(getattr(config, "model_type", "")),
        "attention": str(getattr(config, "_attn_implementation", None) or "eager"),
        "dtype": str(lm.dtype),
        "device": _device_label(lm.device),
        "rows": int(rows),
        "cache_len": int(cache_len),
    }


def entry_path(key: dict[str, Any]) -> Path:
    """The file of ``key``'s entry (it may not exist)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / f"{digest}.bin"


def _parse(path: Path) -> tuple[dict[str, Any], bytes]:
    """(header, payload) of an entry file; ValueError saying what is wrong with a corrupt one."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError("not a compile-cache entry (bad magic line)")
    head, sep, payload = data[len(MAGIC) :].partition(b"\n")
    if not sep:
        raise ValueError("truncated header")
    try:
        header = json.loads(head)
    except json.JSONDecodeError as exc:
        raise ValueError(f"unreadable header ({exc})") from exc
    if not isinstance(header, dict) or not isinstance(header.get("key"), dict):
        raise ValueError("header without a key")
    if header.get("bytes") != len(payload):
        raise ValueError(f"payload is {len(payload)} bytes, header says {header.get('bytes')}")
    if header.get("sha256") != hashlib.sha256(payload).hexdigest():
        raise ValueError("payload hash does not match the header")
    return header, payload


def _discard(path: Path, why: str) -> None:
    _log.warning("compile cache: discarding %s: %s", path, why)
    try:
        path.unlink()
    except OSError as exc:  # another process removed it first, or a read-only cache
        _log.debug("compile cache: could not remove %s: %s", path, exc)


def read_entry(key: dict[str, Any]) -> bytes | None:
    """The payload stored for ``key``, or None (missing; corrupt or foreign entries are discarded)."""
    path = entry_path(key)
    if not path.is_file():
        return None
    try:
        header, payload = _parse(path)
    except (OSError, ValueError) as exc:
        _discard(path, f"corrupt entry ({exc})")
        return None
    if header["key"] != key:
        _discard(path, f"foreign entry (written for {header['key']}, expected {key})")
        return None
    return payload


def has_entry(key: dict[str, Any]) -> bool:
    """Whether a valid entry is stored for ``key`` (the compile of that bucket is paid already)."""
    return read_entry(key) is not None


def write_entry(key: dict[str, Any], payload: bytes) -> Path:
    """Store ``payload`` for ``key`` atomically (a crash never leaves a half-written entry)."""
    path = entry_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(payload).hexdigest()
    header = json.dumps({"key": key, "bytes": len(payload), "sha256": digest}, sort_keys=True).encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + header + b"\n" + payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_artifacts(key: dict[str, Any]) -> bool:
    """Hand ``key``'s stored artifacts to torch before compiling; True when there were some and torch took them."""
    payload = read_entry(key)
    if payload is None:
        return False
    try:
        info = torch.compiler.load_cache_artifacts(payload)  # None: torch could not read it (and logged why)
        why = "" if info is not None else "load_cache_artifacts returned None"
    except Exception as exc:  # written by a torch that reads it differently, or damaged inside a valid frame
        why = f"{type(exc).__name__}: {exc}"
    if why:
        _discard(entry_path(key), f"torch could not load it ({why})")
        return False
    return True


def save_artifacts(key: dict[str, Any]) -> Path | None:
    """Store what torch's compile caches hold now under ``key``; None when torch has nothing to save."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return None
    return write_entry(key, saved[0])


def prune_foreign() -> list[Path]:
    """Delete entries written by other versions (:func:`environment`) or corrupt ones; returns what was removed."""
    folder, current = cache_dir(), environment()
    removed: list[Path] = []
    for path in sorted(folder.glob("*.bin")) if folder.is_dir() else []:
        try:
            header, _ = _parse(path)
        except (OSError, ValueError) as exc:
            _discard(path, f"corrupt entry ({exc})")
            removed.append(path)
            continue
        stored = {name: header["key"].get(name) for name in _VERSION_FIELDS}
        if stored != current:
            _discard(path, f"foreign entry (versions {stored}, these are {current})")
            removed.append(path)
    return removed
