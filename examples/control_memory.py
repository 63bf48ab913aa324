"""A control memory: learn a steering direction over a few calls, save it, load it, steer later calls.

Runs offline on the default model. The reward is TextBlob's sentiment polarity (an upbeat tone), a reward
whose good direction is the same for every prompt: what a control memory can learn. Every call of the
default method (Best-of-N) teaches the memory; a quarter of each call's samples stay the model's own, and the
memory steers the rest only as hard as its self-check finds that they win.
``AISP_EXAMPLE_FAST=1`` shrinks the budgets (as the test does).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from textblob import TextBlob

from langchain_aisp import AISPChatModel, ControlMemory
from langchain_aisp.bench.memory_bench import learn_prompts_path
from langchain_aisp.bench.prompts import load_prompts
from langchain_aisp.engine.lm import load_causal_lm

FAST = os.environ.get("AISP_EXAMPLE_FAST") == "1"


def upbeat(prompt: str, response: str) -> float:
    """TextBlob polarity of the answer, in [-1, 1]."""
    return float(TextBlob(response).sentiment.polarity)


LEARN = [p.user_text for p in load_prompts(learn_prompts_path())]  # everyday questions, one per call
QUESTION = "What is a nice way to welcome a new neighbour?"  # not among the learning prompts


def main() -> None:
    calls, tokens = (4, 16) if FAST else (32, 24)
    lm = load_causal_lm(None)  # the default model, loaded once and shared by the chat models below
    # 1. learn: every call folds its scored samples into the memory (a batch counts as one call)
    memory = ControlMemory(warmup_prompts=min(calls, 8))
    teacher = AISPChatModel(reward=upbeat, model=lm, control_memory=memory, num_samples=8, max_tokens=tokens, seed=0)
    for question in LEARN[:calls]:
        teacher.invoke(question)
    # 2. save the profile (safetensors + a JSON header: model, reward, settings, the self-check's state)
    path = Path(tempfile.mkdtemp()) / "upbeat.safetensors"
    memory.save(path)
    print(f"learned: {memory.updates} updates from {memory.prompts} prompts -> {path.name}")
    print("boosts:", ", ".join(f"{token!r} +{nats:.1f}" for token, nats in memory.boosted_tokens(lm, k=6)))
    # 3. load it (frozen) and answer with the same 8 samples: 2 from the model, 6 steered at the learned level
    profile = ControlMemory.load(path, learning=False)
    common = {"reward": upbeat, "model": lm, "num_samples": 8, "max_tokens": tokens, "seed": 1}
    cold = AISPChatModel(**common).invoke(QUESTION)
    warm = AISPChatModel(**common, control_memory=profile).invoke(QUESTION)
    for label, msg in (("cold", cold), ("warm", warm)):
        aisp = msg.response_metadata["aisp"]
        mean = sum(aisp["rewards"][0]) / len(aisp["rewards"][0])
        print(f"{label} answer: {msg.content!r}")
        print(f"{label} reward: {aisp['reward']:.3f} (mean of the samples {mean:.3f})")
        steer = aisp["memory"] or {"level": 0.0, "strength": 0.0}
        print(f"{label} steered: {aisp['warm_start']} (level {steer['level']:.3f}, strength {steer['strength']:.2f})")


if __name__ == "__main__":
    main()
