"""The static path's runner cache (byte budget, buckets, locks, out-of-memory), the persistent compile cache,
warm-up and path reporting, on CPU through the static path (the same code that captures graphs on CUDA)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time

import pytest
import torch

from langchain_aisp.engine.aisp import run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.decode import compile_cache
from langchain_aisp.engine.decode.eager import Decoder, decode, prefill
from langchain_aisp.engine.decode.runners import RunnerCache, default_budget
from langchain_aisp.engine.decode.static import (
    _Runner,
    decode_static,
    runner_cache,
    set_static_cache_budget,
    static_graph_stats,
    token_bucket,
)
from langchain_aisp.engine.decode.warmup import warmup

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(autouse=True)
def compile_dir(tmp_path, monkeypatch):
    """Every test gets its own compile-cache folder (never the user's)."""
    folder = tmp_path / "compile"
    monkeypatch.setenv(compile_cache.DIR_ENV_VAR, str(folder))
    return folder


def _args(lm, encode, rows=3, T=6, seed=0):
    prefixes = [prefill(lm, encode("Hi")), prefill(lm, encode("A longer prompt, left-padded less"))]
    g = torch.Generator().manual_seed(seed)
    return (
        prefixes,
        torch.arange(rows) % 2,
        0.3 * torch.randn(rows, 3, lm.hidden_size, generator=g),
        torch.rand(rows, T, generator=g),
    )


# --- buckets and the byte budget -------------------------------------------------------------


def test_max_tokens_is_bucketed_so_varying_it_reuses_one_runner(tiny_lm, encode):
    assert [token_bucket(t) for t in (1, 16, 17, 32, 33, 200)] == [16, 16, 32, 32, 64, 256]
    with pytest.raises(ValueError, match="max_tokens must be >= 1, got 0"):
        token_bucket(0)
    lm = dataclasses.replace(tiny_lm)
    for T in (20, 30, 32, 17):  # a server whose clients vary max_tokens
        decoder = Decoder.build(lm, SamplingParams(max_tokens=T))
        args = _args(lm, encode, T=T, seed=T)
        static = decode_static(decoder, *args)
        assert static.token_ids == decode(decoder, *args).token_ids
        assert all(len(ids) == T for ids in static.token_ids) and static.path == "static"
    stats = static_graph_stats(lm)
    assert len(stats) == 1 and stats[0]["max_tokens"] == 32 and stats[0]["calls"] == 4


def test_the_byte_budget_evicts_the_least_recently_used_bucket(tiny_lm, encode):
    lm = dataclasses.replace(tiny_lm)
    decoder = Decoder.build(lm, SamplingParams(max_tokens=6))
    decode_static(decoder, *_args(lm, encode, rows=2))
    one = static_graph_stats(lm)[0]["bytes"]
    assert one > 0
    set_static_cache_budget(lm, int(one * 1.5))  # room for one bucket of 2 rows, not two
    cache = runner_cache(lm)
    args4 = _args(lm, encode, rows=4)
    out = decode_static(decoder, *args4)  # a bucket of 4 rows: the bucket of 2 leaves
    assert out.token_ids == decode(decoder, *args4).token_ids
    assert [s["rows"] for s in static_graph_stats(lm)] == [4] and cache.evictions == 1
    assert cache.used_bytes == static_graph_stats(lm)[0]["bytes"]
    set_static_cache_budget(lm, 0)  # nothing kept beyond the bucket in use; the next call still decodes
    assert static_graph_stats(lm) == []
    assert decode_static(decoder, *args4).token_ids == out.token_ids
    with pytest.raises(ValueError, match=r"budget_bytes must be an integer >= 0, got -1"):
        set_static_cache_budget(lm, -1)
    with pytest.raises(ValueError, match=r"budget fraction must be in \(0, 1\], got 1.5"):
        default_budget(torch.device("cpu"), 1.5)
    assert default_budget(torch.device("cpu")) > 0


def test_a_bucket_larger_than_the_budget_is_kept_alone_with_a_warning(tiny_lm, encode, caplog):
    lm = dataclasses.replace(tiny_lm)
    set_static_cache_budget(lm, 1)
    decoder = Decoder.build(lm, SamplingParams(max_tokens=6))
    args = _args(lm, encode)
    with caplog.at_level(logging.WARNING, logger="langchain_aisp.engine.decode.runners"):
        assert decode_static(decoder, *args).token_ids == decode(decoder, *args).token_ids
        decode_static(decoder, *args)
    assert len(static_graph_stats(lm)) == 1
    assert sum("larger than the budget" in r.getMessage() for r in caplog.records) == 1


# --- out of memory ----------------------------------------------------------------------------


def test_out_of_memory_drops_every_bucket_and_the_run_recovers(tiny_lm, encode, monkeypatch):
    lm = dataclasses.replace(tiny_lm)
    prompts = [encode("Hello there"), encode("x")]
    params, sampling = AISPParams(method="aisp", num_samples=4, num_iterations=2), SamplingParams(max_tokens=6)
    score = lambda idx, texts: [float(len(t)) for t in texts]  # noqa: E731
    decode_static(Decoder.build(lm, sampling), *_args(lm, encode, rows=2))  # one bucket cached beforehand
    assert len(static_graph_stats(lm)) == 1
    real_load, failures = _Runner.load, []

    def load_once_out_of_memory(self, *a, **k):
        if not failures:
            failures.append(self.rows)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_load(self, *a, **k)

    monkeypatch.setattr(_Runner, "load", load_once_out_of_memory)
    static = run(lm, prompts, score, params, sampling, seed=5, max_batch_size=8, decoding="static")
    eager = run(lm, prompts, score, params, sampling, seed=5, max_batch_size=8, decoding="eager")
    assert [r.texts for r in static] == [r.texts for r in eager]  # the engine halved the rows and went on
    assert failures == [8]
    assert sorted(s["rows"] for s in static_graph_stats(lm)) == [4]  # the old buckets were dropped at the error
    assert runner_cache(lm).evictions >= 2


class _Fake:
    def __init__(self, name: str, nbytes: int = 10) -> None:
        self.name, self.nbytes = name, nbytes

    def describe(self):
        return {"name": self.name}


def test_out_of_memory_while_building_frees_the_others_and_builds_once_more():
    cache: RunnerCache[_Fake] = RunnerCache(100)
    cache.get_or_build("a", 10, lambda: _Fake("a"))
    attempts = []

    def build():
        attempts.append(len(cache.stats()))
        if len(attempts) == 1:
            raise torch.OutOfMemoryError("simulated")
        return _Fake("b")

    assert cache.get_or_build("b", 10, build).name == "b"
    assert attempts == [1, 0]  # the second attempt ran with "a" freed
    assert [s["name"] for s in cache.stats()] == ["b"]

    def always():
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(torch.OutOfMemoryError):
        cache.get_or_build("c", 10, always)
    assert cache.stats() == []


# --- locks -------------------------------------------------------------------------------------


def test_a_capture_on_one_model_does_not_block_another_model():
    slow, fast = RunnerCache[_Fake](100), RunnerCache[_Fake](100)
    entered, release = threading.Event(), threading.Event()

    def slow_build():
        entered.set()
        release.wait(10)
        return _Fake("slow")

    worker = threading.Thread(target=lambda: slow.get_or_build("k", 1, slow_build))
    worker.start()
    assert entered.wait(10)
    try:
        assert fast.get_or_build("k", 1, lambda: _Fake("fast")).name == "fast"  # not waiting on the other model
        assert slow.capture_lock.locked() and not fast.capture_lock.locked()
    finally:
        release.set()
        worker.join(10)
    assert slow.get("k").name == "slow"


def test_a_decode_waits_for_the_models_replay_lock(tiny_lm, encode):
    lm = dataclasses.replace(tiny_lm)
    decoder = Decoder.build(lm, SamplingParams(max_tokens=6))
    args = _args(lm, encode)
    decode_static(decoder, *args)  # built
    got = []
    cache = runner_cache(lm)
    with cache.replay_lock:
        worker = threading.Thread(target=lambda: got.append(decode_static(decoder, *args).token_ids))
        worker.start()
        time.sleep(0.3)
        assert worker.is_alive() and not got  # it holds no graph of this model while another decode does
    worker.join(30)
    assert got == [decode(decoder, *args).token_ids]


# --- fallbacks are logged ---------------------------------------------------------------------


def test_the_sliding_window_fallback_is_logged_once(tiny_lm, encode, caplog):
    lm = dataclasses.replace(tiny_lm)
    config = lm.model.config
    before = getattr(config, "sliding_window", None)
    config.sliding_window = 8
    try:
        decoder = Decoder.build(lm, SamplingParams(max_tokens=4))
        args = _args(lm, encode, T=4)
        with caplog.at_level(logging.WARNING, logger="langchain_aisp.engine.decode.static"):
            outs = [decode_static(decoder, *args) for _ in range(3)]
    finally:
        config.sliding_window = before
    assert [o.path for o in outs] == ["eager"] * 3
    messages = [r.getMessage() for r in caplog.records if "sliding window" in r.getMessage()]
    assert len(messages) == 1 and "sliding window of 8 tokens" in messages[0]


def _failing_compile(*args, **kwargs):
    def compiled(*a, **k):
        raise RuntimeError("inductor: simulated lowering failure")

    return compiled


def test_a_failed_compile_falls_back_to_static_with_one_warning(tiny_lm, encode, monkeypatch, caplog):
    lm = dataclasses.replace(tiny_lm)
    monkeypatch.setattr(torch, "compile", _failing_compile)
    decoder = Decoder.build(lm, SamplingParams(max_tokens=6))
    with caplog.at_level(logging.WARNING, logger="langchain_aisp.engine.decode.static"):
        outs = [decode_static(decoder, *_args(lm, encode, rows=r), compile_step=True) for r in (3, 5, 3)]
    assert [o.path for o in outs] == ["static"] * 3
    assert outs[0].token_ids == decode(decoder, *_args(lm, encode, rows=3)).token_ids
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "simulated lowering failure" in warnings[0]
    stats = static_graph_stats(lm)
    assert [s["compiled"] for s in stats] == [False, False]
    assert all("simulated lowering failure" in s["compile_error"] for s in stats)


class _RecordingCompile:
    """Stands in for torch.compile: returns the function unchanged and records the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fn, **kwargs):
        self.calls += 1
        return fn


def test_auto_compiles_a_bucket_only_when_its_compile_is_paid(tiny_lm, encode, monkeypatch):
    lm = dataclasses.replace(tiny_lm)
    fake = _RecordingCompile()
    monkeypatch.setattr(torch, "compile", fake)
    loaded: list[bytes] = []
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda b: loaded.append(b) or "info")
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: None)
    decoder = Decoder.build(lm, SamplingParams(max_tokens=6))
    args3, args5 = _args(lm, encode, rows=3), _args(lm, encode, rows=5)
    cold = decode_static(decoder, *args3, compile_step="when_warm")
    assert cold.path == "static" and fake.calls == 0
    prefix_len = max(p.length for p in args5[0])
    from langchain_aisp.engine.decode.static import cache_length

    compile_cache.write_entry(compile_cache.compile_key(lm, 8, cache_length(prefix_len, token_bucket(6))), b"artifacts")
    warm = decode_static(decoder, *args5, compile_step="when_warm")
    assert warm.path == "compiled" and fake.calls == 1 and loaded == [b"artifacts"]
    assert warm.token_ids == decode(decoder, *args5).token_ids
    assert decode_static(decoder, *args5, compile_step="when_warm").path == "compiled"  # in memory now
    assert decode_static(decoder, *args3, compile_step="when_warm").path == "static"  # still the cold bucket
    assert [(s["rows"], s["compiled"], s["compile_cache"]) for s in static_graph_stats(lm)] == [
        (8, True, "hit"),
        (4, False, ""),
    ]


# --- the compile cache ------------------------------------------------------------------------


def test_compile_keys_carry_model_dtype_bucket_and_versions(tiny_lm, default_lm):
    key = compile_cache.compile_key(tiny_lm, 8, 128)
    assert {key["rows"], key["cache_len"]} == {8, 128} and key["dtype"] == "torch.float32"
    assert key["torch"] == torch.__version__ and key["format"] == compile_cache.FORMAT
    assert {"transformers", "cuda", "model", "attention", "device"} <= set(key)
    assert compile_cache.compile_key(tiny_lm, 8, 192) != key
    assert compile_cache.compile_key(default_lm, 8, 128)["model"] != key["model"]
    renamed = dataclasses.replace(tiny_lm, name="another-name")
    assert compile_cache.compile_key(renamed, 8, 128) == key  # weights and names do not change compiled code
    assert compile_cache.entry_path(key) != compile_cache.entry_path(compile_cache.compile_key(tiny_lm, 8, 192))


def test_entries_round_trip_and_corrupt_or_foreign_ones_are_discarded_with_a_log_line(tiny_lm, caplog):
    key = compile_cache.compile_key(tiny_lm, 4, 64)
    other = compile_cache.compile_key(tiny_lm, 4, 128)
    assert compile_cache.read_entry(key) is None and not compile_cache.has_entry(key)
    path = compile_cache.write_entry(key, b"payload \x00\x01")
    assert compile_cache.read_entry(key) == b"payload \x00\x01" and compile_cache.has_entry(key)
    good = path.read_bytes()
    corruptions = {
        "truncated": good[:-3],
        "bad magic": b"something else\n" + good,
        "bad hash": good[:-1] + b"X",
        "no header": compile_cache.MAGIC,
    }
    with caplog.at_level(logging.WARNING, logger="langchain_aisp.engine.decode.compile_cache"):
        for data in corruptions.values():
            path.write_bytes(data)
            assert compile_cache.read_entry(key) is None and not path.exists()
        compile_cache.write_entry(other, b"for another bucket")
        compile_cache.entry_path(other).rename(path)  # an entry under the wrong name: foreign
        assert compile_cache.read_entry(key) is None and not path.exists()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("corrupt entry" in m for m in messages) == len(corruptions)
    assert sum("foreign entry" in m for m in messages) == 1


def test_an_entry_torch_refuses_is_discarded(tiny_lm, caplog):
    key = compile_cache.compile_key(tiny_lm, 4, 64)
    compile_cache.write_entry(key, b"not torch artifacts")
    with caplog.at_level(logging.WARNING, logger="langchain_aisp.engine.decode.compile_cache"):
        assert compile_cache.load_artifacts(key) is False
    assert not compile_cache.entry_path(key).exists()
    assert any("torch could not load it" in r.getMessage() for r in caplog.records)


def test_prune_removes_entries_of_other_versions(tiny_lm, compile_dir, caplog):
    current = compile_cache.compile_key(tiny_lm, 4, 64)
    old = {**current, "torch": "2.0.0"}
    compile_cache.write_entry(current, b"a")
    compile_cache.write_entry(old, b"b")
    (compile_dir / "junk.bin").write_bytes(b"junk")
    with caplog.at_level(logging.WARNING, logger="langchain_aisp.engine.decode.compile_cache"):
        removed = compile_cache.prune_foreign()
    assert sorted(p.name for p in removed) == sorted([compile_cache.entry_path(old).name, "junk.bin"])
    assert compile_cache.has_entry(current)
    assert any("versions" in r.getMessage() and "2.0.0" in r.getMessage() for r in caplog.records)


# --- warm-up ----------------------------------------------------------------------------------


def test_warmup_builds_each_distinct_bucket_once_and_runs_reuse_them(tiny_lm, encode):
    lm = dataclasses.replace(tiny_lm)
    built = warmup(lm, rows=(3, 4, 8), max_tokens=(6, 12), prompt_tokens=(10,), decoding="static")
    assert [(b["rows"], b["max_tokens"]) for b in built] == [(3, 6), (8, 6)]  # 4 rows and 12 tokens share buckets
    assert all(b["path"] == "static" and b["compile_cache"] == "" for b in built)
    before = {(s["rows"], s["cache_len"]): s["calls"] for s in static_graph_stats(lm)}
    assert len(before) == 2
    params, sampling = AISPParams(method="bon", num_samples=4, num_iterations=1), SamplingParams(max_tokens=12)
    run(lm, [encode("Hi")], lambda i, t: [0.0] * len(t), params, sampling, seed=0, decoding="static")
    after = {(s["rows"], s["cache_len"]): s["calls"] for s in static_graph_stats(lm)}
    assert len(after) == 2 and sum(after.values()) == sum(before.values()) + 1  # no new bucket was built
    assert warmup(lm, decoding="auto") == [] and warmup(lm, decoding="eager") == []  # CPU: auto is eager
    with pytest.raises(ValueError, match=r"rows must be a non-empty sequence of integers >= 1, got \(0,\)"):
        warmup(lm, rows=(0,))
    with pytest.raises(ValueError, match="decoding must be one of"):
        warmup(lm, decoding="fast")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor needs a C++ compiler")
def test_warmup_compiles_saves_and_a_fresh_model_loads_the_compile(tiny_lm, encode, compile_dir):
    """Real inductor on CPU: the warm-up compiles and writes an entry; another copy of the model (a fresh
    runner cache) loads it, takes the compiled path under "auto" and gives the eager path's tokens."""
    lm = dataclasses.replace(tiny_lm)
    built = warmup(lm, rows=(2,), max_tokens=(6,), prompt_tokens=(10,), decoding="compiled")
    assert [(b["path"], b["compile_cache"]) for b in built] == [("compiled", "miss")]
    assert len(list(compile_dir.glob("*.bin"))) == 1
    fresh = dataclasses.replace(tiny_lm)
    decoder = Decoder.build(fresh, SamplingParams(max_tokens=6))
    prefix = prefill(fresh, [fresh.pad_token_id] * 10)
    args = ([prefix], torch.zeros(2, dtype=torch.long), torch.zeros(2, 1, 32), torch.rand(2, 6))
    out = decode_static(decoder, *args, compile_step="when_warm")
    assert out.path == "compiled" and out.token_ids == decode(decoder, *args).token_ids
    assert static_graph_stats(fresh)[0]["compile_cache"] == "hit"


def test_the_warmup_command_builds_the_buckets_it_is_told(tiny_lm, monkeypatch, capsys):
    from langchain_aisp.engine import lm as lm_module
    from langchain_aisp.serve import cli

    lm = dataclasses.replace(tiny_lm)
    asked = []

    def load(model, **kwargs):
        asked.append((model, kwargs))
        return lm

    monkeypatch.setattr(lm_module, "load_causal_lm", load)
    argv = ["warmup", "--model", "m", "--rows", "2,3", "--max-tokens", "6", "--prompt-tokens", "10"]
    assert cli.main([*argv, "--decoding", "static", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert asked == [("m", {"device": "cpu", "dtype": "auto", "trust_remote_code": False})]
    assert "rows 2 max_tokens 6 prompt_tokens 10: cache 64, static" in out
    assert "rows 3 max_tokens 6 prompt_tokens 10: cache 64, static" in out
    assert "2 bucket(s) of tiny-llama on cpu ready; compile cache: nothing compiled" in out
    assert sorted(s["rows"] for s in static_graph_stats(lm)) == [2, 4]
    with pytest.raises(SystemExit):
        cli.main(["warmup", "--rows", "8,x"])
    assert "expected comma-separated integers >= 1, got '8,x'" in capsys.readouterr().err

    def broken(model, **kwargs):
        raise OSError("no such model folder")

    assert cli.main(["warmup", "--model", "m"]) == 0  # default decoding "auto": CPU decodes eagerly
    assert "decoding='auto' decodes eagerly on cpu: nothing to build" in capsys.readouterr().out
    monkeypatch.setattr(lm_module, "load_causal_lm", broken)
    assert cli.main(["warmup", "--model", "nowhere"]) == 1
    assert "cannot load the model: no such model folder" in capsys.readouterr().err


def test_the_chat_models_warmup_builds_the_bucket_its_calls_use(tiny_lm):
    from langchain_aisp import AISPChatModel

    lm = dataclasses.replace(tiny_lm)
    kwargs = {"reward": lambda p, r: float(len(r)), "model": lm, "num_samples": 3, "max_tokens": 6, "seed": 0}
    eager = AISPChatModel(method="aisp", decoding="eager", num_iterations=2, **kwargs)
    prompt_tokens = eager.invoke("Name a fruit.").usage_metadata["input_tokens"]  # the rendered prompt's length
    assert eager.warmup() == [] and static_graph_stats(lm) == []
    chat = AISPChatModel(method="aisp", decoding="static", num_iterations=2, **kwargs)
    built = chat.warmup(prompt_tokens=(prompt_tokens,))
    assert [(b["rows"], b["max_tokens"], b["path"]) for b in built] == [(3, 6, "static")]
    chat.invoke("Name a fruit.")
    stats = static_graph_stats(lm)
    assert len(stats) == 1 and stats[0]["calls"] == 3  # the warm-up's call and the two iterations
