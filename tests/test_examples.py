"""Each example runs offline on the default model (smallest budget) and prints its answer and reward."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str) -> str:
    # PYTHONPATH: the package from this checkout, whatever the (editable) install resolves to
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "AISP_EXAMPLE_FAST": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _reward(output: str, label: str = "reward") -> float:
    match = re.search(rf"^{label}: (-?[0-9.e+-]+)$", output, re.MULTILINE)
    assert match, output
    return float(match.group(1))


def _ends_in_an_answer(output: str) -> str:
    """The last line is the model's answer: prose of a few words, not metadata or a tool-call fragment."""
    last = output.strip().splitlines()[-1]
    assert last.startswith("answer: "), output
    answer = last[len("answer: ") :]
    assert len(answer.split()) >= 3 and not re.search(r"<\/?tool|^\s*[{\[]", answer), output
    return answer


@pytest.mark.model
def test_chain_example():
    out = run_example("chain.py")
    _ends_in_an_answer(out)
    _reward(out)
    assert "samples: 2" in out


@pytest.mark.model
def test_rag_example():
    out = run_example("rag.py")
    assert "retrieved: ['eiffel'" in out  # MiniLM retrieval in an InMemoryVectorStore, offline
    assert "reward model: embedding_similarity(context)" in out
    _ends_in_an_answer(out)
    _reward(out)


@pytest.mark.parametrize("name", ["chain.py", "rag.py", "agent_tool.py"])
def test_examples_read_the_thread_setting(name):
    env = {**os.environ, "LANGCHAIN_AISP_NUM_THREADS": "lots", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert proc.returncode != 0
    assert "LANGCHAIN_AISP_NUM_THREADS must be an integer >= 1 or 'all', got 'lots'" in proc.stderr


@pytest.mark.model
def test_agent_tool_example():
    out = run_example("agent_tool.py")
    assert re.search(r"^tool backend answer: \S", out, re.MULTILINE), out
    _reward(out, "tool backend reward")
    for agent in ("plain loop", "langgraph create_react_agent", "langchain create_agent"):
        calls = re.search(rf"^\[{agent}\] tool calls: (.*)$", out, re.MULTILINE)
        assert calls and "get_weather" in calls.group(1), out  # the agent called the tool at least once
        final = re.search(rf"^\[{agent}\] final answer: (.*)$", out, re.MULTILINE)
        assert final and final.group(1).strip(), out  # ...and ended in a prose answer
        assert "<tool_response>" not in final.group(1) and "<tool_call>" not in final.group(1)
    _ends_in_an_answer(out)
