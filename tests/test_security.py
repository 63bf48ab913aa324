"""Security (issue 6): no remote code unless asked, no unrestricted pickle, an atomic and validated
default-model cache, and no network at import or construction time.

tests/test_default_model.py already covers the offline load of the cache, truncated files, a
missing manifest and the rebuild of a corrupt cache; this file adds what it does not.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import transformers

from langchain_aisp import AISPChatModel
from langchain_aisp.engine import default_model
from langchain_aisp.engine.default_model import DefaultModelError, ensure_default_model, validate_cache
from langchain_aisp.engine.lm import load_causal_lm
from langchain_aisp.rewards import HFRewardModel

PACKAGE = Path(__file__).resolve().parents[1] / "langchain_aisp"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


class _StopLoadingError(Exception):
    """Raised by the patched loaders once they have recorded their arguments."""


def length_reward(prompt: str, response: str) -> float:
    return float(len(response))


@pytest.fixture
def loader_calls(monkeypatch) -> list[tuple[str, dict[str, Any]]]:
    """Patch every transformers loader the package uses: record (loader, kwargs), then stop."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def recorder(label: str):
        def from_pretrained(source, *args, **kwargs):
            calls.append((label, dict(kwargs)))
            if label.endswith("Tokenizer"):
                return object()  # let the model loader run too
            raise _StopLoadingError(label)

        return from_pretrained

    for name in ("AutoTokenizer", "AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoModel"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", recorder(name))
    return calls


# --- trust_remote_code ---------------------------------------------------------------------------


def test_trust_remote_code_is_off_unless_passed(tmp_path, loader_calls):
    with pytest.raises(_StopLoadingError):
        AISPChatModel(model=str(tmp_path), reward=length_reward).invoke("hi")
    with pytest.raises(_StopLoadingError):
        HFRewardModel(str(tmp_path))
    assert [label for label, _ in loader_calls] == [
        "AutoTokenizer",
        "AutoModelForCausalLM",
        "AutoTokenizer",
        "AutoModelForSequenceClassification",
    ]
    assert all(kwargs["trust_remote_code"] is False for _, kwargs in loader_calls)
    loader_calls.clear()
    with pytest.raises(_StopLoadingError):
        AISPChatModel(model=str(tmp_path), reward=length_reward, trust_remote_code=True).invoke("hi")
    assert [kwargs["trust_remote_code"] for _, kwargs in loader_calls] == [True, True]


def test_chat_model_cache_keys_on_trust_remote_code(tmp_path, monkeypatch):
    """A model loaded with remote code is never handed to an instance that did not ask for it."""
    import langchain_aisp.chat_models as cm
    import langchain_aisp.engine.lm as lmlib

    loaded: list[bool] = []

    class FakeLM(list):  # weakly referenceable, as a real CausalLM is (the bounded cache holds models weakly)
        pass

    def fake_load(model, *, device, dtype, trust_remote_code):
        loaded.append(trust_remote_code)
        return FakeLM(["model", trust_remote_code, len(loaded)])

    monkeypatch.setattr(lmlib, "load_causal_lm", fake_load)
    cm.clear_model_cache()
    try:
        trusted = AISPChatModel(model=str(tmp_path), reward=length_reward, trust_remote_code=True)._get_lm()
        plain = [AISPChatModel(model=str(tmp_path), reward=length_reward)._get_lm() for _ in range(2)]
    finally:
        cm.clear_model_cache()
    assert loaded == [True, False]
    assert trusted[1] is True and plain[0] is plain[1] and plain[0][1] is False


# --- safetensors, never unrestricted pickle --------------------------------------------------------


def test_default_model_loads_safetensors_only(default_lm, loader_calls):
    with pytest.raises(_StopLoadingError):
        load_causal_lm(None, device="cpu")
    model_kwargs = [kwargs for label, kwargs in loader_calls if label == "AutoModelForCausalLM"]
    assert model_kwargs == [{**model_kwargs[0], "use_safetensors": True, "trust_remote_code": False}]


def test_other_models_prefer_safetensors_and_transformers_unpickles_weights_only(tmp_path, loader_calls):
    with pytest.raises(_StopLoadingError):
        load_causal_lm(str(tmp_path), device="cpu")
    (model_kwargs,) = [kwargs for label, kwargs in loader_calls if label == "AutoModelForCausalLM"]
    assert model_kwargs["use_safetensors"] is None  # safetensors when the folder has them
    # Where only a .bin exists, transformers reads it through torch.load(weights_only=True).
    from transformers.modeling_utils import load_state_dict

    assert inspect.signature(load_state_dict).parameters["weights_only"].default is True


def test_the_package_never_unpickles():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\b(pickle|cPickle|dill|joblib|cloudpickle)\.loads?\(|\bimport (pickle|dill|joblib)", code):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


def test_default_model_cache_holds_no_pickle(default_lm):
    folder = ensure_default_model()
    manifest = json.loads((folder / "langchain_aisp_manifest.json").read_text())
    names = set(manifest["files"])
    assert any(name.endswith(".safetensors") for name in names)
    assert not {Path(name).suffix for name in names} & PICKLE_SUFFIXES
    assert not {p.suffix for p in folder.iterdir()} & PICKLE_SUFFIXES


# --- the default-model cache: atomic writes ----------------------------------------------------


class _FakeModel:
    """Stands in for the dequantised model in ``_convert``: writes part of a file, then fails."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.config = type("Config", (), {})()
        self.hf_quantizer = None

    def save_pretrained(self, folder, **kwargs):
        assert kwargs.get("safe_serialization") is True
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 1000)  # half-written weights
        raise self.error


@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()])
def test_a_crash_mid_write_never_leaves_a_cache_that_loads(tmp_path, monkeypatch, error):
    monkeypatch.setenv("LANGCHAIN_AISP_CACHE", str(tmp_path))
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(default_model, "gguf_path", lambda: gguf)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: None)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: _FakeModel(error))
    target = default_model.default_model_dir()
    expected = DefaultModelError if isinstance(error, Exception) else KeyboardInterrupt
    with pytest.raises(expected):
        ensure_default_model()
    assert list(tmp_path.iterdir()) == [gguf]  # no target, no temporary folder left behind

    # An older, broken cache stays where it was (still invalid) until a conversion succeeds.
    target.mkdir()
    (target / "config.json").write_text("{}")
    with pytest.raises(expected):
        ensure_default_model()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([gguf.name, target.name])
    with pytest.raises(DefaultModelError, match="manifest"):
        validate_cache(target)


def test_cache_validation_rejects_a_file_swapped_for_another(tmp_path, default_lm):
    """A manifest names every file with its size: a replaced tokenizer or config is caught on load."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(ensure_default_model(), copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    with pytest.raises(DefaultModelError, match=r"config\.json is missing or has the wrong size"):
        validate_cache(copy)
    (copy / "config.json").unlink()
    with pytest.raises(DefaultModelError, match="missing"):
        validate_cache(copy)


# --- no network at import or construction ---------------------------------------------------------

_NO_NETWORK_SCRIPT = textwrap.dedent(
    """
    import socket, traceback
    import pytest_socket

    # Any TCP/UDP socket now raises SocketBlockedError (as LangChain's integrations test with pytest-socket);
    # record who tried, since a library may swallow the error. Connections and DNS lookups are refused too.
    attempts = []
    _blocked_init = pytest_socket.SocketBlockedError.__init__

    def _record(self, *args, **kwargs):
        frame = traceback.extract_stack()[-3]
        attempts.append(f"{frame.filename.split('site-packages/')[-1]}:{frame.name}")
        _blocked_init(self, *args, **kwargs)

    pytest_socket.SocketBlockedError.__init__ = _record

    def _refuse(*args, **kwargs):
        attempts.append("connect/getaddrinfo " + repr(args[:2]))
        raise RuntimeError("network access attempted")

    socket.socket.connect = socket.socket.connect_ex = _refuse
    socket.create_connection = socket.getaddrinfo = _refuse
    pytest_socket.disable_socket(allow_unix_socket=True)

    import langchain_aisp
    from langchain_aisp import AISPChatModel, AISPParams, SamplingParams, as_reward, batched
    from langchain_aisp.rewards import (
        EmbeddingSimilarityReward, JSONSchemaReward, LengthReward, Normalized, RegexReward, SafeReward,
        SentimentReward, NonToxicityReward, WeightedSum,
    )

    def fn(prompt, response):
        return float(len(response))

    @batched
    def many(prompts, responses):
        return [1.0] * len(responses)

    model = AISPChatModel(reward=fn)  # the default model: loads lazily, nothing here
    hub = AISPChatModel(reward=many, model="HuggingFaceTB/not-a-real-model")  # a hub id is not looked up
    rewards = [
        as_reward(fn), LengthReward(max_words=10), RegexReward(r"\\d+"), JSONSchemaReward({"type": "object"}),
        SafeReward(fn, timeout=5), SentimentReward(), NonToxicityReward(), EmbeddingSimilarityReward(),
        WeightedSum([(fn, 1.0), (many, 0.5)]), Normalized(LengthReward(max_words=3)),
    ]
    print("constructed", len(rewards), model.model_name, hub.model_name)
    # First use of the default model reads the local cache only.
    answer = AISPChatModel(method="aisp", reward=fn, num_samples=2, num_iterations=1, max_tokens=3, seed=0).invoke("Hi")
    print("answered", type(answer.content).__name__, answer.response_metadata["aisp"]["samples"])
    print("socket attempts", sorted(set(attempts)))
    """
)


def test_no_network_at_import_construction_or_default_model_use(default_lm):
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK_SCRIPT], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "constructed 10 SmolLM2-135M-Instruct HuggingFaceTB/not-a-real-model" in out.stdout
    assert "answered str 2" in out.stdout
    # The one socket ever created: urllib3's import-time IPv6 probe (socket(AF_INET6).bind(("::1", 0)), no traffic).
    assert (
        "socket attempts ['urllib3/util/connection.py:_has_ipv6']" in out.stdout or "socket attempts []" in out.stdout
    )
