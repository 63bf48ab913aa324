"""Summaries of ``results.json``: ``summary.csv``, ``summary.md`` and the PNG plots.

Everything here reads the saved results only, so ``langchain-aisp-bench report --out DIR``
can rebuild the tables and plots of a finished or interrupted run.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langchain_aisp.bench import text_stats

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
PLOT_BEST = "best_so_far.png"
PLOT_ITER = "iteration_mean.png"
PLOT_BEST_SINGLE = "best_so_far_single.png"

CSV_COLUMNS = (
    "mode", "reward", "budget", "split", "method", "seeds", "prompts",
    "best_mean", "best_std", "win_rate_vs_bon", "diversity", "coherence",
    "wall_s", "generated_tokens", "tokens_per_s", "peak_mem_mib", "mem_kind",
    "forward_s", "reward_s", "other_s", "forward_frac", "reward_frac", "other_frac",
    "time_ratio_vs_bon", "mem_ratio_vs_bon", "overhead_vs_bon_frac",
)  # fmt: skip


def _groups(results: dict[str, Any]) -> dict[tuple[str, str, int, str], list[dict[str, Any]]]:
    """Finished cells grouped by (mode, reward, budget, split), seeds in run order."""
    groups: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    for cell in results.get("cells", {}).values():
        if cell.get("status") != "done":
            continue
        key = (cell["mode"], cell["reward"], int(cell["budget"]), cell["split"])
        groups.setdefault(key, []).append(cell)
    for cells in groups.values():
        cells.sort(key=lambda c: c["seed"])
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0] != "batched", kv[0][1], kv[0][2], kv[0][3])))


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _best(method: dict[str, Any]) -> list[float]:
    return [_num(p["best_reward"]) for p in method["prompts"]]


def paired_best(cells: Sequence[dict[str, Any]], a: str = "aisp", b: str = "bon") -> tuple[list[float], list[float]]:
    """Best rewards of methods a and b over all prompt-seeds, paired by (seed, prompt id)."""
    xs: list[float] = []
    ys: list[float] = []
    for cell in cells:
        methods = cell["methods"]
        if a not in methods or b not in methods:
            continue
        other = {p["id"]: _num(p["best_reward"]) for p in methods[b]["prompts"]}
        for p in methods[a]["prompts"]:
            if p["id"] in other:
                xs.append(_num(p["best_reward"]))
                ys.append(other[p["id"]])
    return xs, ys


def method_summary(cells: Sequence[dict[str, Any]], method: str) -> dict[str, Any] | None:
    """Quality and cost of one method in one group, averaged over seeds."""
    runs = [c["methods"][method] for c in cells if method in c["methods"]]
    if not runs:
        return None
    best_mean, best_std = text_stats.seed_mean_std([_best(r) for r in runs])
    wall = text_stats.mean([_num(r["wall_s"]) for r in runs])
    forward = text_stats.mean([_num(r["forward_s"]) for r in runs])
    reward = text_stats.mean([_num(r["reward_s"]) for r in runs])
    other = text_stats.mean([_num(r["other_s"]) for r in runs])
    tokens = text_stats.mean([float(r["generated_tokens"]) for r in runs])
    return {
        "seeds": len(runs),
        "prompts": len(runs[0]["prompts"]),
        "best_mean": best_mean,
        "best_std": best_std,
        "diversity": text_stats.mean([_num(p["diversity"]) for r in runs for p in r["prompts"]]),
        "coherence": text_stats.mean([_num(p["coherence"]) for r in runs for p in r["prompts"]]),
        "wall_s": wall,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / wall if wall > 0 else math.nan,
        "peak_mem_mib": text_stats.mean([_num(r["peak_mem_mib"]) for r in runs]),
        "mem_kind": runs[0].get("mem_kind", ""),
        "forward_s": forward,
        "reward_s": reward,
        "other_s": other,
        "forward_frac": forward / wall if wall > 0 else math.nan,
        "reward_frac": reward / wall if wall > 0 else math.nan,
        "other_frac": other / wall if wall > 0 else math.nan,
    }


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (mode, reward, budget, split, method), with the comparisons on the AISP row."""
    rows: list[dict[str, Any]] = []
    for (mode, reward, budget, split), cells in _groups(results).items():
        summaries = {m: method_summary(cells, m) for m in ("bon", "aisp", "sample")}
        bon = summaries["bon"]
        for method, summary in summaries.items():
            if summary is None:
                continue
            row: dict[str, Any] = {"mode": mode, "reward": reward, "budget": budget, "split": split, "method": method}
            row.update(summary)
            if method == "aisp" and bon is not None:
                row["win_rate_vs_bon"] = text_stats.win_rate(*paired_best(cells))
                row["time_ratio_vs_bon"] = _ratio(summary["wall_s"], bon["wall_s"])
                row["mem_ratio_vs_bon"] = _ratio(summary["peak_mem_mib"], bon["peak_mem_mib"])
                extra = summary["other_s"] - bon["other_s"]
                row["overhead_vs_bon_frac"] = extra / summary["wall_s"] if summary["wall_s"] > 0 else math.nan
            rows.append(row)
    return rows


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in CSV_COLUMNS})


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return "" if value is None else value


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _pm(mean: float, std: float) -> str:
    return f"{_f(mean)} ± {_f(std)}" if math.isfinite(std) else _f(mean)


def _pct(value: Any) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def markdown(results: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """The summary tables as markdown."""
    meta = results.get("meta", {})
    machine = meta.get("machine", {})
    config = results.get("config", {})
    lines = [
        "# AISP vs Best-of-N benchmark",
        "",
        f"Model: `{meta.get('model')}` on {machine.get('device')} ({machine.get('dtype')}); "
        f"{machine.get('cpu_count')} CPUs, {machine.get('torch_threads')} torch threads; "
        f"torch {machine.get('torch')}, transformers {machine.get('transformers')}; {machine.get('platform')}.",
        f"Prompts: {len(results.get('prompts', []))}; max_tokens {config.get('max_tokens')}, "
        f"sigma {config.get('sigma')} (x pre-logit RMS), lambda {config.get('lambda_')}, "
        f"ess_target {config.get('ess_target')}, alpha {config.get('alpha')}, tau {config.get('tau')}, "
        f"max_batch_size {config.get('max_batch_size')}. Started {meta.get('started_at')}, "
        f"updated {meta.get('updated_at')}.",
        "",
        "Best reward: mean over seeds of the mean over prompts, ± the std of those per-seed means. "
        "Win rate: AISP's best > BoN's best over all prompt-seeds (same seed: paired), ties count half.",
        "",
    ]
    by_key: dict[tuple[str, str, int, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault((row["mode"], row["reward"], row["budget"], row["split"]), {})[row["method"]] = row
    for mode in ("batched", "single"):
        keys = [k for k in by_key if k[0] == mode]
        if not keys:
            continue
        title = "Batched (all prompts in one run)" if mode == "batched" else "Single prompt (one run per prompt)"
        lines += [f"## Reward: {title}", ""]
        lines += [
            "| reward | N | n x k | seeds | BoN best | AISP best | AISP - BoN | win rate | plain sample "
            "| diversity BoN / AISP | coherence BoN / AISP |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key in keys:
            r = by_key[key]
            bon, aisp, sample = r.get("bon", {}), r.get("aisp", {}), r.get("sample", {})
            delta = aisp.get("best_mean", math.nan) - bon.get("best_mean", math.nan)
            lines.append(
                f"| {key[1]} | {key[2]} | {key[3]} | {aisp.get('seeds', bon.get('seeds', 0))} "
                f"| {_pm(bon.get('best_mean', math.nan), bon.get('best_std', math.nan))} "
                f"| {_pm(aisp.get('best_mean', math.nan), aisp.get('best_std', math.nan))} "
                f"| {_f(delta)} | {_pct(aisp.get('win_rate_vs_bon'))} "
                f"| {_pm(sample.get('best_mean', math.nan), sample.get('best_std', math.nan)) if sample else '—'} "
                f"| {_f(bon.get('diversity'))} / {_f(aisp.get('diversity'))} "
                f"| {_f(bon.get('coherence'))} / {_f(aisp.get('coherence'))} |"
            )
        lines += ["", f"## Cost: {title}", ""]
        lines += [
            "| reward | N | n x k | wall s BoN / AISP | AISP/BoN time | tokens BoN / AISP | tok/s BoN / AISP "
            "| peak MiB BoN / AISP | AISP/BoN mem | AISP forward / reward / other | AISP other - BoN other |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key in keys:
            r = by_key[key]
            bon, aisp = r.get("bon", {}), r.get("aisp", {})
            lines.append(
                f"| {key[1]} | {key[2]} | {key[3]} | {_f(bon.get('wall_s'), 1)} / {_f(aisp.get('wall_s'), 1)} "
                f"| {_f(aisp.get('time_ratio_vs_bon'), 2)} "
                f"| {_f(bon.get('generated_tokens'), 0)} / {_f(aisp.get('generated_tokens'), 0)} "
                f"| {_f(bon.get('tokens_per_s'), 1)} / {_f(aisp.get('tokens_per_s'), 1)} "
                f"| {_f(bon.get('peak_mem_mib'), 0)} / {_f(aisp.get('peak_mem_mib'), 0)} "
                f"| {_f(aisp.get('mem_ratio_vs_bon'), 2)} "
                f"| {_pct(aisp.get('forward_frac'))} / {_pct(aisp.get('reward_frac'))} "
                f"/ {_pct(aisp.get('other_frac'))} "
                f"| {_pct(aisp.get('overhead_vs_bon_frac'))} |"
            )
        lines.append("")
    failed = [k for k, c in results.get("cells", {}).items() if c.get("status") != "done"]
    if failed:
        lines += ["## Failed cells (rerun with --resume)", ""]
        lines += [f"- `{k}`: {results['cells'][k].get('error')}" for k in failed]
        lines.append("")
    lines += [
        f"Plots: `{PLOT_BEST}` (best reward so far vs samples used), `{PLOT_ITER}` (mean reward within each "
        f"iteration){', `' + PLOT_BEST_SINGLE + '`' if any(k[0] == 'single' for k in by_key) else ''}.",
        "",
    ]
    return "\n".join(lines)


# --- curves and plots ----------------------------------------------------------------------


def curves(cells: Sequence[dict[str, Any]], method: str, kind: str = "best") -> tuple[list[int], list[float]]:
    """Mean curve over prompt-seeds: x = samples used after each iteration, y = best so far or iteration mean."""
    runs = [c["methods"][method] for c in cells if method in c["methods"]]
    if not runs:
        return [], []
    fn = text_stats.best_so_far if kind == "best" else text_stats.iteration_means
    ys = [fn(p["rewards"]) for r in runs for p in r["prompts"] if p["rewards"]]
    if not ys:
        return [], []
    n = int(runs[0]["n"])
    y = text_stats.mean_curves(ys)
    return [n * (j + 1) for j in range(len(y))], y


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """The best-so-far and iteration-mean figures (one panel per reward); needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    groups = _groups(results)
    written: list[Path] = []
    specs = [("batched", "best", PLOT_BEST), ("batched", "mean", PLOT_ITER), ("single", "best", PLOT_BEST_SINGLE)]
    for mode, kind, filename in specs:
        rewards = list(dict.fromkeys(k[1] for k in groups if k[0] == mode))
        if not rewards:
            continue
        fig, axes = plt.subplots(1, len(rewards), figsize=(5.2 * len(rewards), 4.2), squeeze=False)
        for ax, reward in zip(axes[0], rewards, strict=True):
            keys = [k for k in groups if k[0] == mode and k[1] == reward]
            colors = plt.get_cmap("viridis")([i / max(1, len(keys) - 1) * 0.85 for i in range(len(keys))])
            xs_seen: list[int] = []
            for color, key in zip(colors, keys, strict=True):
                cells = groups[key]
                for method, style in (("aisp", "-o"), ("bon", "--s")):
                    x, y = curves(cells, method, kind)
                    xs_seen += x
                    if x:
                        label = f"{'AISP' if method == 'aisp' else 'BoN'} {key[3]}"
                        ax.plot(x, y, style, color=color, label=label, markersize=4, linewidth=1.4)
            sample = [
                _num(p["best_reward"])
                for k in keys
                for c in groups[k]
                if "sample" in c["methods"]
                for p in c["methods"]["sample"]["prompts"]
            ]
            if sample:
                ax.axhline(text_stats.mean(sample), color="gray", linestyle=":", label="plain sample")
            if xs_seen and max(xs_seen) >= 4 * min(xs_seen):
                ax.set_xscale("log", base=2)
                ticks = sorted(set(xs_seen))
                ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_title(f"{reward} ({mode})")
            ax.set_xlabel("samples used per prompt")
            ax.set_ylabel("best reward so far" if kind == "best" else "mean reward within the iteration")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        title = (
            "Best reward so far vs samples (mean over prompts and seeds)"
            if kind == "best"
            else "Within-iteration mean reward (does the steered policy improve or oversteer?)"
        )
        fig.suptitle(title)
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(results: dict[str, Any], out_dir: str | Path, log: Callable[[str], None] | None = None) -> list[Path]:
    """Write summary.csv, summary.md and the plots into ``out_dir``; returns the paths written."""
    say = log or (lambda message: print(message, file=sys.stderr))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(results)
    write_csv(rows, out / SUMMARY_CSV)
    (out / SUMMARY_MD).write_text(markdown(results, rows), encoding="utf-8")
    written = [out / SUMMARY_CSV, out / SUMMARY_MD]
    try:
        written += write_plots(results, out)
    except ImportError:
        say("matplotlib is not installed: no plots (pip install 'langchain-aisp[bench]')")
    return written
