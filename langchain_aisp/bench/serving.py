"""Serving benchmark (issue 10): cross-request batching throughput, the batching window's cost, a load test.

    python -m langchain_aisp.bench.serving --out docs/serving_results.json

Starts ``langchain-aisp serve`` twice as subprocesses on 127.0.0.1 (batching window 5 ms and 0 ms,
same model, same rewards) and measures, interleaving variants and repeating:

1. throughput: ``--clients`` requests sent at once vs the same requests one after another (same
   per-request budget), answers/s and their ratio; every answer must come back (HTTP 200) and its
   reward must equal the reward recomputed here under its own prompt;
2. the batching window's added latency for a lone request: its queue wait (``aisp.queue_ms``) and
   end-to-end latency on the 5 ms server vs the 0 ms one, against its service time (``aisp.run_ms``);
3. a load test: ``--load-requests`` requests from ``--load-clients`` concurrent clients mixing good,
   malformed and failing-reward requests; tally per kind and status, ``/health`` afterwards, and the
   server's RSS before, between and after two passes;
4. continuous batching (issue 19): ``--clients`` requests arriving one every ``--stagger-ms`` (a burst
   spread over more than the window, so requests arrive while others run): p95 of their queue wait
   (``aisp.queue_ms``: arrival to joining a decode batch) against one iteration of the running group
   (median ``run_ms / iterations``), repeated ``--repeats`` times;
5. with ``--baseline-dir DIR`` (a checkout of the code before, e.g. ``main``): a lone request's end-to-end
   latency on this server vs a server started from DIR (same settings), alternating, and their ratio.

The machine's load average is recorded with every phase (the figures are only comparable within a run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

FAIL_MARKER = "[FAIL]"
RELEVANCE = "relevance=langchain_aisp.rewards:EmbeddingSimilarityReward"
FAILING = "failing=langchain_aisp.bench.serving:fails_on_marker"


def fails_on_marker(prompt: str, response: str) -> float:
    """A reward for the load test: raises on prompts that carry ``FAIL_MARKER``, else the share of the
    prompt's words found in the response."""
    if FAIL_MARKER in prompt:
        raise RuntimeError("the scoring service rejected this prompt")
    asked = set(re.findall(r"[a-z]+", prompt.lower()))
    return len(asked & set(re.findall(r"[a-z]+", response.lower()))) / max(1, len(asked))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``python -m langchain_aisp.serve serve`` in a subprocess."""

    def __init__(self, window_ms: float, threads: int, extra: list[str], cwd: Path | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "langchain_aisp.serve",
                "serve",
                "--port",
                str(self.port),
                "--reward",
                RELEVANCE,
                "--reward",
                FAILING,
                "--num-threads",
                str(threads),
                "--batch-window-ms",
                str(window_ms),
                "--log-level",
                "warning",
                *extra,
            ],
            env=env,
            cwd=cwd,  # `python -m` imports langchain_aisp from here first (a baseline checkout)
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, client: Any, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stderr.read() if self.process.stderr else ''}")
            try:
                if client.get(f"{self.url}/health").status_code == 200:
                    return
            except Exception:
                pass
            time.sleep(0.5)
        raise RuntimeError("the server did not become ready")

    def rss_mb(self) -> float:
        import psutil

        return float(psutil.Process(self.process.pid).memory_info().rss) / 2**20

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _body(question: str, args: argparse.Namespace, seed: int, **aisp: Any) -> dict[str, Any]:
    return {
        "model": "default",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": args.max_tokens,
        "seed": seed,
        "aisp": {"num_samples": args.num_samples, "num_iterations": args.num_iterations, **aisp},
    }


def _post(client: Any, server: Server, body: Any) -> tuple[int, dict[str, Any], float]:
    start = time.perf_counter()
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(
        f"{server.url}/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    elapsed = time.perf_counter() - start
    try:
        data = response.json()
    except ValueError:
        data = {"raw": response.text[:200]}
    return response.status_code, data, elapsed


def throughput(client: Any, server: Server, questions: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Concurrent vs sequential, interleaved, ``args.repeats`` times; answers checked against a local reward."""
    from langchain_core.messages import HumanMessage

    from langchain_aisp.rewards import EmbeddingSimilarityReward

    local = EmbeddingSimilarityReward()
    bodies = [_body(q, args, seed=i) for i, q in enumerate(questions)]

    def sequential() -> list[tuple[int, dict[str, Any], float]]:
        return [_post(client, server, b) for b in bodies]

    def concurrent() -> list[tuple[int, dict[str, Any], float]]:
        barrier = threading.Barrier(len(bodies))

        def one(body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
            barrier.wait()
            return _post(client, server, body)

        with ThreadPoolExecutor(len(bodies)) as pool:
            return list(pool.map(one, bodies))

    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        order: list[tuple[str, Callable[[], list[tuple[int, dict[str, Any], float]]]]] = [
            ("sequential", sequential),
            ("concurrent", concurrent),
        ]
        if repeat % 2:
            order.reverse()
        for name, fn in order:
            load = _load()
            start = time.perf_counter()
            out = fn()
            wall = time.perf_counter() - start
            answered = [data for status, data, _ in out if status == 200]
            texts = [d["choices"][0]["message"]["content"] for d in answered]
            expected = local.score([[HumanMessage(q)] for q in questions[: len(texts)]], texts) if texts else []
            mismatches = sum(abs(d["aisp"]["reward"] - e) > 1e-3 for d, e in zip(answered, expected, strict=True))
            runs.append(
                {
                    "variant": name,
                    "repeat": repeat,
                    "wall_s": round(wall, 2),
                    "answers_per_s": round(len(answered) / wall, 3),
                    "answered": len(answered),
                    "sent": len(bodies),
                    "reward_mismatches": mismatches,
                    "batch_prompts": sorted(Counter(d["aisp"]["batch_prompts"] for d in answered).items()),
                    "mean_latency_s": round(statistics.mean(t for _, _, t in out), 2),
                    "loadavg_before": load,
                    "loadavg_after": _load(),
                }
            )
            print(f"  {name:10s} repeat {repeat}: {runs[-1]['answers_per_s']:.3f} answers/s, {wall:.1f} s", flush=True)
    ratios = []
    for repeat in range(args.repeats):
        seq = next(r for r in runs if r["variant"] == "sequential" and r["repeat"] == repeat)
        con = next(r for r in runs if r["variant"] == "concurrent" and r["repeat"] == repeat)
        ratios.append(round(con["answers_per_s"] / seq["answers_per_s"], 2))
    return {"runs": runs, "ratios": ratios, "median_ratio": statistics.median(ratios)}


def _alternate(client: Any, servers: dict[str, Server], args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """The same lone request on each server in turn (order alternating), ``--window-repeats`` times: the answered
    ones per server, each with its ``aisp`` object and its end-to-end time (``e2e_ms``)."""
    body = _body("How long should I boil an egg for a soft yolk?", args, seed=0)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for i in range(args.window_repeats):
        pair = list(servers.items())
        if i % 2:
            pair.reverse()
        for name, server in pair:
            status, data, elapsed = _post(client, server, body)
            if status == 200:
                rows[name].append({**data["aisp"], "e2e_ms": elapsed * 1000})
    return rows


def window_latency(client: Any, batched: Server, unbatched: Server, args: argparse.Namespace) -> dict[str, Any]:
    """A lone request on the 5 ms-window server vs the 0 ms one, alternating."""
    load = _load()
    answers = _alternate(client, {"window": batched, "no_window": unbatched}, args)
    rows = {name: [(a["queue_ms"], a["run_ms"], a["e2e_ms"]) for a in values] for name, values in answers.items()}
    summary: dict[str, Any] = {"loadavg_before": load, "loadavg_after": _load(), "repeats": args.window_repeats}
    for name, values in rows.items():
        summary[name] = {
            "queue_ms_median": round(statistics.median(v[0] for v in values), 2),
            "run_ms_median": round(statistics.median(v[1] for v in values), 1),
            "end_to_end_ms_median": round(statistics.median(v[2] for v in values), 1),
        }
    added = summary["window"]["queue_ms_median"] - summary["no_window"]["queue_ms_median"]
    service = summary["no_window"]["run_ms_median"]
    summary["added_queue_ms"] = round(added, 2)
    summary["added_share_of_service_time"] = round(added / service, 4)
    e2e = summary["window"]["end_to_end_ms_median"] - summary["no_window"]["end_to_end_ms_median"]
    summary["end_to_end_difference_ms"] = round(e2e, 1)
    return summary


def staggered(client: Any, server: Server, questions: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Requests arriving one every ``--stagger-ms`` while others run: their queue wait vs one iteration."""
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        bodies = [_body(q, args, seed=100 * repeat + i) for i, q in enumerate(questions)]
        start = time.perf_counter()

        def one(item: tuple[int, dict[str, Any]], start: float = start) -> tuple[int, dict[str, Any], float]:
            time.sleep(max(0.0, start + item[0] * args.stagger_ms / 1000 - time.perf_counter()))
            return _post(client, server, item[1])

        load = _load()
        with ThreadPoolExecutor(len(bodies)) as pool:
            out = list(pool.map(one, enumerate(bodies)))
        answered = [data["aisp"] for status, data, _ in out if status == 200]
        queue = sorted(a["queue_ms"] for a in answered)
        iteration = statistics.median(a["run_ms"] / max(1, a["iterations"]) for a in answered)
        p95 = queue[min(len(queue) - 1, math.ceil(0.95 * len(queue)) - 1)]
        runs.append(
            {
                "repeat": repeat,
                "answered": len(answered),
                "sent": len(bodies),
                "queue_ms_p50": round(statistics.median(queue), 1),
                "queue_ms_p95": round(p95, 1),
                "queue_ms_max": round(queue[-1], 1),
                "iteration_ms_median": round(iteration, 1),
                "p95_over_iteration": round(p95 / iteration, 3),
                "batch_prompts": sorted(Counter(a["batch_prompts"] for a in answered).items()),
                "loadavg_before": load,
                "loadavg_after": _load(),
            }
        )
        print(f"  staggered repeat {repeat}: p95 queue {p95:.0f} ms, one iteration {iteration:.0f} ms", flush=True)
    return {"stagger_ms": args.stagger_ms, "runs": runs}


def lone_latency(client: Any, current: Server, baseline: Server, args: argparse.Namespace) -> dict[str, Any]:
    """A lone request on this code's server vs the baseline's, alternating: end-to-end medians and their ratio."""
    load = _load()
    answers = _alternate(client, {"current": current, "baseline": baseline}, args)
    times = {name: [a["e2e_ms"] for a in values] for name, values in answers.items()}
    medians = {name: round(statistics.median(values), 1) for name, values in times.items()}
    pairs = [c / b for c, b in zip(times["current"], times["baseline"], strict=False)]
    mean = statistics.mean(pairs)
    sem = statistics.stdev(pairs) / math.sqrt(len(pairs)) if len(pairs) > 1 else 0.0
    return {
        "repeats": args.window_repeats,
        "end_to_end_ms_median": medians,
        "ratio_of_medians": round(medians["current"] / medians["baseline"], 3),
        "paired_ratio_mean": round(mean, 3),
        "paired_ratio_sem": round(sem, 3),
        "loadavg_before": load,
        "loadavg_after": _load(),
    }


_MALFORMED: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("invalid_json", lambda b: b"{not json"),
    ("unknown_field", lambda b: {**b, "frobnicate": True}),
    ("n_2", lambda b: {**b, "n": 2}),
    ("unknown_reward", lambda b: {**b, "aisp": {**b["aisp"], "reward": "os.system"}}),
    ("empty_messages", lambda b: {**b, "messages": []}),
    ("negative_temperature", lambda b: {**b, "temperature": -1}),
    ("bad_role", lambda b: {**b, "messages": [{"role": "wizard", "content": "x"}]}),
    ("max_tokens_over_cap", lambda b: {**b, "max_tokens": 10**6}),
    ("unknown_model", lambda b: {**b, "model": "gpt-4o"}),
    ("body_too_large", lambda b: {**b, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}),
]


def load_test(client: Any, server: Server, questions: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """``args.load_requests`` requests, ``args.load_clients`` at a time: 60% good, 20% malformed, 20% failing."""
    plan: list[tuple[str, Any]] = []
    for i in range(args.load_requests):
        base = _body(questions[i % len(questions)], args, seed=i)
        slot = i % 10
        if slot < 6:
            plan.append(("good", base))
        elif slot < 8:
            name, make = _MALFORMED[(i // 10 * 2 + slot - 6) % len(_MALFORMED)]
            plan.append((f"malformed:{name}", make(base)))
        else:
            failing = _body(f"{FAIL_MARKER} {questions[i % len(questions)]}", args, seed=i, reward="failing")
            plan.append(("failing_reward", failing))
    load = _load()
    start = time.perf_counter()
    with ThreadPoolExecutor(args.load_clients) as pool:
        results = list(pool.map(lambda item: (item[0], *_post(client, server, item[1])), plan))
    wall = time.perf_counter() - start
    tally: Counter[tuple[str, int, str]] = Counter()
    unnamed = 0
    for kind, status, data, _ in results:
        code = (
            "" if status == 200 else str((data.get("error") or {}).get("code") or (data.get("error") or {}).get("type"))
        )
        if status != 200 and not (data.get("error") or {}).get("message"):
            unnamed += 1
        group = kind.split(":")[0]
        tally[(group if group != "malformed" else kind, status, code)] += 1
    good_ok = sum(1 for kind, status, _, _ in results if kind == "good" and status == 200)
    return {
        "sent": len(plan),
        "wall_s": round(wall, 1),
        "good_answered": good_ok,
        "good_sent": sum(1 for kind, _ in plan if kind == "good"),
        "errors_without_message": unnamed,
        "tally": [{"kind": k, "status": s, "code": c, "count": n} for (k, s, c), n in sorted(tally.items())],
        "loadavg_before": load,
        "loadavg_after": _load(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("serving_results.json"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--num-iterations", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--num-threads", type=int, default=1, help="torch CPU threads of each server")
    parser.add_argument("--window-repeats", type=int, default=8)
    parser.add_argument("--load-requests", type=int, default=200)
    parser.add_argument("--load-clients", type=int, default=32)
    parser.add_argument("--load-passes", type=int, default=2)
    parser.add_argument("--stagger-ms", type=float, default=250.0, help="gap between arrivals (continuous phase)")
    parser.add_argument("--baseline-dir", type=Path, default=None, help="checkout to compare a lone request with")
    parser.add_argument("--skip", action="append", default=[], choices=["throughput", "window", "load", "continuous"])
    args = parser.parse_args(argv)

    import httpx

    from langchain_aisp.bench.prompts import load_prompts

    questions = [p.prompt for p in load_prompts()][: args.clients]
    limits = httpx.Limits(max_connections=args.load_clients + args.clients + 8)
    client = httpx.Client(timeout=1800, limits=limits)
    extra = ["--max-queue", "512", "--max-batch-prompts", str(max(32, args.clients))]
    batched = Server(5.0, args.num_threads, extra)
    unbatched = Server(0.0, args.num_threads, extra) if "window" not in args.skip else None
    baseline = Server(5.0, args.num_threads, extra, cwd=args.baseline_dir) if args.baseline_dir else None
    results: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    if args.baseline_dir:
        head = subprocess.run(
            ["git", "-C", str(args.baseline_dir), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        results["baseline"] = {"dir": str(args.baseline_dir), "commit": head.stdout.strip()}
    try:
        for server in (batched, unbatched, baseline):
            if server is not None:
                server.wait_ready(client)
        for server in (batched, unbatched, baseline):  # one warm-up answer each (first decoding steps are slow)
            if server is not None:
                _post(client, server, _body("Hello!", args, seed=0))
        if "throughput" not in args.skip:
            print("throughput (answers/s)", flush=True)
            results["throughput"] = throughput(client, batched, questions, args)
        if "continuous" not in args.skip:
            print("continuous batching: staggered arrivals", flush=True)
            results["continuous"] = staggered(client, batched, questions, args)
        if baseline is not None:
            print("a lone request: this code vs the baseline", flush=True)
            results["lone"] = lone_latency(client, batched, baseline, args)
            baseline.stop()
            baseline = None
        if unbatched is not None:
            print("batching window on a lone request", flush=True)
            results["window"] = window_latency(client, batched, unbatched, args)
            unbatched.stop()
            unbatched = None
        if "load" not in args.skip:
            rss = [round(batched.rss_mb(), 1)]
            passes = []
            for i in range(args.load_passes):
                print(f"load test pass {i + 1}", flush=True)
                passes.append(load_test(client, batched, questions, args))
                rss.append(round(batched.rss_mb(), 1))
            health = client.get(f"{batched.url}/health")
            after = _post(client, batched, _body("Is the server still fine?", args, seed=1))
            results["load"] = {
                "passes": passes,
                "rss_mb": rss,
                "health_after": {"status": health.status_code, "body": health.json()},
                "good_request_after": after[0],
            }
        metrics = client.get(f"{batched.url}/metrics").text
        results["metrics_excerpt"] = [
            line
            for line in metrics.splitlines()
            if line.startswith(("aisp_requests_total", "aisp_batch_prompts_sum", "aisp_batch_prompts_count"))
            or line.startswith(("aisp_reward_failures_total", "aisp_samples_generated_total"))
        ]
    finally:
        for server in (batched, unbatched, baseline):
            if server is not None:
                server.stop()
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps({k: results[k] for k in results if k not in ("settings",)}, indent=1, default=str)[:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
