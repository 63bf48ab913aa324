"""LangChain's unicode tool-call and structured-output standard tests over a grid of seeds and budgets (issue 21).

Runs ``ChatModelIntegrationTests.test_unicode_tool_call_integration`` (a forced call that must copy
'你好啊集团' / 'こんにちは株式会社' into ``customer_name``) and, with ``--structured``, the structured-output
tests (``test_structured_output`` for pydantic / TypedDict / JSON schema, ``..._optional_param``) on the
default model with the standard suite's reward (``tests/test_standard.py``), for every seed x budget x
max_tokens cell, and prints one line per cell and a pass table. Only public API is used, so the same
script measures another checkout (``PYTHONPATH=/path/to/checkout``):

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/grounding_grid.py                 # unicode test, 30 cells
    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/grounding_grid.py --structured    # + structured output
"""

from __future__ import annotations

import argparse
import itertools
import time
import traceback
from typing import Any

import torch

import langchain_aisp
from langchain_aisp import AISPChatModel
from tests.test_standard import TestAISPChatModelIntegration, wordy_reward  # the suite's capabilities and reward


def run_test(name: str, fn: Any) -> tuple[bool, str]:
    try:
        fn()
    except Exception as exc:  # a failing assertion or error: recorded, the grid goes on
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return False, last[:160]
    return True, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--budgets", nargs="+", default=["2x1", "2x2", "4x2"], help="num_samples x num_iterations")
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[32, 48])
    parser.add_argument("--structured", action="store_true", help="also run the structured-output tests")
    parser.add_argument("--no-unicode", action="store_true", help="skip the unicode tool-call test")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("langchain_aisp from", langchain_aisp.__file__, flush=True)
    suite = TestAISPChatModelIntegration()
    totals: dict[str, list[int]] = {}
    start = time.perf_counter()
    for budget, max_tokens, seed in itertools.product(args.budgets, args.max_tokens, args.seeds):
        n, k = (int(x) for x in budget.split("x"))
        model = AISPChatModel(reward=wordy_reward, num_samples=n, num_iterations=k, max_tokens=max_tokens, seed=seed)
        tests: list[tuple[str, Any]] = []
        if not args.no_unicode:
            tests.append(("unicode_tool_call", lambda m=model: suite.test_unicode_tool_call_integration(m)))
        if args.structured:
            for kind in ("pydantic", "typeddict", "json_schema"):
                tests.append((f"structured[{kind}]", lambda m=model, s=kind: suite.test_structured_output(m, s)))
            tests.append(("optional_param", lambda m=model: suite.test_structured_output_optional_param(m)))
        for name, fn in tests:
            cell = time.perf_counter()
            ok, why = run_test(name, fn)
            totals.setdefault(name, [0, 0])[0] += ok
            totals[name][1] += 1
            line = f"{budget} max_tokens={max_tokens} seed={seed} {name}: {'pass' if ok else 'FAIL ' + why}"
            print(f"{line} ({time.perf_counter() - cell:.0f} s)", flush=True)
    print(f"\n| test | passed | ({time.perf_counter() - start:.0f} s in all) |\n|---|---|---|")
    for name, (passed, count) in totals.items():
        print(f"| {name} | {passed}/{count} | |")


if __name__ == "__main__":
    main()
