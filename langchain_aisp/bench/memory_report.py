"""Tables and the learning-curve plot of a memory benchmark (``langchain-aisp-bench memory``).

Reads ``results.json`` only: ``langchain-aisp-bench memory-report --out DIR`` rebuilds them. Every figure is a
mean over (test prompt, seed) pairs with its standard error clustered by prompt; every difference is paired
(the same prompt and seed, the same token-sampling uniforms on the shared rows).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langchain_aisp.bench import text_stats

SUMMARY_MD = "summary.md"
PLOT_CURVE = "learning_curve.png"
QUALITY = ("loglik", "diversity", "coherence")


def _cells(results: dict[str, Any], reward: str) -> list[dict[str, Any]]:
    cells = [c for c in results.get("cells", {}).values() if c.get("reward") == reward and "baseline" in c]
    return sorted(cells, key=lambda c: c["seed"])


Pick = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def _flat(cells: Sequence[dict[str, Any]], pick: Pick, key: str) -> list[float] | None:
    records = [pick(c) for c in cells]
    if any(r is None for r in records):
        return None
    return [math.nan if v is None else float(v) for r in records if r is not None for v in r[key]]


def _clusters(results: dict[str, Any], cells: Sequence[dict[str, Any]]) -> list[str]:
    return [pid for _ in cells for pid in results["test_ids"]]


def _ms(values: Sequence[float], clusters: Sequence[str]) -> tuple[float, float]:
    return text_stats.clustered_mean_se(values, clusters)


def _fmt(pair: tuple[float, float], sign: bool = False) -> str:
    mean, se = pair
    if math.isnan(mean):
        return "-"
    body = f"{mean:+.3f}" if sign else f"{mean:.3f}"
    return body if math.isnan(se) else f"{body} ± {se:.3f}"


def _t(pair: tuple[float, float]) -> float:
    mean, se = pair
    return mean / se if se and se > 0 else math.nan


def _cross_diversity(cells: Sequence[dict[str, Any]], pick: Pick) -> float:
    """Distinct n-grams across the chosen answers of one seed's test prompts, averaged over seeds."""
    values = [text_stats.diversity(r["texts"]) for c in cells if (r := pick(c)) is not None]
    return text_stats.mean(values)


def _baseline(name: str) -> Pick:
    return lambda cell: cell["baseline"][name]


def _point(key: str) -> Pick:
    return lambda cell: cell["curve"].get(key)


def family_summary(results: dict[str, Any], reward: str) -> dict[str, Any]:
    """The figures of one reward: baselines, the curve, the targets' inputs."""
    cells = _cells(results, reward)
    if not cells:
        return {}
    n = int(results["config"]["num_samples"])
    clusters = _clusters(results, cells)
    cold, ref = f"cold-{n}", f"cold-{4 * n}"
    summary: dict[str, Any] = {"seeds": len(cells), "prompts": len(results["test_ids"]), "rows": {}}

    def row(pick: Pick) -> dict[str, Any] | None:
        best = _flat(cells, pick, "best")
        if best is None:
            return None
        out: dict[str, Any] = {"best": _ms(best, clusters)}
        for base in (cold, ref):
            base_best = _flat(cells, _baseline(base), "best")
            assert base_best is not None
            out[f"vs {base}"] = _ms([a - b for a, b in zip(best, base_best, strict=True)], clusters)
        for key in QUALITY:
            values = _flat(cells, pick, key)
            out[key] = text_stats.mean([v for v in values or [] if not math.isnan(v)])
        out["cross_diversity"] = _cross_diversity(cells, pick)
        return out

    for name in (cold, ref):
        summary["rows"][name] = row(_baseline(name))
    points = sorted({int(k) for c in cells for k in c["curve"]})
    for point in points:
        key = str(point)
        entry = row(_point(key))
        if entry is None:
            continue
        records = [c["curve"][key] for c in cells]
        memory = [r.get("memory", {}) for r in records]
        entry["level"] = text_stats.mean([float(m.get("level", 0.0)) for m in memory])
        calls = [r.get("call") for r in records]  # the call's own strength (nats); absent in the first runs' records
        entry["strength"] = text_stats.mean([float(c["strength"]) for c in calls if c]) if all(calls) else math.nan
        entry["kl_estimate"] = text_stats.mean([float(m.get("kl", 0.0)) for m in memory])
        measured = [float(r["kl_measured"]) for r in records if "kl_measured" in r]
        entry["kl_measured"] = text_stats.mean(measured) if measured else math.nan
        gaps = [a - b for r in records for a, b in zip(r["learned_mean"], r["own_mean"], strict=True)]
        entry["learned_minus_own_mean"] = _ms(gaps, clusters) if gaps else (math.nan, math.nan)
        entry["wall_s"] = text_stats.mean([float(r["wall_s"]) for r in records])
        summary["rows"][f"warm after {point}"] = entry
    return summary


def _quality_change(row: dict[str, Any], base: dict[str, Any]) -> list[str]:
    out = []
    for key in QUALITY:
        if math.isnan(row[key]) or math.isnan(base[key]) or base[key] == 0:
            continue
        out.append(f"{key} {100 * (row[key] - base[key]) / abs(base[key]):+.1f}%")
    return out


def _verdict(diff: tuple[float, float]) -> str:
    t = _t(diff)
    if t > 2:
        return "learning is real (> 2 SE)"
    return "does not hurt (> -1 SE)" if t > -1 else "HURTS (< -1 SE)"


def targets(summary: dict[str, Any], n: int) -> list[str]:
    """The issue's targets for one reward, at the last curve point (fixed in advance: no picking the best one)."""
    warm = [k for k in summary["rows"] if k.startswith("warm after ")]
    if not warm:
        return []
    last = summary["rows"][warm[-1]]
    cold, ref = summary["rows"][f"cold-{n}"], summary["rows"][f"cold-{4 * n}"]
    vs_ref, vs_cold = last[f"vs cold-{4 * n}"], last[f"vs cold-{n}"]
    lines = [
        f"- {warm[-1]} calls, warm-{n} - cold-{4 * n}: {_fmt(vs_ref, True)} (t {_t(vs_ref):+.1f}): "
        f"{'at least as good' if vs_ref[0] >= 0 else 'below'}",
        f"- warm-{n} - cold-{n} (equal samples): {_fmt(vs_cold, True)} (t {_t(vs_cold):+.1f}): {_verdict(vs_cold)}",
        f"- text quality of the chosen answers vs cold-{4 * n}: "
        + ", ".join(_quality_change(last, ref))
        + f"; vs cold-{n}: "
        + ", ".join(_quality_change(last, cold)),
    ]
    return lines


def summary_markdown(results: dict[str, Any]) -> str:
    config = results["config"]
    n = int(config["num_samples"])
    lines = [
        f"# Learning across calls: {results['meta'].get('model', '')}",
        "",
        f"{len(results['learn_ids'])} learning prompts, {len(results['test_ids'])} disjoint test prompts; "
        f"{config['max_tokens']} tokens, temperature {config['temperature']}; memory settings "
        f"{config['memory'] or 'default'}. Mean ± SE clustered by test prompt over the seeds; differences paired per "
        f"prompt and seed. cold-{n}: the default method with {n} samples and no memory (the first {n} rows of "
        f"cold-{4 * n}, the same uniforms as the warm calls' rows); warm after c: the same call with the memory "
        "frozen after c learning calls. loglik: base model's log-likelihood per token of the chosen answer (T = 1); "
        "diversity: distinct n-grams within it; cross-div.: distinct n-grams across a seed's chosen answers; "
        "KL: per-token KL of the learned rows' proposal from the model's (estimate the memory steers by / measured "
        "along the learned rows' answers).",
    ]
    for reward in dict.fromkeys(c["reward"] for c in results.get("cells", {}).values()):
        summary = family_summary(results, reward)
        if not summary:
            continue
        lines += [
            "",
            f"## {reward} ({summary['seeds']} seeds x {summary['prompts']} prompts)",
            "",
            f"| method | best | vs cold-{n} | vs cold-{4 * n} | loglik | diversity | coherence | cross-div. | level "
            "| strength (nats) | KL est. / measured | learned - own mean |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, row in summary["rows"].items():
            if row is None:
                continue
            extra = (
                f"| {row['level']:.3f} | {row['strength']:.2f} | {row['kl_estimate']:.3f} / {row['kl_measured']:.3f} "
                f"| {_fmt(row['learned_minus_own_mean'], True)} |"
                if "level" in row
                else "| | | | |"
            )
            lines.append(
                f"| {name} | {_fmt(row['best'])} | {_fmt(row[f'vs cold-{n}'], True)} | "
                f"{_fmt(row[f'vs cold-{4 * n}'], True)} | {row['loglik']:.3f} | {row['diversity']:.3f} "
                f"| {row['coherence']:.3f} | {row['cross_diversity']:.3f} " + extra
            )
        lines += ["", *targets(summary, n)]
    return "\n".join(lines) + "\n"


def plot_curve(results: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    n = int(results["config"]["num_samples"])
    rewards = [r for r in dict.fromkeys(c["reward"] for c in results.get("cells", {}).values())]
    summaries = {r: family_summary(results, r) for r in rewards}
    rewards = [r for r in rewards if summaries[r]]
    if not rewards:
        return None
    fig, axes = plt.subplots(1, len(rewards), figsize=(5.2 * len(rewards), 4.2), squeeze=False)
    for ax, reward in zip(axes[0], rewards, strict=True):
        rows = summaries[reward]["rows"]
        warm = [(int(k.rsplit(" ", 1)[1]), v) for k, v in rows.items() if k.startswith("warm after ") and v]
        xs = [x for x, _ in warm]
        means = [v["best"][0] for _, v in warm]
        errors = [v["best"][1] for _, v in warm]
        ax.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=f"warm, {n} samples")
        for name, style in ((f"cold-{n}", ":"), (f"cold-{4 * n}", "--")):
            ax.axhline(rows[name]["best"][0], linestyle=style, color="grey", label=f"{name} (no memory)")
        ax.set_title(reward)
        ax.set_xlabel("learning calls")
        ax.set_ylabel("test reward (mean best)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_memory_report(
    results: dict[str, Any], out_dir: str | Path, log: Callable[[str], None] | None = None
) -> list[Path]:
    """Write ``summary.md`` and ``learning_curve.png`` next to ``results.json``."""
    say = log or (lambda message: print(message, file=sys.stderr))
    out = Path(out_dir)
    md = out / SUMMARY_MD
    md.write_text(summary_markdown(results), encoding="utf-8")
    written = [md]
    plot = plot_curve(results, out / PLOT_CURVE)
    if plot is not None:
        written.append(plot)
    say("wrote " + ", ".join(str(p) for p in written))
    return written
