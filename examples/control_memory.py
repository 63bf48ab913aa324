"""A control memory: learn a steering direction on a few prompts, save it, load it, answer in one round.

Runs offline on the default model. The reward is TextBlob's sentiment polarity (an upbeat tone),
a reward whose good direction is the same for every prompt: what a control memory can learn.
``AISP_EXAMPLE_FAST=1`` shrinks the budgets (as the test does).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from textblob import TextBlob

from langchain_aisp import AISPChatModel, ControlMemory
from langchain_aisp.bench.prompts import load_prompts
from langchain_aisp.engine.lm import load_causal_lm

FAST = os.environ.get("AISP_EXAMPLE_FAST") == "1"


def upbeat(prompt: str, response: str) -> float:
    """TextBlob polarity of the answer, in [-1, 1]."""
    return float(TextBlob(response).sentiment.polarity)


# learn on 18 everyday questions (the learning half of the benchmark's shipped prompt set)
LEARN = [p.user_text for p in load_prompts()[0::2]]
QUESTION = "What is a nice way to welcome a new neighbour?"  # not among the learning prompts


def main() -> None:
    samples, tokens = (4, 16) if FAST else (8, 32)
    learn = LEARN[:4] if FAST else LEARN
    lm = load_causal_lm(None)  # the default model, loaded once and shared by the chat models below
    # 1. learn: every call folds its scored samples into the memory (a batch counts as one call)
    memory = ControlMemory(warmup_prompts=len(learn))
    teacher = AISPChatModel(
        reward=upbeat, model=lm, control_memory=memory, method="aisp", num_samples=samples, num_iterations=2,
        max_tokens=tokens, seed=0,
    )  # fmt: skip
    per_call = 2 if FAST else 6
    for i in range(0, len(learn), per_call):
        teacher.batch(learn[i : i + per_call])  # Batched AISP: one engine run, one memory update
    # 2. save the steering profile (safetensors + a JSON header: model, reward, shape, updates)
    path = Path(tempfile.mkdtemp()) / "upbeat.safetensors"
    memory.save(path)
    print(f"learned: {memory.updates} updates from {memory.prompts} prompts -> {path.name}")
    print("boosts:", ", ".join(f"{token!r} +{nats:.1f}" for token, nats in memory.boosted_tokens(lm, k=6)))
    # 3. load it (frozen) and answer with one round of samples around the learned mean: BoN's latency
    profile = ControlMemory.load(path, learning=False)
    common = {
        "reward": upbeat,
        "model": lm,
        "method": "aisp",
        "num_samples": samples,
        "num_iterations": 1,
        "max_tokens": tokens,
        "seed": 1,
    }
    cold = AISPChatModel(**common).invoke(QUESTION)
    warm = AISPChatModel(**common, control_memory=profile).invoke(QUESTION)
    for label, msg in (("cold", cold), ("warm", warm)):
        aisp = msg.response_metadata["aisp"]
        mean = sum(aisp["rewards"][0]) / len(aisp["rewards"][0])
        print(f"{label} answer: {msg.content!r}")
        print(f"{label} reward: {aisp['reward']:.3f} (mean of the round {mean:.3f})")
        print(f"{label} warm start: {aisp['warm_start']} (norm {aisp['warm_start_norm']:.3f})")


if __name__ == "__main__":
    main()
