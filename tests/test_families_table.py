"""scripts/families_table.py: the full table and the README's short one come from the same rows, --readme
rewrites only the README's marked block, and the README's table is the one docs/models-table.md makes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ft():
    spec = importlib.util.spec_from_file_location("families_table", ROOT / "scripts" / "families_table.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("families_table", module)
    spec.loader.exec_module(module)
    return module


def results_of(ft, outcomes):
    """A matrix run where every family gets ``outcomes[check]`` (a check left out did not run)."""
    return {(family, check): outcome for family in ft.FAMILIES for check, outcome in outcomes.items()}


def test_read_table_inverts_table(ft):
    outcomes = {"format": ("yes", ""), "forced": ("no", "a known cause"), "auto": ("skipped", "no network")}
    outcomes |= {"structured_json": ("FAILED", "boom"), "head": ("yes", "")}
    results = results_of(ft, outcomes)
    rows = ft.read_table(ft.table(results))
    assert rows == ft.rows_from_results(results)
    assert [r.family for r in rows] == list(ft.FAMILIES)
    assert rows[0].outcomes["forced"] == "no" and rows[0].outcomes["any"] == "n/a"


def test_read_table_refuses_other_tables(ft):
    with pytest.raises(ValueError, match="unexpected table columns"):
        ft.read_table("| a | b |\n|---|---|\n| 1 | 2 |\n")
    with pytest.raises(ValueError, match="no Markdown table"):
        ft.read_table("nothing here\n")


@pytest.mark.parametrize(
    ("outcomes", "cell"),
    [
        (["yes", "yes", "n/a"], "yes"),
        (["no", "no"], "no"),
        (["yes", "no", "no", "n/a"], "1 of 3"),
        (["n/a", "n/a"], "n/a"),
        (["yes", "skipped"], "skipped"),
        (["yes", "FAILED", "skipped"], "FAILED"),
    ],
)
def test_summarise(ft, outcomes, cell):
    assert ft.summarise(outcomes) == cell


def test_readme_table_summarises_each_group(ft):
    row = ft.Row("fam", "org/Model-*", "vocab", "hermes", {c: "n/a" for c in ft.COLUMNS})
    row.outcomes.update(format="no", forced="yes", any="no", structured_fc="yes", structured_json="yes", head="yes")
    text = ft.readme_table([row])
    assert "| fam | org/Model-* | `hermes`: no | 1 of 2 | yes | n/a |" in text.splitlines()
    assert "4 of 6 checks of the matrix pass" in text


def test_replace_block_rewrites_only_the_block(ft):
    text = f"before\n{ft.README_START}\nold table\n{ft.README_END}\nafter\n"
    assert ft.replace_block(text, "new\n") == f"before\n{ft.README_START}\nnew\n{ft.README_END}\nafter\n"
    with pytest.raises(ValueError, match="no <!-- models-table:start -->"):
        ft.replace_block("no markers\n", "new\n")


def test_cli_rewrites_the_readme_from_a_table(ft, tmp_path):
    table = tmp_path / "models-table.md"
    table.write_text(ft.table(results_of(ft, {"format": ("yes", ""), "forced": ("yes", "")})))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{ft.README_START}\nold\n{ft.README_END}\n")
    assert ft.main(["--table", str(table), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and text.startswith("# x\n") and text.endswith(f"{ft.README_END}\n")
    assert ft.replace_block(text, ft.readme_table(ft.read_table(table.read_text()))) == text
    with pytest.raises(SystemExit):
        ft.main(["--table", str(table), "--out", str(tmp_path / "x.md")])


def test_the_readme_models_table_is_the_generated_one(ft):
    readme = (ROOT / "README.md").read_text()
    short = ft.readme_table(ft.read_table((ROOT / "docs" / "models-table.md").read_text()))
    assert ft.replace_block(readme, short) == readme, (
        "README's models table differs from docs/models-table.md: run "
        "python scripts/families_table.py --table docs/models-table.md --readme README.md"
    )
