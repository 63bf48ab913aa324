"""The main job: what alignment buys, on the first questions of the shipped prompt set.

    langchain-aisp-demo                                    # the first 3 shipped questions
    langchain-aisp-demo "How do I repot a cactus safely?"  # a question of your own

The model is the embedded default (SmolLM2-135M-Instruct), the reward the built-in relevance
reward (cosine similarity between the question and the answer under all-MiniLM-L6-v2, offline),
the aligned model the chat model's default (Best-of-32 at temperature 0.7; ``--method aisp`` for
the paper's method). For each question it prints:

- what a plain sample gets: the mean reward of plain samples of the model, with their worst,
  median and best as a one-line bar. Under Best-of-N the N candidates are those samples (the
  chosen answer is the best of them by construction); under AISP, whose samples are steered, a
  separate Best-of-N call with its own seed draws as many plain samples;
- the chosen answer in full (``(cut at N tokens)`` where it hit ``--max-tokens``), its reward and
  its gain over the plain mean, in reward units and in the candidates' standard deviations;
- the cost: samples, tokens generated, seconds.

The questions are the first ``--questions`` lines of ``langchain_aisp/bench/data/prompts.jsonl``
in file order (not picked for the effect). A system message asks for short answers (``--system``)
so that the answers fit ``--max-tokens`` on a CPU; the reward compares the answer with the question
alone.

It runs on one CPU thread unless ``--num-threads N`` (or ``all``) or the environment
variable ``LANGCHAIN_AISP_NUM_THREADS`` says otherwise (see ``langchain_aisp.engine.threads``);
the first line of its output says the model, device, thread count and seed, which decide the answers.
"""

from __future__ import annotations

import argparse
import math
import statistics
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_aisp.engine.threads import DEFAULT_NUM_THREADS, NUM_THREADS_ENV, num_threads_arg, set_cpu_threads

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage

    from langchain_aisp.bench.prompts import BenchPrompt
    from langchain_aisp.chat_models import AISPChatModel
    from langchain_aisp.engine.config import AISPParams

DEFAULT_QUESTIONS = 3
"""Shipped questions the demo runs when no question is given (the first ones of the shipped set, in file order)."""
DEFAULT_MAX_TOKENS = 128
"""Tokens per answer. Measured with the system message, seed 0, Best-of-32: the chosen answer ends before 128 tokens
on the 3 default questions (5 of the first 8; at 96: 2 of 3, 6 of 8); without the system message it is cut at 128."""
DEFAULT_SYSTEM = "Answer in at most three short sentences."
"""The demo's system message: short answers fit ``DEFAULT_MAX_TOKENS`` (the reward does not see it)."""
BAR_WIDTH = 51
"""Cells of the spread bar: 0.02 reward per cell on the axis 0 to 1."""
BAR_LEGEND = "[ worst  | median  o mean  ] best  * chosen answer"


# --- pure pieces: the numbers and the text ---------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """The rewards of N plain samples: their mean (what one plain sample gets on average), standard deviation
    (None for one sample) and worst / median / best."""

    n: int
    mean: float
    sd: float | None
    worst: float
    median: float
    best: float

    @classmethod
    def of(cls, rewards: Sequence[float]) -> Spread:
        values = [float(r) for r in rewards]
        if not values:
            raise ValueError("rewards must hold at least one value, got []")
        bad = [r for r in values if math.isnan(r)]
        if bad:
            raise ValueError(f"rewards must be numbers, got {len(bad)} NaN of {len(values)}")
        sd = statistics.stdev(values) if len(values) > 1 else None
        return cls(len(values), statistics.fmean(values), sd, min(values), statistics.median(values), max(values))


def spread_bar(spread: Spread, chosen: float, *, lo: float = 0.0, hi: float = 1.0, width: int = BAR_WIDTH) -> str:
    """A one-line bar of ``width`` cells on the reward axis ``lo`` to ``hi``: ``=`` from the worst to the best plain
    sample, ``[`` worst, ``]`` best, ``|`` median, ``o`` mean, ``*`` the chosen answer (a later mark covers an earlier
    one in the same cell; values outside the axis sit at its ends), ``.`` elsewhere."""
    if not hi > lo:
        raise ValueError(f"the axis must have hi > lo, got lo={lo}, hi={hi}")
    if width < 3:
        raise ValueError(f"width must be >= 3 cells, got {width}")

    def cell(value: float) -> int:
        return min(width - 1, max(0, round((value - lo) / (hi - lo) * (width - 1))))

    cells = ["."] * width
    for i in range(cell(spread.worst), cell(spread.best) + 1):
        cells[i] = "="
    for mark, value in (("[", spread.worst), ("]", spread.best), ("|", spread.median), ("o", spread.mean)):
        cells[cell(value)] = mark
    cells[cell(chosen)] = "*"
    return f"{lo:g} {''.join(cells)} {hi:g}"


def gain_text(chosen: float, spread: Spread) -> str:
    """The chosen answer's gain over the plain-sample mean: ``+0.123 (+2.1 sd)``; the sd part only where there is a
    spread."""
    gain = chosen - spread.mean
    if not spread.sd:
        return f"{gain:+.3f}"
    return f"{gain:+.3f} ({gain / spread.sd:+.1f} sd)"


def summary_line(rows: Sequence[tuple[float, Spread]]) -> str:
    """One line over the questions (``(chosen reward, plain spread)`` each): the mean chosen reward beside the mean
    plain-sample reward, the mean gain in reward units and in the candidates' standard deviations (the mean of each
    question's gain / sd, over the questions that have a spread), and each question's gain."""
    if not rows:
        raise ValueError("the summary needs at least one question, got none")
    gains = [chosen - spread.mean for chosen, spread in rows]
    in_sd = [(chosen - spread.mean) / spread.sd for chosen, spread in rows if spread.sd]
    plural = "s" * (len(rows) != 1)
    line = (
        f"Over {len(rows)} question{plural}: aligned {statistics.fmean(c for c, _ in rows):.3f} vs plain-sample mean "
        f"{statistics.fmean(s.mean for _, s in rows):.3f}, gain {statistics.fmean(gains):+.3f} reward"
    )
    if in_sd:
        line += f" = {statistics.fmean(in_sd):+.1f} candidate sd"
    if len(rows) > 1:
        line += " (per question " + ", ".join(f"{g:+.3f}" for g in gains) + ")"
    return line


def select_questions(question: str | None, count: int, shipped: Sequence[BenchPrompt]) -> list[tuple[str, str]]:
    """``(label, user text)`` of the questions to run: the user's own question alone, else the first ``count`` of the
    shipped set in its order (a rule fixed in advance: they are not picked by the gain they show)."""
    if question is not None:
        if not question.strip():
            raise ValueError("the question is empty")
        return [("your question", question)]
    if not 1 <= count <= len(shipped):
        raise ValueError(f"--questions must be between 1 and {len(shipped)} (the shipped set), got {count}")
    return [(p.id, p.user_text) for p in shipped[:count]]


def method_name(method: str, num_samples: int, num_iterations: int) -> str:
    """``Best-of-32``, ``AISP 8 x 4``."""
    if method == "bon":
        return f"Best-of-{num_samples * num_iterations}"
    return f"{method.upper()} {num_samples} x {num_iterations}"


def answer_text(content: str, finish_reason: str, max_tokens: int, width: int = 100) -> str:
    """The chosen answer as printed: each line wrapped at ``width`` columns and indented by four spaces (only the
    white space changes), and saying so where it was cut at ``max_tokens``."""
    lines = (content.strip() or "(empty)").splitlines()
    text = "\n".join(textwrap.fill(line, width, initial_indent="    ", subsequent_indent="    ") for line in lines)
    return text + (f"\n    (cut at {max_tokens} tokens)" if finish_reason == "length" else "")


# --- the run -------------------------------------------------------------------------------------------


def _count_arg(name: str) -> Callable[[str], int]:
    """``argparse`` type of a count option: an integer >= 1, the error naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be an integer >= 1, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="langchain-aisp-demo",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("question", nargs="?", default=None, help="a question of your own (default: shipped ones)")
    parser.add_argument(
        "--questions",
        type=_count_arg("--questions"),
        metavar="N",
        default=None,
        help=f"run the first N shipped questions (default: {DEFAULT_QUESTIONS})",
    )
    parser.add_argument("--method", default=None, choices=["aisp", "bon"], help="default: the chat model's (bon)")
    parser.add_argument(
        "--num-samples", type=_count_arg("--num-samples"), default=None, help="default: the method's (32 bon, 8 aisp)"
    )
    parser.add_argument(
        "--num-iterations", type=_count_arg("--num-iterations"), default=None, help="default: the method's (1, 4)"
    )
    parser.add_argument(
        "--max-tokens",
        type=_count_arg("--max-tokens"),
        default=DEFAULT_MAX_TOKENS,
        help=f"tokens an answer (default: {DEFAULT_MAX_TOKENS})",
    )
    parser.add_argument(
        "--system", default=DEFAULT_SYSTEM, help=f"the system message, '' for none (default: {DEFAULT_SYSTEM!r})"
    )
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument(
        "--num-threads",
        type=num_threads_arg,
        default=None,
        help=f"CPU threads for torch: a count or 'all' (default: ${NUM_THREADS_ENV}, else {DEFAULT_NUM_THREADS})",
    )
    return parser


def _timed_invoke(model: AISPChatModel, messages: list[tuple[str, str]]) -> tuple[BaseMessage, float]:
    start = time.perf_counter()
    reply = model.invoke(messages)
    return reply, time.perf_counter() - start


def _run_question(
    label: str, text: str, system: str, aligned: AISPChatModel, plain: AISPChatModel | None
) -> tuple[float, Spread, tuple[int, int, float]]:
    """Print one question's block; return the chosen reward, the plain spread and the aligned call's cost (samples,
    tokens generated, seconds)."""
    messages = [("system", system)] if system else []
    messages.append(("human", text))
    reply, seconds = _timed_invoke(aligned, messages)
    meta = reply.response_metadata["aisp"]
    rewards = [r for iteration in meta["rewards"] for r in iteration]
    if plain is None:  # Best-of-N: its candidates are the plain samples
        spread, where, reference = Spread.of(rewards), f"the best of {len(rewards)}", ""
    else:
        plain_reply, plain_seconds = _timed_invoke(plain, messages)
        spread = Spread.of(plain_reply.response_metadata["aisp"]["rewards"][0])
        above = sum(r < meta["reward"] for r in plain_reply.response_metadata["aisp"]["rewards"][0])
        method = method_name(meta["method"], meta["num_samples"], meta["num_iterations"])
        where = f"{method}, above {above} of the {spread.n} plain samples"
        reference = (
            f"\n    (plain samples of a separate Best-of-{spread.n} call, seed {plain.seed}, {plain_seconds:.1f} s)"
        )
    chosen = float(meta["reward"])
    print(f"{label}: {text}")
    sd = "" if spread.sd is None else f" (sd {spread.sd:.3f})"
    print(
        f"  plain sample: mean reward {spread.mean:.3f}{sd} over {spread.n} samples; "
        f"worst {spread.worst:.3f}, median {spread.median:.3f}, best {spread.best:.3f}{reference}"
    )
    print(f"    {spread_bar(spread, chosen)}")
    print(f"  aligned: reward {chosen:.3f} ({where}): {gain_text(chosen, spread)} over the plain mean")
    if plain is not None:
        print("  best reward per iteration:", " ".join(f"{max(r):.3f}" for r in meta["rewards"]))
    print(f"  cost: {meta['samples']} samples, {meta['generated_tokens']} tokens generated, {seconds:.1f} s")
    print(f"  answer:\n{answer_text(str(reply.content), meta['finish_reason'], meta['max_tokens'])}\n")
    return chosen, spread, (meta["samples"], meta["generated_tokens"], seconds)


def _chat_models(args: argparse.Namespace) -> tuple[AISPChatModel, AISPChatModel | None, AISPParams]:
    """The aligned chat model, the plain reference (None under Best-of-N: its candidates are plain samples; else a
    Best-of-N call with as many samples and its own seed) and the aligned model's resolved parameters."""
    from langchain_aisp.chat_models import AISPChatModel
    from langchain_aisp.engine.config import AISPParams
    from langchain_aisp.rewards import EmbeddingSimilarityReward

    common = {"reward": EmbeddingSimilarityReward(target="prompt"), "max_tokens": args.max_tokens}
    chosen = {"method": args.method, "num_samples": args.num_samples, "num_iterations": args.num_iterations}
    aligned = AISPChatModel(**{k: v for k, v in chosen.items() if v is not None}, seed=args.seed, **common)
    split: dict[str, Any] = {
        "method": aligned.method,
        "num_samples": aligned.num_samples,
        "num_iterations": aligned.num_iterations,
    }
    params = AISPParams(**split)  # the method's own num_samples / num_iterations where not given
    if params.method == "bon":
        return aligned, None, params
    total = params.num_samples * params.num_iterations
    return aligned, AISPChatModel(method="bon", num_samples=total, seed=args.seed + 1, **common), params


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.question is not None and args.questions is not None:
        parser.error("give a question of your own or --questions N (shipped questions), not both")
    try:
        set_cpu_threads(args.num_threads)
    except ValueError as exc:  # a bad LANGCHAIN_AISP_NUM_THREADS
        parser.error(str(exc))

    from langchain_aisp.bench.prompts import load_prompts

    try:
        questions = select_questions(args.question, args.questions or DEFAULT_QUESTIONS, load_prompts())
    except ValueError as exc:
        parser.error(str(exc))

    import torch

    from langchain_aisp.engine.lm import resolve_device

    try:
        aligned, plain, params = _chat_models(args)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError: keep its messages, not its layout
        errors = getattr(exc, "errors", None)
        messages = [e["msg"].removeprefix("Value error, ") for e in errors()] if callable(errors) else [str(exc)]
        parser.error("; ".join(messages))
    start = time.perf_counter()
    aligned.warmup()  # loads the model (and builds the decoding buckets where decoding is static)
    aligned.reward.embed(["load the encoder before the clock starts"])
    loading = time.perf_counter() - start

    threads = torch.get_num_threads()
    device = resolve_device(aligned.device).type
    print(f"Model: {aligned.model_name} on {device}, {threads} CPU thread{'s' * (threads != 1)}, seed {args.seed}")
    print(f"Reward: relevance of the answer to the question ({aligned.reward_name}); loaded in {loading:.1f} s")
    print(
        f"Aligned: {method_name(params.method, params.num_samples, params.num_iterations)} at temperature "
        f"{aligned.temperature}, at most {args.max_tokens} tokens an answer"
    )
    if args.question is None:
        first = "the first" if len(questions) == 1 else f"the first {len(questions)}"
        print(f"Questions: {first} of the shipped set, in file order (bench/data/prompts.jsonl)")
    print(f"System message: {args.system!r} (the reward sees the question alone)")
    print(f"Bars: reward axis 0 to 1; {BAR_LEGEND}\n")

    rows: list[tuple[float, Spread]] = []
    samples, tokens, seconds = 0, 0, 0.0
    for label, text in questions:
        reward_chosen, spread, cost = _run_question(label, text, args.system, aligned, plain)
        rows.append((reward_chosen, spread))
        samples, tokens, seconds = samples + cost[0], tokens + cost[1], seconds + cost[2]
    print(summary_line(rows))
    print(f"Cost of the aligned answers: {samples} samples, {tokens} tokens generated, {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
