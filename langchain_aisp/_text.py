"""Small text helpers shared by the chat model and the server (plain Python)."""

from __future__ import annotations

import re

_PIECE = re.compile(r"\s*\S+\s*|\s+")


def stream_pieces(text: str) -> list[str]:
    """The pieces a selected answer is streamed in: words with their surrounding whitespace.

    They concatenate back to ``text``; an empty text has no piece. The chat model's ``stream`` and the
    server's SSE chunks both use this split, so a client sees the same chunks either way.
    """
    return _PIECE.findall(text)
