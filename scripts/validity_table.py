"""Schema validity of structured output and forced tool calls on the default model (issue 9).

50 prompts x 3 schemas, each through ``with_structured_output(method="json_schema")`` and
``with_structured_output(method="function_calling")`` (a forced tool call), with the chat
model's batch (one Batched AISP run per schema and method). A reply counts as valid when it
parses into the schema and validates against it with the ``jsonschema`` package (independent
of our own checker); replies cut by ``max_tokens`` are counted separately.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/validity_table.py            # the table in docs/grammar.md
    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/validity_table.py --prompts 5 --max-tokens 64   # quick look
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Literal

import jsonschema
import torch
from langchain_core.utils.function_calling import convert_to_json_schema
from pydantic import BaseModel, Field

from langchain_aisp import AISPChatModel

NAMES = ["Ada", "Bruno", "Chen", "Dara", "Elif", "Farah", "Goran", "Hana", "Ivo", "Jun"]
CITIES = ["Paris", "Lagos", "Osaka", "Lima", "Oslo"]


class Person(BaseModel):
    """A person."""

    name: str
    age: int = Field(ge=0, le=130)
    city: str | None = None


class Forecast(BaseModel):
    """A weather forecast."""

    location: str
    unit: Literal["celsius", "fahrenheit"]
    temperatures: list[float]


class Review(BaseModel):
    """A product review."""

    product: str
    rating: int = Field(ge=1, le=5)
    pros: list[str]
    verdict: Literal["buy", "skip"]


def prompts(kind: str, count: int) -> list[str]:
    out = []
    for i in range(count):
        name, city = NAMES[i % len(NAMES)], CITIES[(i // len(NAMES)) % len(CITIES)]
        if kind == "Person":
            out.append(f"{name} is {20 + i} years old and lives in {city}. Describe {name}.")
        elif kind == "Forecast":
            out.append(f"Give a {3 + i % 3}-day temperature forecast for {city} (day {i}).")
        else:
            out.append(f"Review the {['phone', 'kettle', 'bike', 'lamp', 'desk'][i % 5]} that {name} bought.")
    return out


def brevity(prompt: str, response: str) -> float:
    return -len(response) / 100.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--num-samples", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    torch.set_num_threads(1)
    llm = AISPChatModel(
        reward=brevity, num_samples=args.num_samples, num_iterations=1, max_tokens=args.max_tokens, seed=0
    )
    rows = []
    for schema in (Person, Forecast, Review):
        json_schema = convert_to_json_schema(schema)
        for method in ("json_schema", "function_calling"):
            chain = llm.with_structured_output(schema, method=method, include_raw=True)
            start = time.perf_counter()
            outputs = chain.batch(prompts(schema.__name__, args.prompts))
            seconds = time.perf_counter() - start
            valid = cut = 0
            failures: list[Any] = []
            for out in outputs:
                parsed = out["parsed"]
                if parsed is not None:
                    jsonschema.validate(parsed.model_dump(mode="json", exclude_none=True), json_schema)
                    valid += 1
                elif out["raw"].response_metadata.get("finish_reason") == "length":
                    cut += 1
                else:
                    failures.append(out["parsing_error"])
            rows.append((schema.__name__, method, valid, cut, len(outputs), seconds))
            print(f"{schema.__name__} {method}: {valid}/{len(outputs)} valid, {cut} cut, {seconds:.0f} s", flush=True)
            for failure in failures[:3]:
                print("   not valid and not cut:", failure)
    print(f"\n| schema | method | valid | cut by max_tokens={args.max_tokens} | other invalid | time |")
    print("|---|---|---|---|---|---|")
    for name, method, valid, cut, total, seconds in rows:
        print(f"| {name} | {method} | {valid}/{total} | {cut} | {total - valid - cut} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
