"""First-hour defects: a mistyped hub id fails fast and says why; a too-long prompt says by how much."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from langchain_aisp import AISPChatModel
from langchain_aisp.engine.aisp import context_window_error
from langchain_aisp.engine.lm import ModelLoadError, check_hub_model, load_causal_lm

TYPO = "HuggingFaceTB/SmolLM2-135M-Instrct"


def zero(prompt: str, response: str) -> float:
    return 0.0


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return cache


def _timed_error(fn, *args, **kwargs) -> tuple[ModelLoadError, float]:
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        fn(*args, **kwargs)
    return info.value, time.perf_counter() - start


# --- offline: the error comes at once -----------------------------------------------------------


def test_offline_mode_fails_at_once(empty_hub_cache, monkeypatch, socket_disabled):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err, seconds = _timed_error(load_causal_lm, TYPO, device="cpu")
    assert seconds < 5, f"took {seconds:.1f} s"
    text = str(err)
    assert TYPO in text and "not in the local Hugging Face cache" in text and "HF_HUB_OFFLINE" in text
    assert "did you mean 'HuggingFaceTB/SmolLM2-135M-Instruct'?" in text


def test_no_network_fails_at_once_and_says_the_hub_is_unreachable(empty_hub_cache, socket_disabled):
    err, seconds = _timed_error(load_causal_lm, TYPO, device="cpu")  # sockets refused, offline mode not set
    assert seconds < 5, f"took {seconds:.1f} s"
    text = str(err)
    assert "the hub cannot be reached" in text and "HF_HUB_OFFLINE=1" in text and "did you mean" in text
    assert err.__cause__ is not None


def test_chat_model_with_a_typo_fails_fast_on_first_use(empty_hub_cache, monkeypatch, socket_disabled):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AISPChatModel(model=TYPO, reward=zero)  # construction touches nothing
    err, seconds = _timed_error(model.invoke, "hi")
    assert seconds < 5 and TYPO in str(err)


def test_cached_model_is_not_looked_up_on_the_hub(empty_hub_cache, monkeypatch, socket_disabled):
    snapshot = empty_hub_cache / "models--org--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (empty_hub_cache / "models--org--cached" / "refs").mkdir()
    (empty_hub_cache / "models--org--cached" / "refs" / "main").write_text("abc123")
    check_hub_model("org/cached")  # no exception, no socket (they are disabled)
    err, _ = _timed_error(check_hub_model, "org/cachd")
    assert "did you mean 'org/cached'?" in str(err)


# --- online: a mocked hub answers -----------------------------------------------------------------


class _Hub(http.server.BaseHTTPRequestHandler):
    code = 404
    error_code = "RepoNotFound"

    def do_GET(self) -> None:
        self.send_response(self.code)
        self.send_header("X-Error-Code", self.error_code)
        self.send_header("X-Error-Message", "Repository not found")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "Repository not found"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_hub(empty_hub_cache, monkeypatch) -> Iterator[type[_Hub]]:
    import huggingface_hub.constants as hub_constants

    handler = type("Hub", (_Hub,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_unknown_id_says_not_found(fake_hub):
    err, seconds = _timed_error(load_causal_lm, TYPO, device="cpu")
    assert seconds < 5
    assert f"model id {TYPO!r} was not found on the Hugging Face hub" in str(err)
    assert "did you mean 'HuggingFaceTB/SmolLM2-135M-Instruct'?" in str(err)


def test_gated_id_says_gated(fake_hub):
    fake_hub.code, fake_hub.error_code = 403, "GatedRepo"
    err, _ = _timed_error(check_hub_model, "meta-llama/Llama-3.2-1B")
    assert "is gated" in str(err) and "https://huggingface.co/meta-llama/Llama-3.2-1B" in str(err)


# --- the context window -----------------------------------------------------------------------------


def test_prompt_alone_too_long_says_by_how_much():
    text = context_window_error("prompt 0", 600, 4, 512, "tiny")
    assert "prompt 0 is too long: 600 tokens" in text and "context window of tiny is 512 tokens" in text
    assert "shorten it by at least 89 tokens (92 to keep max_tokens=4)" in text
    assert "at most 0" not in text
    edge = context_window_error("prompt 0", 512, 1, 512, "tiny")  # exactly full: one token too long
    assert "shorten it by at least 1 tokens" in edge


def test_prompt_fits_but_max_tokens_does_not():
    text = context_window_error("the conversation", 500, 20, 512, "tiny")
    assert "exceed the context window of tiny (512 tokens) by 8" in text
    assert "lower max_tokens to at most 12" in text and "shorten the conversation by 8 tokens" in text


def test_chat_model_reports_the_overflow(tiny_lm):
    model = AISPChatModel(method="aisp", reward=zero, model=tiny_lm, num_samples=1, num_iterations=1, max_tokens=4)
    n = len(tiny_lm.tokenizer("word " * 600).input_ids)  # the rendered conversation is a little longer
    with pytest.raises(ValueError, match=r"the conversation is too long: (\d+) tokens") as info:
        model.invoke("word " * 600)
    total = int(str(info.value).split("too long: ")[1].split(" ")[0])
    assert total >= n and f"shorten it by at least {total - 512 + 1} tokens" in str(info.value)
