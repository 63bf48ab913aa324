"""CPU threads: the tools default to one thread, honour --num-threads and LANGCHAIN_AISP_NUM_THREADS; the
measurement script runs each setting with the thread count asked for."""

from __future__ import annotations

import argparse

import pytest
import torch

from langchain_aisp.bench import cli
from langchain_aisp.bench import thread_scaling as bench_threads
from langchain_aisp.engine.threads import NUM_THREADS_ENV, available_cores, resolve_num_threads, set_cpu_threads


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    monkeypatch.delenv(NUM_THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_resolution_order_and_errors(monkeypatch):
    assert resolve_num_threads() == 1  # the default of the tools
    monkeypatch.setenv(NUM_THREADS_ENV, "3")
    assert resolve_num_threads() == 3
    assert resolve_num_threads(2) == 2  # an explicit value wins over the variable
    assert resolve_num_threads("all") == available_cores()
    monkeypatch.setenv(NUM_THREADS_ENV, "ALL")
    assert resolve_num_threads() == available_cores()
    for bad in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv(NUM_THREADS_ENV, bad)
        with pytest.raises(
            ValueError, match=f"LANGCHAIN_AISP_NUM_THREADS must be an integer >= 1 or 'all', got '{bad}'"
        ):
            resolve_num_threads()
    with pytest.raises(ValueError, match="num_threads must be an integer >= 1 or 'all', got 0"):
        resolve_num_threads(0)
    with pytest.raises(ValueError, match="got True"):
        resolve_num_threads(True)  # type: ignore[arg-type]


def test_set_cpu_threads_sets_torch():
    assert set_cpu_threads(2) == 2 and torch.get_num_threads() == 2
    assert set_cpu_threads() == 1 and torch.get_num_threads() == 1


def test_importing_the_package_leaves_threads_alone():
    import subprocess
    import sys

    code = (
        "import torch; n = torch.get_num_threads(); import langchain_aisp, langchain_aisp.chat_models, "
        "langchain_aisp.engine.threads, langchain_aisp.demo; print(n == torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


# --- the demo --------------------------------------------------------------------------------------------

TINY = ["Name a fruit.", "--num-samples", "1", "--num-iterations", "1", "--max-tokens", "2"]


@pytest.mark.model
def test_demo_honours_the_option_and_the_variable(monkeypatch, capsys):
    from langchain_aisp import demo

    assert demo.main([*TINY, "--num-threads", "2"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "Model: SmolLM2-135M-Instruct on cpu, 2 CPU threads, seed 0" and torch.get_num_threads() == 2
    monkeypatch.setenv(NUM_THREADS_ENV, "2")
    torch.set_num_threads(1)
    demo.main(TINY)
    assert "2 CPU threads" in capsys.readouterr().out.splitlines()[0]
    monkeypatch.delenv(NUM_THREADS_ENV)
    demo.main(TINY)  # default: one thread
    assert "on cpu, 1 CPU thread, seed 0" in capsys.readouterr().out.splitlines()[0]
    assert torch.get_num_threads() == 1


def test_demo_rejects_a_bad_count(capsys, monkeypatch):
    from langchain_aisp import demo

    with pytest.raises(SystemExit):
        demo.main([*TINY, "--num-threads", "0"])
    assert "--num-threads must be an integer >= 1 or 'all', got '0'" in capsys.readouterr().err
    monkeypatch.setenv(NUM_THREADS_ENV, "many")
    with pytest.raises(SystemExit):
        demo.main(TINY)
    assert "LANGCHAIN_AISP_NUM_THREADS must be an integer >= 1 or 'all', got 'many'" in capsys.readouterr().err


# --- the benchmark CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], 1), (["--num-threads", "2"], 2), (["--threads", "2"], 2), (["--num-threads", "all"], None)],
)
def test_bench_commands_honour_the_option(monkeypatch, argv, expected):
    import langchain_aisp.engine.lm as lm_module

    seen = []
    monkeypatch.setattr(lm_module, "load_causal_lm", lambda *a, **k: seen.append(torch.get_num_threads()) or "lm")
    for command in ("run", "throughput", "prefill"):
        torch.set_num_threads(3 if available_cores() >= 3 else 1)
        args = cli.build_parser(command).parse_args(argv)
        assert cli._load_lm(args) == "lm"
    assert seen == [expected or available_cores()] * 3  # the model loads (and runs) with that many threads


def test_bench_rejects_a_bad_count(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser("throughput").parse_args(["--num-threads", "-1"])
    assert "--num-threads must be an integer >= 1 or 'all', got '-1'" in capsys.readouterr().err


# --- the measurement script (langchain-aisp-bench threads) ------------------------------------------------


def _row(model: str, load: int, threads: int, seconds: float | None, error: str = "") -> bench_threads.Measurement:
    return bench_threads.Measurement(
        model=model,
        load=load,
        threads=threads,
        repeat=0,
        seconds=seconds,
        load_seconds=1.0,
        load_avg_before=0.5,
        load_avg_after=0.7,
        reward=-5.0 if seconds else None,
        answer_sha="abc" if seconds else "",
        error=error,
    )


def test_threads_table():
    rows = [
        _row("default", 0, 1, 30.0),
        _row("default", 0, 2, 20.0),
        _row("default", 1, 1, 32.0),
        _row("default", 1, 2, None, "> 600 s (killed)"),
    ]
    table = bench_threads.markdown(rows, timeout=600, config="snippet")
    lines = table.splitlines()
    assert lines[2].startswith("| model | busy cores added | threads | seconds | vs 1 thread |")
    assert "| default | 0 | 2 | 20.0 | 0.67x | 0.5 -> 0.7 | -5 | abc |" in table
    assert "| default | 1 | 2 | > 600 s (killed) | > 19x |" in table


@pytest.mark.model
def test_threads_child_runs_with_the_thread_count_asked_for():
    spec = {"model": "default", "threads": 2, "num_samples": 1, "num_iterations": 1, "max_tokens": 2}
    got = bench_threads.run_one({**spec, "question": "Hi"}, timeout=300)
    assert got.get("torch_threads") == 2, got
    assert got["seconds"] > 0 and got["generated_tokens"] >= 1


def test_threads_subcommand_parses():
    parser = cli.build_parser("threads")
    args = parser.parse_args(["--models", "default", "--thread-counts", "1,all", "--loads", "0"])
    assert isinstance(args, argparse.Namespace) and args.models == "default"
    assert bench_threads._counts(args.thread_counts, allow_all=True) == list(dict.fromkeys([1, available_cores()]))
    with pytest.raises(ValueError, match="unknown"):
        bench_threads.cmd_threads(parser.parse_args(["--models", "7b"]))
