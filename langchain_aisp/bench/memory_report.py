"""Tables and the learning-curve plot of a memory benchmark (``langchain-aisp-bench memory``).

Reads ``results.json`` only: ``langchain-aisp-bench memory-report --out DIR`` rebuilds them.
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


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _cells(results: dict[str, Any], reward: str) -> list[dict[str, Any]]:
    cells = [c for c in results.get("cells", {}).values() if c.get("reward") == reward]
    return sorted(cells, key=lambda c: c["seed"])


def _per_seed(cells: Sequence[dict[str, Any]], method: str, key: str) -> list[list[float]]:
    return [[_num(p[key]) for p in c["eval"][method]["prompts"]] for c in cells if method in c.get("eval", {})]


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _paired(cells: Sequence[dict[str, Any]], a: str, b: str) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for cell in cells:
        ev = cell.get("eval", {})
        if a in ev and b in ev:
            xs += [_num(p["best_reward"]) for p in ev[a]["prompts"]]
            ys += [_num(p["best_reward"]) for p in ev[b]["prompts"]]
    return xs, ys


def method_table(results: dict[str, Any], reward: str) -> list[str]:
    cells = _cells(results, reward)
    methods = list(dict.fromkeys(m for c in cells for m in c.get("eval", {})))
    lines = [
        "| method | seeds | best reward | first-round mean | diversity | coherence | warm start norm | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        best = text_stats.seed_mean_std(_per_seed(cells, m, "best_reward"))
        first = text_stats.seed_mean_std(_per_seed(cells, m, "first_mean"))
        div = text_stats.mean([v for s in _per_seed(cells, m, "diversity") for v in s])
        coh = text_stats.mean([v for s in _per_seed(cells, m, "coherence") for v in s])
        norm = text_stats.mean([v for s in _per_seed(cells, m, "initial_U_norm") for v in s])
        wall = text_stats.mean([c["eval"][m]["wall_s"] for c in cells if m in c["eval"]])
        seeds = sum(1 for c in cells if m in c["eval"])
        lines.append(
            f"| {m} | {seeds} | {_fmt(*best)} | {_fmt(*first)} | {div:.3f} | {coh:.3f} | {norm:.3f} | {wall:.0f} |"
        )
    return lines


def targets(results: dict[str, Any], reward: str) -> list[str]:
    """The issue's targets, each with its figures and met / not met."""
    cells = _cells(results, reward)
    out: list[str] = []

    def mean_of(method: str, key: str = "best_reward") -> float:
        return text_stats.seed_mean_std(_per_seed(cells, method, key))[0]

    bon32 = mean_of("bon-8x4")
    for warm8 in ("warm-8x1", "warm-4x2"):
        value = mean_of(warm8)
        if not (math.isnan(value) or math.isnan(bon32)):
            verdict = "met" if value >= bon32 else "not met"
            out.append(f"- {warm8} ({value:.3f}) >= BoN-32 ({bon32:.3f}): {verdict} ({value - bon32:+.3f})")
    warm32, cold32 = mean_of("warm-8x4"), mean_of("cold-8x4")
    if not (math.isnan(warm32) or math.isnan(cold32)):
        xs, ys = _paired(cells, "warm-8x4", "cold-8x4")
        out.append(
            f"- warm-8x4 - cold-8x4 = {warm32 - cold32:+.3f} (target >= +0.03 on sentiment, >= 0 on relevance); "
            f"paired win rate {text_stats.win_rate(xs, ys):.0%}"
        )
    bon_div, bon_coh = mean_of("bon-8x4", "diversity"), mean_of("bon-8x4", "coherence")
    for warm in ("warm-8x1", "warm-4x2", "warm-8x4"):
        div, coh = mean_of(warm, "diversity"), mean_of(warm, "coherence")
        if math.isnan(div) or math.isnan(bon_div):
            continue
        ref = (
            "bon-8x1"
            if warm.endswith(("8x1", "4x2")) and not math.isnan(mean_of("bon-8x1", "diversity"))
            else "bon-8x4"
        )
        ref_div, ref_coh = mean_of(ref, "diversity"), mean_of(ref, "coherence")
        rel_div = (div - ref_div) / ref_div if ref_div else math.nan
        rel_coh = (coh - ref_coh) / abs(ref_coh) if ref_coh else math.nan
        ok = abs(rel_div) <= 0.05 and rel_coh >= -0.05
        out.append(
            f"- {warm} text quality vs {ref} (same number of samples): diversity {div:.3f} vs {ref_div:.3f} "
            f"({rel_div:+.1%}), coherence {coh:.3f} vs {ref_coh:.3f} ({rel_coh:+.1%}): "
            f"{'within 5%' if ok else 'NOT within 5%'}"
        )
    del bon_coh
    return out


def curve_rows(results: dict[str, Any], reward: str) -> list[tuple[int, float, float, float, float]]:
    """(learning prompts, held-out best mean, std over seeds, first-round mean, warm start rms / pre-logit rms)."""
    cells = [c for c in _cells(results, reward) if "learning" in c]
    points = sorted({int(p) for c in cells for p in c["learning"]["curve"]})
    rows = []
    for p in points:
        per_seed = [
            [_num(x["best_reward"]) for x in c["learning"]["curve"][str(p)]["prompts"]]
            for c in cells
            if str(p) in c["learning"]["curve"]
        ]
        first = [
            [_num(x["first_mean"]) for x in c["learning"]["curve"][str(p)]["prompts"]]
            for c in cells
            if str(p) in c["learning"]["curve"]
        ]
        rel = text_stats.mean(
            [
                _num(c["learning"]["curve"][str(p)]["memory"].get("start_rms_over_prelogit_rms"))
                for c in cells
                if str(p) in c["learning"]["curve"]
            ]
        )
        mean, std = text_stats.seed_mean_std(per_seed)
        rows.append((p, mean, std, text_stats.seed_mean_std(first)[0], rel))
    return rows


def memory_lines(results: dict[str, Any], reward: str) -> list[str]:
    cells = [c for c in _cells(results, reward) if "memory" in c]
    if not cells:
        return []
    rel = text_stats.mean([_num(c["memory"].get("start_rms_over_prelogit_rms")) for c in cells])
    norm = text_stats.mean([_num(c["memory"].get("start_norm")) for c in cells])
    share = text_stats.mean([_num(c["memory"].get("signal_share")) for c in cells])
    sigma = _num(results["config"].get("sigma"))
    return [
        f"- learned warm start: norm {norm:.3f}, RMS per coordinate {rel:.4f} x the pre-logit RMS "
        f"({rel / sigma:.1f} x sigma = {sigma}); estimated signal share rho {share:.2f}"
        if sigma
        else f"- learned warm start: norm {norm:.3f}, RMS {rel:.4f} x pre-logit RMS"
    ]


def summary_markdown(results: dict[str, Any]) -> str:
    config = results["config"]
    rewards = list(dict.fromkeys(c["reward"] for c in results.get("cells", {}).values()))
    lines = [
        f"# Control memory: {results['meta']['model']}, {len(results['learn_ids'])} learning / "
        f"{len(results['held_ids'])} held-out prompts",
        "",
        f"signal {config['signal']}, strength {config['strength']}, max_rms {config['max_rms']}, warm-up "
        f"{config.get('warmup_prompts')} prompts, shrink {config.get('shrink')}, window "
        f"{config['window']}; learning {config['learn_split']} x {config['learn_batch']} prompts per call, "
        f"learn sigma {config['learn_sigma'] or config['sigma']}; sigma {config['sigma']}; "
        f"extra {config['extra_params']}; "
        f"{config['max_tokens']} tokens; seeds {config['seeds']}",
    ]
    for reward in rewards:
        lines += ["", f"## {reward}", "", *method_table(results, reward), "", *targets(results, reward)]
        lines += memory_lines(results, reward)
        rows = curve_rows(results, reward)
        if rows:
            lines += [
                "",
                f"Learning curve ({config['curve_method']} on the held-out half):",
                "",
                "| learning prompts | held-out best | first-round mean | warm start RMS / pre-logit RMS |",
                "|---|---|---|---|",
            ]
            lines += [f"| {p} | {_fmt(m, s)} | {f:.3f} | {r:.4f} |" for p, m, s, f, r in rows]
    return "\n".join(lines) + "\n"


def plot_curve(results: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rewards = list(dict.fromkeys(c["reward"] for c in results.get("cells", {}).values()))
    rewards = [r for r in rewards if curve_rows(results, r)]
    if not rewards:
        return None
    fig, axes = plt.subplots(1, len(rewards), figsize=(5.2 * len(rewards), 4.2), squeeze=False)
    method = results["config"]["curve_method"]
    for ax, reward in zip(axes[0], rewards, strict=True):
        rows = curve_rows(results, reward)
        xs = [r[0] for r in rows]
        ax.errorbar(xs, [r[1] for r in rows], yerr=[0 if math.isnan(r[2]) else r[2] for r in rows], marker="o",
                    label=f"{method} best (warm)", capsize=3)  # fmt: skip
        ax.plot(xs, [r[3] for r in rows], marker=".", linestyle=":", label=f"{method} first-round mean")
        cells = _cells(results, reward)
        for ref, style in (("bon-8x1", "--"), ("bon-8x4", "-."), ("cold-8x4", ":")):
            value = text_stats.seed_mean_std(_per_seed(cells, ref, "best_reward"))[0]
            if not math.isnan(value):
                ax.axhline(value, linestyle=style, color="grey", linewidth=1)
                ax.annotate(ref, (xs[-1], value), fontsize=8, ha="right", va="bottom", color="grey")
        ax.set_title(reward)
        ax.set_xlabel("learning prompts folded into the memory")
        ax.set_ylabel("held-out reward")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_memory_report(
    results: dict[str, Any], out_dir: str | Path, log: Callable[[str], None] | None = None
) -> list[Path]:
    say = log or (lambda message: print(message, file=sys.stderr))
    out = Path(out_dir)
    written = [out / SUMMARY_MD]
    written[0].write_text(summary_markdown(results), encoding="utf-8")
    plot = plot_curve(results, out / PLOT_CURVE)
    if plot is not None:
        written.append(plot)
    say("wrote " + ", ".join(str(p) for p in written))
    return written
