"""CPU threads: the README snippet timed with 1 thread vs all threads, on the machine as it is and with one core busy.

``langchain-aisp-bench threads`` (or ``python -m langchain_aisp.bench threads``) runs every
setting in its own subprocess (the thread count is fixed before torch starts: ``OMP_NUM_THREADS``
and ``torch.set_num_threads`` in the child), interleaves the settings over repeats, records the
1-minute load average before and after each run, and prints a markdown table.

The work is the README snippet: ``AISPChatModel(reward=concise, num_samples=8, num_iterations=4,
max_tokens=64, seed=0).invoke(QUESTION)``. ``--models`` picks the default model and/or random-weight
Llamas with the shapes of larger SmolLM2 models (``360m``, ``1.7b``) and the default tokenizer:
timing does not depend on the weights (a random model rarely samples EOS, so it always decodes the
full ``max_tokens``). ``--loads 0,1`` runs each setting on the machine as it is (0) and with
busy-loop processes (1 = one core kept busy) that this command starts and stops.

A run that exceeds ``--timeout`` seconds is killed and reported as ``> timeout``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

QUESTION = "How do I keep basil alive on a windowsill?"
SHAPES: dict[str, dict[str, Any]] = {
    # SmolLM2 configs (hidden, intermediate, layers, heads, kv heads); vocabulary: the default tokenizer's.
    "360m": {
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
    },
    "1.7b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    },
}
MODELS = ("default", *SHAPES)


def concise(prompt: str, response: str) -> float:
    """The README snippet's reward: words away from 25."""
    return -abs(len(response.split()) - 25)


def all_threads() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (macOS, Windows)
        return os.cpu_count() or 1


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        return None


@dataclass
class Measurement:
    model: str
    load: int
    threads: int
    repeat: int
    seconds: float | None
    """Wall-clock of ``invoke`` (model loading excluded); None when the run was killed or failed."""
    load_seconds: float | None
    load_avg_before: float | None
    load_avg_after: float | None
    reward: float | None = None
    answer_sha: str = ""
    generated_tokens: int | None = None
    error: str = ""


# --- the child: one setting in a fresh process ---------------------------------------------


def _build_lm(model: str) -> Any:
    from langchain_aisp.engine.lm import load_causal_lm, wrap_model

    default = load_causal_lm(None, device="cpu")
    if model == "default":
        return default
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = default.tokenizer
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[model],
    )
    torch.manual_seed(0)  # this measurement process only: random weights, same in every run
    return wrap_model(LlamaForCausalLM(config).eval(), tokenizer, name=f"random-llama-{model}")


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(int(spec["threads"]))  # this measurement process only
    from langchain_aisp import AISPChatModel

    start = time.perf_counter()
    lm = _build_lm(spec["model"])
    load_seconds = time.perf_counter() - start
    llm = AISPChatModel(
        llm=lm,
        reward=concise,
        num_samples=spec["num_samples"],
        num_iterations=spec["num_iterations"],
        max_tokens=spec["max_tokens"],
        seed=0,
    )
    start = time.perf_counter()
    msg = llm.invoke(spec["question"])
    seconds = time.perf_counter() - start
    meta = msg.response_metadata["aisp"]
    return {
        "seconds": seconds,
        "load_seconds": load_seconds,
        "reward": meta["reward"],
        "answer_sha": hashlib.sha256(msg.text.encode()).hexdigest()[:10],
        "generated_tokens": meta["generated_tokens"],
        "torch_threads": torch.get_num_threads(),
    }


# --- the parent: settings, load, table -----------------------------------------------------


class BusyLoad:
    """``cores`` busy-loop processes (started on enter, killed on exit)."""

    def __init__(self, cores: int) -> None:
        self.cores = cores
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> BusyLoad:
        for _ in range(self.cores):
            self.procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        if self.cores:
            time.sleep(2.0)  # let the scheduler see them
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.procs.clear()


def run_one(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One setting in a fresh interpreter with ``spec["threads"]`` threads; the child's JSON or an error."""
    threads = str(spec["threads"])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "langchain_aisp.bench.thread_scaling", "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"> {timeout:g} s (killed)"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def measure(
    models: Sequence[str],
    thread_counts: Sequence[int],
    loads: Sequence[int],
    *,
    repeats: int = 1,
    timeout: float = 600.0,
    num_samples: int = 8,
    num_iterations: int = 4,
    max_tokens: int = 64,
    question: str = QUESTION,
    log: Any = None,
) -> list[Measurement]:
    """Every (model, load, threads) setting ``repeats`` times, interleaved; settings of one load share its busy loop."""
    out: list[Measurement] = []
    for repeat in range(repeats):
        for model in models:
            for load in loads:
                with BusyLoad(load):
                    for threads in thread_counts:
                        spec = {
                            "model": model,
                            "threads": threads,
                            "num_samples": num_samples,
                            "num_iterations": num_iterations,
                            "max_tokens": max_tokens,
                            "question": question,
                        }
                        before = load_average()
                        got = run_one(spec, timeout)
                        m = Measurement(
                            model=model,
                            load=load,
                            threads=threads,
                            repeat=repeat,
                            seconds=got.get("seconds"),
                            load_seconds=got.get("load_seconds"),
                            load_avg_before=before,
                            load_avg_after=load_average(),
                            reward=got.get("reward"),
                            answer_sha=got.get("answer_sha", ""),
                            generated_tokens=got.get("generated_tokens"),
                            error=got.get("error", ""),
                        )
                        out.append(m)
                        if log is not None:
                            print(json.dumps(asdict(m)), file=log, flush=True)
    return out


def _fmt_seconds(values: list[float | None], errors: list[str]) -> str:
    done = [v for v in values if v is not None]
    if not done:
        return errors[0] if errors else "-"
    text = f"{statistics.median(done):.1f}"
    if len(done) > 1:
        text += f" ({min(done):.1f}-{max(done):.1f})"
    if len(done) < len(values):
        text += f"; {len(values) - len(done)} x {errors[0]}"
    return text


def markdown(rows: Sequence[Measurement], *, timeout: float, config: str) -> str:
    """One line per (model, load, threads): median seconds, ratio to 1 thread, load averages, reward."""
    keys = list(dict.fromkeys((m.model, m.load, m.threads) for m in rows))
    lines = [
        f"Machine: {platform.machine()}, {all_threads()} CPU threads available, torch "
        f"{_torch_version()}. Work: {config}. Seconds: median of `invoke` wall-clock (model load excluded).",
        "",
        "| model | busy cores added | threads | seconds | vs 1 thread | load avg (1 min) before -> after | "
        "reward | answer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, load, threads in keys:
        group = [m for m in rows if (m.model, m.load, m.threads) == (model, load, threads)]
        base = [m for m in rows if (m.model, m.load, m.threads) == (model, load, 1) and m.seconds is not None]
        done = [m.seconds for m in group if m.seconds is not None]
        ratio = "-"
        if base and done:
            ratio = f"{statistics.median(done) / statistics.median([b.seconds for b in base if b.seconds]):.2f}x"
        elif base and not done:
            ratio = f"> {timeout / statistics.median([b.seconds for b in base if b.seconds]):.0f}x"
        loadavg = ", ".join(f"{m.load_avg_before} -> {m.load_avg_after}" for m in group)
        rewards = sorted({m.reward for m in group if m.reward is not None})
        shas = sorted({m.answer_sha for m in group if m.answer_sha})
        lines.append(
            f"| {model} | {load} | {threads} | {_fmt_seconds([m.seconds for m in group], [m.error for m in group])} "
            f"| {ratio} | {loadavg} | {', '.join(f'{r:g}' for r in rewards) or '-'} | {', '.join(shas) or '-'} |"
        )
    return "\n".join(lines)


def _torch_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "?"


def _counts(text: str, allow_all: bool) -> list[int]:
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if allow_all and part == "all":
            out.append(all_threads())
            continue
        value = int(part)
        if value < (1 if allow_all else 0):
            raise ValueError(f"counts must be integers >= {1 if allow_all else 0}, got {part!r}")
        out.append(value)
    return list(dict.fromkeys(out))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The README snippet timed with 1 vs all CPU threads, on the machine as it is and with busy cores "
        "(each setting in its own process); prints a markdown table."
    )
    parser.add_argument("--models", default="default,360m", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--thread-counts", default="1,all", help="comma-separated thread counts ('all' = every core)")
    parser.add_argument("--loads", default="0,1", help="busy-loop processes to add, comma-separated (default 0,1)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a run is killed (default 600)")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--num-iterations", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", default="bench-results", help="folder for threads.json and threads.md")


def cmd_threads(args: argparse.Namespace) -> int:
    from pathlib import Path

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    threads = _counts(args.thread_counts, allow_all=True)
    loads = _counts(args.loads, allow_all=False)
    config = (
        f"AISPChatModel(reward=concise, num_samples={args.num_samples}, num_iterations={args.num_iterations}, "
        f"max_tokens={args.max_tokens}, seed=0).invoke({QUESTION!r})"
    )
    print(f"threads: models {models}, threads {threads}, busy cores {loads}, {args.repeats} repeat(s)", file=sys.stderr)
    rows = measure(
        models,
        threads,
        loads,
        repeats=args.repeats,
        timeout=args.timeout,
        num_samples=args.num_samples,
        num_iterations=args.num_iterations,
        max_tokens=args.max_tokens,
        log=sys.stderr,
    )
    text = markdown(rows, timeout=args.timeout, config=config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "threads.json").write_text(json.dumps([asdict(m) for m in rows], indent=1), encoding="utf-8")
    (out / "threads.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        sys.exit(0)
    parser = argparse.ArgumentParser(prog="python -m langchain_aisp.bench.thread_scaling")
    add_arguments(parser)
    sys.exit(cmd_threads(parser.parse_args()))
