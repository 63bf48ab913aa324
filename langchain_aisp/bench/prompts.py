"""Benchmark prompts: the shipped default set, user JSONL files, chat rendering, a long RAG prompt."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from langchain_aisp.engine.lm import CausalLM

if TYPE_CHECKING:  # langchain-core is imported where it is used: the speed tools run without it (GPU check)
    from langchain_core.messages import BaseMessage


@dataclass(frozen=True)
class BenchPrompt:
    """One benchmark prompt: ``{"id": ..., "prompt": ..., "context": ...}`` in the JSONL file."""

    id: str
    prompt: str
    context: str | None = None

    @property
    def user_text(self) -> str:
        """The user message: the question alone, or the context paragraph followed by the question."""
        if self.context:
            return f"Context:\n{self.context}\n\nQuestion: {self.prompt}"
        return self.prompt

    def conversation(self) -> list[BaseMessage]:
        """The conversation a reward sees (one human message)."""
        from langchain_core.messages import HumanMessage

        return [HumanMessage(self.user_text)]


def default_prompts_path() -> Path:
    """The shipped prompt set (``langchain_aisp/bench/data/prompts.jsonl``)."""
    return Path(str(resources.files("langchain_aisp.bench") / "data" / "prompts.jsonl"))


def load_prompts(path: str | Path | None = None, limit: int | None = None) -> list[BenchPrompt]:
    """Read a JSONL prompt file (the default set when ``path`` is None); keep the first ``limit``.

    Each line is a JSON object with a non-empty string ``prompt`` and optional ``id`` (string or
    number; defaults to the line number) and ``context``. Blank lines are skipped.
    """
    file = Path(path) if path is not None else default_prompts_path()
    prompts: list[BenchPrompt] = []
    seen: set[str] = set()
    with open(file, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{file}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise ValueError(f'{file}:{lineno}: expected an object with a non-empty "prompt", got {line[:80]!r}')
            context = row.get("context")
            if context is not None and not isinstance(context, str):
                raise ValueError(f'{file}:{lineno}: "context" must be a string, got {type(context).__name__}')
            pid = str(row.get("id", lineno))
            if pid in seen:
                raise ValueError(f"{file}:{lineno}: duplicate prompt id {pid!r}")
            seen.add(pid)
            prompts.append(BenchPrompt(pid, row["prompt"], context or None))
    if not prompts:
        raise ValueError(f"{file}: no prompts found")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"prompt limit must be >= 1, got {limit}")
        prompts = prompts[:limit]
    return prompts


def render(lm: CausalLM, text: str) -> list[int]:
    """Token ids of a one-turn chat (``text`` as the user message) with the generation prompt."""
    tokenizer = lm.tokenizer
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(rendered, add_special_tokens=False).input_ids)
    return list(tokenizer(text).input_ids)


def encode_prompts(lm: CausalLM, prompts: Sequence[BenchPrompt]) -> list[list[int]]:
    """Render every prompt with the model's chat template."""
    return [render(lm, p.user_text) for p in prompts]


def rag_prompt(lm: CausalLM, min_tokens: int = 1024, question: str | None = None) -> list[int]:
    """A long retrieval-augmented prompt of at least ``min_tokens`` tokens, built from shipped text.

    The "retrieved documents" are the context paragraphs of the default prompt set, numbered
    and repeated in order until the rendered prompt reaches ``min_tokens``.
    """
    passages = [p.context for p in load_prompts() if p.context]
    question = question or "Using the documents above, answer briefly: when does the library close on Saturdays?"
    docs: list[str] = []
    while True:
        passage = passages[len(docs) % len(passages)]
        docs.append(f"Document {len(docs) + 1}:\n{passage}")
        ids = render(lm, "\n\n".join(docs) + f"\n\nQuestion: {question}")
        if len(ids) >= min_tokens:
            return ids
        if len(docs) > 10 * min_tokens:  # a tokenizer that yields no tokens would loop forever
            raise ValueError(f"could not build a prompt of {min_tokens} tokens")
