"""The supported-models table: run the real-tokenizer matrix (tests/test_families.py) and print it as Markdown.

    python scripts/families_table.py                  # runs the matrix (a few minutes on 2 cores), prints the table
    python scripts/families_table.py --junit run.xml  # reads a finished run's JUnit XML instead
    python scripts/families_table.py --out docs/models-table.md --readme README.md
    python scripts/families_table.py --table docs/models-table.md --readme README.md   # no run: from the table

``--readme`` rewrites the README's short table (one row per family: its tool format, tool calls, structured
output, thinking), the block between ``<!-- models-table:start -->`` and ``<!-- models-table:end -->``;
``--table`` reads a table this script wrote instead of running the matrix.

Each cell is what the matrix found for that family and check: ``yes`` (passes), ``no`` (a known failure,
``xfail`` in the matrix, its reason listed under the table), ``n/a`` (not applicable), ``skipped`` (the
family's files could not be obtained), ``FAILED`` (an unexpected failure or a known failure that now passes).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from families import FAMILIES  # noqa: E402  (tests/families: the fixtures' metadata)

COLUMNS = {
    "format": "tool format",
    "forced": "forced call",
    "any": '"any"',
    "auto": '"auto"',
    "multi_turn": "multi-turn",
    "documented": "documented",
    "structured_fc": "structured (function_calling)",
    "structured_json": "structured (json_schema)",
    "cut_call": "cut-call message",
    "reasoning_none": "reasoning=None",
    "reasoning_false": "reasoning=False",
    "reasoning_true": "reasoning=True",
    "thinking_budget": "thinking_budget",
    "head": "head logits",
}
GROUPS = {
    "tool calls": ("forced", "any", "auto", "multi_turn", "documented", "cut_call"),
    "structured output": ("structured_fc", "structured_json"),
    "thinking": ("reasoning_none", "reasoning_false", "reasoning_true", "thinking_budget"),
}
"""The README's columns: each summarises these checks of the matrix."""
README_START = "<!-- models-table:start -->"
README_END = "<!-- models-table:end -->"
_HEAD = ("family", "stands for", "vocabulary", "expected tool format", *COLUMNS.values())
_CASE = re.compile(r"test_family_matrix\[(?P<family>.+)-(?P<check>[a-z_]+)\]")


def run_matrix(junit: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_families.py"]
    subprocess.run([*command, f"--junitxml={junit}"], cwd=ROOT, env=env, check=False)


def read_results(junit: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(family, check) -> (outcome, message) from a JUnit XML file."""
    results: dict[tuple[str, str], tuple[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        found = _CASE.fullmatch(case.get("name", ""))
        if not found:
            continue
        outcome, message = "yes", ""
        for child in case:
            if child.tag == "skipped":
                known = child.get("type") == "pytest.xfail"
                outcome, message = ("no" if known else "skipped"), child.get("message", "")
            elif child.tag in ("failure", "error"):
                outcome, message = "FAILED", (child.get("message") or "").splitlines()[0][:200]
        results[(found["family"], found["check"])] = (outcome, message)
    return results


@dataclass(frozen=True)
class Row:
    """One family's line of the table: what it stands for and each check's outcome (yes, no, n/a, ...)."""

    family: str
    stands_for: str
    vocabulary: str
    tool_format: str
    outcomes: dict[str, str]


def rows_from_results(results: dict[tuple[str, str], tuple[str, str]]) -> list[Row]:
    """The table's rows from a matrix run, one per family of ``tests/families`` in its order."""
    rows = []
    for name, spec in FAMILIES.items():
        outcomes = {check: results.get((name, check), ("n/a", ""))[0] for check in COLUMNS}
        rows.append(Row(name, ", ".join(spec.stands_for), spec.vocabulary, spec.tool_format, outcomes))
    return rows


def read_table(text: str) -> list[Row]:
    """The rows of a table this script wrote (``docs/models-table.md``): the inverse of :func:`table`."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    if len(lines) < 2:
        raise ValueError("no Markdown table found: expected the output of scripts/families_table.py")
    head = tuple(cell.strip() for cell in lines[0].strip("|").split("|"))
    if head != _HEAD:
        raise ValueError(f"unexpected table columns {list(head)}; expected {list(_HEAD)}")
    checks = list(COLUMNS)
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(head):
            raise ValueError(f"a row with {len(cells)} cells, expected {len(head)}: {line!r}")
        family, stands_for, vocabulary, tool_format, *outcomes = cells
        rows.append(Row(family, stands_for, vocabulary, tool_format, dict(zip(checks, outcomes, strict=True))))
    return rows


def summarise(outcomes: Sequence[str]) -> str:
    """One README cell for a group of checks: yes (all pass), no (none), ``k of m``, n/a, or the worst news."""
    applicable = [o for o in outcomes if o != "n/a"]
    if not applicable:
        return "n/a"
    for bad in ("FAILED", "skipped"):
        if bad in applicable:
            return bad
    passing = applicable.count("yes")
    if passing == len(applicable):
        return "yes"
    return "no" if passing == 0 else f"{passing} of {len(applicable)}"


def readme_table(rows: Sequence[Row]) -> str:
    """The README's short table: one row per family, each group of checks summarised in one cell."""
    head = ["family", "stands for", "tool format: detected", *GROUPS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        groups = [summarise([row.outcomes.get(c, "n/a") for c in checks]) for checks in GROUPS.values()]
        detected = f"`{row.tool_format}`: {row.outcomes.get('format', 'n/a')}"
        lines.append("| " + " | ".join([row.family, row.stands_for, detected, *groups]) + " |")
    cells = [o for row in rows for o in row.outcomes.values() if o != "n/a"]
    lines += [
        "",
        f"{cells.count('yes')} of {len(cells)} checks of the matrix pass. `k of m`: k of the family's m checks pass;"
        " which ones, and why a check fails: [docs/models-table.md](docs/models-table.md).",
    ]
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with the lines between the README's two markers replaced by ``block``."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {README_START} ... {README_END} block")
    start += len(README_START)
    return text[:start] + "\n" + block + text[end:]


def table(results: dict[tuple[str, str], tuple[str, str]]) -> str:
    """The full table (``docs/models-table.md``): every check of every family, and why a cell says no."""
    lines = ["| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    for row in rows_from_results(results):
        cells = [row.family, row.stands_for, row.vocabulary, row.tool_format, *row.outcomes.values()]
        lines.append("| " + " | ".join(cells) + " |")
    reasons: dict[str, list[str]] = {}
    for name in FAMILIES:
        for check, label in COLUMNS.items():
            outcome, message = results.get((name, check), ("n/a", ""))
            if outcome in ("no", "FAILED", "skipped") and message:
                reasons.setdefault(message, []).append(f"{name} {label}")
    passing = sum(1 for o, _ in results.values() if o == "yes")
    summary = f"\n{passing} of {len(results)} cells pass."
    notes = ["", "Why a cell says no (the matrix's recorded failure and cause):", ""]
    notes += [f"- {reason} ({'; '.join(cells)})" for reason, cells in reasons.items()]
    return "\n".join(lines) + summary + ("\n" + "\n".join(notes) if reasons else "") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junit", type=Path, help="read this JUnit XML of a matrix run instead of running it")
    parser.add_argument("--table", type=Path, help="read a table this script wrote instead of running the matrix")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--readme", type=Path, help="rewrite this README's models-table block")
    args = parser.parse_args(argv)
    if args.table is not None and (args.junit is not None or args.out is not None):
        parser.error("--table reads a finished table: it takes neither --junit nor --out")
    if args.table is not None:
        rows = read_table(args.table.read_text())
    else:
        if args.junit is None:
            with tempfile.TemporaryDirectory() as tmp:
                junit = Path(tmp) / "families.xml"
                run_matrix(junit)
                results = read_results(junit)
        else:
            results = read_results(args.junit)
        rows = rows_from_results(results)
        text = table(results)
        print(text)
        if args.out:
            args.out.write_text(text)
    if args.readme:
        args.readme.write_text(replace_block(args.readme.read_text(), readme_table(rows)))
        print(f"rewrote the models table in {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
