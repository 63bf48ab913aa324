"""Rewards used by the server tests, importable by path (``serve_rewards:overlap``) from a server subprocess.

``overlap`` depends on the prompt, so an answer scored under another request's prompt shows up.
"""

from __future__ import annotations

import re
import threading
import time


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def overlap(prompt: str, response: str) -> float:
    """Share of the prompt's words found in the response, plus a small length term (deterministic, cheap)."""
    asked = _words(prompt)
    found = len(asked & _words(response)) / max(1, len(asked))
    return round(found + 0.001 * len(response), 6)


def slow_overlap(prompt: str, response: str) -> float:
    """``overlap`` that takes 50 ms per response (to keep a run in flight in shutdown tests)."""
    time.sleep(0.05)
    return overlap(prompt, response)


def slow_on_marker(prompt: str, response: str) -> float:
    """``overlap`` that takes 1.5 s per response on prompts containing SLOW (to outlast a request's timeout)."""
    if "SLOW" in prompt:
        time.sleep(1.5)
    return overlap(prompt, response)


def fails_on_poison(prompt: str, response: str) -> float:
    """``overlap``, except that it raises on prompts containing POISON."""
    if "POISON" in prompt:
        raise RuntimeError("this reward cannot score POISON prompts")
    return overlap(prompt, response)


class Gate:
    """A reward that blocks on prompts containing BLOCK until ``release()`` (so a test controls when the
    engine worker is free); ``entered`` is set when a blocked call starts."""

    __name__ = "gate"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, prompt: str, response: str) -> float:
        if "BLOCK" in prompt:
            self.entered.set()
            if not self.opened.wait(60):
                raise TimeoutError("the test never released the gate")
        return overlap(prompt, response)

    def release(self) -> None:
        self.opened.set()

    def reset(self) -> None:
        self.entered.clear()
        self.opened.clear()
