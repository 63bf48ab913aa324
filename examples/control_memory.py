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

FAST = os.environ.get("AISP_EXAMPLE_FAST") == "1"


def upbeat(prompt: str, response: str) -> float:
    """TextBlob polarity of the answer, in [-1, 1]."""
    return float(TextBlob(response).sentiment.polarity)


LEARN = [
    "How do I keep basil alive on a kitchen windowsill?",
    "What should I pack for a weekend hiking trip?",
    "How can I stop procrastinating on my homework?",
    "Explain what a computer virus is to a ten-year-old.",
    "What is a good way to spend a rainy Sunday afternoon at home?",
    "How do I get a coffee stain out of a white shirt?",
]
QUESTION = "I want to start running but I get bored quickly. What can I do?"


def main() -> None:
    samples, tokens = (4, 16) if FAST else (8, 32)
    learn = LEARN[:4] if FAST else LEARN
    # 1. learn: every call folds its scored samples into the memory (a batch counts as one call)
    memory = ControlMemory(warmup_prompts=len(learn))
    teacher = AISPChatModel(
        reward=upbeat, control_memory=memory, num_samples=samples, num_iterations=2, max_tokens=tokens, seed=0
    )
    for i in range(0, len(learn), 2):
        teacher.batch(learn[i : i + 2])
    # 2. save the steering profile (safetensors + a JSON header: model, reward, shape, updates)
    path = Path(tempfile.mkdtemp()) / "upbeat.safetensors"
    memory.save(path)
    print(f"learned: {memory.updates} updates from {memory.prompts} prompts -> {path.name}")
    # 3. load it (frozen) and answer with one round of samples around the learned mean: BoN's latency
    profile = ControlMemory.load(path, learning=False)
    common = {"reward": upbeat, "num_samples": samples, "num_iterations": 1, "max_tokens": tokens, "seed": 1}
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
