"""Cost of the grammar mask per decoding step, with and without, on the default model (issue 9).

Decodes ``--batch`` rows of one prompt for ``--tokens`` steps, interleaving a run without a
constraint and a run where every row follows a JSON-schema grammar (llguidance). EOS is
disabled in both runs (the decoder's EOS set is emptied), so both decode exactly
``batch x tokens`` row-steps and the step times compare like for like. Reports the median
ms/step of each, their ratio, and the time spent inside the mask (fill + copy + unpack +
masked_fill) and the matchers' advance, measured in the same constrained runs.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/grammar_overhead.py --batch 32 --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from langchain_aisp.chat import _grammar as grammarlib
from langchain_aisp.engine.config import SamplingParams
from langchain_aisp.engine.constraints import RowMasks
from langchain_aisp.engine.decode.eager import Decoder, decode, prefill
from langchain_aisp.engine.lm import load_causal_lm

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["title", "tags"],
}


class Timed:
    """Accumulates the time spent in RowMasks.apply and RowMasks.advance."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.apply, self.advance = RowMasks.apply, RowMasks.advance

    def install(self) -> None:
        timer = self

        def apply(masks: RowMasks, logits: torch.Tensor, remaining: int) -> torch.Tensor:
            start = time.perf_counter()
            out = timer.apply(masks, logits, remaining)
            timer.seconds += time.perf_counter() - start
            return out

        def advance(masks: RowMasks, tokens: torch.Tensor, ended: torch.Tensor) -> None:
            start = time.perf_counter()
            timer.advance(masks, tokens, ended)
            timer.seconds += time.perf_counter() - start

        RowMasks.apply, RowMasks.advance = apply, advance  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lm = load_causal_lm(None, device="cpu")
    tok = lm.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Give a title and tags for a post about cats, as JSON."}],
        add_generation_prompt=True,
        tokenize=False,
    )
    prefix = prefill(lm, tok(text, add_special_tokens=False).input_ids)
    decoder = Decoder.build(lm, SamplingParams(max_tokens=args.tokens))
    decoder = dataclasses.replace(decoder, eos=torch.tensor([-1]))  # no row ends: equal work in both runs
    vocab = int(lm.head_weight.shape[0])
    constraint = grammarlib.compile_constraint(tok, vocab, lm.eos_token_ids, grammarlib.json_grammar(SCHEMA))
    rows = torch.zeros(args.batch, dtype=torch.long)
    V = torch.zeros(args.batch, 2, lm.hidden_size)  # (B, tau + 1, d)
    timer = Timed()
    timer.install()
    plain_ms, grammar_ms, mask_ms = [], [], []
    for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
        uniforms = torch.rand(args.batch, args.tokens, generator=torch.Generator().manual_seed(repeat))
        start = time.perf_counter()
        decode(decoder, [prefix], rows, V, uniforms)
        plain = (time.perf_counter() - start) / args.tokens * 1e3
        timer.seconds = 0.0
        matchers = [constraint.matcher(i) for i in range(args.batch)]
        start = time.perf_counter()
        decode(decoder, [prefix], rows, V, uniforms, matchers)
        constrained = (time.perf_counter() - start) / args.tokens * 1e3
        if repeat:
            plain_ms.append(plain)
            grammar_ms.append(constrained)
            mask_ms.append(timer.seconds / args.tokens * 1e3)
        print(f"round {repeat}: no grammar {plain:.1f} ms/step, grammar {constrained:.1f} ms/step", flush=True)
    p, g, m = statistics.median(plain_ms), statistics.median(grammar_ms), statistics.median(mask_ms)
    print(f"\nbatch {args.batch}, {args.tokens} steps, {args.repeats} interleaved repeats (medians):")
    print("| | ms/step |")
    print("|---|---|")
    print(f"| no grammar | {p:.1f} |")
    print(f"| JSON-schema grammar on every row | {g:.1f} |")
    print(f"| of which mask + advance (measured inside) | {m:.2f} ({100 * m / g:.1f}% of the step) |")
    print(f"| overhead (grammar / no grammar - 1) | {100 * (g / p - 1):+.1f}% |")


if __name__ == "__main__":
    main()
