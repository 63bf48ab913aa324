"""The GPU check of issue 20 (and the issue-11 figures it grew from), on random-weight Llama shapes.

Stages (default plan, in priority order; ``--issue11`` runs the older static-vs-eager plan instead):

* ``warmup:<shape>``: ``warmup()`` compiles and captures the default path's buckets (batch 1/8/64) and
  saves them to the persistent compile cache (seconds per bucket, cache hit or miss);
* ``default:<shape>:<batch>``: ms/step of the default path (``decoding="auto"``: compiled once the
  cache is warm) against the plain static path, with the weights-only bandwidth limit, 1.7B and 8B;
* ``firstcall:<shape>:<batch>``: a fresh Python process (empty inductor cache, warm compile cache):
  its first ``decoding="auto"`` call against its steady calls;
* ``logits:<dtype>:<shape>``: the fp32 control on the card: the logit shift ``W v`` of the static and
  compiled paths' head against an fp32 reference, in bf16 and fp16 (and what adding ``v`` to ``z`` in
  the model's dtype would give, for contrast);
* ``hostmask:<shape>:<batch>``: the grammar-masked static step (RowMasks wiring, an allow-all matcher)
  against the plain static step, batch 8 and 32;
* ``serve:<shape>:<clients>``: 16 / 64 requests answered by one Batched AISP run (what the server's
  batching round does) against the same requests one after another; AISP and BoN at equal samples.

Run through ``scripts/gpu_check.sh`` (see its header). Needs torch and transformers only (no
langchain-core): it imports the engine and ``langchain_aisp.bench.speed``. Every stage is
independent: a failing stage is recorded with its traceback and the next one runs; results are
appended to ``OUT/report.json`` (and ``OUT/report.md``) as they come; stages whose estimated cost
exceeds the time left in ``--budget-s`` are skipped and recorded as such. ``--dry-run`` (alias
``--smoke``) runs every stage on the tiny shape with tiny budgets and no compilation: a test runs it
on CPU so the script cannot rot.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

from langchain_aisp.bench import speed
from langchain_aisp.engine.lm import CausalLM

TARGETS = {
    ("1.7B", 8): 2.5,
    ("1.7B", 64): 3.5,
    ("8B", 1): 4.6,
    ("8B", 64): 6.0,
}
"""ms/step targets of the default path, issue 20 (H100/H200, bf16, 64 new tokens)."""
FIRST_CALL_TARGET_S = 5.0
"""Issue 20: a fresh process with a warm cache: first call at most this many seconds above a steady call."""
SERVE_TARGET_RATIO = 8.0
"""Issue 20: answers/s at 64 clients against sequential calls."""
GRAMMAR_TARGET = 0.10
"""Issue 20: grammar-masked static step overhead per step."""
LOGIT_TOLERANCE = 1e-2
"""Relative L2 error of the logit shift against the fp32 reference accepted in bf16 / fp16."""


class Check:
    def __init__(self, out: Path, budget_s: float, only: list[str] | None) -> None:
        self.out = out
        self.start = time.monotonic()
        self.budget_s = budget_s
        self.only = only
        self.report: dict[str, Any] = {"meta": {}, "stages": []}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def stage(self, name: str, est_s: float, fn: Callable[[], Any]) -> Any:
        entry: dict[str, Any] = {"name": name, "est_s": est_s}
        if self.only and not any(name.startswith(p) for p in self.only):
            return None
        if self.left() < est_s:
            entry.update(status="skipped", reason=f"{self.left():.0f} s left < estimated {est_s:.0f} s")
            print(f"[skip] {name}: {entry['reason']}", flush=True)
            self._append(entry)
            return None
        print(f"[run ] {name} (est {est_s:.0f} s, {self.left():.0f} s left)", flush=True)
        t0 = time.monotonic()
        try:
            result = fn()
            entry.update(status="ok", result=result)
        except Exception as exc:  # every stage is independent: record and go on
            result = None
            entry.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            print(entry["traceback"], flush=True)
        entry["wall_s"] = time.monotonic() - t0
        print(f"[{entry['status']:4}] {name} in {entry['wall_s']:.1f} s", flush=True)
        self._append(entry)
        return result

    def _append(self, entry: dict[str, Any]) -> None:
        self.report["stages"].append(entry)
        self.save()

    def save(self) -> None:
        self.report["meta"]["elapsed_s"] = time.monotonic() - self.start
        (self.out / "report.json").write_text(json.dumps(self.report, indent=1, default=str), encoding="utf-8")
        (self.out / "report.md").write_text(markdown(self.report), encoding="utf-8")


def _ok(report: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    return [s for s in report["stages"] if s["name"].startswith(prefix) and s["status"] == "ok"]


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        "# GPU check (issue 20)",
        "",
        f"Device: {meta.get('device')}; torch {meta.get('torch')}, transformers {meta.get('transformers')}, "
        f"Python {meta.get('python')}. Measured copy bandwidth {_fmt(meta.get('copy_gbps'), 0)} GB/s; "
        f"limit column uses {_fmt(meta.get('bandwidth_gbps'), 0)} GB/s ({meta.get('bandwidth_source')}).",
    ]
    if _ok(report, "throughput:"):
        lines += [
            "",
            "## ms per decoding step (64 new tokens unless noted; prefill included; median of repeats)",
            "",
            "| model | batch | ours eager | ours static | ours static compiled | generate eager | generate static "
            "(compiled) | weights-only limit | target | static peak MiB / generate peak MiB (beyond weights) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    captures: list[dict[str, Any]] = []
    for stage in report["stages"]:
        if stage["status"] != "ok" or not stage["name"].startswith("throughput"):
            continue
        shape = stage["name"].split(":")[1]
        for row in stage["result"]:
            cell = cells.setdefault((shape, row["batch"]), {"limit": row.get("limit_ms_per_step")})
            for variant in speed.VARIANTS:
                if variant in row:
                    cell[variant] = row[variant]
            for bucket in row.get("static_buckets", []):
                captures.append({"model": shape, "batch": row["batch"], **bucket})
    for (shape, batch), cell in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1])):

        def ms(key: str, cell: dict[str, Any] = cell) -> str:
            return _fmt(cell[key]["ms_per_step"]) if key in cell else "-"

        mem = "-"
        if "ours_static" in cell and "generate" in cell:
            static, generate = cell["ours_static"], cell["generate"]
            key = "peak_working_mib" if not math.isnan(static.get("peak_working_mib", math.nan)) else "peak_mem_mib"
            mem = f"{_fmt(static[key], 0)} / {_fmt(generate[key], 0)}"
        lines.append(
            f"| {shape} | {batch} | {ms('ours')} | {ms('ours_static')} | {ms('ours_static_compiled')} | "
            f"{ms('generate')} | {ms('generate_static')} | {_fmt(cell.get('limit'))} | "
            f"{_fmt(TARGETS.get((shape, batch)), 1)} | {mem} |"
        )
    for stage in _ok(report, "aisp:"):
        lines += ["", f"## {stage['name']}", "", speed.aisp_markdown(stage["result"], stage["name"].split(":")[1])]
    for stage in _ok(report, "batched:"):
        lines += ["", f"## {stage['name']}", "", speed.batched_markdown(stage["result"], stage["name"].split(":")[1])]
    replays = _ok(report, "replay:")
    if replays:
        lines += [
            "",
            "## Captured step alone (CUDA events around T - 1 replays; no prefill, no host work)",
            "",
            "| stage | rows | replay ms/step | kernels per step (eager step) | kernel ms per step | capture s |",
            "|---|---|---|---|---|---|",
        ]
        for stage in replays:
            r = stage["result"]
            lines.append(
                f"| {stage['name']} | {r['rows']} | {_fmt(r['replay_ms'])} | {_fmt(r.get('kernels_per_step'), 0)} | "
                f"{_fmt(r.get('kernel_ms_per_step'))} | {_fmt(r['capture_s'])} |"
            )
        for stage in replays:
            if stage["result"].get("top_kernels"):
                lines += ["", f"Top kernels of one eager step, {stage['name']} (ms per step):", ""]
                lines += [
                    f"- {k['ms_per_step']:.3f} ms, {k['calls_per_step']:.0f}x: {k['name']}"
                    for k in stage["result"]["top_kernels"]
                ]
    for stage in _ok(report, "hostmask:"):
        r = stage["result"]
        lines += [
            "",
            f"## {stage['name']}: host-masked decoding (grammar mode) {_fmt(r['ms_per_step']['host_masked'])} ms/step "
            f"vs static {_fmt(r['ms_per_step']['static'])}: overhead {100 * r.get('overhead', math.nan):.0f}% "
            f"(target <= {100 * GRAMMAR_TARGET:.0f}%); same tokens: {r['same_tokens']}",
        ]
    lines += issue20_markdown(report)
    if captures:
        lines += ["", "## Static buckets (graph captured?, capture seconds, error)", ""]
        lines += [
            f"- {c['model']} batch {c['batch']}: rows {c['rows']}, cache {c['cache_len']}, graph {c['graph']}, "
            f"compiled {c.get('compiled')}, capture {_fmt(c['capture_s'])} s, calls {c['calls']} {c['error']}"
            for c in captures
        ]
    bad = [s for s in report["stages"] if s["status"] != "ok"]
    if bad:
        lines += ["", "## Stages not completed", ""]
        lines += [f"- {s['name']}: {s['status']} {s.get('error') or s.get('reason', '')}" for s in bad]
    return "\n".join(lines) + "\n"


def issue20_markdown(report: dict[str, Any]) -> list[str]:
    """The issue-20 stages as markdown: default path, warm-up, first call, logit shift, grammar, serving."""
    lines: list[str] = []
    defaults = _ok(report, "default:")
    if defaults:
        lines += [
            "",
            "## Default path (decoding='auto' after warm-up) vs static, ms/step (64 new tokens, prefill included)",
            "",
            "| model | batch | default (auto) | static | weights-only limit | target | buckets (compiled?) |",
            "|---|---|---|---|---|---|---|",
        ]
        for stage in defaults:
            shape = stage["name"].split(":")[1]
            for row in stage["result"]:
                auto, static = row.get("ours_auto", {}), row.get("ours_static", {})
                compiled = [b.get("compiled") for b in row.get("static_buckets", [])]
                lines.append(
                    f"| {shape} | {row['batch']} | {_fmt(auto.get('ms_per_step'))} | {_fmt(static.get('ms_per_step'))} "
                    f"| {_fmt(row.get('limit_ms_per_step'))} | {_fmt(TARGETS.get((shape, row['batch'])), 1)} "
                    f"| {compiled} |"
                )
    for stage in _ok(report, "warmup:"):
        lines += ["", f"## {stage['name']}: seconds per bucket (compile cache hit or miss)", ""]
        lines += [
            f"- rows {b['rows']}, cache {b['cache_len']}: {b['path']}, {_fmt(b['seconds'], 1)} s, "
            f"{b['compile_cache'] or '-'}"
            for b in stage["result"]
        ]
    for stage in _ok(report, "firstcall:"):
        r = stage["result"]
        lines += [
            "",
            f"## {stage['name']}: fresh process, warm compile cache: first call {_fmt(r['first_call_s'])} s, "
            f"steady {_fmt(min(r['steady_s']))}-{_fmt(max(r['steady_s']))} s; first - steady "
            f"{_fmt(r['first_minus_steady_s'])} s (target <= {FIRST_CALL_TARGET_S:.0f} s); "
            f"model build {_fmt(r['build_s'])} s",
        ]
    for stage in _ok(report, "logits:"):
        r = stage["result"]
        cells = [
            f"{p}: rel L2 {r[p]['rel_l2']:.2e} ({'ok' if r[p]['ok'] else 'FAIL'})"
            for p in ("static", "compiled")
            if p in r
        ]
        lines += [
            "",
            f"## {stage['name']}: logit shift vs fp32 reference: {'; '.join(cells)}; "
            f"z + v in {r['dtype']} would give rel L2 {r['naive']['rel_l2']:.2e} (tolerance {r['tolerance']:.0e})",
        ]
    for stage in _ok(report, "serve:"):
        lines += ["", f"## {stage['name']}: one Batched run vs the same requests one after another", ""]
        lines += [
            f"- {c['method']} {c['num_samples']}x{c['num_iterations']}, {c['clients']} clients: "
            f"{_fmt(c['batched_answers_per_s'])} vs {_fmt(c['sequential_answers_per_s'])} answers/s "
            f"({_fmt(c['batched_tokens_per_s'], 0)} vs {_fmt(c['sequential_tokens_per_s'], 0)} tokens/s), "
            f"ratio {_fmt(c['ratio'])}x (target >= {SERVE_TARGET_RATIO:.0f}x at 64 clients)"
            for c in stage["result"]
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="gpu-check-out")
    parser.add_argument("--smoke", "--dry-run", dest="smoke", action="store_true", help="tiny model, tiny budgets")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the embedded model's)")
    parser.add_argument("--budget-s", type=float, default=520.0, help="stop starting stages after this (s)")
    parser.add_argument("--bandwidth-gbps", type=float, default=None)
    parser.add_argument("--only", default=None, help="comma-separated stage-name prefixes to run")
    parser.add_argument("--stages", default=None, help="comma-separated exact stage names, run in this order")
    parser.add_argument("--issue11", action="store_true", help="the issue-11 plan (static vs eager vs generate)")
    parser.add_argument("--child-first-call", default=None, metavar="SHAPE", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.child_first_call:  # the fresh process of a firstcall stage: one JSON line on stdout
        print(json.dumps(first_call_child(args.child_first_call, args.batch, args.tokens, args.tokenizer, device)))
        return 0
    check = Check(Path(args.out), args.budget_s, args.only.split(",") if args.only else None)
    ctx = _Context(args, device, check)
    check.stage("env", 10, ctx.env)
    plan = ctx.issue11_plan() if args.issue11 else ctx.issue20_plan()
    if args.stages:
        by_name = {name: (name, est_s, fn) for name, est_s, fn in plan}
        wanted = [n.strip() for n in args.stages.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise SystemExit(f"unknown stages {unknown}; known: {sorted(by_name)}")
        plan = [by_name[n] for n in wanted]
    for name, est_s, fn in plan:
        shape = name.split(":")[-1] if name.startswith("logits:") else name.split(":")[1]
        if not name.startswith(("build:", "logits:")) and shape not in ctx.models:
            check.stage(name, 0, _missing(shape))
            continue
        check.stage(name, est_s, fn)
    ctx.models.clear()
    gc.collect()
    check.save()
    print("\n" + markdown(check.report), flush=True)
    failed = [s["name"] for s in check.report["stages"] if s["status"] == "error"]
    return 1 if failed else 0


class _Context:
    """The models built so far and the stage functions of both plans."""

    def __init__(self, args: argparse.Namespace, device: torch.device, check: Check) -> None:
        self.args, self.device, self.check = args, device, check
        self.smoke = args.smoke
        self.tokens = 4 if self.smoke else 64
        self.repeats = {"tiny": 1, "1.7B": 3, "8B": 2, "135M": 2}
        self.models: dict[str, CausalLM] = {}
        self.compile = not self.smoke  # a dry run never compiles (minutes on a CPU)

    def env(self) -> dict[str, Any]:
        device = self.device
        info: dict[str, Any] = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "smoke": self.smoke,
            "package": speed.__file__,
        }
        gbps, source = speed.device_bandwidth(device, self.args.bandwidth_gbps)
        info.update(bandwidth_gbps=gbps, bandwidth_source=source)
        if device.type == "cuda":
            info["copy_gbps"] = speed.measure_copy_bandwidth(device)
            info["memory_gib"] = torch.cuda.get_device_properties(device).total_memory / (1 << 30)
        from langchain_aisp.engine.decode import compile_cache

        info["compile_cache_dir"] = str(compile_cache.cache_dir())
        self.check.report["meta"].update(info)
        return info

    def build(self, shape: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        lm = speed.random_weights_lm(shape, self.args.tokenizer, device=self.device)
        self.models[shape] = lm
        return {"shape": shape, "build_s": time.perf_counter() - t0, "param_bytes": speed.param_bytes(lm)}

    def throughput(self, shape: str, batch: int, names: tuple[str, ...]) -> Any:
        lm, gbps = self.models[shape], self.args.bandwidth_gbps
        return speed.throughput(lm, (batch,), self.tokens, self.repeats[shape], variants=names, bandwidth_gbps=gbps)

    def warm(self, shape: str, rows: tuple[int, ...]) -> Any:
        from langchain_aisp.bench.prompts import render
        from langchain_aisp.engine.decode.warmup import warmup

        lm = self.models[shape]
        prompt = len(render(lm, speed.THROUGHPUT_PROMPT))
        decoding = "compiled" if self.compile else "static"
        return warmup(lm, rows=rows, max_tokens=(self.tokens,), prompt_tokens=(prompt,), decoding=decoding)

    def first_call(self, shape: str, batch: int) -> dict[str, Any]:
        return first_call_stage(shape, batch, self.tokens, self.args.tokenizer)

    def issue20_plan(self) -> list[tuple[str, float, Callable[[], Any]]]:
        smoke = self.smoke
        small, big, large = ("tiny", "tiny", "tiny") if smoke else ("135M", "1.7B", "8B")
        b1, b8, b32, b64 = (1, 2, 3, 4) if smoke else (1, 8, 32, 64)
        c16, c64 = (2, 3) if smoke else (16, 64)
        default = ("ours_auto", "ours_static")
        paths = ("static", "compiled") if self.compile else ("static",)
        n, k = (2, 2) if smoke else (4, 2)
        t = self.tokens
        return [
            (f"build:{big}", 15, lambda: self.build(big)),
            (f"warmup:{big}", 100, lambda: self.warm(big, (b1, b8, b64))),
            (f"default:{big}:{b8}", 20, lambda: self.throughput(big, b8, default)),
            (f"default:{big}:{b64}", 20, lambda: self.throughput(big, b64, default)),
            (f"default:{big}:{b1}", 20, lambda: self.throughput(big, b1, default)),
            (f"firstcall:{big}:{b8}", 40, lambda: self.first_call(big, b8)),
            (f"build:{large}", 30, lambda: self.build(large)),
            (f"warmup:{large}", 80, lambda: self.warm(large, (b1, b64))),
            (f"default:{large}:{b1}", 25, lambda: self.throughput(large, b1, default)),
            (f"default:{large}:{b64}", 25, lambda: self.throughput(large, b64, default)),
            (f"hostmask:{big}:{b8}", 10, lambda: host_masked(self.models[big], b8, t)),
            (f"hostmask:{big}:{b32}", 10, lambda: host_masked(self.models[big], b32, t)),
            (f"serve:{big}:{c16}", 25, lambda: speed.serving_throughput(self.models[big], c16, t, n, k)),
            (f"logits:bfloat16:{small}", 35, lambda: logit_shift(small, "bfloat16", paths, self)),
            (f"logits:float16:{small}", 35, lambda: logit_shift(small, "float16", paths, self)),
            (f"serve:{big}:{c64}", 70, lambda: speed.serving_throughput(self.models[big], c64, t, n, k)),
            (f"warmup:{large}:{b8}", 40, lambda: self.warm(large, (b8,))),
            (f"default:{large}:{b8}", 25, lambda: self.throughput(large, b8, default)),
        ]

    def issue11_plan(self) -> list[tuple[str, float, Callable[[], Any]]]:
        smoke, models, tokens, device = self.smoke, self.models, self.tokens, self.device
        variants = ("ours_static", "ours", "generate")
        build, throughput = self.build, self.throughput

        def aisp(shape: str, decoding: str, reps: int, methods: tuple[str, ...]) -> Any:
            n, k = (2, 2) if smoke else (8, 4)
            return speed.aisp_latency(models[shape], tokens, reps, n, k, decodings=(decoding,), methods=methods)

        def batched(shape: str, decoding: str) -> Any:
            n, k = (2, 2) if smoke else (8, 4)
            splits = (("aisp", n, k), ("bon", n, k), ("bon", n * k, 1))
            return speed.batched_wall_clock(models[shape], 2 if smoke else 16, tokens, 3, splits, decoding=decoding)

        def replay(shape: str, batch: int, compile_step: bool = False, profile: bool = True) -> dict[str, Any]:
            return replay_step(models[shape], batch, tokens, compile_step, profile and device.type == "cuda")

        small, big, large = ("tiny", "tiny", "tiny") if smoke else ("135M", "1.7B", "8B")
        b1, b8, b64 = (1, 2, 2) if smoke else (1, 8, 64)
        return [
            (f"build:{big}", 15, lambda: build(big)),
            (f"throughput:{big}:{b8}", 14, lambda: throughput(big, b8, variants)),
            (f"throughput:{big}:{b64}", 14, lambda: throughput(big, b64, variants)),
            (f"replay:{big}:{b8}", 8, lambda: replay(big, b8)),
            (f"replay:{big}:{b64}", 5, lambda: replay(big, b64)),
            (f"aisp:{big}:static", 12, lambda: aisp(big, "static", 3, ("aisp", "bon"))),
            (f"batched:{big}:static", 30, lambda: batched(big, "static")),
            (f"hostmask:{big}:{b8}", 10, lambda: host_masked(models[big], b8, tokens)),
            (f"throughput:{big}:{b8}:compiled", 40, lambda: throughput(big, b8, ("ours_static_compiled",))),
            (f"build:{large}", 30, lambda: build(large)),
            (f"throughput:{large}:{b64}", 16, lambda: throughput(large, b64, variants)),
            (f"throughput:{large}:{b8}", 16, lambda: throughput(large, b8, variants)),
            (f"replay:{large}:{b64}", 8, lambda: replay(large, b64)),
            (f"replay:{large}:{b8}", 5, lambda: replay(large, b8)),
            (f"replay:{big}:{b8}:compiled", 15, lambda: replay(big, b8, True, False)),
            (f"aisp:{big}:compiled", 15, lambda: aisp(big, "compiled", 3, ("aisp",))),
            (f"throughput:{big}:{b1}", 14, lambda: throughput(big, b1, variants)),
            (f"throughput:{large}:{b1}", 16, lambda: throughput(large, b1, variants)),
            (f"aisp:{big}:eager", 25, lambda: aisp(big, "eager", 1, ("aisp", "bon"))),
            (f"build:{small}", 10, lambda: build(small)),
            (f"throughput:{small}:{b8}", 10, lambda: throughput(small, b8, variants)),
            (f"throughput:{small}:{b64}", 10, lambda: throughput(small, b64, variants)),
            (f"throughput:{small}:{b1}", 10, lambda: throughput(small, b1, variants)),
            (f"throughput:{big}:{b8}:generate_static", 35, lambda: throughput(big, b8, ("generate_static",))),
            (f"throughput:{big}:{b64}:compiled", 35, lambda: throughput(big, b64, ("ours_static_compiled",))),
            (f"throughput:{big}:{b64}:generate_static", 35, lambda: throughput(big, b64, ("generate_static",))),
            (f"throughput:{large}:{b64}:compiled", 45, lambda: throughput(large, b64, ("ours_static_compiled",))),
            (f"replay:{large}:{b64}:compiled", 15, lambda: replay(large, b64, True, False)),
        ]


def replay_step(lm: CausalLM, batch: int, tokens: int, compile_step: bool, profile: bool) -> dict[str, Any]:
    """Time the captured step alone (CUDA events around tokens - 1 replays) and, optionally, list the
    kernels of one eager (uncaptured) step by device time: where a step's time goes."""
    import langchain_aisp.engine.decode.static as sd
    from langchain_aisp.bench.prompts import render
    from langchain_aisp.engine.config import SamplingParams
    from langchain_aisp.engine.decode.eager import Decoder, prefill

    lm = speed._no_eos(lm)
    device = lm.device
    decoder = Decoder.build(lm, SamplingParams(max_tokens=tokens))
    result: dict[str, Any] = {"batch": batch, "tokens": tokens, "compiled": compile_step}
    with torch.inference_mode():
        prefix = prefill(lm, render(lm, speed.THROUGHPUT_PROMPT))
        runner = sd._runner_for(decoder, [prefix], batch, compile_step)
        args = ([prefix], torch.zeros(batch, dtype=torch.long, device=device))
        V = torch.zeros(batch, 1, lm.hidden_size, device=device, dtype=lm.dtype)  # (B, 1, d)

        def start() -> None:
            runner.load(*args, V, torch.rand(batch, tokens, device=device))
            runner._head_sample()

        step = runner.graph.replay if runner.graph is not None else runner._step
        start()
        cuda = device.type == "cuda"
        if cuda:
            first, last = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            first.record()
        t0 = time.perf_counter()
        for _ in range(tokens - 1):
            step()
        if cuda:
            last.record()
            last.synchronize()
        elapsed_ms = first.elapsed_time(last) if cuda else 1000 * (time.perf_counter() - t0)
        result.update(
            rows=runner.rows,
            cache_len=runner.cache_len,
            graph=runner.graph is not None,
            capture_s=runner.stats.capture_s,
            error=runner.stats.error,
            replay_ms=elapsed_ms / (tokens - 1),
            weights_gb=speed.param_bytes(lm) / 1e9,
        )
        if profile:
            try:
                from torch.profiler import ProfilerActivity
                from torch.profiler import profile as torch_profile

                start()
                with sd._decode_attention(lm), torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(3):
                        runner._step()
                    torch.cuda.synchronize(device)
                kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
                result["kernels_per_step"] = len(kernels) / 3
                result["kernel_ms_per_step"] = sum(e.device_time_total for e in kernels) / 3 / 1000
                averages = prof.key_averages()
                rows = [
                    {"name": a.key[:90], "calls_per_step": a.count / 3, "ms_per_step": a.self_device_time_total / 3e3}
                    for a in averages
                    if a.self_device_time_total > 0
                ]
                result["top_kernels"] = sorted(rows, key=lambda a: -a["ms_per_step"])[:14]
            except Exception as exc:  # the timing above stands without the breakdown
                result["profile_error"] = f"{type(exc).__name__}: {exc}"
    sd.clear_static_cache(lm)
    return result


class _AllowAll:
    """A grammar matcher that allows every token (for timing the host-masked path and checking its tokens)."""

    def fill_bitmask(self, bitmask: torch.Tensor, row: int, remaining: int) -> None:
        bitmask[row] = -1

    def advance(self, token: int) -> None:
        pass

    def is_finished(self) -> bool:
        return False


def host_masked(lm: CausalLM, batch: int, tokens: int, repeats: int = 3) -> dict[str, Any]:
    """The grammar-constraint mode (graph = body + head; mask, sample, advance on the host each step):
    ms/step against the plain static path on the same inputs, and whether the tokens agree."""
    import statistics

    from langchain_aisp.bench.prompts import render
    from langchain_aisp.engine.config import SamplingParams
    from langchain_aisp.engine.decode.eager import Decoder, prefill
    from langchain_aisp.engine.decode.static import clear_static_cache, decode_static

    lm = speed._no_eos(lm)
    decoder = Decoder.build(lm, SamplingParams(max_tokens=tokens))
    prefix = prefill(lm, render(lm, speed.THROUGHPUT_PROMPT))
    rows = torch.zeros(batch, dtype=torch.long, device=lm.device)
    V = torch.zeros(batch, 1, lm.hidden_size, device=lm.device)
    uniforms = torch.rand(batch, tokens, generator=torch.Generator().manual_seed(0)).to(lm.device)
    matchers = [_AllowAll() for _ in range(batch)]
    times: dict[str, list[float]] = {"static": [], "host_masked": []}
    outputs: dict[str, Any] = {}
    for r in range(repeats + 1):
        for name in times:
            t0 = time.perf_counter()
            out = decode_static(decoder, [prefix], rows, V, uniforms, matchers if name == "host_masked" else None)
            if lm.device.type == "cuda":
                torch.cuda.synchronize(lm.device)
            if r:  # the first round captures
                times[name].append(time.perf_counter() - t0)
            outputs[name] = out.token_ids
    same = outputs["static"] == outputs["host_masked"]
    result = {name: 1000 * statistics.median(v) / tokens for name, v in times.items()}
    clear_static_cache(lm)
    overhead = result["host_masked"] / result["static"] - 1
    return {"batch": batch, "tokens": tokens, "ms_per_step": result, "same_tokens": same, "overhead": overhead}


def first_call_stage(shape: str, batch: int, tokens: int, tokenizer: str | None) -> dict[str, Any]:
    """Run :func:`first_call_child` in a fresh Python process with an empty inductor cache (only the
    persistent compile cache is warm, as on a new machine of a server image) and return its figures."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="inductor-") as inductor:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=inductor, PYTHONUNBUFFERED="1")
        command = [
            sys.executable,
            __file__,
            "--child-first-call",
            shape,
            "--batch",
            str(batch),
            "--tokens",
            str(tokens),
        ]
        if tokenizer:
            command += ["--tokenizer", tokenizer]
        t0 = time.monotonic()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        wall = time.monotonic() - t0
    if done.returncode != 0:
        raise RuntimeError(f"the fresh process failed ({done.returncode}): {done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def first_call_child(
    shape: str, batch: int, tokens: int, tokenizer: str | None, device: torch.device
) -> dict[str, Any]:
    """In a fresh process: build the model, time its first ``decoding="auto"`` decode and three steady ones."""
    import statistics

    from langchain_aisp.bench.prompts import render
    from langchain_aisp.engine.decode.select import select_decode
    from langchain_aisp.engine.decode.static import static_graph_stats

    t0 = time.perf_counter()
    lm = speed.random_weights_lm(shape, tokenizer, device=device)
    built = time.perf_counter() - t0
    forced = speed._no_eos(lm)
    fn, path = select_decode(forced, "auto")
    ids = render(lm, speed.THROUGHPUT_PROMPT)
    first, _ = speed._ours(forced, ids, batch, tokens, 0, decode_fn=fn)
    steady = [speed._ours(forced, ids, batch, tokens, r, decode_fn=fn)[0] for r in range(1, 4)]
    median = statistics.median(steady)
    return {
        "shape": shape,
        "batch": batch,
        "tokens": tokens,
        "resolved": path,
        "build_s": built,
        "first_call_s": first,
        "steady_s": steady,
        "first_minus_steady_s": first - median,
        "buckets": static_graph_stats(forced),
    }


def logit_shift(shape: str, dtype: str, paths: tuple[str, ...], ctx: Any) -> dict[str, Any]:
    """The control's logit shift ``W v`` through each path's captured step, against an fp32 reference.

    A model of ``shape`` in ``dtype``; per path a host-sampling runner (its graph stops at the raw
    logits) is loaded twice with the same prompt, once with a control ``v`` (sigma 0.05 of the pre-logit
    RMS, the AISP default scale) and once with zero; one replayed step each gives ``logits_v`` and
    ``logits_0``. Their difference against ``W.float() @ v.float()`` is the error (relative L2 and max
    abs); ``naive`` is the same shift when ``z + v`` is formed in ``dtype`` before the head.
    """
    import langchain_aisp.engine.decode.static as sd
    from langchain_aisp.bench.prompts import render
    from langchain_aisp.engine.config import SamplingParams
    from langchain_aisp.engine.decode.eager import Decoder, prefill

    lm = speed.random_weights_lm(shape, ctx.args.tokenizer, device=ctx.device, dtype=dtype)
    rows, tokens = 4, 4
    decoder = Decoder.build(lm, SamplingParams(max_tokens=tokens))
    results: dict[str, Any] = {"shape": shape, "dtype": dtype, "tolerance": LOGIT_TOLERANCE}
    with torch.inference_mode():
        prefix = prefill(lm, render(lm, speed.THROUGHPUT_PROMPT))
        g = torch.Generator().manual_seed(0)
        v = (0.05 * lm.prelogit_rms * torch.randn(rows, lm.hidden_size, generator=g)).to(lm.device, lm.dtype)  # (R, d)
        W = lm.head_weight
        reference = torch.nn.functional.linear(v.float(), W.float())  # (R, vocab) fp32
        z = prefix.last_prelogit.expand(rows, -1)  # (R, d)
        naive = torch.nn.functional.linear(z + v, W).float() - torch.nn.functional.linear(z, W).float()  # (R, vocab)
        results["naive"] = _shift_error(naive, reference)
        for path in paths:
            runner = sd._runner_for(decoder, [prefix], rows, path == "compiled", True)
            logits = []
            for control in (v, torch.zeros_like(v)):
                V = torch.stack([control, torch.zeros_like(control)], dim=1)  # (R, 2, d): v at position 0
                uniforms = torch.rand(rows, tokens, generator=g).to(lm.device)  # (R, T)
                runner.load([prefix], torch.zeros(rows, dtype=torch.long, device=lm.device), V, uniforms)
                runner.step.fill_(0)
                (runner.graph.replay if runner.graph is not None else runner._step)()
                logits.append(runner.logits[:rows].float().clone())  # (R, vocab)
            results[path] = {**_shift_error(logits[0] - logits[1], reference), "graph": runner.graph is not None}
            results[path]["compiled"] = runner.stats.compiled
            results[path]["ok"] = results[path]["rel_l2"] <= LOGIT_TOLERANCE
        sd.clear_static_cache(lm)
    return results


def _shift_error(shift: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    diff = shift - reference
    return {
        "rel_l2": float(diff.norm() / reference.norm()),
        "max_abs": float(diff.abs().max()),
        "reference_rms": float(reference.pow(2).mean().sqrt()),
    }


def _missing(shape: str) -> Callable[[], Any]:
    def fail() -> Any:
        raise RuntimeError(f"model {shape} was not built (see its build stage)")

    return fail


if __name__ == "__main__":
    sys.exit(main())
