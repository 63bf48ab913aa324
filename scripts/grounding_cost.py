"""What grounding adds to a call (issue 21), measured without decoding: the per-call set-up and the per-sample term.

Per call (forced call or structured output, ``grounding_weight > 0``): read the conversation
(:class:`Conversation`), build the grounded grammars and compile the call's per-sample grammars
(``sample_grammars`` + ``compile_constraint``, first compile of each grammar, cache cleared); per
sample: the grounding term (:func:`reply_grounding`). The same compile without grounding is timed beside
it. Calls without tools or a schema never reach this code. Medians over ``--repeats`` on the default
model's tokenizer:

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/grounding_cost.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from langchain_core.messages import HumanMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from langchain_aisp.chat import _grammar as grammarlib
from langchain_aisp.chat import _grounding as groundlib
from langchain_aisp.chat._format import OutputFormat
from langchain_aisp.chat._render import render_tool_call
from langchain_aisp.engine.lm import load_causal_lm

SET = Path(__file__).with_name("extraction_set.json")


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import extraction_accuracy  # the schemas of the extraction set (same folder)

    lm = load_causal_lm(None, device="cpu")
    vocab, eos = int(lm.head_weight.shape[0]), lm.eos_token_ids
    items = json.loads(SET.read_text(encoding="utf-8"))
    setup_on, setup_off, term = [], [], []
    for item in items:
        tool = convert_to_openai_tool(extraction_accuracy.SCHEMAS[item["schema"]])["function"]
        fmt = OutputFormat(tools=(tool,), tool_choice=tool["name"])
        messages = [HumanMessage(item["prompt"])]
        grammar = grammarlib.tool_call_grammar([tool], choice=tool["name"])
        prefill = grammarlib.forced_prefix(lm.tokenizer, vocab, eos, grammar)

        def plain(grammar=grammar, prefill=prefill) -> None:
            grammarlib.clear_cache()
            grammarlib.compile_constraint(lm.tokenizer, vocab, eos, grammar, prefill)

        def grounded(grammar=grammar, prefill=prefill, fmt=fmt, messages=messages) -> None:
            grammarlib.clear_cache()
            conversation = groundlib.Conversation.of(messages)  # as the chat model does: read once
            templates = groundlib.sample_grammars(grammar, fmt, messages, candidates=conversation.candidates)
            grammarlib.compile_constraint(lm.tokenizer, vocab, eos, templates, prefill)

        plain()  # warm the tokenizer cache
        setup_off.append(_median_ms(plain, args.repeats))
        setup_on.append(_median_ms(grounded, args.repeats))
        conversation = groundlib.Conversation.of(messages)
        reply = render_tool_call(tool["name"], item["expected"] | {})
        term.append(_median_ms(lambda r=reply, c=conversation, f=fmt: groundlib.reply_grounding(r, f, c), 20))
    print(f"{len(items)} extraction prompts, median over prompts of the median of {args.repeats} repeats:")
    print(f"  compile the call's grammar, no grounding:   {statistics.median(setup_off):7.2f} ms per call")
    print(f"  conversation + grounded grammars + compile: {statistics.median(setup_on):7.2f} ms per call")
    print(f"  grounding term of one reply:                {statistics.median(term):7.3f} ms per sample")


if __name__ == "__main__":
    main()
