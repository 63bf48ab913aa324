"""The main job: one aligned answer from the embedded default model, beside a plain sample.

    langchain-aisp-demo "How do I keep basil alive on a windowsill?"

The reward is the built-in relevance reward (cosine similarity between the question
and the answer under all-MiniLM-L6-v2, offline). It prints the plain sample's
reward next to the aligned answer's reward (Best-of-N by default, ``--method aisp`` for the
paper's method) and the cost of each.

It runs on one CPU thread unless ``--num-threads N`` (or ``all``) or the environment
variable ``LANGCHAIN_AISP_NUM_THREADS`` says otherwise (see ``langchain_aisp.engine.threads``);
the first line of its output says the model, device and thread count, which (with the
seed) decide the answer.
"""

from __future__ import annotations

import argparse
import time

from langchain_aisp.engine.threads import DEFAULT_NUM_THREADS, NUM_THREADS_ENV, num_threads_arg, set_cpu_threads

DEFAULT_QUESTION = "How do I keep basil alive on a kitchen windowsill?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="langchain-aisp-demo", description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    parser.add_argument("--method", default=None, choices=["aisp", "bon"], help="default: the chat model's (bon)")
    parser.add_argument("--num-samples", type=int, default=None, help="default: the method's (32 bon, 8 aisp)")
    parser.add_argument("--num-iterations", type=int, default=None, help="default: the method's (1 bon, 4 aisp)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--num-threads",
        type=num_threads_arg,
        default=None,
        help=f"CPU threads for torch: a count or 'all' (default: ${NUM_THREADS_ENV}, else {DEFAULT_NUM_THREADS})",
    )
    args = parser.parse_args(argv)
    try:
        set_cpu_threads(args.num_threads)
    except ValueError as exc:  # a bad LANGCHAIN_AISP_NUM_THREADS
        parser.error(str(exc))

    import torch

    from langchain_aisp import AISPChatModel
    from langchain_aisp.rewards import EmbeddingSimilarityReward

    reward = EmbeddingSimilarityReward(target="prompt")
    common = {"reward": reward, "max_tokens": args.max_tokens, "seed": args.seed}
    plain_model = AISPChatModel(method="sample", **common)
    chosen = {"method": args.method, "num_samples": args.num_samples, "num_iterations": args.num_iterations}
    aligned_model = AISPChatModel(**{k: v for k, v in chosen.items() if v is not None}, **common)

    start = time.perf_counter()
    plain = plain_model.invoke(args.question)
    plain_time = time.perf_counter() - start
    start = time.perf_counter()
    aligned = aligned_model.invoke(args.question)
    aligned_time = time.perf_counter() - start

    p_meta, a_meta = plain.response_metadata["aisp"], aligned.response_metadata["aisp"]
    device = aligned_model._get_lm().device.type
    threads = torch.get_num_threads()
    plural = "s" * (threads != 1)
    print(f"Model: {aligned_model.model_name} on {device}, {threads} CPU thread{plural}, seed {args.seed}")
    print(f"Question: {args.question}\n")
    print(f"Plain sample (reward {p_meta['reward']:.3f}, {plain_time:.1f} s):\n{plain.content}\n")
    print(
        f"{a_meta['method'].upper()} answer (reward {a_meta['reward']:.3f}, {a_meta['samples']} samples, "
        f"{aligned_time:.1f} s):\n{aligned.content}\n"
    )
    print("Best reward per iteration:", [round(max(r), 3) for r in a_meta["rewards"]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
