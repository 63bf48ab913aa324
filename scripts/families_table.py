"""The supported-models table: run the real-tokenizer matrix (tests/test_families.py) and print it as Markdown.

    python scripts/families_table.py                  # runs the matrix (a few minutes on 2 cores), prints the table
    python scripts/families_table.py --junit run.xml  # reads a finished run's JUnit XML instead
    python scripts/families_table.py --out docs/models.md

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


def table(results: dict[tuple[str, str], tuple[str, str]]) -> str:
    head = ["family", "stands for", "vocabulary", "expected tool format", *COLUMNS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    reasons: dict[str, list[str]] = {}
    for name, spec in FAMILIES.items():
        cells = []
        for check in COLUMNS:
            outcome, message = results.get((name, check), ("n/a", ""))
            cells.append(outcome)
            if outcome in ("no", "FAILED", "skipped") and message:
                reasons.setdefault(message, []).append(f"{name} {COLUMNS[check]}")
        row = [name, ", ".join(spec.stands_for), spec.vocabulary, spec.tool_format, *cells]
        lines.append("| " + " | ".join(row) + " |")
    passing = sum(1 for o, _ in results.values() if o == "yes")
    summary = f"\n{passing} of {len(results)} cells pass."
    notes = ["", "Why a cell says no (the matrix's recorded failure and cause):", ""]
    notes += [f"- {reason} ({'; '.join(cells)})" for reason, cells in reasons.items()]
    return "\n".join(lines) + summary + ("\n" + "\n".join(notes) if reasons else "") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junit", type=Path, help="read this JUnit XML of a matrix run instead of running it")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.junit is None:
        with tempfile.TemporaryDirectory() as tmp:
            junit = Path(tmp) / "families.xml"
            run_matrix(junit)
            results = read_results(junit)
    else:
        results = read_results(args.junit)
    text = table(results)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
