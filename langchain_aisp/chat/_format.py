"""What a reply must look like: free text, tool calls (their tags) or one JSON object (:class:`OutputFormat`).

Plain data, read by the rooms that render the prompt (``_render``), constrain and parse the reply
(``_grammar``, ``_parse``) and choose between a call and prose (``_auto``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


@dataclass(frozen=True)
class OutputFormat:
    """What the reply must look like: free text, tool calls, or one JSON object."""

    tools: tuple[dict[str, Any], ...] = ()
    """OpenAI-style function definitions: {"name", "description", "parameters"}."""
    tool_choice: str = "auto"
    """"auto", "none", "any" (a call of some tool is required) or a tool name."""
    json_schema: dict[str, Any] | None = None
    """Structured output (json_schema / json_mode): the reply is one JSON object."""
    parallel_tool_calls: bool = False
    """Several calls per reply; off unless asked for (small models repeat a call until max_tokens)."""
    strict: bool | None = None
    """True/None: a schema keyword the grammar cannot enforce is refused when bound; False: it is dropped
    from the grammar (the reply is still validated against the full schema after decoding)."""

    @property
    def tool_names(self) -> list[str]:
        return [t["name"] for t in self.tools]

    @property
    def calls_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def forced_tool(self) -> str | None:
        """The one tool a call is forced to, if any."""
        if not self.calls_tools:
            return None
        if self.tool_choice in self.tool_names:
            return self.tool_choice
        if self.tool_choice == "any" and len(self.tools) == 1:
            return self.tools[0]["name"]
        return None

    @property
    def forces_call(self) -> bool:
        return self.calls_tools and self.tool_choice != "auto"

    @property
    def constrained(self) -> bool:
        """Whether a format validity term is added to the reward."""
        return self.calls_tools or self.json_schema is not None

    def key(self) -> str:
        return json.dumps(
            [list(self.tools), self.tool_choice, self.json_schema, self.parallel_tool_calls, self.strict], default=str
        )


def normalize_tool_choice(tool_choice: Any, names: Sequence[str]) -> str:
    """Map LangChain's tool_choice spellings to "auto" | "none" | "any" | <tool name>."""
    if tool_choice is None or tool_choice == "auto":
        return "auto"
    if tool_choice is True or tool_choice in ("any", "required"):
        return "any"
    if tool_choice is False or tool_choice == "none":
        return "none"
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if isinstance(name, str):
            tool_choice = name
    if isinstance(tool_choice, str) and tool_choice in names:
        return tool_choice
    raise ValueError(
        f"tool_choice must be None, 'auto', 'none', 'any', 'required', True or the name of a bound tool "
        f"({list(names)}), got {tool_choice!r}"
    )
