"""``langchain-aisp-bench screen`` and ``coupling`` on the tiny model (issue 17)."""

from __future__ import annotations

import json

import pytest

from langchain_aisp.bench.screen import changed_share

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_changed_share_counts_positions_only_one_response_reached():
    assert changed_share([[1, 2, 3]], [[1, 2, 3]]) == (0.0, 1.0)
    share, first = changed_share([[1, 2, 3, 4]], [[1, 9, 3]])
    assert share == pytest.approx(2 / 4) and first == pytest.approx(1 / 4)


def test_screen_and_coupling_cli_on_the_tiny_model(tiny_lm, tmp_path, monkeypatch, capsys):
    from langchain_aisp.bench import cli

    (tmp_path / "rw.py").write_text("def length(prompt, response):\n    return float(len(response))\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Hi"}\n{"id": "b", "prompt": "Why?"}\n')
    monkeypatch.setattr(cli, "_load_lm", lambda args: tiny_lm)
    out = tmp_path / "screen"
    argv = ["screen", "--prompts", str(prompts), "--reward", f"{tmp_path / 'rw.py'}:length", "--designs",
            "position@0,eos@3,shared", "--controls", "3", "--sampling-sets", "2", "--max-tokens", "4",
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "| position@0 | length |" in table and "| shared@0.02 | length |" in table
    data = json.loads((out / "screen.json").read_text())
    assert set(data["pooled"]) == {"position@0", "eos@3", "shared@0.02"}
    assert data["pooled"]["position@0"]["length"]["control"] == 0.0  # zero noise explains nothing
    assert [p["id"] for p in data["prompts"]] == ["a", "b"]
    assert cli.main([*argv[:-2], "--designs", "banana@1", "--out", str(out)]) == 2  # a clear error
    assert "design must be one of" in capsys.readouterr().err
    out = tmp_path / "coupling"
    argv = ["coupling", "--prompts", str(prompts), "--limit-prompts", "1", "--sigmas", "0,0.5", "--controls", "1",
            "--sampling-sets", "2", "--max-tokens", "4", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    summary = json.loads((out / "coupling.json").read_text())["summary"]
    assert set(summary) == {"gumbel", "inverse_cdf"}
    assert summary["gumbel"]["0"]["changed"] == 0.0 and summary["inverse_cdf"]["0"]["changed"] == 0.0
