"""A failing reward names itself, the prompt and the response, and chains its own exception; no import cycles."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from langchain_aisp import AISPChatModel
from langchain_aisp.engine.aisp import RewardError, run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.rewards import FunctionReward, Reward, RewardFailure, SafeReward, batched, score_fn

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ROOT = Path(__file__).resolve().parent.parent
BON = AISPParams(method="bon", num_samples=4, num_iterations=3)  # samples do not depend on the rewards
SAMPLING = SamplingParams(max_tokens=6)


class FailOn:
    """``fn(prompt, response)`` that raises on its ``fail_at``-th call (0-based) and records what it saw."""

    def __init__(self, fail_at: int, error: Exception | None = None) -> None:
        self.fail_at, self.error = fail_at, error or ZeroDivisionError("division by zero")
        self.seen: list[tuple[str, str]] = []
        self.__name__ = "fail_on"

    def __call__(self, prompt: str, response: str) -> float:
        self.seen.append((prompt, response))
        if len(self.seen) - 1 == self.fail_at:
            raise self.error
        return float(len(response))


def picky(prompt: str, response: str) -> float:
    """Module level, so ``AISPChatModel.reward_name`` is its import path."""
    if "colour" in prompt:
        raise KeyError("no colours today")
    return float(len(response))


def _reference(tiny_lm, encode, prompts: list[str]) -> list[Any]:
    ok = score_fn(FunctionReward(lambda p, r: float(len(r))), [[HumanMessage(p)] for p in prompts])
    return run(tiny_lm, [encode(p) for p in prompts], ok, BON, SAMPLING, seed=0)


def _locate(result: Any, text: str) -> tuple[int, int]:
    """(iteration, response) of the first sample with ``text``: where the engine must say the failure was."""
    for it, texts in enumerate(result.texts):
        if text in texts:
            return it, texts.index(text)
    raise AssertionError(f"{text!r} was never sampled")


# --- plain functions ---------------------------------------------------------------------------------


def test_plain_function_error_names_the_function_prompt_and_response_through_the_engine(tiny_lm, encode):
    prompts = ["Tell me a story.", "Name a fruit."]
    (ref0, ref1) = _reference(tiny_lm, encode, prompts)
    fn = FailOn(fail_at=9)  # after the first iteration (distinct responses are scored once each)
    score = score_fn(FunctionReward(fn), [[HumanMessage(p)] for p in prompts])
    with pytest.raises(RewardError) as info:
        run(tiny_lm, [encode(p) for p in prompts], score, BON, SAMPLING, seed=0)
    err = info.value
    prompt, response = fn.seen[-1]
    assert err.prompt_index == prompts.index(prompt) and err.response == response
    assert (err.iteration, err.response_index) == _locate((ref0, ref1)[err.prompt_index], response)
    assert err.iteration >= 1
    text = str(err)
    assert text.startswith("reward fail_on raised ZeroDivisionError: division by zero (prompt ")
    assert f"iteration {err.iteration}, response {err.response_index}: {response[:20]!r}"[:-1] in text
    assert isinstance(err.__cause__, ZeroDivisionError) and err.__cause__ is fn.error
    assert all(p is not None and len(p.rewards) == err.iteration for p in err.partial)  # .partial kept


def test_plain_function_error_through_the_chat_model_uses_reward_name(tiny_lm):
    llm = AISPChatModel(
        method="aisp", reward=picky, model=tiny_lm, num_samples=2, num_iterations=2, max_tokens=6, seed=0
    )
    with pytest.raises(RewardError) as info:
        llm.invoke("Name a colour.")
    err = info.value
    assert llm.reward_name.endswith(":picky")  # a module-level function is named by its import path
    assert str(err).startswith(f"reward {llm.reward_name} raised KeyError: 'no colours today' (prompt 0, iteration 0")
    assert err.response_index == 0 and err.response is not None and repr(err.response[:10])[:-1] in str(err)
    assert type(err.__cause__) is KeyError
    assert err.partial == [None]  # nothing was scored before the failure


def test_batched_chat_call_names_the_failing_prompt(tiny_lm):
    llm = AISPChatModel(
        method="aisp", reward=picky, model=tiny_lm, num_samples=2, num_iterations=1, max_tokens=6, seed=0
    )
    out = llm.batch(["Name a fruit.", "Name a colour."], return_exceptions=True)
    # One engine run (Batched AISP); the reward fails on prompt 1's responses only, so only that input
    # fails (per-prompt isolation), with an error that names it; the other input is answered.
    fruit, err = out
    assert isinstance(fruit, AIMessage) and fruit.response_metadata["aisp"]["reward"] == float(len(fruit.content))
    assert isinstance(err, RewardError) and err.prompt_index == 1 and "(prompt 1, iteration 0" in str(err)
    assert type(err.__cause__) is KeyError


def test_closure_is_named_by_its_name(tiny_lm):
    def local_reward(prompt: str, response: str) -> float:
        raise RuntimeError("boom")

    llm = AISPChatModel(
        method="aisp", reward=local_reward, model=tiny_lm, num_samples=2, num_iterations=1, max_tokens=4, seed=0
    )
    with pytest.raises(RewardError, match=r"^reward local_reward raised RuntimeError: boom \(prompt 0, iteration 0"):
        llm.invoke("Hi")


# --- @batched functions -------------------------------------------------------------------------------


def test_batched_function_that_raises_names_the_function_and_the_batch(tiny_lm):
    @batched
    def scorer(prompts: list[str], responses: list[str]) -> list[float]:
        raise ValueError("backend down")

    llm = AISPChatModel(
        method="aisp", reward=scorer, model=tiny_lm, num_samples=3, num_iterations=1, max_tokens=6, seed=0
    )
    with pytest.raises(RewardError) as info:
        llm.invoke("Hi")
    err = info.value
    assert str(err).startswith("reward scorer raised ValueError: backend down (prompt 0, iteration 0, scoring a batch")
    assert "names no single response" in str(err) and err.response_index is None and err.prompt_index == 0
    assert type(err.__cause__) is ValueError


def test_batched_function_with_a_bad_value_names_the_response(tiny_lm):
    @batched
    def scorer(prompts: list[str], responses: list[str]) -> list[float]:
        return [math.nan if i == len(responses) - 1 else 1.0 for i in range(len(responses))]

    llm = AISPChatModel(
        method="aisp", reward=scorer, model=tiny_lm, num_samples=3, num_iterations=1, max_tokens=6, seed=0
    )
    with pytest.raises(RewardError) as info:
        llm.invoke("Hi")
    err = info.value
    assert str(err).startswith("reward scorer returned a non-finite score nan (prompt 0, iteration 0, response ")
    assert err.response_index is not None and err.response is not None


# --- Reward objects -----------------------------------------------------------------------------------


class Flaky(Reward):
    name = "flaky_judge"

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def score(self, conversations: Sequence[Any], responses: Sequence[str]) -> list[float]:
        if self.mode == "raise":
            raise ConnectionError("judge unreachable")
        if self.mode == "locate":
            raise RewardFailure("second one is bad", reward=self.name, index=1, reason="rejected a response")
        return [1.0, "high", *([1.0] * (len(responses) - 2))]  # type: ignore[list-item]


def test_reward_object_errors(tiny_lm):
    def model(mode: str) -> AISPChatModel:
        return AISPChatModel(
            method="aisp", reward=Flaky(mode), model=tiny_lm, num_samples=3, num_iterations=1, max_tokens=6, seed=0
        )

    with pytest.raises(RewardError, match=r"^reward flaky_judge raised ConnectionError: judge unreachable \(prompt 0"):
        model("raise").invoke("Hi")
    with pytest.raises(RewardError) as info:
        model("value").invoke("Hi")
    expected = "reward flaky_judge returned 'high' (str); expected a float (prompt 0, iteration 0, response "
    assert str(info.value).startswith(expected) and info.value.response_index is not None
    with pytest.raises(RewardError, match=r"^reward flaky_judge rejected a response \(prompt 0, iteration 0, resp"):
        model("locate").invoke("Hi")


def test_safe_reward_and_weighted_sum_keep_the_sample_and_the_cause(tiny_lm):
    fn = FailOn(fail_at=2, error=KeyError("k"))
    llm = AISPChatModel(
        method="aisp", reward=SafeReward(fn), model=tiny_lm, num_samples=4, num_iterations=1, max_tokens=6, seed=0
    )
    with pytest.raises(RewardError) as info:
        llm.invoke("Hi")
    assert info.value.response == fn.seen[-1][1] and info.value.__cause__ is fn.error
    fn = FailOn(fail_at=1, error=KeyError("k"))
    total = FunctionReward(lambda p, r: 1.0, name="one") + FunctionReward(fn, name="second")
    llm = AISPChatModel(
        method="aisp", reward=total, model=tiny_lm, num_samples=4, num_iterations=1, max_tokens=6, seed=0
    )
    with pytest.raises(RewardError) as info:
        llm.invoke("Hi")
    err = info.value
    assert str(err).startswith("reward 1*one + 1*second (in 1*one + 1*second) raised KeyError: 'k' (prompt 0")
    assert err.response == fn.seen[-1][1] and err.__cause__ is fn.error


def test_function_reward_alone_raises_reward_failure_with_the_sample():
    fn = FailOn(fail_at=1)
    with pytest.raises(RewardFailure) as info:
        FunctionReward(fn).score([[HumanMessage("q")]] * 3, ["a", "bb", "ccc"])
    err = info.value
    assert (err.index, err.reward, err.reason) == (1, "fail_on", "raised ZeroDivisionError: division by zero")
    assert "on sample 1 (response 'bb')" in str(err) and err.__cause__ is fn.error


# --- no import cycles -----------------------------------------------------------------------------------


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only: never executed, so never a cycle)."""
    nodes: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def _import_graph() -> dict[str, set[str]]:
    """Every import of every module of the package (function-level imports included, ``if TYPE_CHECKING:`` blocks
    left out) -> modules of the package."""
    package = ROOT / "langchain_aisp"
    modules: dict[str, Path] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
                    break
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = _import_graph()
    assert "langchain_aisp.rewards.base" in graph and graph["langchain_aisp.rewards.safety"]  # the graph is real
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]  # the check can fail
    typing_only = ast.parse("if TYPE_CHECKING:\n    import x\ndef f():\n    import y\n")
    seen = {a.name for n in _runtime_nodes(typing_only) if isinstance(n, ast.Import) for a in n.names}
    assert seen == {"y"}  # function-level imports count, typing-only ones do not
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    assert not graph["langchain_aisp.rewards.base"] & {
        "langchain_aisp.rewards.safety",
        "langchain_aisp.rewards.composition",
    }


@pytest.mark.parametrize("module", ["base", "composition", "safety", "errors"])
def test_each_reward_module_imports_alone(module):
    code = f"import langchain_aisp.rewards.{module} as m; print(m.__name__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
