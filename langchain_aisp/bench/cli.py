"""``langchain-aisp-bench``: AISP vs Best-of-N on your prompts, reward and model.

Subcommands (``run`` is the default when none is given)::

    langchain-aisp-bench [run] [--prompts FILE] [--reward NAME|module:callable ...] [--budgets 8,16,32]
                         [--seeds 2] [--splits 8x4,...] [--max-tokens 32] [--model ID|PATH] [--quick]
                         [--single] [--out bench-results/] [--resume | --overwrite]
    langchain-aisp-bench throughput [--batch-sizes 8,32] [--tokens 32] [--repeats 3] [--random-weights 1.7B]
                                    [--variants ours,ours_static,...] [--bandwidth-gbps 4800] [--aisp]
                                    [--batched-prompts 16]
    langchain-aisp-bench prefill [--prompt-tokens 1024] [--samples 8] [--tokens 32]
    langchain-aisp-bench report --out bench-results/
    langchain-aisp-bench threads [--models default,360m] [--thread-counts 1,all] [--loads 0,1] [--repeats 1]
    langchain-aisp-bench memory [--reward sentiment,length,relevance] [--seeds 3] [--curve 0,8,16,32,64]
                         [--samples 8] [--set strength=4] [--out bench-results/memory] [--resume]
    langchain-aisp-bench memory-report --out bench-results/memory
    langchain-aisp-bench screen [--reward relevance,sentiment] [--prompts FILE] [--designs position@0.02,...]
                         [--sigma 0.02] [--tau 32] [--controls 8] [--sampling-sets 4] [--out bench-results/screen]
    langchain-aisp-bench coupling [--sigmas 0.01,0.02,0.05] [--out bench-results/coupling]
    langchain-aisp-bench efficiency [--reward relevance,sentiment,reference] [--methods aisp-8x4,er-64x1@8/0.25]
                         [--seeds 2] [--limit-prompts 12] [--max-tokens 24] [--pool 128] [--out DIR]
                         [--resume | --overwrite]
    langchain-aisp-bench efficiency-report --out bench-results/efficiency

Everything runs offline on the embedded default model unless ``--model`` names another, on one
CPU thread unless ``--num-threads N|all`` or ``$LANGCHAIN_AISP_NUM_THREADS`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import langchain_aisp.engine.config as engine_config
from langchain_aisp.engine.threads import DEFAULT_NUM_THREADS, NUM_THREADS_ENV, num_threads_arg, set_cpu_threads

SUBCOMMANDS = (
    "run",
    "throughput",
    "prefill",
    "report",
    "threads",
    "memory",
    "memory-report",
    "screen",
    "coupling",
    "efficiency",
    "efficiency-report",
)
DEFAULT_OUT = "bench-results"
DEFAULT_REWARDS = ("sentiment", "nontoxic", "relevance")

# --quick: about 10 minutes on 2 quiet CPU cores (see docs/benchmarks.md)
QUICK_PROMPTS = 8
QUICK_BUDGETS = "8,16,32"
QUICK_SEEDS = 1
QUICK_MAX_TOKENS = 24


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{name} must be comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{name} must be comma-separated integers >= 1, got {text!r}")
    return values


def _lambda(text: str) -> float | None:
    if text.lower() in ("auto", "none", "ess"):
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--lambda must be a positive number or 'auto', got {text!r}") from exc


def _field_value(text: str) -> tuple[str, Any]:
    """``"name=value"`` -> (name, value) with value parsed as JSON when it is (numbers, true, null), else a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--set expects FIELD=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return name.strip(), value


def _model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None, help="hub id or local path (default: embedded SmolLM2-135M-Instruct)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    group.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default auto: fp32 on CPU)")
    group.add_argument("--trust-remote-code", action="store_true", help="allow custom model code (off by default)")
    group.add_argument(
        "--num-threads",
        "--threads",
        dest="num_threads",
        type=num_threads_arg,
        default=None,
        help=f"torch CPU threads, a count or 'all' (default: ${NUM_THREADS_ENV}, else {DEFAULT_NUM_THREADS}; "
        "see README 'Performance')",
    )


def build_parser(command: str) -> argparse.ArgumentParser:
    prog = "langchain-aisp-bench" + ("" if command == "run" else f" {command}")
    if command == "run":
        parser = argparse.ArgumentParser(
            prog=prog,
            description="AISP vs Best-of-N (and plain sampling) at equal sample budgets: reward, win rate, "
            "diversity, coherence, wall-clock, tokens/s, peak memory. Other subcommands: throughput, prefill, report.",
        )
        data = parser.add_argument_group("problem")
        data.add_argument("--prompts", default=None, help="JSONL file of {id, prompt, context?} (default: shipped set)")
        data.add_argument("--limit-prompts", type=int, default=None, help="use only the first K prompts")
        data.add_argument(
            "--reward",
            action="append",
            default=None,
            help="sentiment, nontoxic, relevance, or module:callable / file.py:callable (a Reward or "
            "fn(prompt, response) -> float); repeat or comma-separate (default: sentiment,nontoxic,relevance)",
        )
        budget = parser.add_argument_group("budget")
        budget.add_argument("--budgets", default=None, help="samples per prompt N, comma-separated (default 8,16,32)")
        budget.add_argument("--seeds", type=int, default=None, help="number of seeds (default 2)")
        budget.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed+1, ...")
        budget.add_argument(
            "--splits",
            default=None,
            help="n x k splits overriding the default rule (k = min(4, N/4), n = N/k) for their budget N = n*k, "
            "e.g. 4x2,8x4; several splits of one N are all run",
        )
        budget.add_argument("--max-tokens", type=int, default=None, help="new tokens per response (default 32)")
        budget.add_argument("--quick", action="store_true", help="~10 min: 8 prompts, budgets 8,16,32, 1 seed, 24 tok")
        method = parser.add_argument_group("AISP hyperparameters (defaults from langchain_aisp.engine.config)")
        method.add_argument(
            "--sigma", type=float, default=engine_config.DEFAULT_SIGMA, help="noise std / pre-logit RMS"
        )
        method.add_argument(
            "--lambda",
            dest="lambda_",
            type=_lambda,
            default=engine_config.DEFAULT_LAMBDA,
            help="reward temperature, or 'auto' to hold the ESS at --ess-target (default auto)",
        )
        method.add_argument("--ess-target", type=float, default=engine_config.DEFAULT_ESS_TARGET)
        method.add_argument("--alpha", type=float, default=engine_config.DEFAULT_ALPHA)
        method.add_argument("--tau", type=int, default=engine_config.DEFAULT_TAU)
        method.add_argument(
            "--set",
            dest="extra",
            action="append",
            default=[],
            metavar="FIELD=VALUE",
            help="any other AISPParams field for the AISP method, e.g. --set control=shared (repeatable)",
        )
        method.add_argument("--temperature", type=float, default=engine_config.DEFAULT_TEMPERATURE)
        method.add_argument(
            "--max-batch-size",
            type=int,
            default=engine_config.DEFAULT_MAX_BATCH_SIZE,
            help="rows per decoding batch (b prompts x n samples)",
        )
        sections = parser.add_argument_group("sections")
        sections.add_argument("--single", action="store_true", help="also time each prompt alone (one run per prompt)")
        sections.add_argument("--single-only", action="store_true", help="only the single-prompt section")
        sections.add_argument("--single-prompts", type=int, default=None, help="prompts in the single section (4)")
        sections.add_argument("--no-sample", action="store_true", help="skip the plain-sampling baseline")
        sections.add_argument("--no-coherence", action="store_true", help="skip the MiniLM coherence metric")
        output = parser.add_argument_group("output")
        output.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT}/)")
        output.add_argument("--resume", action="store_true", help="continue the run in --out, skipping finished cells")
        output.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
        output.add_argument("--no-progress", action="store_true", help="no progress bars")
        _model_args(parser)
        return parser
    if command == "memory":
        return _memory_parser(prog)
    if command in ("screen", "coupling"):
        from langchain_aisp.bench import screen

        return (screen.screen_parser if command == "screen" else screen.coupling_parser)(prog, _model_args)
    if command == "efficiency":
        return _efficiency_parser(prog)
    parser = argparse.ArgumentParser(prog=prog)
    if command == "throughput":
        parser.description = (
            "Decoding ms/step and tokens/s of our eager and static decode paths vs model.generate (eager and "
            "static cache) on the same batch, peak memory, the weights-only bandwidth limit; optionally one "
            "AISP answer end to end and Batched AISP vs BoN."
        )
        parser.add_argument("--batch-sizes", default="8,32")
        parser.add_argument("--tokens", type=int, default=32, help="new tokens per row (exactly)")
        parser.add_argument("--repeats", type=int, default=3)
        parser.add_argument(
            "--random-weights",
            choices=("135M", "1.7B", "8B"),
            default=None,
            help="a random-init Llama of this shape with the default tokenizer, built on the device (no download)",
        )
        parser.add_argument("--tokenizer", default=None, help="tokenizer folder for --random-weights")
        parser.add_argument(
            "--variants",
            default=None,
            help="comma-separated subset of ours,ours_static,ours_static_compiled,generate,generate_static "
            "(default: all on CUDA; ours,ours_static,generate on CPU)",
        )
        parser.add_argument(
            "--bandwidth-gbps",
            type=float,
            default=None,
            help="device memory bandwidth for the weights-only limit (default: datasheet value of known cards, "
            "e.g. H200 4800, H100 SXM 3350, A100 80GB 2039)",
        )
        parser.add_argument("--aisp", action="store_true", help="also time one AISP/BoN 8x4 answer end to end")
        parser.add_argument(
            "--batched-prompts", type=int, default=0, help="also time Batched AISP 8x4 vs BoN over this many prompts"
        )
    elif command == "prefill":
        parser.description = "BoN-N on a long RAG prompt: our engine (prefill once) vs generate (prefill N times)."
        parser.add_argument("--prompt-tokens", type=int, default=1024, help="minimum prompt length in tokens")
        parser.add_argument("--samples", type=int, default=8, help="N")
        parser.add_argument("--tokens", type=int, default=32, help="new tokens per sample (exactly)")
        parser.add_argument("--repeats", type=int, default=1)
    elif command == "threads":
        from langchain_aisp.bench.thread_scaling import add_arguments

        add_arguments(parser)
        return parser
    elif command == "memory-report":
        parser.description = "Rebuild a memory benchmark's summary.md and learning_curve.png from results.json."
    elif command == "efficiency-report":
        parser.description = "Rebuild an efficiency run's summary.md and summary.json from results.json."
    else:
        parser.description = "Rebuild summary.csv, summary.md and the plots from results.json."
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT}/)")
    if command not in ("report", "memory-report", "efficiency-report"):
        _model_args(parser)
    return parser


def _memory_parser(prog: str) -> argparse.ArgumentParser:
    from langchain_aisp.bench.memory_bench import DEFAULT_CURVE

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Learning across calls (issue 27): a memory learns from a stream of default-method calls on "
        "learning prompts; after 0, 8, ... learning calls it answers disjoint test prompts with the default method "
        "and its samples, against the same call without a memory and against four times the samples.",
    )
    parser.add_argument("--learn-prompts", default=None, help="JSONL of learning prompts (default: the 48 shipped)")
    parser.add_argument("--test-prompts", default=None, help="JSONL of test prompts (default: 24 shipped prompts)")
    parser.add_argument("--reward", action="append", default=None,
                        help="reward families: sentiment, length, relevance (default), subjectivity, complete, "
                        "reference, or module:callable")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=engine_config.DEFAULT_CHAT_TEMPERATURE)
    parser.add_argument("--samples", type=int, default=8, help="samples per call (default 8; the reference has 4x)")
    parser.add_argument("--curve", default=",".join(map(str, DEFAULT_CURVE)), help="learning calls before each test")
    parser.add_argument("--set", dest="memory", action="append", default=[], metavar="FIELD=VALUE",
                        help="a ControlMemory setting, e.g. --set strength=6 --set kl_budget=0.1")  # fmt: skip
    parser.add_argument("--max-batch-size", type=int, default=engine_config.DEFAULT_MAX_BATCH_SIZE)
    parser.add_argument("--no-coherence", action="store_true", help="skip the MiniLM coherence metric")
    parser.add_argument(
        "--out", default=f"{DEFAULT_OUT}/memory", help=f"results folder (default {DEFAULT_OUT}/memory/)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    _model_args(parser)
    return parser


def _efficiency_parser(prog: str) -> argparse.ArgumentParser:
    from langchain_aisp.bench.efficiency import DEFAULT_EFFICIENCY_REWARDS, DEFAULT_METHODS, DEFAULT_POOL

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Sample efficiency against Best-of-N: one pool of BoN samples per prompt-seed gives BoN's "
        "expected best at N = 8..pool; each method runs at its budget on the same prompt-seeds. Paired "
        "differences vs BoN-32 (mean +- SE, wins/ties/losses), the matched BoN budget N', tokens, wall-clock, "
        "diversity and coherence.",
    )
    parser.add_argument("--prompts", default=None, help="JSONL file of {id, prompt, context?} (default: shipped set)")
    parser.add_argument("--limit-prompts", type=int, default=None, help="use only the first K prompts")
    parser.add_argument(
        "--reward",
        action="append",
        default=None,
        help="relevance, sentiment, nontoxic, reference (similarity to the prompt's hidden reference answer) or "
        f"module:callable; repeat or comma-separate (default: {','.join(DEFAULT_EFFICIENCY_REWARDS)})",
    )
    parser.add_argument(
        "--references", default=None, help="JSONL of {id, reference} for the reference reward (default: shipped)"
    )
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="methods under test: aisp-NxK, bon-NxK, er-NxK@C/F (BoN with early rejection at C tokens, keeping a "
        "fraction F), each with optional +field=value AISPParams overrides (default: %(default)s)",
    )
    parser.add_argument("--seeds", type=int, default=2, help="number of seeds (default 2)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=24, help="new tokens per response (default 24)")
    parser.add_argument("--pool", type=int, default=DEFAULT_POOL, help=f"BoN pool per prompt-seed ({DEFAULT_POOL})")
    parser.add_argument("--max-batch-size", type=int, default=engine_config.DEFAULT_MAX_BATCH_SIZE)
    parser.add_argument("--no-coherence", action="store_true", help="skip the MiniLM coherence metric")
    parser.add_argument(
        "--out", default=f"{DEFAULT_OUT}/efficiency", help=f"results folder (default {DEFAULT_OUT}/efficiency/)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    _model_args(parser)
    return parser


def cmd_efficiency(args: argparse.Namespace) -> int:
    from langchain_aisp.bench.efficiency import EfficiencyConfig, parse_method, resolve_eval_rewards, run_efficiency
    from langchain_aisp.bench.prompts import load_prompts
    from langchain_aisp.bench.scorers import TextEmbedder

    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    config = EfficiencyConfig(
        seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)),
        max_tokens=args.max_tokens,
        pool=args.pool,
        max_batch_size=args.max_batch_size,
    )
    methods = [parse_method(m) for m in args.methods.split(",") if m.strip()]
    prompts = load_prompts(args.prompts, args.limit_prompts)
    specs = _reward_specs(args.reward or ["relevance,sentiment,reference"])
    rewards = resolve_eval_rewards(specs, prompts, args.references)
    out = Path(args.out)
    if (out / "results.json").exists() and not (args.resume or args.overwrite):
        raise FileExistsError(f"{out / 'results.json'} exists: add --resume to continue it or --overwrite to replace")
    lm = _load_lm(args)
    run_efficiency(
        lm,
        prompts,
        rewards,
        methods,
        config,
        out,
        resume=args.resume,
        overwrite=args.overwrite,
        embedder=None if args.no_coherence else TextEmbedder(),
    )
    print((out / "summary.md").read_text(encoding="utf-8"))
    return 0


def cmd_efficiency_report(args: argparse.Namespace) -> int:
    from langchain_aisp.bench.efficiency import RESULTS_FORMAT, write_summary
    from langchain_aisp.bench.runner import load_results

    written = write_summary(load_results(args.out, RESULTS_FORMAT), args.out)
    print("\n".join(str(p) for p in written))
    return 0


def _load_lm(args: argparse.Namespace) -> Any:
    from langchain_aisp.engine.lm import load_causal_lm

    set_cpu_threads(args.num_threads)  # explicit: this command's option (default one thread)
    return load_causal_lm(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)


def _reward_specs(values: Sequence[str] | None) -> list[str]:
    specs = [s.strip() for v in (values or DEFAULT_REWARDS) for s in v.split(",") if s.strip()]
    return list(dict.fromkeys(specs))


def cmd_run(args: argparse.Namespace) -> int:
    from langchain_aisp.bench.prompts import load_prompts
    from langchain_aisp.bench.runner import (
        DEFAULT_BENCH_MAX_TOKENS,
        DEFAULT_BUDGETS,
        DEFAULT_SEEDS,
        DEFAULT_SINGLE_PROMPTS,
        BenchConfig,
        Split,
        run_benchmark,
    )
    from langchain_aisp.bench.scorers import TextEmbedder, resolve_rewards

    quick = bool(args.quick)
    limit = args.limit_prompts if args.limit_prompts is not None else (QUICK_PROMPTS if quick else None)
    budgets_text = args.budgets or (QUICK_BUDGETS if quick else None)
    budgets = _ints(budgets_text, "--budgets") if budgets_text else DEFAULT_BUDGETS
    seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if quick else DEFAULT_SEEDS)
    max_tokens = args.max_tokens or (QUICK_MAX_TOKENS if quick else DEFAULT_BENCH_MAX_TOKENS)
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    splits = tuple(Split.parse(s) for s in args.splits.split(",") if s.strip()) if args.splits else ()
    config = BenchConfig(
        budgets=budgets,
        seeds=tuple(range(args.first_seed, args.first_seed + seeds)),
        splits=splits,
        max_tokens=max_tokens,
        temperature=args.temperature,
        sigma=args.sigma,
        lambda_=args.lambda_,
        ess_target=args.ess_target,
        alpha=args.alpha,
        tau=args.tau,
        max_batch_size=args.max_batch_size,
        extra_params=tuple(_field_value(t) for t in args.extra),
        batched=not args.single_only,
        single=args.single or args.single_only,
        single_prompts=args.single_prompts or DEFAULT_SINGLE_PROMPTS,
        sample=not args.no_sample,
    )
    prompts = load_prompts(args.prompts, limit)
    specs = _reward_specs(args.reward)
    rewards = resolve_rewards(specs)
    coherence = None if args.no_coherence else TextEmbedder()
    out = Path(args.out)
    if (out / "results.json").exists() and not (args.resume or args.overwrite):
        raise FileExistsError(f"{out / 'results.json'} exists: add --resume to continue it or --overwrite to replace")
    print(
        f"benchmark: {len(prompts)} prompts, rewards {list(rewards)}, splits {[s.label for s in config.plan()]}, "
        f"seeds {list(config.seeds)}, max_tokens {config.max_tokens} -> {out}/",
        file=sys.stderr,
    )
    lm = _load_lm(args)
    results = run_benchmark(
        lm,
        prompts,
        rewards,
        config,
        out,
        resume=args.resume,
        overwrite=args.overwrite,
        embedder=coherence,
        progress=not args.no_progress,
    )
    print((out / "summary.md").read_text(encoding="utf-8"))
    failed = results["meta"].get("failed_cells", 0)
    if failed:
        print(f"{failed} cell(s) failed; fix the cause and rerun with --resume", file=sys.stderr)
    return 1 if failed else 0


def cmd_throughput(args: argparse.Namespace) -> int:
    from langchain_aisp.bench import speed

    if args.random_weights and args.model:
        raise ValueError("pass either --model or --random-weights, not both")
    if args.tokenizer and not args.random_weights:
        raise ValueError("--tokenizer only applies to --random-weights")
    if args.batched_prompts < 0:
        raise ValueError(f"--batched-prompts must be >= 0, got {args.batched_prompts}")
    if args.random_weights:
        set_cpu_threads(args.num_threads)  # as _load_lm does for --model
        lm = speed.random_weights_lm(args.random_weights, args.tokenizer, device=args.device, dtype=args.dtype)
    else:
        lm = _load_lm(args)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else None
    rows = speed.throughput(
        lm,
        _ints(args.batch_sizes, "--batch-sizes"),
        args.tokens,
        args.repeats,
        variants=variants,
        bandwidth_gbps=args.bandwidth_gbps,
    )
    data: dict[str, Any] = {"model": lm.name, "rows": rows}
    text = speed.throughput_markdown(rows, lm.name)
    if args.aisp:
        data["aisp"] = speed.aisp_latency(lm, tokens=args.tokens, repeats=args.repeats)
        text += "\n" + speed.aisp_markdown(data["aisp"], lm.name)
    if args.batched_prompts:
        data["batched"] = speed.batched_wall_clock(lm, args.batched_prompts, tokens=args.tokens, repeats=args.repeats)
        text += "\n" + speed.batched_markdown(data["batched"], lm.name)
    _save(Path(args.out), "throughput", data, text)
    print(text)
    return 0


def cmd_prefill(args: argparse.Namespace) -> int:
    from langchain_aisp.bench.speed import prefill_cost, prefill_markdown

    lm = _load_lm(args)
    result = prefill_cost(lm, args.prompt_tokens, args.samples, args.tokens, args.repeats)
    text = prefill_markdown(result, lm.name)
    _save(Path(args.out), "prefill", {"model": lm.name, **result}, text)
    print(text)
    return 0


def _curve(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise ValueError(f"--curve must be comma-separated integers >= 0, got {text!r}") from exc
    if any(v < 0 for v in values):
        raise ValueError(f"--curve must be comma-separated integers >= 0, got {text!r}")
    return values


def cmd_memory(args: argparse.Namespace) -> int:
    from langchain_aisp.bench.families import KINDS, family_rewards
    from langchain_aisp.bench.memory_bench import MemoryBenchConfig, default_split, run_memory_benchmark
    from langchain_aisp.bench.prompts import load_prompts
    from langchain_aisp.bench.scorers import TextEmbedder, resolve_rewards

    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    config = MemoryBenchConfig(
        seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)),
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        num_samples=args.samples,
        curve=_curve(args.curve),
        memory=tuple(_field_value(t) for t in args.memory),
        max_batch_size=args.max_batch_size,
    )
    learn, test = default_split()
    if args.learn_prompts:
        learn = load_prompts(args.learn_prompts)
    if args.test_prompts:
        test = load_prompts(args.test_prompts)
    specs = _reward_specs(args.reward or ["sentiment,length,relevance"])
    rewards = family_rewards([s for s in specs if s in KINDS], test)
    rewards.update(resolve_rewards([s for s in specs if s not in KINDS]))
    lm = _load_lm(args)
    run_memory_benchmark(
        lm,
        learn,
        test,
        rewards,
        config,
        Path(args.out),
        resume=args.resume,
        overwrite=args.overwrite,
        embedder=None if args.no_coherence else TextEmbedder(),
    )
    print(Path(args.out) / "summary.md")
    return 0


def cmd_memory_report(args: argparse.Namespace) -> int:
    from langchain_aisp.bench.memory_bench import load_memory_results
    from langchain_aisp.bench.memory_report import write_memory_report

    written = write_memory_report(load_memory_results(args.out), args.out)
    print("\n".join(str(p) for p in written))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from langchain_aisp.bench.report import write_report
    from langchain_aisp.bench.runner import load_results

    written = write_report(load_results(args.out), args.out)
    print("\n".join(str(p) for p in written))
    return 0


def cmd_screen(args: argparse.Namespace) -> int:
    from langchain_aisp.bench import screen

    return screen.cmd_screen(args, _load_lm)


def cmd_coupling(args: argparse.Namespace) -> int:
    from langchain_aisp.bench import screen

    return screen.cmd_coupling(args, _load_lm)


def cmd_threads(args: argparse.Namespace) -> int:
    from langchain_aisp.bench.thread_scaling import cmd_threads as run_threads

    return run_threads(args)


def _save(out: Path, name: str, data: dict[str, Any], text: str) -> None:
    from langchain_aisp.bench.runner import _jsonable

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(_jsonable(data), indent=1), encoding="utf-8")
    (out / f"{name}.md").write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``langchain-aisp-bench`` and ``python -m langchain_aisp.bench``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else "run"
    if argv and argv[0] == command:
        argv = argv[1:]
    args = build_parser(command).parse_args(argv)
    handlers = {
        "run": cmd_run,
        "throughput": cmd_throughput,
        "prefill": cmd_prefill,
        "report": cmd_report,
        "threads": cmd_threads,
        "memory": cmd_memory,
        "memory-report": cmd_memory_report,
        "screen": cmd_screen,
        "coupling": cmd_coupling,
        "efficiency": cmd_efficiency,
        "efficiency-report": cmd_efficiency_report,
    }
    try:
        return handlers[command](args)
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; continue with --resume", file=sys.stderr)
        return 130
    except (ValueError, FileExistsError, FileNotFoundError, ImportError, argparse.ArgumentTypeError) as exc:
        print(f"langchain-aisp-bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
