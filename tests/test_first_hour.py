"""First-hour defects: a mistyped hub id fails fast and says why; a too-long prompt says by how much; the main job
(``langchain-aisp-demo``) shows what alignment buys over a plain sample, with its spread and its cost."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from langchain_aisp import AISPChatModel, demo
from langchain_aisp.bench.prompts import load_prompts
from langchain_aisp.demo import Spread, answer_text, gain_text, method_name, select_questions, spread_bar, summary_line
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


# --- the main job: the pure pieces --------------------------------------------------------------------


def test_spread_of_rewards():
    spread = Spread.of([0.2, 0.4, 0.9, 0.5])
    assert (spread.n, spread.worst, spread.median, spread.best) == (4, 0.2, 0.45, 0.9)
    assert spread.mean == pytest.approx(0.5) and spread.sd == pytest.approx(0.294392, abs=1e-6)  # n - 1
    assert Spread.of([0.7]).sd is None
    with pytest.raises(ValueError, match=r"at least one value, got \[\]"):
        Spread.of([])
    with pytest.raises(ValueError, match="got 1 NaN of 2"):
        Spread.of([0.1, float("nan")])


def test_spread_bar_marks_each_statistic_in_its_cell():
    spread = Spread.of([0.0, 0.2, 0.4, 1.0])  # worst 0, median 0.3, mean 0.4, best 1
    assert spread_bar(spread, 1.0, width=11) == "0 [==|o=====* 1"  # Best-of-N: the chosen answer is the best
    steered = Spread.of([0.2, 0.4, 0.6])  # median = mean = 0.4: the mean covers the median
    assert spread_bar(steered, 0.9, width=11) == "0 ..[=o=]..*. 1"  # the chosen answer beyond the best sample
    assert spread_bar(steered, 1.7, width=11) == "0 ..[=o=]...* 1"  # off the axis: at its end
    assert spread_bar(steered, -3.0, width=11) == "0 *.[=o=].... 1"
    assert spread_bar(steered, 0.8, lo=-1.0, hi=1.0, width=11) == "-1 ......[o]*. 1"
    assert len(spread_bar(steered, 0.5)) == len("0  1") + demo.BAR_WIDTH
    with pytest.raises(ValueError, match=r"hi > lo, got lo=1\.0, hi=1\.0"):
        spread_bar(steered, 0.5, lo=1.0, hi=1.0)
    with pytest.raises(ValueError, match="width must be >= 3 cells, got 2"):
        spread_bar(steered, 0.5, width=2)


def test_gain_and_summary():
    spread = Spread.of([0.7, 0.8, 0.9])  # mean 0.8, sd 0.1
    assert gain_text(0.9, spread) == "+0.100 (+1.0 sd)"
    assert gain_text(0.75, spread) == "-0.050 (-0.5 sd)"
    assert gain_text(0.9, Spread.of([0.6])) == "+0.300"  # one sample: no spread
    line = summary_line([(0.9, spread), (0.6, Spread.of([0.2, 0.4]))])  # gains 0.1 (1 sd) and 0.3 (2.12 sd)
    assert line.startswith("Over 2 questions: aligned 0.750 vs plain-sample mean 0.550, gain +0.200 reward")
    assert "= +1.6 candidate sd" in line and line.endswith("(per question +0.100, +0.300)")
    one = summary_line([(0.9, Spread.of([0.6]))])
    assert one == "Over 1 question: aligned 0.900 vs plain-sample mean 0.600, gain +0.300 reward"
    with pytest.raises(ValueError, match="at least one question"):
        summary_line([])


def test_questions_are_the_first_of_the_shipped_set():
    shipped = load_prompts()
    assert select_questions(None, 2, shipped) == [
        (shipped[0].id, shipped[0].prompt),
        (shipped[1].id, shipped[1].prompt),
    ]
    assert [label for label, _ in select_questions(None, len(shipped), shipped)] == [p.id for p in shipped]
    assert select_questions("Why is the sky blue?", 3, shipped) == [("your question", "Why is the sky blue?")]
    with pytest.raises(ValueError, match=f"--questions must be between 1 and {len(shipped)} .* got 0"):
        select_questions(None, 0, shipped)
    with pytest.raises(ValueError, match=f"got {len(shipped) + 1}"):
        select_questions(None, len(shipped) + 1, shipped)
    with pytest.raises(ValueError, match="the question is empty"):
        select_questions("  ", 1, shipped)


def test_answer_text_says_where_it_was_cut():
    assert answer_text("Water it.\nGive it sun.", "stop", 128) == "    Water it.\n    Give it sun."
    assert answer_text("Water it and", "length", 128) == "    Water it and\n    (cut at 128 tokens)"
    assert answer_text("", "stop", 8) == "    (empty)"
    long = "word " * 30 + "\n\n1. a list"
    assert answer_text(long, "stop", 8, width=40).splitlines() == [
        "    " + "word " * 6 + "word",
        *["    " + "word " * 6 + "word"] * 3,
        "    word word",
        "",
        "    1. a list",
    ]
    assert method_name("bon", 32, 1) == "Best-of-32" and method_name("aisp", 8, 4) == "AISP 8 x 4"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--questions", "0"], "--questions must be an integer >= 1, got '0'"),
        (["--questions", "99"], "--questions must be between 1 and 36 (the shipped set), got 99"),
        (["Why?", "--questions", "2"], "give a question of your own or --questions N"),
        (["--max-tokens", "many"], "--max-tokens must be an integer >= 1, got 'many'"),
        (["--num-samples", "-1"], "--num-samples must be an integer >= 1, got '-1'"),
        (["--method", "greedy"], "argument --method: invalid choice: 'greedy'"),
        (["  "], "the question is empty"),
        (["--seed", "-1"], "error: seed must be an integer in [0, 18446744073709551615] or None, got -1\n"),
        (["--num-samples", "5000"], "error: num_samples must be an integer in [1, 4096], got 5000\n"),
    ],
)
def test_demo_rejects_bad_input_before_loading(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        demo.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


# --- the main job, end to end on the default model ------------------------------------------------------


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _floats(line: str, *names: str) -> list[float]:
    return [float(line.split(f"{name} ")[1].split(",")[0].split(" ")[0].rstrip(";:")) for name in names]


@pytest.mark.model
def test_demo_shows_the_plain_spread_the_aligned_reward_and_the_cost(restore_threads, capsys):
    assert demo.main(["--questions", "2", "--num-samples", "4", "--max-tokens", "6"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "Model: SmolLM2-135M-Instruct on cpu, 1 CPU thread, seed 0"
    assert lines[2].startswith("Aligned: Best-of-4 at temperature 0.7, at most 6 tokens an answer")
    assert lines[3] == "Questions: the first 2 of the shipped set, in file order (bench/data/prompts.jsonl)"
    shipped = load_prompts(limit=2)
    gains = []
    for prompt in shipped:
        at = lines.index(f"{prompt.id}: {prompt.prompt}")
        plain, bar, aligned, cost = lines[at + 1 : at + 5]
        mean, worst, median, best = _floats(plain, "mean reward", "worst", "median", "best")
        assert plain.startswith("  plain sample:") and "over 4 samples; worst" in plain
        assert worst <= median <= best and worst <= mean <= best
        chosen = float(aligned.split("reward ")[1].split(" ")[0])
        assert chosen == best and "(the best of 4)" in aligned  # Best-of-N: the best of its plain candidates
        assert bar.strip().startswith("0 ") and bar.count("*") == 1 and bar.strip().endswith(" 1")
        gain = float(aligned.split(": ")[2].split(" ")[0])
        assert gain == pytest.approx(chosen - mean, abs=0.0015) and " sd) over the plain mean" in aligned
        gains.append(gain)
        assert cost.startswith("  cost: 4 samples, ") and "tokens generated" in cost
        assert lines[at + 5] == "  answer:" and lines[at + 6].startswith("    ")
    summary, total = lines[-2:]
    assert summary.startswith("Over 2 questions: ") and total.startswith("Cost of the aligned answers: 8 samples, ")
    assert float(summary.split("gain ")[1].split(" ")[0]) == pytest.approx(sum(gains) / 2, abs=0.0015)


@pytest.mark.model
def test_demo_with_aisp_compares_with_separate_plain_samples(restore_threads, capsys):
    argv = ["Name a fruit.", "--method", "aisp", "--num-samples", "2", "--num-iterations", "2", "--max-tokens", "4"]
    assert demo.main([*argv, "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("your question: Name a fruit.")
    assert " over 4 samples; worst " in lines[at + 1]
    assert lines[at + 2].startswith("    (plain samples of a separate Best-of-4 call, seed 4, ")
    assert "(AISP 2 x 2, above " in lines[at + 4] and " of the 4 plain samples)" in lines[at + 4]
    assert len(lines[at + 5].split(":")[1].split()) == 2  # the best reward of each iteration
    assert lines[at + 6].startswith("  cost: 4 samples, ")
    assert lines[-2].startswith("Over 1 question: ") and lines[-1].startswith("Cost of the aligned answers: 4 samples")
